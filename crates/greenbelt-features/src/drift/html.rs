//! The report as one self-contained HTML page: inline CSS, an inline SVG
//! chart per column (histograms on shared bins for numeric columns, bars
//! per category, the 20 largest, for categorical ones), no JavaScript and nothing fetched
//! from elsewhere. Every string that comes from the user or the data (paths,
//! column names, categories, messages) goes through [`escape`].

use std::fmt::Write;

use super::text::{number, summary, types, verdict};
use super::{CategoricalStats, ColumnReport, Histogram, Report};

const REFERENCE_COLOUR: &str = "#4e79a7";
const CURRENT_COLOUR: &str = "#f28e2b";
/// Categories drawn (the largest); the rest are summed in a note.
const MAX_BARS: usize = 20;

/// Escape text for HTML and SVG, in element content and in quoted
/// attributes alike.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;padding:0 1em}\
table{border-collapse:collapse;margin:1em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.drift{color:#b00020;font-weight:600}.ok{color:#1b7f3b}\
.skip{color:#777}section{border-top:1px solid #ccc;margin-top:2em}code{background:#f4f4f4;padding:0 .2em}\
svg text{font-size:11px;fill:#333}";

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Drift report</title><style>{STYLE}</style></head><body>\n<h1>Drift report</h1>\n"
    );
    let _ = writeln!(
        h,
        "<p>Reference: <code>{}</code> ({} rows)<br>Current: <code>{}</code> ({} rows)</p>",
        escape(&report.reference.path),
        report.reference.rows,
        escape(&report.current.path),
        report.current.rows
    );
    let _ = writeln!(
        h,
        "<p class=\"{}\">{}</p>",
        if report.dataset_drift { "drift" } else { "ok" },
        escape(&summary(report))
    );
    for (side, cols) in [
        ("reference", &report.only_in_reference),
        ("current", &report.only_in_current),
    ] {
        if !cols.is_empty() {
            let _ = writeln!(
                h,
                "<p>Only in the {side} file (not compared): {}</p>",
                escape(&cols.join(", "))
            );
        }
    }
    h.push_str(&overview(report));
    for (i, c) in report.columns.iter().enumerate() {
        h.push_str(&column_section(i, c));
    }
    let t = &report.thresholds;
    let _ = writeln!(
        h,
        "<section><h2>Verdict rule</h2><p>Numeric test: {:?}; categorical test: {:?}; p-value tests up to {} reference values. Drift when KS p &lt; {}, chi-square p &lt; {}, normed Wasserstein ≥ {}, Jensen–Shannon ≥ {}, PSI ≥ {}; dataset drift when at least {}% of the compared columns drift.</p></section>",
        t.numeric_test,
        t.categorical_test,
        t.small_rows,
        t.ks_pvalue,
        t.chisquare_pvalue,
        t.wasserstein,
        t.jensenshannon,
        t.psi,
        t.drift_share * 100.0
    );
    h.push_str("</body></html>\n");
    h
}

fn class_of(c: &ColumnReport) -> &'static str {
    match (&c.skipped, c.drifted) {
        (Some(_), _) => "skip",
        (None, true) => "drift",
        (None, false) => "ok",
    }
}

fn overview(report: &Report) -> String {
    let mut h = String::from(
        "<table><tr><th>column</th><th>type</th><th>test</th><th>statistic</th><th>p-value</th><th>PSI</th><th>missing ref/cur</th><th>verdict</th></tr>\n",
    );
    for (i, c) in report.columns.iter().enumerate() {
        let psi = c
            .numeric
            .as_ref()
            .map(|n| n.psi)
            .or(c.categorical.as_ref().map(|k| k.psi));
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#col-{i}\">{}</a></td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}/{}</td><td class=\"{}\">{}</td></tr>",
            escape(&c.name),
            escape(&types(c)),
            c.test.map_or("-", |t| t.name()),
            number(c.statistic),
            number(c.pvalue),
            number(psi),
            c.reference.missing,
            c.current.missing,
            class_of(c),
            escape(&verdict(c))
        );
    }
    h.push_str("</table>\n");
    h
}

