//! `drift::compare` on Parquet and CSV files: its streamed statistics equal
//! greenbelt-drift's functions on the same values held in memory, the
//! verdict follows the thresholds, and bad input gets errors that name the
//! column (or file) and the fix. A child-process test checks that a column
//! several times the engine's memory limit is compared in bounded memory.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use greenbelt_drift::{
    bin_of, chisquare, jensenshannon, ks_2samp, psi, quantile_edges, wasserstein_distance,
};
use greenbelt_features::drift::{
    CompareOptions, Kind, NumericTest, Report, Test, compare, html, render_text,
};

use crate::child;
use crate::common::*;

/// splitmix64: deterministic data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One side of a test dataset, as plain vectors.
struct Data {
    /// Continuous, rounded to 2 decimals (ties), with nulls and NaNs.
    x: Vec<Option<f64>>,
    /// Small integers: most values sit on a PSI edge.
    k: Vec<Option<i64>>,
    city: Vec<Option<String>>,
    flag: Vec<Option<bool>>,
}

fn data(rows: usize, seed: u64, shift: f64) -> Data {
    let mut rng = Rng(seed);
    let cities = ["Oslo", "Lima", "Pune", "Kyiv", "Baku", "Nuuk"];
    let mut d = Data {
        x: vec![],
        k: vec![],
        city: vec![],
        flag: vec![],
    };
    for i in 0..rows {
        let x = ((rng.normal() + shift) * 100.0).round() / 100.0;
        d.x.push(match i % 97 {
            0 => None,
            1 if shift > 0.0 => Some(f64::NAN),
            _ => Some(x),
        });
        d.k.push((i % 89 != 0).then(|| (rng.uniform() * (5.0 + shift * 2.0)) as i64));
        // The current side (shift > 0) leans to the later cities and has a
        // sixth one the reference never saw.
        let n = if shift > 0.0 { 6.0 } else { 5.0 };
        let c = ((rng.uniform().powf(1.0 / (1.0 + shift))) * n) as usize;
        d.city
            .push((i % 50 != 7).then(|| cities[c.min(5)].to_string()));
        d.flag.push(Some(rng.uniform() < 0.3 + shift / 10.0));
    }
    d
}

fn write_both(dir: &Path, name: &str, d: &Data) {
    let b = batch(vec![
        ("x", Arc::new(Float64Array::from(d.x.clone())) as ArrayRef),
        ("k", Arc::new(Int64Array::from(d.k.clone()))),
        ("city", Arc::new(StringArray::from(d.city.clone()))),
        ("flag", Arc::new(BooleanArray::from(d.flag.clone()))),
        (
            "at",
            ts_array((0..d.x.len() as i64).map(|i| Some(T0 + i * SEC)).collect()),
        ),
    ]);
    write_parquet(&dir.join(format!("{name}.parquet")), &b);
    // CSV: NaN written as an empty cell (a missing value either way).
    let mut csv = String::from("x,k,city,flag\n");
    for i in 0..d.x.len() {
        let cell = |v: Option<String>| v.unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{},{}\n",
            cell(d.x[i].filter(|x| x.is_finite()).map(|x| x.to_string())),
            cell(d.k[i].map(|k| k.to_string())),
            cell(d.city[i].clone()),
            cell(d.flag[i].map(|f| f.to_string())),
        ));
    }
    std::fs::write(dir.join(format!("{name}.csv")), csv).unwrap();
}

fn finite(v: &[Option<f64>]) -> Vec<f64> {
    v.iter()
        .flatten()
        .copied()
        .filter(|x| x.is_finite())
        .collect()
}

fn run(reference: &Path, current: &Path, opts: &CompareOptions) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(compare(
        reference.to_str().unwrap(),
        current.to_str().unwrap(),
        opts,
    ))
    .unwrap()
}

fn run_err(reference: &Path, current: &Path, opts: &CompareOptions) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(compare(
        reference.to_str().unwrap(),
        current.to_str().unwrap(),
        opts,
    ))
    .unwrap_err()
    .to_string()
}

