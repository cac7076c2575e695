//! `greenbelt features ...` as a user runs it, on the fraud demo's
//! definitions (examples/fraud/features.toml): demo data, plan/apply
//! (versioned, idempotent), validate (text and JSON, a broken contract
//! exits non-zero), materialize (idempotent re-run), freshness, canary,
//! historical retrieval, and errors that name the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::{Command, Output};

fn features(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .args([
            "features",
            "-f",
            "features.toml",
            "--url",
            "sqlite://registry.db",
        ])
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = features(dir, args);
    assert!(
        out.status.success(),
        "greenbelt features {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &a)).unwrap()
}

#[test]
fn the_fraud_feature_store_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud/features.toml"),
        d.join("features.toml"),
    )
    .unwrap();
    ok(d, &["demo-data", "--rows", "3000"]);
    assert!(d.join("data/transactions.csv").is_file());

    // plan → apply → plan shows nothing; apply again records nothing new.
    let plan = ok(d, &["plan"]);
    assert!(plan.contains("user_profile"), "{plan}");
    let applied = json(d, &["apply"]);
    assert_eq!(applied["changed"], 7, "{applied}");
    assert!(
        applied["recorded"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["version"] == 1)
    );
    let again = json(d, &["apply"]);
    assert_eq!(again["changed"], 0, "{again}");
    assert_eq!(
        again["recorded"].as_array().map(Vec::len),
        Some(0),
        "{again}"
    );

    // validate: the demo data keeps every contract.
    let report = json(d, &["validate"]);
    assert!(
        report.to_string().contains("user_avg_amount_30d"),
        "{report}"
    );
    ok(d, &["validate"]);

    // materialize, then the same range again: same files, no duplicates.
    let range = [
        "--start",
        "2026-01-01T00:00:00Z",
        "--end",
        "2026-03-15T00:00:00Z",
    ];
    let first = json(d, &[&["materialize"][..], &range[..]].concat());
    let second = json(d, &[&["materialize"][..], &range[..]].concat());
    let rows = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["rows"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(rows(&first), rows(&second));
    assert!(rows(&first).iter().all(|r| *r > 0), "{first}");
    assert!(d.join("data/offline/user_profile").is_dir());

    // Freshness: the demo data is from early 2026, so a view with an SLA is
    // stale now — reported, and the command exits non-zero.
    let out = features(d, &["freshness"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("BREACH user_profile"),
        "{text}"
    );
    let prom = features(d, &["freshness", "--prometheus"]);
    assert!(
        String::from_utf8_lossy(&prom.stdout)
            .contains("greenbelt_feature_view_age_seconds{view=\"user_profile\"}")
    );

    // The canary writes a sentinel through push and reads it back.
    let canary = json(d, &["canary", "--view", "user_last_tx"]);
    assert_eq!(canary[0]["view"], "user_last_tx", "{canary}");
    assert!(canary[0]["lag_ms"].as_f64().unwrap() >= 0.0);

    // Historical: one row per entity row, in order, duplicates kept.
    std::fs::write(
        d.join("rows.csv"),
        "user_id,merchant_id,event_timestamp\nu00001,m0001,2026-02-01T00:00:00Z\nu00001,m0001,2026-02-01T00:00:00Z\nu99999,m0001,2026-02-01T00:00:00Z\n",
    )
    .unwrap();
    let h = json(
        d,
        &[
            "historical",
            "--entities",
            "rows.csv",
            "--service",
            "fraud_model",
            "--out",
            "train.parquet",
        ],
    );
    assert_eq!(h["rows"], 3, "{h}");
    assert!(d.join("train.parquet").is_file());

    // Errors name the fix and exit non-zero.
    let bad = features(
        d,
        &[
            "historical",
            "--entities",
            "rows.csv",
            "--service",
            "nope",
            "--out",
            "x.parquet",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("nope"), "{err}");
    let bad = features(
        d,
        &[
            "materialize",
            "--start",
            "2026-02-01",
            "--end",
            "2026-01-01",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("[start, end)"),
        "{err}"
    );

    // A broken contract: validate fails and says which rule.
    let csv = std::fs::read_to_string(d.join("data/transactions.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    lines[1] = lines[1].replacen(",u", ",BAD", 1);
    std::fs::write(d.join("data/transactions.csv"), lines.join("\n") + "\n").unwrap();
    let bad = features(d, &["validate"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!bad.status.success(), "{text}");
    assert!(text.contains("regex(user_id"), "{text}");
}

/// `features import-feast` on the registry dump of a real Feast repository
/// (fixtures/feast): the written features.toml loads, has the entities,
/// views and service, materializes Feast's own Parquet files, and the
/// command lists what it did not import. A Feast repository directory is
/// dumped with the configured feast program.
#[test]
fn a_feast_registry_dump_becomes_features_toml() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/feast");
    let dump = fixtures.join("registry-dump.json");
    let dump = dump.to_str().unwrap();

    let text = ok(d, &["import-feast", dump]);
    assert!(
        text.contains("2 entities, 2 sources, 2 feature views, 1 feature services"),
        "{text}"
    );
    for skipped in [
        "on-demand feature view \"conv_rate_per_km\"",
        "source \"driver_stats_push\"",
        "feature view \"customer_profile\": feature \"recent_orders\"",
    ] {
        assert!(text.contains(skipped), "{skipped} not listed:\n{text}");
    }
    let written = std::fs::read_to_string(d.join("features.toml")).unwrap();
    assert!(
        written.contains("name = \"driver_hourly_stats\""),
        "{written}"
    );
    assert!(
        written.contains("#   - on-demand feature view"),
        "{written}"
    );

    // It loads: validate reads it (no contracts yet), materialize reads Feast's Parquet.
    assert!(ok(d, &["validate"]).contains("no contracts"));
    let m = json(
        d,
        &[
            "materialize",
            "--start",
            "2026-11-01T00:00:00Z",
            "--end",
            "2026-11-02T00:00:00Z",
        ],
    );
    let rows: Vec<(String, u64)> = m
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["view"].as_str().unwrap().to_string(),
                r["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        rows.contains(&("driver_hourly_stats".to_string(), 4)),
        "{m}"
    );
    assert!(rows.contains(&("customer_profile".to_string(), 2)), "{m}");

    // An existing file is kept unless --force.
    let again = features(d, &["import-feast", dump]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let j = json(
        d,
        &[
            "import-feast",
            dump,
            "--force",
            "--output",
            "sub/imported.toml",
        ],
    );
    assert_eq!(
        j["feature_services"],
        serde_json::json!(["driver_activity"]),
        "{j}"
    );
    assert!(j["skipped"].as_array().unwrap().len() >= 5, "{j}");
    let sub = std::fs::read_to_string(d.join("sub/imported.toml")).unwrap();
    assert!(
        sub.contains("path = \"../"),
        "paths are relative to the output:\n{sub}"
    );

    // A repository directory: the feast program is run (here a stand-in
    // that prints the same dump), or its absence is said plainly.
    let repo = d.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("feature_store.yaml"),
        "project: greenbelt_import\n",
    )
    .unwrap();
    let missing = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(d)
        .env("GREENBELT_FEAST", "no-such-feast-program")
        .args(["features", "import-feast", "repo", "--output", "x.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("`no-such-feast-program` is not on PATH"),
        "{err}"
    );
    let fake = d.join("fake-feast");
    std::fs::write(&fake, format!("#!/bin/sh\n[ \"$1\" = -c ] && [ \"$3\" = registry-dump ] && exec cat '{dump}'\nexit 3\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(d)
        .args([
            "features",
            "import-feast",
            "repo",
            "--output",
            "from-repo.toml",
            "--feast",
        ])
        .arg(&fake)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_repo = std::fs::read_to_string(d.join("from-repo.toml")).unwrap();
    // Relative paths are the repository's: repo/data/... seen from d.
    assert!(
        from_repo.contains("path = \"repo/data/driver_stats.parquet\""),
        "{from_repo}"
    );
}