fn column_section(i: usize, c: &ColumnReport) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<section id=\"col-{i}\"><h2>{} <span class=\"{}\">{}</span></h2>",
        escape(&c.name),
        class_of(c),
        escape(&verdict(c))
    );
    let _ = writeln!(
        h,
        "<p>Type {}; values {} / {}, missing {} / {} (reference / current).</p>",
        escape(&types(c)),
        c.reference.values,
        c.current.values,
        c.reference.missing,
        c.current.missing
    );
    if let Some(n) = &c.numeric {
        let _ = writeln!(
            h,
            "<p>KS D = {} (p = {}, {:?}); PSI = {}; Wasserstein-1 = {} (normed {}); mean {} → {}, std {} → {}.</p>",
            number(Some(n.ks.statistic)),
            number(Some(n.ks.pvalue)),
            n.ks.method,
            number(Some(n.psi)),
            number(Some(n.wasserstein)),
            number(Some(n.wasserstein_norm)),
            number(Some(n.reference_mean)),
            number(Some(n.current_mean)),
            number(Some(n.reference_std)),
            number(Some(n.current_std)),
        );
        h.push_str(&histogram_svg(&n.histogram));
    }
    if let Some(k) = &c.categorical {
        let _ = writeln!(
            h,
            "<p>Chi-square = {} (p = {}, {} degrees of freedom); Jensen–Shannon = {}; PSI = {}; {} categories.</p>",
            number(Some(k.chisquare.statistic)),
            number(Some(k.chisquare.pvalue)),
            k.chisquare.dof,
            number(Some(k.jensenshannon)),
            number(Some(k.psi)),
            k.categories.len()
        );
        h.push_str(&categories_svg(k));
    }
    h.push_str("</section>\n");
    h
}

/// One slot of a bar chart: the two files' shares and a tooltip.
struct Slot {
    label: Option<String>,
    reference: f64,
    current: f64,
    tip: String,
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| {
            if total == 0 {
                0.0
            } else {
                *c as f64 / total as f64
            }
        })
        .collect()
}

fn histogram_svg(hist: &Histogram) -> String {
    let (r, c) = (shares(&hist.reference), shares(&hist.current));
    let slots: Vec<Slot> = r
        .iter()
        .zip(&c)
        .enumerate()
        .map(|(i, (a, b))| {
            let lo = hist.edges.get(i).copied();
            let hi = hist.edges.get(i + 1).copied();
            Slot {
                label: None,
                reference: *a,
                current: *b,
                tip: format!(
                    "[{}, {}]: reference {:.1}%, current {:.1}%",
                    number(lo),
                    number(hi),
                    a * 100.0,
                    b * 100.0
                ),
            }
        })
        .collect();
    let ticks = [
        hist.edges.first().copied(),
        hist.edges.get(hist.edges.len() / 2).copied(),
        hist.edges.last().copied(),
    ]
    .map(number);
    chart(&slots, Some(ticks))
}

fn categories_svg(k: &CategoricalStats) -> String {
    let mut cats: Vec<_> = k.categories.iter().collect();
    cats.sort_by(|a, b| {
        (b.reference + b.current)
            .cmp(&(a.reference + a.current))
            .then_with(|| a.value.cmp(&b.value))
    });
    let (nr, nc): (u64, u64) = (
        cats.iter().map(|c| c.reference).sum(),
        cats.iter().map(|c| c.current).sum(),
    );
    let share = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let slots: Vec<Slot> = cats
        .iter()
        .take(MAX_BARS)
        .map(|c| Slot {
            label: Some(c.value.clone()),
            reference: share(c.reference, nr),
            current: share(c.current, nc),
            tip: format!(
                "{}: reference {} ({:.1}%), current {} ({:.1}%)",
                c.value,
                c.reference,
                share(c.reference, nr) * 100.0,
                c.current,
                share(c.current, nc) * 100.0
            ),
        })
        .collect();
    let mut svg = String::new();
    if cats.len() > MAX_BARS {
        // Summed into one bar they would flatten the others: a note instead.
        let rest = &cats[MAX_BARS..];
        let (a, b): (u64, u64) = (
            rest.iter().map(|c| c.reference).sum(),
            rest.iter().map(|c| c.current).sum(),
        );
        let _ = writeln!(
            svg,
            "<p>{} smaller categories not drawn: {:.1}% of the reference, {:.1}% of the current file.</p>",
            rest.len(),
            share(a, nr) * 100.0,
            share(b, nc) * 100.0
        );
    }
    chart(&slots, None) + &svg
}

