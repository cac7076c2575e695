//! The bad-deployment drill against a running server under generated
//! load: register a copy of the stable version tagged `fault=<kind>` (the
//! server must allow fault injection), start a canary with the deployment's
//! configured rollout, and measure what users saw and how fast the release
//! machinery reacted. [`bad_deploy`] does the I/O; [`judge`] turns what was
//! measured into a verdict and is a pure function.

use std::time::Duration;

use greenbelt_control::rollout::{self, Phase, controller::wall_ms};
use greenbelt_registry::NewVersion;
use greenbelt_serve::Config;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::error::{AppError, Result};
use crate::loadgen::{self, LoadOptions, Protocol, Sample, Stop, Target};

/// How the drilled version is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Every request to the bad version fails (HTTP 500).
    Error,
    /// The bad version answers after a delay.
    Slow,
    /// The bad version answers quickly with wrong outputs.
    Wrong,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Error => "error",
            FaultKind::Slow => "slow",
            FaultKind::Wrong => "wrong",
        }
    }
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct BadDeployOptions {
    pub kind: FaultKind,
    /// Deployment to drill (default: the first in `[[deployments]]`).
    pub deployment: Option<String>,
    /// The server's REST base URL.
    pub server: String,
    /// Concurrent load connections.
    pub clients: usize,
    /// Delay of the slow kind.
    pub slow: Duration,
    /// Give up waiting for the rollback after this long.
    pub timeout: Duration,
}

/// What the drill measured (the input of [`judge`]).
#[derive(Debug, Clone)]
pub struct Measurements {
    pub kind: FaultKind,
    pub bad_version: i64,
    /// Every request the load sent, as the client saw it.
    pub samples: Vec<Sample>,
    /// When the rollout started (wall ms).
    pub started_ms: i64,
    /// The rollout's end state, if it ended before the timeout.
    pub final_phase: Option<Phase>,
    /// When it ended (wall ms).
    pub decided_ms: Option<i64>,
    /// The canary weight while the bad version was judged (percent).
    pub weight: f64,
    /// The slow kind's delay.
    pub slow: Duration,
    /// A `canary` alias event in the registry names the abort.
    pub history_recorded: bool,
    /// `greenbelt_rollout_events_total{event="aborted"}` went up.
    pub alert_metric_recorded: bool,
}

/// The targets a drill is judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// The deployment's analysis interval.
    pub analysis_interval_ms: i64,
    /// Detection may take this many analysis intervals ...
    pub detection_intervals: i64,
    /// ... plus this much.
    pub detection_slack_ms: i64,
    /// The bad version may answer at most this long after the decision.
    pub rollback_ms: i64,
    /// Bad responses may exceed the canary share of requests sent during
    /// detection by this factor ...
    pub bad_factor: f64,
    /// ... plus this many (requests in flight when the decision landed).
    pub bad_allowance: f64,
    /// A slow response takes at least this share of the slow delay.
    pub slow_share: f64,
}

impl Thresholds {
    /// The drill's targets for a deployment analysed every `interval_ms`.
    pub fn for_interval(interval_ms: i64) -> Thresholds {
        Thresholds {
            analysis_interval_ms: interval_ms,
            detection_intervals: 2,
            detection_slack_ms: 1000,
            rollback_ms: 1000,
            bad_factor: 1.5,
            bad_allowance: 20.0,
            slow_share: 0.8,
        }
    }

    pub fn detection_target_ms(&self) -> i64 {
        self.detection_intervals * self.analysis_interval_ms
    }
}

/// What the drill concludes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub outcome: String,
    /// First bad response, ms after the rollout started.
    pub first_bad_ms: Option<i64>,
    /// From the first bad response to the abort decision.
    pub detection_ms: Option<i64>,
    /// From the decision to the last request the bad version answered.
    pub rollback_ms: Option<i64>,
    pub requests: u64,
    pub failed: u64,
    pub wrong: u64,
    pub slow: u64,
    pub requests_during_detection: u64,
    pub bad_bound: f64,
    pub passed: bool,
    pub notes: Vec<String>,
}

