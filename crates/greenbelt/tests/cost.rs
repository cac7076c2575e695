//! Cost accounting end to end, against a live `greenbelt serve` under load
//! from `greenbelt bench` (a separate process, so the server's CPU is its
//! own):
//!
//! - reconciliation: the CPU-seconds the ledger attributes to versions plus
//!   the overhead it reports equal the process CPU the kernel accounts
//!   (`/proc/<pid>/stat` utime + stime, what `getrusage` reports) within
//!   5%, and a version is never charged more CPU than its model calls
//!   took wall time;
//! - `/metrics` has `greenbelt_cost_dollars_total` per model, version,
//!   deployment and resource, and the predictions counter;
//! - `greenbelt cost report` (text and `--json`, `--since`, `--by`);
//! - a `[[budget]]` that the load overspends pages on `/admin/alerts`
//!   with a forecast past its amount, one that it does not stays quiet;
//! - `greenbelt cost compare` over the two bench runs' JSON;
//! - what the stores hold (registry artifacts by version, offline files
//!   and online keys by feature view) equals what is on disk and what
//!   materialize wrote, and is priced on `/metrics` and in the report.
//!
//! And, without a server, the budget rules `greenbelt slo rules` writes
//! pass `promtool check rules` and `promtool test rules` (skips, saying so,
//! without promtool).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{Kill, free_port};

const GB: &str = env!("CARGO_BIN_EXE_greenbelt");

fn greenbelt(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(GB)
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// utime + stime of a process, seconds (the kernel's CPU account).
fn kernel_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // field N is f[N - 3]; utime 14, stime 15, in USER_HZ (100) ticks
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The value of the first exposition line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn project(d: &Path, http_port: u16) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    for (name, fixture) in [("fraud", "logreg"), ("ranker", "forest")] {
        std::fs::create_dir_all(d.join(format!("models/{name}/1"))).unwrap();
        std::fs::copy(
            fixtures.join(format!("{fixture}/1/model.onnx")),
            d.join(format!("models/{name}/1/model.onnx")),
        )
        .unwrap();
    }
    std::fs::write(
        d.join("greenbelt.toml"),
        format!(
            r#"[server]
http_addr = "127.0.0.1:{http_port}"
grpc_addr = ""
[telemetry]
log_requests = false
[repository]
path = "models"
[cost]
interval = "200ms"
egress_class = "zone"
provisioned_cores = 2

# fraud overspends: $0.0001 a month is gone in the first second
[[budget]]
deployment = "fraud"
amount = 0.0001
period = "30d"

[[budget]]
deployment = "ranker"
amount = 1000000
period = "30d"
"#
        ),
    )
    .unwrap();
}

