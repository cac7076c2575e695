//! `greenbelt drill bad-deploy`: a bad deployment, end to end, against a
//! running server under generated load. It registers a copy of the stable
//! version tagged `fault=<kind>` (the server must allow fault injection),
//! starts a canary with the deployment's configured rollout, and measures
//! what users saw and how fast the release machinery reacted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use greenbelt_control::rollout::{self, Phase, controller::wall_ms};
use greenbelt_registry::NewVersion;
use serde::Serialize;
use serde_json::json;

use crate::registry_cmd::{actor, load_config, open};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DrillCmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    /// Every request to the bad version fails (HTTP 500).
    Error,
    /// The bad version answers after a delay.
    Slow,
    /// The bad version answers quickly with wrong outputs.
    Wrong,
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Release a broken version as a canary and measure detection and rollback.
    BadDeploy {
        /// How the version is broken.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Deployment to drill (default: the first in [[deployments]]).
        #[arg(long)]
        deployment: Option<String>,
        /// Project config (the server's; default ./greenbelt.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The server's REST address.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        server: String,
        /// Concurrent load clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Delay of the slow kind.
        #[arg(long, default_value = "300ms")]
        slow: String,
        /// Give up waiting for the rollback after this long.
        #[arg(long, default_value = "60s")]
        timeout: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// One answered (or failed) request, as the client saw it.
struct Seen {
    sent_ms: i64,
    latency_ms: f64,
    ok: bool,
    version: Option<i64>,
}

#[derive(Serialize)]
struct Report {
    kind: Kind,
    deployment: String,
    stable_version: i64,
    bad_version: i64,
    rollout: String,
    canary_weight_percent: f64,
    analysis_interval_ms: i64,
    outcome: String,
    abort_reason: Option<String>,
    /// First response that was bad (failed, slow or wrong), ms after the rollout started.
    first_bad_ms: Option<i64>,
    /// From the first bad response to the abort decision.
    detection_ms: Option<i64>,
    detection_target_ms: i64,
    /// From the decision to the last request the bad version answered.
    rollback_ms: Option<i64>,
    rollback_target_ms: i64,
    requests: u64,
    failed: u64,
    wrong: u64,
    slow: u64,
    requests_during_detection: u64,
    bad_bound: f64,
    history_recorded: bool,
    alert_metric_recorded: bool,
    passed: bool,
    notes: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let DrillCmd::BadDeploy {
        kind,
        deployment,
        config,
        server,
        clients,
        slow,
        timeout,
        json: as_json,
    } = args.command;
    let slow_d = humantime::parse_duration(&slow).with_context(|| format!("--slow {slow}"))?;
    let timeout =
        humantime::parse_duration(&timeout).with_context(|| format!("--timeout {timeout}"))?;
    let config = load_config(config.as_ref())?;
    let dep = match &deployment {
        Some(d) => config.deployments.iter().find(|x| &x.name == d),
        None => config.deployments.first(),
    }
    .context("no such deployment in [[deployments]] of the config")?
    .clone();
    let registry = open(&config, None).await?;
    let who = actor(&config);
    let model = dep.model().to_string();
    let stable = registry
        .alias(&model, &dep.alias)
        .await?
        .with_context(|| format!("{model}@{} is not set; promote a version first", dep.alias))?;
    let base = server.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let request = sample_request(&client, &base, &dep.name).await?;
    let aborted_before = rollout_metric(&client, &base, &dep.name).await;

    // The bad version: the stable artifact, served through the fault wrapper.
    let record = registry.version(&model, stable).await?;
    let fault = match kind {
        Kind::Error => "error".to_string(),
        Kind::Slow => format!("slow:{slow}"),
        Kind::Wrong => "wrong".to_string(),
    };
    let bad = registry
        .register(NewVersion {
            model: model.clone(),
            artifact_uri: record.artifact_uri.clone(),
            sha256: record.sha256.clone(),
            format: record.format.clone(),
            signature: record.signature.clone(),
            params: record.params.clone(),
            metrics: json!({}),
            gate_report: json!({}),
            lineage: json!({"parent_version": stable, "drill": "bad-deploy"}),
            tags: json!({"fault": fault, "drill": "bad-deploy"}),
            created_by: who.clone(),
        })
        .await?
        .version;
    eprintln!("drill: registered {model} v{bad} (copy of v{stable}, fault={fault})");

    // Load before, during and after.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let url = format!("{base}/v2/models/{}/infer", dep.name);
    for _ in 0..clients.max(1) {
        let (client, url, request, stop) =
            (client.clone(), url.clone(), request.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent_ms = wall_ms();
                let t = tokio::time::Instant::now();
                let r = client.post(&url).json(&request).send().await;
                let latency_ms = t.elapsed().as_secs_f64() * 1000.0;
                let (ok, version) = match r {
                    Ok(r) => (
                        r.status().is_success(),
                        r.headers()
                            .get("x-greenbelt-model-version")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i64>().ok()),
                    ),
                    Err(_) => (false, None),
                };
                seen.push(Seen {
                    sent_ms,
                    latency_ms,
                    ok,
                    version,
                });
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = rollout::start(
        &registry,
        &dep,
        bad,
        Some(greenbelt_serve::deployment::Strategy::Canary),
        &who,
        wall_ms(),
    )
    .await?;
    eprintln!(
        "drill: canary {} started; waiting for the analysis to catch it",
        started.id
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut final_state = None;
    while tokio::time::Instant::now() < deadline {
        let st = rollout::status(&registry, &dep.name).await?;
        if st.rollout.id == started.id && !st.rollout.is_active() {
            final_state = Some(st.rollout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keep the load on long enough to see the switch back complete.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap_or_default());
    }

    let interval_ms = dep
        .rollout
        .analysis
        .interval()
        .map_or(10_000, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    // The weight in force while the bad version was being judged.
    let weight = started.weight;
    let slow_ms = slow_d.as_secs_f64() * 1000.0 * 0.8;
    let is_bad = |s: &Seen| match kind {
        Kind::Error => !s.ok,
        Kind::Slow => s.version == Some(bad) && s.latency_ms >= slow_ms,
        Kind::Wrong => s.version == Some(bad) && s.ok,
    };
    let t0 = started.started_ms;
    let first_bad = seen.iter().filter(|s| is_bad(s)).map(|s| s.sent_ms).min();
    let decided = final_state.as_ref().and_then(|r| r.finished_ms);
    let last_bad_version = seen
        .iter()
        .filter(|s| s.version == Some(bad))
        .map(|s| s.sent_ms)
        .max();
    let during = |from: i64, to: i64| {
        seen.iter()
            .filter(|s| s.sent_ms >= from && s.sent_ms <= to)
            .count() as u64
    };
    let requests_during_detection = match (first_bad, decided) {
        (Some(a), Some(b)) => during(a, b),
        _ => 0,
    };
    let failed = seen.iter().filter(|s| !s.ok).count() as u64;
    let wrong = if kind == Kind::Wrong {
        seen.iter().filter(|s| is_bad(s)).count() as u64
    } else {
        0
    };
    let slow_n = if kind == Kind::Slow {
        seen.iter().filter(|s| is_bad(s)).count() as u64
    } else {
        0
    };
    let detection_ms = match (first_bad, decided) {
        (Some(a), Some(b)) => Some((b - a).max(0)),
        (None, Some(b)) => Some((b - t0).max(0)),
        _ => None,
    };
    let rollback_ms = decided.map(|d| last_bad_version.map_or(0, |l| (l - d).max(0)));
    let history = registry
        .history(&model, Some("canary"))
        .await
        .unwrap_or_default();
    let history_recorded = history
        .iter()
        .any(|e| e.reason.contains(&started.id) && e.reason.contains("aborted"));
    let alert_metric_recorded = rollout_metric(&client, &base, &dep.name).await > aborted_before;
    let bad_seen = failed + wrong + slow_n;
    // Requests in flight when the decision landed can still reach the
    // canary; allow one analysis tick of them on top of the bound.
    let bad_bound = weight / 100.0 * requests_during_detection as f64 * 1.5 + 20.0;
    let mut notes = Vec::new();
    let outcome = match &final_state {
        Some(r) if r.phase == Phase::Aborted => "rolled back".to_string(),
        Some(r) => format!("{:?}", r.phase).to_lowercase(),
        None => "still running at timeout".to_string(),
    };
    let mut passed = outcome == "rolled back";
    if let Some(d) = detection_ms
        && d > 2 * interval_ms + 1000
    {
        notes.push(format!(
            "detection took {d} ms, target 2 analysis intervals ({} ms)",
            2 * interval_ms
        ));
        passed = false;
    }
    if let Some(r) = rollback_ms
        && r > 1000
    {
        notes.push(format!(
            "the bad version still answered {r} ms after the decision (target 1000 ms)"
        ));
        passed = false;
    }
    if bad_seen as f64 > bad_bound {
        notes.push(format!(
            "{bad_seen} bad responses exceed the bound {bad_bound:.0}"
        ));
        passed = false;
    }
    if !history_recorded {
        notes.push("no `canary` alias event names the abort".into());
        passed = false;
    }
    if !alert_metric_recorded {
        notes.push("greenbelt_rollout_events_total{event=\"aborted\"} did not increase".into());
        passed = false;
    }
    let report = Report {
        kind,
        deployment: dep.name.clone(),
        stable_version: stable,
        bad_version: bad,
        rollout: started.id.clone(),
        canary_weight_percent: weight,
        analysis_interval_ms: interval_ms,
        outcome,
        abort_reason: final_state.as_ref().and_then(|r| r.reason.clone()),
        first_bad_ms: first_bad.map(|f| f - t0),
        detection_ms,
        detection_target_ms: 2 * interval_ms,
        rollback_ms,
        rollback_target_ms: 1000,
        requests: seen.len() as u64,
        failed,
        wrong,
        slow: slow_n,
        requests_during_detection,
        bad_bound,
        history_recorded,
        alert_metric_recorded,
        passed,
        notes,
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if !report.passed {
        bail!(
            "drill failed: {}",
            if report.notes.is_empty() {
                report.outcome.clone()
            } else {
                report.notes.join("; ")
            }
        );
    }
    Ok(())
}

fn print_report(r: &Report) {
    let ms = |x: Option<i64>| x.map_or("-".to_string(), |v| format!("{v} ms"));
    println!("bad-deploy drill on {}: {}", r.deployment, r.outcome);
    println!(
        "  kind               {}",
        serde_json::to_string(&r.kind)
            .unwrap_or_default()
            .trim_matches('"')
    );
    println!(
        "  versions           stable v{}, bad v{} (rollout {})",
        r.stable_version, r.bad_version, r.rollout
    );
    println!(
        "  canary weight      {}%, analysis every {} ms",
        r.canary_weight_percent, r.analysis_interval_ms
    );
    println!(
        "  abort reason       {}",
        r.abort_reason.as_deref().unwrap_or("-")
    );
    println!("  first bad response {} after start", ms(r.first_bad_ms));
    println!(
        "  detection          {} (target ≤ {} ms)",
        ms(r.detection_ms),
        r.detection_target_ms
    );
    println!(
        "  rollback complete  {} after the decision (target ≤ {} ms)",
        ms(r.rollback_ms),
        r.rollback_target_ms
    );
    println!(
        "  client requests    {} total, {} failed, {} wrong, {} slow (bound {:.0}; {} sent during detection)",
        r.requests, r.failed, r.wrong, r.slow, r.bad_bound, r.requests_during_detection
    );
    println!(
        "  registry history   {}",
        if r.history_recorded {
            "recorded (canary alias event names the abort)"
        } else {
            "MISSING"
        }
    );
    println!(
        "  alert metric       {}",
        if r.alert_metric_recorded {
            "greenbelt_rollout_events_total{event=\"aborted\"} increased"
        } else {
            "MISSING"
        }
    );
    for n in &r.notes {
        println!("  note               {n}");
    }
    println!(
        "  result             {}",
        if r.passed { "PASS" } else { "FAIL" }
    );
}

/// A request for the deployment, built from its metadata: random values
/// with the right names, datatypes and shapes (dynamic dims = 1).
async fn sample_request(
    client: &reqwest::Client,
    base: &str,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let meta: serde_json::Value = client
        .get(format!("{base}/v2/models/{name}"))
        .send()
        .await
        .with_context(|| format!("is the server at {base} running?"))?
        .error_for_status()
        .with_context(|| format!("deployment \"{name}\" is not served at {base}"))?
        .json()
        .await?;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let inputs: Vec<serde_json::Value> = meta["inputs"]
        .as_array()
        .context("model metadata has no inputs")?
        .iter()
        .map(|i| {
            let shape: Vec<i64> = i["shape"]
                .as_array()
                .map(|s| s.iter().map(|d| d.as_i64().unwrap_or(1).max(1)).collect())
                .unwrap_or_default();
            let n: i64 = shape.iter().product();
            let dt = i["datatype"].as_str().unwrap_or("FP32").to_string();
            let data: Vec<serde_json::Value> = (0..n)
                .map(|_| match dt.as_str() {
                    "FP32" | "FP64" | "FP16" => json!(next() * 2.0 - 1.0),
                    "BOOL" => json!(next() > 0.5),
                    "BYTES" => json!("x"),
                    _ => json!((next() * 3.0) as i64),
                })
                .collect();
            json!({"name": i["name"], "shape": shape, "datatype": dt, "data": data})
        })
        .collect();
    Ok(json!({ "inputs": inputs }))
}

/// greenbelt_rollout_events_total for aborts and roll-backs of `deployment`.
async fn rollout_metric(client: &reqwest::Client, base: &str, deployment: &str) -> f64 {
    let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("greenbelt_rollout_events_total{"))
        .filter(|l| l.contains(&format!("deployment=\"{deployment}\"")))
        .filter(|l| l.contains("event=\"aborted\"") || l.contains("event=\"rolled_back\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