/// The expected numeric statistics, from greenbelt-drift on sorted vectors.
fn check_numeric(report: &Report, name: &str, r: &[f64], c: &[f64]) {
    let col = report.columns.iter().find(|c| c.name == name).unwrap();
    assert_eq!(col.kind, Kind::Numeric, "{name}");
    let n = col.numeric.as_ref().unwrap();
    assert_eq!(col.reference.values, r.len() as u64, "{name}");
    assert_eq!(col.current.values, c.len() as u64, "{name}");

    let ks = ks_2samp(r, c).unwrap();
    assert_eq!(n.ks.statistic, ks.statistic, "{name}: KS D");
    assert_eq!(n.ks.pvalue, ks.pvalue, "{name}: KS p");
    assert_eq!(n.ks.method, ks.method, "{name}: KS method");

    let mut sorted = r.to_vec();
    sorted.sort_by(f64::total_cmp);
    let edges = quantile_edges(&sorted, 10);
    assert_eq!(n.psi_edges, edges, "{name}: PSI edges");
    let bins = |v: &[f64]| {
        let mut counts = vec![0u64; edges.len() + 1];
        for x in v {
            counts[bin_of(&edges, *x)] += 1;
        }
        counts
    };
    assert_eq!(n.psi_reference, bins(r), "{name}: reference bins");
    assert_eq!(n.psi_current, bins(c), "{name}: current bins");
    let shares = |counts: Vec<u64>, total: usize| -> Vec<f64> {
        counts.iter().map(|k| *k as f64 / total as f64).collect()
    };
    let want_psi = psi(&shares(bins(r), r.len()), &shares(bins(c), c.len())).unwrap();
    assert_eq!(n.psi, want_psi, "{name}: PSI");

    let w = wasserstein_distance(r, c).unwrap();
    assert!(
        (n.wasserstein - w).abs() <= 1e-12 * w.abs().max(1e-300),
        "{name}: W1 {} vs {w}",
        n.wasserstein
    );
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    let std = (r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / r.len() as f64).sqrt();
    assert!((n.reference_std - std).abs() <= 1e-9 * std, "{name}: std");
    assert!((n.wasserstein_norm - w / std.max(0.001)).abs() <= 1e-9 * w / std);
    let hist: u64 = n.histogram.reference.iter().sum();
    assert_eq!(hist, r.len() as u64, "{name}: histogram holds every value");
}

fn check_categorical(report: &Report, name: &str, r: &[Option<String>], c: &[Option<String>]) {
    let col = report.columns.iter().find(|c| c.name == name).unwrap();
    assert_eq!(col.kind, Kind::Categorical, "{name}");
    let k = col.categorical.as_ref().unwrap();
    let mut cats: Vec<&String> = r.iter().chain(c).flatten().collect();
    cats.sort();
    cats.dedup();
    let count = |v: &[Option<String>], cat: &String| {
        v.iter().filter(|x| x.as_ref() == Some(cat)).count() as f64
    };
    let rc: Vec<f64> = cats.iter().map(|cat| count(r, cat)).collect();
    let cc: Vec<f64> = cats.iter().map(|cat| count(c, cat)).collect();
    let (nr, nc): (f64, f64) = (rc.iter().sum(), cc.iter().sum());
    let rs: Vec<f64> = rc.iter().map(|x| x / nr).collect();
    let cs: Vec<f64> = cc.iter().map(|x| x / nc).collect();
    assert_eq!(
        k.chisquare,
        chisquare(&cc, &rs).unwrap(),
        "{name}: chi-square"
    );
    assert_eq!(
        k.jensenshannon,
        jensenshannon(&rc, &cc).unwrap(),
        "{name}: JS"
    );
    assert_eq!(k.psi, psi(&rs, &cs).unwrap(), "{name}: PSI");
    assert_eq!(
        col.reference.missing,
        r.iter().filter(|x| x.is_none()).count() as u64
    );
    assert_eq!(
        col.current.missing,
        c.iter().filter(|x| x.is_none()).count() as u64
    );
}

fn texts<T: ToString>(v: &[Option<T>]) -> Vec<Option<String>> {
    v.iter()
        .map(|x| x.as_ref().map(|x| x.to_string()))
        .collect()
}