/// Judge a drill: did the rollout abort, fast enough, with few enough bad
/// responses, and did it leave its trace in the registry and the metrics?
pub fn judge(m: &Measurements, t: &Thresholds) -> Verdict {
    let slow_ms = m.slow.as_secs_f64() * 1000.0 * t.slow_share;
    let bad = m.bad_version;
    let is_bad = |s: &Sample| match m.kind {
        FaultKind::Error => !s.ok,
        FaultKind::Slow => s.version == Some(bad) && s.latency.as_secs_f64() * 1000.0 >= slow_ms,
        FaultKind::Wrong => s.version == Some(bad) && s.ok,
    };
    let seen = &m.samples;
    let first_bad = seen.iter().filter(|s| is_bad(s)).map(|s| s.sent_ms).min();
    let decided = m.decided_ms;
    let last_bad_version = seen
        .iter()
        .filter(|s| s.version == Some(bad))
        .map(|s| s.sent_ms)
        .max();
    let requests_during_detection = match (first_bad, decided) {
        (Some(a), Some(b)) => seen
            .iter()
            .filter(|s| s.sent_ms >= a && s.sent_ms <= b)
            .count() as u64,
        _ => 0,
    };
    let failed = seen.iter().filter(|s| !s.ok).count() as u64;
    let n_bad = seen.iter().filter(|s| is_bad(s)).count() as u64;
    let wrong = if m.kind == FaultKind::Wrong { n_bad } else { 0 };
    let slow = if m.kind == FaultKind::Slow { n_bad } else { 0 };
    let detection_ms = match (first_bad, decided) {
        (Some(a), Some(b)) => Some((b - a).max(0)),
        (None, Some(b)) => Some((b - m.started_ms).max(0)),
        _ => None,
    };
    let rollback_ms = decided.map(|d| last_bad_version.map_or(0, |l| (l - d).max(0)));
    let bad_seen = failed + wrong + slow;
    let bad_bound =
        m.weight / 100.0 * requests_during_detection as f64 * t.bad_factor + t.bad_allowance;
    let outcome = match m.final_phase {
        Some(Phase::Aborted) => "rolled back".to_string(),
        Some(p) => format!("{p:?}").to_lowercase(),
        None => "still running at timeout".to_string(),
    };
    let mut notes = Vec::new();
    let mut passed = m.final_phase == Some(Phase::Aborted);
    if let Some(d) = detection_ms
        && d > t.detection_target_ms() + t.detection_slack_ms
    {
        notes.push(format!(
            "detection took {d} ms, target {} analysis intervals ({} ms)",
            t.detection_intervals,
            t.detection_target_ms()
        ));
        passed = false;
    }
    if let Some(r) = rollback_ms
        && r > t.rollback_ms
    {
        notes.push(format!(
            "the bad version still answered {r} ms after the decision (target {} ms)",
            t.rollback_ms
        ));
        passed = false;
    }
    if bad_seen as f64 > bad_bound {
        notes.push(format!(
            "{bad_seen} bad responses exceed the bound {bad_bound:.0}"
        ));
        passed = false;
    }
    if !m.history_recorded {
        notes.push("no `canary` alias event names the abort".into());
        passed = false;
    }
    if !m.alert_metric_recorded {
        notes.push("greenbelt_rollout_events_total{event=\"aborted\"} did not increase".into());
        passed = false;
    }
    Verdict {
        outcome,
        first_bad_ms: first_bad.map(|f| f - m.started_ms),
        detection_ms,
        rollback_ms,
        requests: seen.len() as u64,
        failed,
        wrong,
        slow,
        requests_during_detection,
        bad_bound,
        passed,
        notes,
    }
}

