//! `greenbelt slo rules` checked by Prometheus' own tools: `promtool check
//! rules` accepts the file, and `promtool test rules` drives synthetic
//! series through it: a fast burn pages, a slow one opens a ticket, a
//! healthy deployment and one that recovered stay quiet, and the
//! operational alerts fire on what they watch.
//!
//! Needs `promtool` (Debian's `prometheus` package; `.ci/run` installs it).
//! Without it the test says so and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::Command;

use greenbelt_serve::slo::{SloConfig, SloKind, runbook};

const CONFIG: &str = r#"
[[slo]]
deployment = "fraud"
kind = "availability"
objective = 0.999

[[slo]]
deployment = "fraud"
kind = "latency"
objective = 0.99
threshold_ms = 51.2

[[slo]]
deployment = "ranker"
kind = "availability"
objective = 0.999
"#;

const RUNBOOKS: &str = "https://runbooks.example/greenbelt";

fn promtool() -> Option<&'static str> {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIP: promtool not found (apt-get install prometheus); the generated rules were not checked"
        );
    }
    ok.then_some("promtool")
}

fn slo(deployment: &str, kind: SloKind, objective: f64, threshold_ms: Option<f64>) -> SloConfig {
    SloConfig {
        deployment: deployment.into(),
        kind,
        objective,
        window: "30d".into(),
        threshold_ms,
        name: None,
    }
}