async fn wait_ready(c: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if c.get(format!("{base}/v2/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("greenbelt did not become ready");
}

/// `greenbelt serve` on the project in `d`, ready: the process, its base
/// URL and a client.
async fn serve(d: &Path, port: u16) -> (Kill, String, reqwest::Client) {
    let server = Kill(
        Command::new(GB)
            .current_dir(d)
            .env("GREENBELT_LOG", "warn")
            .args(["serve", "--config", "greenbelt.toml"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_ready(&c, &base).await;
    (server, base, c)
}

fn bench(d: &Path, base: &str, model: &str) -> Value {
    let (ok, out, err) = greenbelt(
        d,
        &[
            "bench",
            "--url",
            base,
            "--model",
            model,
            "--concurrency",
            "8",
            "--duration",
            "3",
            "--json",
            "--label",
            model,
        ],
    );
    assert!(ok, "bench {model} failed: {err}");
    std::fs::write(d.join(format!("{model}.json")), &out).unwrap();
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_server_under_load_accounts_for_its_cost() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    project(d, port);
    let (server, base, c) = serve(d, port).await;
    let pid = server.0.id();

    let fraud = bench(d, &base, "fraud");
    let ranker = bench(d, &base, "ranker");
    for run in [&fraud, &ranker] {
        assert!(run["requests"].as_u64().unwrap() > 100, "{run}");
        let cost = &run["cost"];
        // The ledger is read while the load runs (after the warm-up), so the
        // requests in flight at that moment fall on either side of it: the
        // two counts agree to within the connections, not exactly.
        let in_flight = 2 * run["concurrency"].as_u64().unwrap();
        assert!(
            cost["usage"]["predictions"].as_u64().unwrap() + in_flight
                >= run["requests"].as_u64().unwrap(),
            "{run}"
        );
        assert!(
            cost["usage"]["compute_cpu_seconds"].as_f64().unwrap() > 0.0,
            "{run}"
        );
        assert!(
            cost["process"]["cpu_seconds"].as_f64().unwrap() > 0.0,
            "{run}"
        );
    }
    // let the ledger's task record and evaluate the budgets after the load
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Reconciliation.
    let view: Value = c
        .get(format!("{base}/admin/cost"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kernel = kernel_cpu_seconds(pid);
    let s = &view["snapshot"];
    let rows = s["rows"].as_array().unwrap();
    let attributed: f64 = rows
        .iter()
        .map(|r| {
            r["usage"]["compute_cpu_seconds"].as_f64().unwrap()
                + r["usage"]["request_cpu_seconds"].as_f64().unwrap()
        })
        .sum();
    let overhead = s["unattributed"]["overhead_cpu_seconds"].as_f64().unwrap();
    let process = s["process"]["cpu_seconds"].as_f64().unwrap();
    eprintln!(
        "attributed {attributed:.3} s + overhead {overhead:.3} s = {:.3} s; ledger's process CPU {process:.3} s; kernel {kernel:.3} s",
        attributed + overhead
    );
    assert!(kernel > 1.0, "too little load to reconcile: {kernel} s");
    assert!(
        ((attributed + overhead) - kernel).abs() <= 0.05 * kernel,
        "attributed {attributed} + overhead {overhead} vs the kernel's {kernel}"
    );
    assert!(
        attributed <= process,
        "more CPU attributed than the process used"
    );
    assert!(
        attributed >= 0.1 * process,
        "the model calls and codecs were attributed too little of the process's CPU: {attributed} of {process}"
    );
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, row) in ["fraud", "ranker"]
        .iter()
        .map(|n| (n, rows.iter().find(|r| r["deployment"] == *n).unwrap()))
    {
        let u = &row["usage"];
        let cpu = u["compute_cpu_seconds"].as_f64().unwrap();
        let wall = metric(
            &metrics,
            &format!("greenbelt_compute_duration_seconds_sum{{model=\"{name}\",version=\"1\"}}"),
        )
        .unwrap();
        assert!(
            cpu > 0.0 && cpu <= wall * 1.05 + 0.01,
            "{name}: compute CPU {cpu} s vs its calls' wall time {wall} s"
        );
        assert!(u["request_cpu_seconds"].as_f64().unwrap() > 0.0, "{row}");
        assert!(u["egress_bytes"].as_f64().unwrap() > 0.0, "{row}");
        assert!(u["memory_gib_hours"].as_f64().unwrap() > 0.0, "{row}");
        for resource in ["compute_cpu", "request_cpu", "memory", "storage", "egress"] {
            let line = format!(
                "greenbelt_cost_dollars_total{{model=\"{name}\",version=\"1\",deployment=\"{name}\",resource=\"{resource}\"}}"
            );
            assert!(
                metric(&metrics, &line).is_some_and(|v| v > 0.0),
                "{line} missing or zero"
            );
        }
        let predictions = metric(
            &metrics,
            &format!(
                "greenbelt_predictions_total{{model=\"{name}\",version=\"1\",deployment=\"{name}\"}}"
            ),
        )
        .unwrap();
        assert!(predictions >= u["predictions"].as_f64().unwrap());
    }
    assert!(
        metric(
            &metrics,
            "greenbelt_cost_dollars_total{model=\"_overhead\",version=\"\",deployment=\"\",resource=\"cpu\"}"
        )
        .is_some_and(|v| v > 0.0),
        "no overhead line"
    );
    assert!(
        metrics.contains("greenbelt_cost_dollars_total{model=\"_idle\""),
        "provisioned_cores is set: the idle line is reported"
    );

    // The report, as people and machines read it.
    let (ok, text, err) = greenbelt(d, &["cost", "report", "--url", &base]);
    assert!(ok, "{err}");
    eprintln!("{text}");
    for needle in [
        "MODEL",
        "$ PER 1M",
        "fraud",
        "ranker",
        "_overhead",
        "top cost drivers",
        "fraud-budget",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let (ok, json, err) = greenbelt(
        d,
        &[
            "cost", "report", "--url", &base, "--by", "resource", "--json",
        ],
    );
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&json).unwrap();
    let groups = r["report"]["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["key"] == "compute_cpu"), "{json}");
    let share: f64 = groups.iter().map(|g| g["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}");
    let total = r["report"]["total_dollars"].as_f64().unwrap();
    assert!(r["report"]["dollars_per_million"].as_f64().unwrap() > 0.0);
    // a window of the last second holds less than everything since start
    let (ok, json, err) = greenbelt(
        d,
        &["cost", "report", "--url", &base, "--since", "1s", "--json"],
    );
    assert!(ok, "{err}");
    let recent: Value = serde_json::from_str(&json).unwrap();
    assert!(recent["report"]["total_dollars"].as_f64().unwrap() < total);
    assert!(recent["report"]["window_seconds"].as_f64().unwrap() < 2.0);
    let (ok, _, err) = greenbelt(d, &["cost", "report", "--url", &base, "--by", "colour"]);
    assert!(!ok && err.contains("expected model"), "{err}");
    let bad = c
        .get(format!("{base}/admin/cost?since=soon"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Budgets on the in-process evaluator.
    let alerts: Value = c
        .get(format!("{base}/admin/alerts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let budget = |name: &str| {
        alerts["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["budget"] == name)
            .unwrap()
            .clone()
    };
    let fraud_budget = budget("fraud-budget");
    assert_eq!(
        fraud_budget["alerts"][0]["alertname"],
        "GreenbeltBudgetBurnPage"
    );
    assert_eq!(
        fraud_budget["alerts"][0]["state"], "firing",
        "{fraud_budget}"
    );
    assert!(fraud_budget["forecast"]["forecast_ratio"].as_f64().unwrap() > 1.0);
    let ranker_budget = budget("ranker-budget");
    assert!(
        ranker_budget["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["state"] == "inactive"),
        "{ranker_budget}"
    );

    // The two runs compared ($ per 1M predictions, the saving by line).
    let (ok, text, err) = greenbelt(d, &["cost", "compare", "ranker.json", "fraud.json"]);
    assert!(ok, "{err}");
    eprintln!("{text}");
    assert!(
        text.contains("$ per 1M predictions") && text.contains("compute_cpu"),
        "{text}"
    );
    let (ok, json, err) = greenbelt(
        d,
        &["cost", "compare", "ranker.json", "fraud.json", "--json"],
    );
    assert!(ok, "{err}");
    let cmp: Value = serde_json::from_str(&json).unwrap();
    let c = &cmp["comparison"];
    let lines: f64 = c["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["saving"].as_f64().unwrap())
        .sum();
    assert!((lines - c["saving"].as_f64().unwrap()).abs() < 1e-9);
    assert!(c["before"].as_f64().unwrap() > 0.0 && c["after"].as_f64().unwrap() > 0.0);
    let (ok, _, err) = greenbelt(d, &["cost", "compare", "greenbelt.toml", "fraud.json"]);
    assert!(
        !ok && err.contains("not a `greenbelt bench --json` report"),
        "{err}"
    );
}

fn promtool() -> bool {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIP: promtool not found (apt-get install prometheus); the budget rules were not checked"
        );
    }
    ok
}

#[test]
fn budget_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // $720 per 30 days: $1 an hour is on pace.
    std::fs::write(
        d.join("greenbelt.toml"),
        "[[budget]]\ndeployment = \"fraud\"\namount = 720\n\n[[budget]]\nmodel = \"ranker\"\namount = 720\nname = \"ranking\"\n",
    )
    .unwrap();
    let (ok, _, err) = greenbelt(
        d,
        &[
            "slo",
            "rules",
            "--config",
            "greenbelt.toml",
            "--out",
            "rules.yml",
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("2 budgets"), "{err}");
    let rules = std::fs::read_to_string(d.join("rules.yml")).unwrap();
    assert!(rules.contains("alert: GreenbeltBudgetBurnPage"));
    if !promtool() {
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new("promtool")
            .current_dir(d)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    assert!(run(&["check", "rules", "rules.yml"]).contains("SUCCESS"));
    // Per minute for 26 hours: fraud spends $0.5 (30x: pages), ranker's
    // model $0.06 (3.6x: a ticket once a day is seen, no page) split over
    // two deployments; a third, unbudgeted deployment spends a lot and
    // alerts nothing.
    let series = |labels: &str, per_minute: f64| {
        format!(
            "      - series: 'greenbelt_cost_dollars_total{{{labels}}}'\n        values: '0+{per_minute}x1560'\n"
        )
    };
    let mut t = String::from(
        "rule_files:\n  - rules.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    t.push_str(&series(
        "model=\"fraud\",version=\"1\",deployment=\"fraud\",resource=\"compute_cpu\"",
        0.4,
    ));
    t.push_str(&series(
        "model=\"fraud\",version=\"1\",deployment=\"fraud\",resource=\"memory\"",
        0.1,
    ));
    t.push_str(&series(
        "model=\"ranker\",version=\"3\",deployment=\"rank-a\",resource=\"compute_cpu\"",
        0.03,
    ));
    t.push_str(&series(
        "model=\"ranker\",version=\"3\",deployment=\"rank-b\",resource=\"compute_cpu\"",
        0.03,
    ));
    t.push_str(&series(
        "model=\"other\",version=\"1\",deployment=\"other\",resource=\"compute_cpu\"",
        50.0,
    ));
    let summary = |label: &str, value: &str| {
        format!("{label} {value}: spending faster than its budget of $720 per 30d allows")
    };
    t.push_str("    alert_rule_test:\n");
    t.push_str(&format!(
        "      - eval_time: 1500m\n        alertname: GreenbeltBudgetBurnPage\n        exp_alerts:\n          - exp_labels: {{severity: page, budget: fraud-budget, deployment: fraud}}\n            exp_annotations: {{summary: '{}', runbook_url: 'docs/runbooks/cost-budget.md'}}\n",
        summary("deployment", "fraud")
    ));
    t.push_str(&format!(
        "      - eval_time: 1500m\n        alertname: GreenbeltBudgetBurnTicket\n        exp_alerts:\n          - exp_labels: {{severity: ticket, budget: fraud-budget, deployment: fraud}}\n            exp_annotations: {{summary: '{}', runbook_url: 'docs/runbooks/cost-budget.md'}}\n          - exp_labels: {{severity: ticket, budget: ranking, model: ranker}}\n            exp_annotations: {{summary: '{}', runbook_url: 'docs/runbooks/cost-budget.md'}}\n",
        summary("deployment", "fraud"),
        summary("model", "ranker")
    ));
    std::fs::write(d.join("rules_test.yml"), &t).unwrap();
    let tested = run(&["test", "rules", "rules_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}\n{t}");
}

/// What the stores hold, end to end: the fraud demo's feature store
/// materialized (offline files and online keys by view), three registered
/// versions of which two share an artifact, and a server that scans them
/// every 200 ms. The ledger's holdings equal what is on disk (bytes, files)
/// and what materialize wrote (keys), are priced as storage on `/metrics`
/// and in `greenbelt cost report`, and a model's registry artifacts are
/// part of its cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_stores_hold_is_measured_and_priced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::copy(
        root.join("examples/fraud/features.toml"),
        d.join("features.toml"),
    )
    .unwrap();
    let port = free_port();
    std::fs::create_dir_all(d.join("models/fraud/1")).unwrap();
    let logreg = root.join("fixtures/models/logreg/1/model.onnx");
    let forest = root.join("fixtures/models/forest/1/model.onnx");
    std::fs::copy(&logreg, d.join("models/fraud/1/model.onnx")).unwrap();
    std::fs::write(
        d.join("greenbelt.toml"),
        format!(
            "[server]\nhttp_addr = \"127.0.0.1:{port}\"\ngrpc_addr = \"\"\n[telemetry]\nlog_requests = false\n\
             [repository]\npath = \"models\"\n[registry]\nurl = \"sqlite://registry.db\"\nartifacts = \"artifacts\"\n\
             [features]\ndefinitions = \"features.toml\"\n[cost]\nstorage_interval = \"200ms\"\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = greenbelt(d, args);
        assert!(ok, "greenbelt {args:?}: {err}");
        out
    };
    run(&[
        "features",
        "-f",
        "features.toml",
        "demo-data",
        "--rows",
        "3000",
    ]);
    let materialized: Value = serde_json::from_str(&run(&[
        "features",
        "-f",
        "features.toml",
        "--json",
        "materialize",
        "--start",
        "2026-01-01T00:00:00Z",
        "--end",
        "2026-03-15T00:00:00Z",
    ]))
    .unwrap();
    for f in [&logreg, &forest, &logreg] {
        run(&[
            "registry",
            "register",
            "fraud",
            "--file",
            f.to_str().unwrap(),
        ]);
    }

    let child = Command::new(GB)
        .current_dir(d)
        .env("GREENBELT_LOG", "warn")
        .args(["serve", "--config", "greenbelt.toml"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serving = Kill(child);
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&c, &base).await;

    // Wait for a scan of every store to have landed.
    let mut rows = Vec::new();
    for _ in 0..100 {
        let v: Value = c
            .get(format!("{base}/admin/cost"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        rows = v["snapshot"]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let stores: std::collections::BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| r["held"]["store"].as_str())
            .collect();
        if stores.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = |store: &str, model: &str, version: &str| -> Value {
        rows.iter()
            .find(|r| r["held"]["store"] == store && r["model"] == model && r["version"] == version)
            .map(|r| r["held"].clone())
            .unwrap_or_else(|| panic!("no {store} holding {model}/{version} in {rows:?}"))
    };

    // Registry: v1 and v2 by their artifact's size; v3 shares v1's bytes,
    // which count once.
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    assert_eq!(held("registry", "fraud", "1")["bytes"], size(&logreg));
    assert_eq!(held("registry", "fraud", "2")["bytes"], size(&forest));
    assert!(
        !rows
            .iter()
            .any(|r| r["held"]["store"] == "registry" && r["version"] == "3"),
        "{rows:?}"
    );
    // Offline: every file under the view's directory.
    for view in materialized.as_array().unwrap() {
        let name = view["view"].as_str().unwrap();
        let (mut bytes, mut files) = (0.0, 0u64);
        let mut stack = vec![d.join("data/offline").join(name)];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    bytes += e.metadata().unwrap().len() as f64;
                    files += 1;
                }
            }
        }
        let h = held("offline", "_features", name);
        assert_eq!(
            (h["bytes"].as_f64(), h["items"].as_u64()),
            (Some(bytes), Some(files)),
            "{name}"
        );
        // Online: a key per entity; materialize counts the keys it wrote
        // (a key written once from an older row and once from a newer one
        // is one key), so the store holds at least as many.
        let keys = view["online_keys_written"].as_u64().unwrap();
        if keys > 0 {
            let h = held("online", "_features", name);
            let items = h["items"].as_u64().unwrap();
            assert!(
                items >= keys && items <= view["rows"].as_u64().unwrap(),
                "{name}: {h}"
            );
            assert!(h["bytes"].as_f64().unwrap() > keys as f64, "{name}: {h}");
            assert_eq!(h["in_memory"], false, "redb is on disk");
        }
    }

    // On /metrics: the gauges, and dollars of storage by store.
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "greenbelt_store_bytes{store=\"registry\",model=\"fraud\",version=\"2\"}"
        ),
        Some(size(&forest)),
        "{metrics}"
    );
    for deployment in ["_registry", "_offline_store", "_online_store"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("greenbelt_cost_dollars_total{")
                    && l.contains(&format!("deployment=\"{deployment}\""))
                    && l.contains("resource=\"storage\"")),
            "{deployment} storage dollars missing:\n{metrics}"
        );
    }

    // The report: by deployment the stores are lines of their own; the
    // text lists what they hold.
    let (ok, json, err) = greenbelt(
        d,
        &[
            "cost",
            "report",
            "--url",
            &base,
            "--by",
            "deployment",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&json).unwrap();
    let keys: Vec<&str> = r["report"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["key"].as_str())
        .collect();
    for k in ["_registry", "_offline_store", "_online_store", "fraud"] {
        assert!(keys.contains(&k), "{k} not in {keys:?}");
    }
    let (ok, text, err) = greenbelt(d, &["cost", "report", "--url", &base]);
    assert!(ok, "{err}");
    assert!(text.contains("held by the stores"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("offline") && l.contains("user_profile")),
        "{text}"
    );
}

/// `greenbelt bench --input-file`: the requests of a file are sent in
/// turn (a 1-row and a 3-row request: the server predicts about two rows
/// a request, which neither request alone would give), and a bad file or
/// a conflicting flag is an error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_sends_the_requests_of_a_file_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    project(d, port);
    let (_server, base, _) = serve(d, port).await;
    let row: Vec<f32> = (0..20).map(|i| i as f32 / 10.0 - 1.0).collect();
    let body = |rows: usize| {
        serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 20],
            "data": row.repeat(rows)}]})
        .to_string()
    };
    std::fs::write(
        d.join("requests.jsonl"),
        format!("{}\n{}\n", body(1), body(3)),
    )
    .unwrap();
    let (ok, out, err) = greenbelt(
        d,
        &[
            "bench",
            "--url",
            &base,
            "--model",
            "fraud",
            "--input-file",
            "requests.jsonl",
            "--concurrency",
            "2",
            "--duration",
            "2",
            "--json",
        ],
    );
    assert!(ok, "bench --input-file failed: {err}");
    let run: Value = serde_json::from_str(out.trim()).unwrap();
    let requests = run["requests"].as_f64().unwrap();
    let predictions = run["cost"]["usage"]["predictions"].as_f64().unwrap();
    assert!(requests > 50.0 && run["errors"] == 0, "{run}");
    assert_eq!(run["rows"], 1, "rows of the file's first request: {run}");
    assert!(
        (1.6 * requests..=2.4 * requests).contains(&predictions),
        "{predictions} rows predicted over {requests} requests: the two requests did not alternate"
    );

    let (ok, _, err) = greenbelt(
        d,
        &[
            "bench",
            "--url",
            &base,
            "--model",
            "fraud",
            "--input-file",
            "missing.jsonl",
        ],
    );
    assert!(!ok && err.contains("missing.jsonl"), "{err}");
    std::fs::write(
        d.join("bad.jsonl"),
        format!("{}\n{{\"inputs\": 3}}\n", body(1)),
    )
    .unwrap();
    let (ok, _, err) = greenbelt(
        d,
        &[
            "bench",
            "--url",
            &base,
            "--model",
            "fraud",
            "--input-file",
            "bad.jsonl",
        ],
    );
    assert!(
        !ok && err.contains("request 2") && err.contains("\"inputs\" must be"),
        "{err}"
    );
    let (ok, _, err) = greenbelt(
        d,
        &[
            "bench",
            "--url",
            &base,
            "--model",
            "fraud",
            "--input-file",
            "requests.jsonl",
            "--rows",
            "4",
        ],
    );
    assert!(!ok && err.contains("--rows"), "{err}");
}