/// A label cut to `max` characters (on a character boundary).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// Paired bars (reference, current) per slot, a y axis in percent, a
/// legend; slot labels under the bars (rotated) or three x ticks.
fn chart(slots: &[Slot], ticks: Option<[String; 3]>) -> String {
    let labelled = slots.iter().any(|s| s.label.is_some());
    let (width, left, right, top) = (640.0, 56.0, 8.0, 24.0);
    let bottom = if labelled { 90.0 } else { 24.0 };
    let height = 180.0 + top + bottom;
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max = slots
        .iter()
        .flat_map(|s| [s.reference, s.current])
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let slot_w = plot_w / slots.len().max(1) as f64;
    let bar_w = (slot_w * 0.42).max(0.5);
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">"
    );
    // Axes and the y scale.
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b}\" stroke=\"#999\"/><line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>",
        b = top + plot_h,
        r = width - right
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}%</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0%</text>",
        left - 4.0,
        top + 4.0,
        max * 100.0,
        left - 4.0,
        top + plot_h
    );
    // Legend.
    for (i, (name, colour)) in [("reference", REFERENCE_COLOUR), ("current", CURRENT_COLOUR)]
        .iter()
        .enumerate()
    {
        let x = left + 10.0 + i as f64 * 100.0;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"6\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"15\">{name}</text>",
            x + 14.0
        );
    }
    for (i, slot) in slots.iter().enumerate() {
        let x0 = left + slot_w * i as f64 + slot_w * 0.08;
        for (k, (v, colour)) in [
            (slot.reference, REFERENCE_COLOUR),
            (slot.current, CURRENT_COLOUR),
        ]
        .iter()
        .enumerate()
        {
            let top_y = y(*v);
            let _ = write!(
                s,
                "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{colour}\"><title>{}</title></rect>",
                x0 + bar_w * k as f64,
                top_y,
                bar_w,
                (top + plot_h - top_y).max(0.0),
                escape(&slot.tip)
            );
        }
        if let Some(label) = &slot.label {
            let (lx, ly) = (left + slot_w * (i as f64 + 0.5), top + plot_h + 10.0);
            let _ = write!(
                s,
                "<text x=\"{lx:.2}\" y=\"{ly:.2}\" text-anchor=\"end\" transform=\"rotate(-40 {lx:.2} {ly:.2})\">{}</text>",
                escape(&cut(label, 16))
            );
        }
    }
    if let Some([a, m, z]) = ticks {
        let ty = top + plot_h + 14.0;
        let _ = write!(
            s,
            "<text x=\"{left}\" y=\"{ty}\">{}</text><text x=\"{}\" y=\"{ty}\" text-anchor=\"middle\">{}</text><text x=\"{}\" y=\"{ty}\" text-anchor=\"end\">{}</text>",
            escape(&a),
            left + plot_w / 2.0,
            escape(&m),
            width - right,
            escape(&z)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">O'Brien & co</a>"),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Brien &amp; co&lt;/a&gt;"
        );
    }

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("ééééé", 3), "éé…");
        assert_eq!(cut("abc", 3), "abc");
    }

    #[test]
    fn a_chart_of_no_data_draws_without_dividing_by_zero() {
        let svg = chart(&[], None);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