fn ints(v: &[Option<i64>]) -> Vec<f64> {
    v.iter().flatten().map(|k| *k as f64).collect()
}

#[test]
fn parquet_and_csv_statistics_equal_greenbelt_drift_on_the_values_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (r, c) = (data(3000, 1, 0.0), data(2500, 2, 0.3));
    write_both(dir.path(), "ref", &r);
    write_both(dir.path(), "cur", &c);
    let opts = CompareOptions {
        chart_bins: 12,
        ..CompareOptions::default()
    };
    for ext in ["parquet", "csv"] {
        let report = run(
            &dir.path().join(format!("ref.{ext}")),
            &dir.path().join(format!("cur.{ext}")),
            &opts,
        );
        check_numeric(&report, "x", &finite(&r.x), &finite(&c.x));
        check_numeric(&report, "k", &ints(&r.k), &ints(&c.k));
        check_categorical(&report, "city", &r.city, &c.city);
        check_categorical(&report, "flag", &texts(&r.flag), &texts(&c.flag));
        let x = report.columns.iter().find(|c| c.name == "x").unwrap();
        // Nulls, and NaNs in the Parquet file (empty cells in the CSV).
        assert_eq!(x.reference.missing, 31, "{ext}");
        assert_eq!(x.current.missing, 52, "{ext}");
        assert_eq!(report.reference.rows, 3000);
        assert_eq!(report.current.rows, 2500);
        // Large data (> 1000 values): the distances decide.
        assert_eq!(x.test, Some(Test::Wasserstein));
        let city = report.columns.iter().find(|c| c.name == "city").unwrap();
        assert_eq!(city.test, Some(Test::JensenShannon));
        assert!(x.drifted && city.drifted, "{}", render_text(&report));
        if ext == "parquet" {
            let at = report.columns.iter().find(|c| c.name == "at").unwrap();
            assert_eq!(at.kind, Kind::Unsupported);
            assert!(at.skipped.as_deref().unwrap().contains("Timestamp"));
            assert_eq!(report.compared, 4);
        }
        assert_eq!(report.share, report.drifted as f64 / report.compared as f64);
    }
}

#[test]
fn small_data_is_judged_by_p_values_and_the_rule_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    write_both(dir.path(), "ref", &data(400, 3, 0.0));
    write_both(dir.path(), "cur", &data(300, 4, 0.0));
    write_both(dir.path(), "far", &data(300, 5, 1.0));
    let (r, same, far) = (
        dir.path().join("ref.parquet"),
        dir.path().join("cur.parquet"),
        dir.path().join("far.parquet"),
    );
    let report = run(&r, &same, &CompareOptions::default());
    let x = report.columns.iter().find(|c| c.name == "x").unwrap();
    assert_eq!(x.test, Some(Test::Ks));
    assert_eq!(x.pvalue, Some(x.numeric.as_ref().unwrap().ks.pvalue));
    assert!(!x.drifted, "same distribution: {}", render_text(&report));
    let city = report.columns.iter().find(|c| c.name == "city").unwrap();
    assert_eq!(city.test, Some(Test::ChiSquare));
    assert!(!report.dataset_drift);

    let report = run(&r, &far, &CompareOptions::default());
    assert!(report.dataset_drift, "{}", render_text(&report));
    assert!(report.exceeds(0.5) && !report.exceeds(1.0));

    // PSI decides when asked, with its own threshold.
    let mut opts = CompareOptions::default();
    opts.thresholds.numeric_test = NumericTest::Psi;
    opts.thresholds.psi = 1e9;
    let report = run(&r, &far, &opts);
    let x = report.columns.iter().find(|c| c.name == "x").unwrap();
    assert_eq!(x.test, Some(Test::Psi));
    assert_eq!(x.statistic, Some(x.numeric.as_ref().unwrap().psi));
    assert!(!x.drifted);
}

#[test]
fn identical_files_have_no_drift() {
    let dir = tempfile::tempdir().unwrap();
    write_both(dir.path(), "ref", &data(2000, 6, 0.0));
    let p = dir.path().join("ref.parquet");
    let report = run(&p, &p, &CompareOptions::default());
    assert_eq!(report.drifted, 0);
    for c in report.columns.iter().filter(|c| c.kind == Kind::Numeric) {
        let n = c.numeric.as_ref().unwrap();
        assert_eq!((n.ks.statistic, n.wasserstein, n.psi), (0.0, 0.0, 0.0));
        assert_eq!(n.ks.pvalue, 1.0);
    }
}

