//! `greenbelt drift compare` as a user runs it, on small generated files:
//! the text table, the JSON document and the HTML page for Parquet and
//! CSV, the exit codes (0, 3 past --fail-share, 2 on errors) and a missing
//! column named with the file's columns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::{Command, Output};

fn drift(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .args(["drift", "compare"])
        .args(args)
        .output()
        .unwrap()
}

/// `rows` rows of `amount` (float), `items` (int) and `city` (text); the
/// current side is shifted.
fn csv(rows: usize, shifted: bool) -> String {
    let mut s = String::from("amount,items,city\n");
    for i in 0..rows {
        // A deterministic spread: 0..1 in a scrambled order.
        let u = ((i * 7919) % rows) as f64 / rows as f64;
        let amount = if shifted {
            20.0 + 30.0 * u
        } else {
            10.0 + 30.0 * u
        };
        let items = (i * 31) % 7 + usize::from(shifted && i % 2 == 0);
        let cities = ["Oslo", "Lima", "Pune"];
        let city = cities[(i + usize::from(shifted) * (i % 2)) % 3];
        s.push_str(&format!("{amount},{items},{city}\n"));
    }
    s
}

fn to_parquet(dir: &Path, name: &str) {
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::prelude::{CsvReadOptions, SessionContext};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new();
        let df = ctx
            .read_csv(
                dir.join(format!("{name}.csv")).to_str().unwrap(),
                CsvReadOptions::new(),
            )
            .await
            .unwrap();
        df.write_parquet(
            dir.join(format!("{name}.parquet")).to_str().unwrap(),
            DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .unwrap();
    });
}

#[test]
fn drift_compare_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ref.csv"), csv(2000, false)).unwrap();
    std::fs::write(d.join("cur.csv"), csv(1500, true)).unwrap();
    std::fs::write(d.join("same.csv"), csv(1500, false)).unwrap();
    to_parquet(d, "ref");
    to_parquet(d, "cur");

    for ext in ["csv", "parquet"] {
        let (r, c) = (format!("ref.{ext}"), format!("cur.{ext}"));
        // Text: the table's header, a row per column, the summary line.
        let out = drift(d, &["-r", &r, "-c", &c]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let header = text.lines().next().unwrap();
        for h in [
            "column",
            "type",
            "test",
            "statistic",
            "p-value",
            "PSI",
            "verdict",
        ] {
            assert!(header.contains(h), "{header}");
        }
        let amount = text.lines().find(|l| l.starts_with("amount")).unwrap();
        assert!(
            amount.contains("wasserstein") && amount.ends_with("drift"),
            "{text}"
        );
        assert!(text.contains("columns drifted"), "{text}");

        // JSON: the stable document.
        let out = drift(d, &["-r", &r, "-c", &c, "--json"]);
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["format"], 1);
        assert_eq!(report["reference"]["rows"], 2000);
        assert_eq!(report["compared"], 3);
        let cols = report["columns"].as_array().unwrap();
        let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["amount", "items", "city"]);
        assert_eq!(cols[0]["kind"], "numeric");
        assert_eq!(cols[0]["test"], "wasserstein");
        assert_eq!(cols[0]["drifted"], true);
        assert!(cols[0]["numeric"]["ks"]["statistic"].as_f64().unwrap() > 0.3);
        assert_eq!(cols[2]["kind"], "categorical");
        assert_eq!(
            cols[2]["categorical"]["categories"]
                .as_array()
                .unwrap()
                .len(),
            3
        );

        // HTML: self-contained, a chart per column.
        let out = drift(d, &["-r", &r, "-c", &c, "--html", "report.html"]);
        assert!(out.status.success(), "{out:?}");
        let page = std::fs::read_to_string(d.join("report.html")).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(!page.contains("<script"));
        assert!(page.contains("Oslo"));
    }

    // Exit 3 when the drifted share passes --fail-share; 0 below it.
    let out = drift(
        d,
        &["-r", "ref.csv", "-c", "cur.csv", "--fail-share", "0.5"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = drift(d, &["-r", "ref.csv", "-c", "same.csv", "--fail-share", "0"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("0 of 3 columns drifted")
    );

    // A column missing from one file: exit 2, named, with the file's columns.
    let out = drift(
        d,
        &[
            "-r",
            "ref.csv",
            "-c",
            "cur.parquet",
            "--columns",
            "amount,price",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("column \"price\" is not in the reference file ref.csv"),
        "{err}"
    );
    assert!(err.contains("(its columns: amount, items, city)"), "{err}");
}