/// The labels and annotations one burn-rate alert fires with.
fn burn_alert(s: &SloConfig, severity: &str, alert: &str) -> String {
    format!(
        "          - exp_labels: {{severity: {severity}, slo: {}, deployment: {}}}\n            exp_annotations: {{summary: '{}', runbook_url: '{}'}}\n",
        s.name(),
        s.deployment,
        s.burn_summary(),
        runbook(RUNBOOKS, alert)
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn generated_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("greenbelt.toml"), CONFIG).unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(d)
        .env("GREENBELT_LOG", "warn")
        .args([
            "slo",
            "rules",
            "--config",
            "greenbelt.toml",
            "--out",
            "rules.yml",
            "--runbook-url-base",
            RUNBOOKS,
        ]));
    let rules = std::fs::read_to_string(d.join("rules.yml")).unwrap();
    assert!(rules.contains("alert: GreenbeltSLOBurnRatePage"));
    let Some(promtool) = promtool() else { return };
    let checked = run(Command::new(promtool)
        .current_dir(d)
        .args(["check", "rules", "rules.yml"]));
    assert!(checked.contains("SUCCESS"), "{checked}");
    // The hand-written release and breaker alerts shipped in deploy/ too.
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/alerts.yml");
    let checked = run(Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&shipped));
    assert!(checked.contains("SUCCESS"), "{checked}");

    let fraud = slo("fraud", SloKind::Availability, 0.999, None);
    let fraud_latency = slo("fraud", SloKind::Latency, 0.99, Some(51.2));
    let series = |name: &str, values: &str| {
        format!("      - series: '{name}'\n        values: '{values}'\n")
    };
    let req = |model: &str, outcome: &str| {
        format!(
            "greenbelt_requests_total{{model=\"{model}\",version=\"1\",protocol=\"rest\",outcome=\"{outcome}\"}}"
        )
    };
    let mut t = String::from("rule_files:\n  - rules.yml\nevaluation_interval: 1m\ntests:\n");
    // 1. fraud: 10% server errors for 80 minutes (100x the 0.1% budget),
    //    10% of requests slower than 51.2 ms (10x the 1% budget);
    //    ranker: 0.05% errors (half its budget).
    t.push_str("  - interval: 1m\n    input_series:\n");
    t.push_str(&series(&req("fraud", "success"), "0+900x80"));
    t.push_str(&series(&req("fraud", "server_error"), "0+100x80"));
    t.push_str(&series(
        "greenbelt_request_duration_seconds_bucket{model=\"fraud\",version=\"1\",le=\"0.0512\"}",
        "0+900x80",
    ));
    t.push_str(&series(
        "greenbelt_request_duration_seconds_count{model=\"fraud\",version=\"1\"}",
        "0+1000x80",
    ));
    t.push_str(&series(&req("ranker", "success"), "0+19990x80"));
    t.push_str(&series(&req("ranker", "server_error"), "0+10x80"));
    t.push_str("    alert_rule_test:\n");
    t.push_str("      - eval_time: 70m\n        alertname: GreenbeltSLOBurnRatePage\n        exp_alerts:\n");
    t.push_str(&burn_alert(&fraud, "page", "GreenbeltSLOBurnRatePage"));
    t.push_str(&burn_alert(
        &fraud_latency,
        "page",
        "GreenbeltSLOBurnRatePage",
    ));
    t.push_str("      - eval_time: 70m\n        alertname: GreenbeltSLOBurnRateTicket\n        exp_alerts:\n");
    t.push_str(&burn_alert(&fraud, "ticket", "GreenbeltSLOBurnRateTicket"));
    t.push_str(&burn_alert(
        &fraud_latency,
        "ticket",
        "GreenbeltSLOBurnRateTicket",
    ));
    // 2. fraud recovered: errors for 60 minutes, then none for 30. The 5m
    //    window is clean, so the page resolves although the hour is not.
    t.push_str("  - interval: 1m\n    input_series:\n");
    t.push_str(&series(&req("fraud", "success"), "0+900x90"));
    t.push_str(&series(&req("fraud", "server_error"), "0+100x60 6000x30"));
    t.push_str("    alert_rule_test:\n");
    t.push_str("      - eval_time: 50m\n        alertname: GreenbeltSLOBurnRatePage\n        exp_alerts:\n");
    t.push_str(&burn_alert(&fraud, "page", "GreenbeltSLOBurnRatePage"));
    t.push_str("      - eval_time: 90m\n        alertname: GreenbeltSLOBurnRatePage\n        exp_alerts: []\n");
    // 3. operations: shedding above 1% for 5 minutes, a failed model load.
    t.push_str("  - interval: 1m\n    input_series:\n");
    t.push_str(&series(&req("fraud", "success"), "0+1000x20"));
    t.push_str(&series(
        "greenbelt_shed_total{reason=\"inflight\"}",
        "0+50x20",
    ));
    t.push_str(&series(
        "greenbelt_model_load_failures_total{model=\"fraud\"}",
        "0 0 0 1 1 1 1 1 1 1",
    ));
    t.push_str("    alert_rule_test:\n");
    t.push_str(&format!(
        "      - eval_time: 15m\n        alertname: GreenbeltShedding\n        exp_alerts:\n          - exp_labels: {{severity: page}}\n            exp_annotations: {{summary: 'More than 1% of requests are shed', runbook_url: '{}'}}\n",
        runbook(RUNBOOKS, "GreenbeltShedding")
    ));
    t.push_str(&format!(
        "      - eval_time: 6m\n        alertname: GreenbeltModelLoadFailed\n        exp_alerts:\n          - exp_labels: {{severity: ticket, model: fraud}}\n            exp_annotations: {{summary: 'A model version failed to load', runbook_url: '{}'}}\n",
        runbook(RUNBOOKS, "GreenbeltModelLoadFailed")
    ));
    t.push_str("      - eval_time: 15m\n        alertname: GreenbeltCanaryFailed\n        exp_alerts: []\n");
    std::fs::write(d.join("rules_test.yml"), &t).unwrap();
    let tested =
        run(Command::new(promtool)
            .current_dir(d)
            .args(["test", "rules", "rules_test.yml"]));
    assert!(tested.contains("SUCCESS"), "{tested}\n{t}");
}