#[test]
fn columns_are_chosen_and_one_file_only_columns_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.csv"),
        "x,y,only_a\n1,a,1\n2,b,2\n3,a,3\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.csv"),
        "x,y,only_b\n1,a,1\n2,a,2\n5,b,3\n",
    )
    .unwrap();
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    let report = run(&a, &b, &CompareOptions::default());
    let names: Vec<&str> = report.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["x", "y"]);
    assert_eq!(report.only_in_reference, ["only_a"]);
    assert_eq!(report.only_in_current, ["only_b"]);
    let text = render_text(&report);
    assert!(
        text.contains("only in the reference file (not compared): only_a"),
        "{text}"
    );

    let opts = CompareOptions {
        columns: Some(vec!["y".into()]),
        ..CompareOptions::default()
    };
    let report = run(&a, &b, &opts);
    assert_eq!(report.columns.len(), 1);
    assert_eq!(report.columns[0].name, "y");
}

#[test]
fn errors_name_the_column_or_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ref.csv"), "amount,city\n1.5,a\n2.5,b\n").unwrap();
    std::fs::write(d.join("cur.csv"), "amount,city\nlots,a\nfew,b\n").unwrap();
    std::fs::write(d.join("other.csv"), "total,town\n1,a\n").unwrap();
    std::fs::write(
        d.join("ragged.csv"),
        "amount,city\n1.5,a\n2.5,b,extra,cells\n",
    )
    .unwrap();
    std::fs::write(d.join("broken.parquet"), b"PAR1 this is not parquet").unwrap();
    let opts = CompareOptions::default();

    let e = run_err(&d.join("ref.csv"), &d.join("cur.csv"), &opts);
    assert!(
        e.contains("column \"amount\" is Float64 in the reference and Utf8 in the current file"),
        "{e}"
    );

    let only = CompareOptions {
        columns: Some(vec!["amount".into(), "price".into()]),
        ..CompareOptions::default()
    };
    let e = run_err(&d.join("ref.csv"), &d.join("ref.csv"), &only);
    assert!(
        e.contains("column \"price\" is not in the reference file"),
        "{e}"
    );
    assert!(e.contains("(its columns: amount, city)"), "{e}");
    assert!(e.contains("--columns"), "{e}");

    let e = run_err(&d.join("ref.csv"), &d.join("other.csv"), &opts);
    assert!(e.contains("no column in common"), "{e}");
    assert!(e.contains("total, town"), "{e}");

    let e = run_err(&d.join("ref.csv"), &d.join("ragged.csv"), &opts);
    assert!(e.contains("ragged.csv"), "{e}");

    let e = run_err(&d.join("broken.parquet"), &d.join("ref.csv"), &opts);
    assert!(e.contains("the reference file"), "{e}");
    assert!(e.contains("broken.parquet"), "{e}");

    let e = run_err(&d.join("missing.parquet"), &d.join("ref.csv"), &opts);
    assert!(
        e.contains("missing.parquet") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn a_column_with_too_many_categories_is_skipped_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..50).map(|i| format!("id{i},{}\n", i % 3)).collect();
    std::fs::write(dir.path().join("a.csv"), format!("id,g\n{rows}")).unwrap();
    let p = dir.path().join("a.csv");
    let opts = CompareOptions {
        max_categories: 10,
        ..CompareOptions::default()
    };
    let report = run(&p, &p, &opts);
    let id = &report.columns[0];
    assert!(
        id.skipped.as_deref().unwrap().contains("--max-categories"),
        "{id:?}"
    );
    assert_eq!(report.compared, 1);
}

