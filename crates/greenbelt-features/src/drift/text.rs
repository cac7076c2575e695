//! The report as a text table for a terminal.

use super::{ColumnReport, Report};

/// A statistic for people: 4 decimals, scientific below 0.001, `-` for none.
pub fn number(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x.is_nan() => "-".into(),
        Some(x) if x.is_infinite() => if x > 0.0 { "inf" } else { "-inf" }.into(),
        Some(x) if x != 0.0 && x.abs() < 1e-3 => format!("{x:.2e}"),
        Some(x) => format!("{x:.4}"),
    }
}

/// "Float64", or "Int64/Float64" when the files differ.
pub fn types(c: &ColumnReport) -> String {
    if c.reference_type == c.current_type {
        c.reference_type.clone()
    } else {
        format!("{}/{}", c.reference_type, c.current_type)
    }
}

/// "drift", "ok" or "not compared: why".
pub fn verdict(c: &ColumnReport) -> String {
    match &c.skipped {
        Some(why) => format!("not compared: {why}"),
        None if c.drifted => "drift".into(),
        None => "ok".into(),
    }
}

fn psi_of(c: &ColumnReport) -> Option<f64> {
    c.numeric
        .as_ref()
        .map(|n| n.psi)
        .or(c.categorical.as_ref().map(|k| k.psi))
}

/// The per-column table, then a summary line (and notes on columns only one
/// file has).
pub fn render_text(report: &Report) -> String {
    let header = [
        "column",
        "type",
        "test",
        "statistic",
        "p-value",
        "PSI",
        "missing ref/cur",
        "verdict",
    ];
    let rows: Vec<[String; 8]> = report
        .columns
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                types(c),
                c.test.map_or("-", |t| t.name()).to_string(),
                number(c.statistic),
                number(c.pvalue),
                number(psi_of(c)),
                format!("{}/{}", c.reference.missing, c.current.missing),
                verdict(c),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push('\n');
    out.push_str(&summary(report));
    out.push('\n');
    for (side, cols) in [
        ("reference", &report.only_in_reference),
        ("current", &report.only_in_current),
    ] {
        if !cols.is_empty() {
            out.push_str(&format!(
                "only in the {side} file (not compared): {}\n",
                cols.join(", ")
            ));
        }
    }
    out
}

/// "2 of 25 columns drifted (8.0%); dataset drift: no (at 50% of columns)".
pub fn summary(report: &Report) -> String {
    let skipped = report.columns.len() - report.compared;
    format!(
        "{} of {} columns drifted ({:.1}%); dataset drift: {} (at {}% of columns){}",
        report.drifted,
        report.compared,
        report.share * 100.0,
        if report.dataset_drift { "yes" } else { "no" },
        report.thresholds.drift_share * 100.0,
        if skipped > 0 {
            format!("; {skipped} not compared")
        } else {
            String::new()
        }
    )
}