/// The drill's report: what was drilled and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kind: FaultKind,
    pub deployment: String,
    pub stable_version: i64,
    pub bad_version: i64,
    pub rollout: String,
    pub canary_weight_percent: f64,
    pub analysis_interval_ms: i64,
    pub abort_reason: Option<String>,
    pub detection_target_ms: i64,
    pub rollback_target_ms: i64,
    pub history_recorded: bool,
    pub alert_metric_recorded: bool,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Report {
    /// The report as text for people.
    pub fn text(&self) -> String {
        let v = &self.verdict;
        let ms = |x: Option<i64>| x.map_or("-".to_string(), |v| format!("{v} ms"));
        let mut out = format!("bad-deploy drill on {}: {}\n", self.deployment, v.outcome);
        let mut line = |k: &str, val: String| out.push_str(&format!("  {k:<18} {val}\n"));
        line("kind", self.kind.as_str().to_string());
        line(
            "versions",
            format!(
                "stable v{}, bad v{} (rollout {})",
                self.stable_version, self.bad_version, self.rollout
            ),
        );
        line(
            "canary weight",
            format!(
                "{}%, analysis every {} ms",
                self.canary_weight_percent, self.analysis_interval_ms
            ),
        );
        line(
            "abort reason",
            self.abort_reason.as_deref().unwrap_or("-").to_string(),
        );
        line(
            "first bad response",
            format!("{} after start", ms(v.first_bad_ms)),
        );
        line(
            "detection",
            format!(
                "{} (target ≤ {} ms)",
                ms(v.detection_ms),
                self.detection_target_ms
            ),
        );
        line(
            "rollback complete",
            format!(
                "{} after the decision (target ≤ {} ms)",
                ms(v.rollback_ms),
                self.rollback_target_ms
            ),
        );
        line(
            "client requests",
            format!(
                "{} total, {} failed, {} wrong, {} slow (bound {:.0}; {} sent during detection)",
                v.requests, v.failed, v.wrong, v.slow, v.bad_bound, v.requests_during_detection
            ),
        );
        line(
            "registry history",
            if self.history_recorded {
                "recorded (canary alias event names the abort)".into()
            } else {
                "MISSING".into()
            },
        );
        line(
            "alert metric",
            if self.alert_metric_recorded {
                "greenbelt_rollout_events_total{event=\"aborted\"} increased".into()
            } else {
                "MISSING".into()
            },
        );
        for n in &v.notes {
            line("note", n.clone());
        }
        line("result", if v.passed { "PASS" } else { "FAIL" }.into());
        out
    }

    /// Why the drill failed, for an error message (`None` when it passed).
    pub fn failure(&self) -> Option<String> {
        let v = &self.verdict;
        (!v.passed).then(|| {
            if v.notes.is_empty() {
                v.outcome.clone()
            } else {
                v.notes.join("; ")
            }
        })
    }
}