#[test]
fn the_html_report_escapes_names_and_draws_each_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.csv"),
        "\"<b>x</b>\",c\n1,\"<script>alert(1)</script>\"\n2,b\n3,b\n",
    )
    .unwrap();
    let p = dir.path().join("a.csv");
    let report = run(&p, &p, &CompareOptions::default());
    let page = html::render(&report);
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<b>x"));
    assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"));
    assert_eq!(page.matches("<svg").count(), 2);
    // Nothing fetched from elsewhere: the only URL is the SVG namespace.
    assert_eq!(page.matches("http").count(), page.matches("<svg").count());
}

/// Rows per file in the bounded-memory test (one f64 and one text column);
/// `GREENBELT_TEST_DRIFT_ROWS` overrides it for exploring by hand.
fn big_rows() -> u64 {
    std::env::var("GREENBELT_TEST_DRIFT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8_000_000)
}
const POOL_MIB: usize = 16;

#[test]
fn a_column_several_times_the_memory_limit_is_compared_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut in_memory = 0u64;
    for (name, seed, shift) in [("ref", 11u64, 0.0), ("cur", 12, 0.2)] {
        let path = dir.path().join(format!("{name}.parquet"));
        let f = std::fs::File::create(&path).unwrap();
        let mut w: Option<datafusion::parquet::arrow::ArrowWriter<std::fs::File>> = None;
        let mut file = Some(f);
        let mut rng = Rng(seed);
        let chunk = 100_000;
        for _ in 0..big_rows() / chunk {
            let xs: Vec<f64> = (0..chunk).map(|_| rng.normal() + shift).collect();
            let cs: Vec<String> = (0..chunk)
                .map(|_| format!("c{}", (rng.uniform() * 8.0) as u32))
                .collect();
            let b = batch(vec![
                ("x", Arc::new(Float64Array::from(xs)) as ArrayRef),
                ("c", Arc::new(StringArray::from(cs))),
            ]);
            let w = w.get_or_insert_with(|| {
                datafusion::parquet::arrow::ArrowWriter::try_new(
                    file.take().unwrap(),
                    b.schema(),
                    None,
                )
                .unwrap()
            });
            in_memory += b.get_array_memory_size() as u64;
            w.write(&b).unwrap();
        }
        w.unwrap().close().unwrap();
    }
    let out = child::run(
        "drift::bounded_memory_child",
        &[
            ("GREENBELT_TEST_DRIFT_DIR", dir.path().display().to_string()),
            ("MALLOC_MMAP_THRESHOLD_", (1024 * 1024).to_string()),
        ],
    );
    let line = out
        .lines()
        .find_map(|l| l.find("MEMORY ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no MEMORY line in:\n{out}"));
    eprintln!("{line}");
    let peak: u64 = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("peak_rss_kib="))
        .unwrap()
        .parse()
        .unwrap();
    // Measured (debug build, 2 cores): ~83 MiB at 1M rows per file, ~104
    // MiB at 6M and at 8M (the default here, ~240 MiB of Arrow data): the
    // sorts spill past the 16 MiB pool and the peak does not grow with
    // the files.
    let bound_mib = 150;
    eprintln!("the two files hold {} MiB in memory", in_memory >> 20);
    assert!(
        bound_mib << 20 < in_memory,
        "the bound must be below the data's size for the test to mean anything"
    );
    assert!(peak < bound_mib * 1024, "peak RSS {} MiB", peak / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the bounded-memory test in a child process"]
async fn bounded_memory_child() {
    if !child::in_child() {
        return;
    }
    let dir = std::path::PathBuf::from(std::env::var("GREENBELT_TEST_DRIFT_DIR").unwrap());
    let mut opts = CompareOptions::default();
    opts.engine.memory_limit = POOL_MIB * 1024 * 1024;
    opts.engine.target_partitions = 2;
    opts.parallel_columns = 2;
    let report = compare(
        dir.join("ref.parquet").to_str().unwrap(),
        dir.join("cur.parquet").to_str().unwrap(),
        &opts,
    )
    .await
    .unwrap();
    let x = &report.columns[0];
    assert_eq!(x.reference.values, big_rows());
    assert!(x.drifted);
    println!(
        "MEMORY peak_rss_kib={} rows={} ks={}",
        child::peak_rss_kib(),
        report.reference.rows,
        x.numeric.as_ref().unwrap().ks.statistic
    );
}
