//! Human output as tables: a header row and left-aligned columns two
//! spaces apart (what `kubectl get` prints), for every command's text
//! output; `--json` is the machines' form.

/// Left-aligned columns, two spaces apart, with a header row.
pub fn columns(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(head.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_under_their_headers() {
        let t = columns(
            &["VERSION", "ALIASES"],
            &[
                vec!["1".into(), "@champion".into()],
                vec!["12".into(), String::new()],
            ],
        );
        assert_eq!(t, "VERSION  ALIASES\n1        @champion\n12\n");
    }
}