/// greenbelt_rollout_events_total for aborts and roll-backs of `deployment`.
pub fn rollout_events(metrics_text: &str, deployment: &str) -> f64 {
    let dep = format!("deployment=\"{deployment}\"");
    metrics_text
        .lines()
        .filter(|l| l.starts_with("greenbelt_rollout_events_total{"))
        .filter(|l| l.contains(&dep))
        .filter(|l| l.contains("event=\"aborted\"") || l.contains("event=\"rolled_back\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn rollout_metric(client: &reqwest::Client, base: &str, deployment: &str) -> f64 {
    let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    rollout_events(&r.text().await.unwrap_or_default(), deployment)
}

/// Run the bad-deployment drill; `progress` hears what it is doing.
pub async fn bad_deploy(
    config: &Config,
    opts: &BadDeployOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Report> {
    let dep = match &opts.deployment {
        Some(d) => config.deployments.iter().find(|x| &x.name == d),
        None => config.deployments.first(),
    }
    .ok_or_else(|| AppError::Invalid("no such deployment in [[deployments]] of the config".into()))?
    .clone();
    let registry = crate::registry::open(config, None).await?;
    let who = crate::registry::actor(config);
    let model = dep.model().to_string();
    let stable = registry.alias(&model, &dep.alias).await?.ok_or_else(|| {
        AppError::Invalid(format!(
            "{model}@{} is not set; promote a version first",
            dep.alias
        ))
    })?;
    let base = opts.server.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let specs = loadgen::model_inputs(&client, &base, &dep.name).await?;
    let inputs = specs
        .iter()
        .map(|s| loadgen::make_input(s, 1))
        .collect::<Result<Vec<_>>>()?;
    let aborted_before = rollout_metric(&client, &base, &dep.name).await;

    // The bad version: the stable artifact, served through the fault wrapper.
    let record = registry.version(&model, stable).await?;
    let fault = match opts.kind {
        FaultKind::Slow => format!("slow:{}", humantime::format_duration(opts.slow)),
        k => k.as_str().to_string(),
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
    progress(&format!(
        "drill: registered {model} v{bad} (copy of v{stable}, fault={fault})"
    ));

    // Load before, during and after.
    let (stop_tx, stop_rx) = watch::channel(false);
    let target = Target {
        rest_url: base.clone(),
        grpc_url: String::new(),
        protocol: Protocol::Rest,
        model: dep.name.clone(),
        timeout: Duration::from_secs(10),
    };
    let load_opts = LoadOptions {
        connections: opts.clients.max(1),
        warmup: Duration::ZERO,
        stop: Stop::Signal(stop_rx),
        keep_samples: true,
    };
    let load = tokio::spawn(async move {
        loadgen::run(&target, std::slice::from_ref(&inputs), load_opts).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = rollout::start(
        &registry,
        &dep,
        bad,
        Some(greenbelt_serve::deployment::Strategy::Canary),
        &who,
        wall_ms(),
    )
    .await;
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = load.await;
            return Err(e.into());
        }
    };
    progress(&format!(
        "drill: canary {} started; waiting for the analysis to catch it",
        started.id
    ));
    let deadline = tokio::time::Instant::now() + opts.timeout;
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
    let _ = stop_tx.send(true);
    let samples = load.await??.samples;

    let interval_ms = dep
        .rollout
        .analysis
        .interval()
        .map_or(10_000, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let history_recorded = registry
        .history(&model, Some("canary"))
        .await
        .unwrap_or_default()
        .iter()
        .any(|e| e.reason.contains(&started.id) && e.reason.contains("aborted"));
    let alert_metric_recorded = rollout_metric(&client, &base, &dep.name).await > aborted_before;
    let thresholds = Thresholds::for_interval(interval_ms);
    let verdict = judge(
        &Measurements {
            kind: opts.kind,
            bad_version: bad,
            samples,
            started_ms: started.started_ms,
            final_phase: final_state.as_ref().map(|r| r.phase),
            decided_ms: final_state.as_ref().and_then(|r| r.finished_ms),
            weight: started.weight,
            slow: opts.slow,
            history_recorded,
            alert_metric_recorded,
        },
        &thresholds,
    );
    Ok(Report {
        kind: opts.kind,
        deployment: dep.name.clone(),
        stable_version: stable,
        bad_version: bad,
        rollout: started.id.clone(),
        canary_weight_percent: started.weight,
        analysis_interval_ms: interval_ms,
        abort_reason: final_state.as_ref().and_then(|r| r.reason.clone()),
        detection_target_ms: thresholds.detection_target_ms(),
        rollback_target_ms: thresholds.rollback_ms,
        history_recorded,
        alert_metric_recorded,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const T0: i64 = 1_000_000;
    const STABLE: i64 = 1;
    const BAD: i64 = 2;

    fn s(at: i64, ms: u64, ok: bool, version: i64) -> Sample {
        Sample {
            sent_ms: T0 + at,
            latency: Duration::from_millis(ms),
            ok,
            version: Some(version),
        }
    }

    /// 10 requests per 100 ms for 6 s; the bad version (10% weight) gets
    /// every tenth from 500 ms until `last_bad` ms; each bad response is
    /// built by `bad`.
    fn traffic(last_bad: i64, bad: impl Fn(i64) -> Sample) -> Vec<Sample> {
        let mut out = Vec::new();
        for i in 0..600 {
            let at = i * 10;
            if i % 10 == 0 && (500..=last_bad).contains(&at) {
                out.push(bad(at));
            } else {
                out.push(s(at, 2, true, STABLE));
            }
        }
        out
    }

    fn measured(kind: FaultKind, samples: Vec<Sample>, decided_at: Option<i64>) -> Measurements {
        Measurements {
            kind,
            bad_version: BAD,
            samples,
            started_ms: T0,
            final_phase: decided_at.map(|_| Phase::Aborted),
            decided_ms: decided_at.map(|d| T0 + d),
            weight: 10.0,
            slow: Duration::from_millis(300),
            history_recorded: true,
            alert_metric_recorded: true,
        }
    }

    fn thresholds() -> Thresholds {
        Thresholds::for_interval(1000)
    }

    #[test]
    fn a_fast_abort_passes() {
        let m = measured(
            FaultKind::Error,
            traffic(2500, |at| s(at, 1, false, BAD)),
            Some(2600),
        );
        let v = judge(&m, &thresholds());
        assert!(v.passed, "{v:?}");
        assert_eq!(v.outcome, "rolled back");
        assert_eq!(v.first_bad_ms, Some(500));
        assert_eq!(v.detection_ms, Some(2100));
        assert_eq!(v.rollback_ms, Some(0));
        assert_eq!(v.failed, 21);
        assert_eq!(v.requests, 600);
        assert_eq!(v.requests_during_detection, 211);
    }

    #[test]
    fn slow_detection_fails_and_says_why() {
        let m = measured(
            FaultKind::Error,
            traffic(4000, |at| s(at, 1, false, BAD)),
            Some(4000),
        );
        let v = judge(&m, &thresholds());
        assert!(!v.passed);
        assert!(
            v.notes[0].contains("detection took 3500 ms"),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn a_bad_version_that_keeps_answering_fails_the_rollback() {
        let m = measured(
            FaultKind::Wrong,
            traffic(4000, |at| s(at, 1, true, BAD)),
            Some(2000),
        );
        let v = judge(&m, &thresholds());
        assert_eq!(v.wrong, 36);
        assert_eq!(v.rollback_ms, Some(2000));
        assert!(!v.passed);
        assert!(
            v.notes.iter().any(|n| n.contains("still answered 2000 ms")),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn only_slow_answers_of_the_bad_version_count_as_slow() {
        let mut samples = traffic(2000, |at| s(at, 290, true, BAD));
        // A slow answer from the stable version is not the drill's fault.
        samples.push(s(700, 900, true, STABLE));
        let v = judge(
            &measured(FaultKind::Slow, samples, Some(2100)),
            &thresholds(),
        );
        assert_eq!(v.slow, 16, "290 ms >= 80% of 300 ms");
        assert_eq!(v.failed, 0);
        assert!(v.passed, "{v:?}");
    }

    #[test]
    fn no_decision_missing_traces_and_too_many_bad_responses_fail() {
        let m = measured(
            FaultKind::Error,
            traffic(2500, |at| s(at, 1, false, BAD)),
            None,
        );
        let v = judge(&m, &thresholds());
        assert_eq!(v.outcome, "still running at timeout");
        assert_eq!((v.detection_ms, v.rollback_ms), (None, None));
        assert!(!v.passed);

        let mut m = measured(
            FaultKind::Error,
            traffic(2500, |at| s(at, 1, false, BAD)),
            Some(2600),
        );
        m.history_recorded = false;
        m.alert_metric_recorded = false;
        m.samples
            .extend((0..100).map(|i| s(600 + i, 1, false, STABLE)));
        let v = judge(&m, &thresholds());
        assert!(!v.passed);
        assert_eq!(v.notes.len(), 3, "{:?}", v.notes);
        assert!(v.notes[0].contains("bad responses exceed the bound"));
    }

    #[test]
    fn the_report_reads_as_text_and_names_the_failure() {
        let m = measured(
            FaultKind::Error,
            traffic(2500, |at| s(at, 1, false, BAD)),
            Some(2600),
        );
        let t = thresholds();
        let report = Report {
            kind: FaultKind::Error,
            deployment: "fraud".into(),
            stable_version: STABLE,
            bad_version: BAD,
            rollout: "r1".into(),
            canary_weight_percent: 10.0,
            analysis_interval_ms: 1000,
            abort_reason: Some("error_rate".into()),
            detection_target_ms: t.detection_target_ms(),
            rollback_target_ms: t.rollback_ms,
            history_recorded: true,
            alert_metric_recorded: true,
            verdict: judge(&m, &t),
        };
        let text = report.text();
        assert!(
            text.contains("bad-deploy drill on fraud: rolled back"),
            "{text}"
        );
        assert!(text.contains("result             PASS"), "{text}");
        assert_eq!(report.failure(), None);
        let j = serde_json::to_value(&report).unwrap();
        assert_eq!(j["passed"], true);
        assert_eq!(j["kind"], "error");
    }

    #[test]
    fn rollout_events_sum_aborts_and_rollbacks_of_the_deployment() {
        let text = "greenbelt_rollout_events_total{deployment=\"a\",event=\"aborted\"} 2\n\
                    greenbelt_rollout_events_total{deployment=\"a\",event=\"rolled_back\"} 1\n\
                    greenbelt_rollout_events_total{deployment=\"a\",event=\"started\"} 5\n\
                    greenbelt_rollout_events_total{deployment=\"b\",event=\"aborted\"} 7\n";
        assert_eq!(rollout_events(text, "a"), 3.0);
    }
}