/// Every panel query of the generated Grafana dashboard is valid PromQL
/// (`promtool check rules`) and returns data (`promtool test rules`) over
/// synthetic series shaped like a server's: a model with two outcomes,
/// latency and queue/compute histograms, a canary, a shadow, a feature view
/// and the SLO recording rule.
#[test]
fn every_grafana_panel_query_returns_data() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let queries = greenbelt_serve::grafana::queries("5m");
    let mut rules = String::from("groups:\n  - name: panels\n    rules:\n");
    let mut tests = String::new();
    for (i, (what, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - alert: Panel{i}\n        expr: 'count({}) > 0'\n        labels:\n          panel: '{i}'\n",
            expr.replace('\'', "''")
        ));
        tests.push_str(&format!(
            "      - eval_time: 20m\n        alertname: Panel{i}\n        exp_alerts:\n          - exp_labels: {{panel: '{i}'}}\n# {what}\n"
        ));
    }
    std::fs::write(d.join("panels.yml"), &rules).unwrap();
    let checked = run(Command::new(promtool)
        .current_dir(d)
        .args(["check", "rules", "panels.yml"]));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let v = "model=\"m\",version=\"1\"";
    let series: Vec<(String, &str)> = vec![
        (
            format!("greenbelt_requests_total{{{v},protocol=\"rest\",outcome=\"success\"}}"),
            "0+100x30",
        ),
        (
            format!("greenbelt_requests_total{{{v},protocol=\"rest\",outcome=\"server_error\"}}"),
            "0+1x30",
        ),
        (
            format!("greenbelt_request_duration_seconds_bucket{{{v},le=\"0.1\"}}"),
            "0+90x30",
        ),
        (
            format!("greenbelt_request_duration_seconds_bucket{{{v},le=\"+Inf\"}}"),
            "0+101x30",
        ),
        (
            format!("greenbelt_queue_duration_seconds_sum{{{v}}}"),
            "0+0.01x30",
        ),
        (
            format!("greenbelt_queue_duration_seconds_count{{{v}}}"),
            "0+100x30",
        ),
        (
            format!("greenbelt_compute_duration_seconds_sum{{{v}}}"),
            "0+0.5x30",
        ),
        (
            format!("greenbelt_compute_duration_seconds_count{{{v}}}"),
            "0+100x30",
        ),
        ("greenbelt_inflight_requests{model=\"m\"}".into(), "3x30"),
        ("greenbelt_inflight_limit".into(), "4096x30"),
        ("greenbelt_shed_total{reason=\"inflight\"}".into(), "0+2x30"),
        (
            "greenbelt_rollout_canary_weight_ratio{deployment=\"m\"}".into(),
            "0.1x30",
        ),
        (
            "greenbelt_shadow_rows_total{deployment=\"m\",version=\"2\",agreement=\"agree\"}"
                .into(),
            "0+9x30",
        ),
        (
            "greenbelt_shadow_rows_total{deployment=\"m\",version=\"2\",agreement=\"disagree\"}"
                .into(),
            "0+1x30",
        ),
        (
            "greenbelt_feature_view_age_seconds{view=\"tx\"}".into(),
            "12x30",
        ),
        (
            "greenbelt:slo_error_ratio:rate1h{slo=\"m-availability\"}".into(),
            "0.01x30",
        ),
        (
            format!(
                "greenbelt_cost_dollars_total{{{v},deployment=\"m\",resource=\"compute_cpu\"}}"
            ),
            "0+0.01x30",
        ),
        (
            format!("greenbelt_predictions_total{{{v},deployment=\"m\"}}"),
            "0+100x30",
        ),
        (
            "greenbelt_store_bytes{store=\"registry\",model=\"m\",version=\"1\"}".into(),
            "2048x30",
        ),
        ("process_cpu_seconds_total".into(), "0+30x30"),
        ("process_resident_memory_bytes".into(), "100000000x30"),
    ];
    let mut t = String::from(
        "rule_files:\n  - panels.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    for (name, values) in &series {
        t.push_str(&format!(
            "      - series: '{name}'\n        values: '{values}'\n"
        ));
    }
    t.push_str("    alert_rule_test:\n");
    t.push_str(&tests);
    std::fs::write(d.join("panels_test.yml"), &t).unwrap();
    let tested =
        run(Command::new(promtool)
            .current_dir(d)
            .args(["test", "rules", "panels_test.yml"]));
    assert!(tested.contains("SUCCESS"), "{tested}\n{t}");
}
