//! In-process SLO burn-rate alerts, for one-box users without Prometheus:
//! the same maths as the rules `greenbelt slo rules` writes (see `slo.rs`),
//! evaluated by the server itself every `[alerts] eval_interval` over the
//! deployment's own counters. State is on `GET /admin/alerts`, transitions
//! go to the log, and, when `[alerts] webhook_url` is set, are POSTed in
//! Alertmanager's webhook payload shape (version 4), so anything that takes
//! Alertmanager notifications takes these.
//!
//! What is counted: availability SLOs, every request of the deployment's
//! versions by outcome (bad = server error, timeout, shed), as
//! `greenbelt_requests_total`; latency SLOs, the requests a version answered
//! (client errors and shed requests are not the version's latency) against
//! the threshold, from the live histogram (bucket bounds within 1/8).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::repository::Repository;
use crate::slo::{BURN_WINDOWS, SloConfig, SloKind, WINDOWS};

/// `[alerts]` in greenbelt.toml.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often the server evaluates its `[[slo]]`s (humantime).
    pub eval_interval: String,
    /// POST alert transitions here (Alertmanager webhook format); unset: off.
    pub webhook_url: Option<String>,
    /// Longest one webhook POST may take.
    /// (Old key `webhook_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "webhook_timeout",
        alias = "webhook_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub webhook_timeout_ms: u64,
    /// `runbook_url` prefix in the alerts' annotations.
    pub runbook_url_base: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            eval_interval: "15s".into(),
            webhook_url: None,
            webhook_timeout_ms: 5000,
            runbook_url_base: "docs/runbooks".into(),
        }
    }
}

impl AlertsConfig {
    pub fn interval(&self) -> Result<Duration, String> {
        crate::config::interval("[alerts] eval_interval", &self.eval_interval, "15s")
    }

    pub fn validate(&self) -> Result<(), String> {
        self.interval()?;
        if let Some(url) = &self.webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "[alerts] webhook_url must be an http:// or https:// URL, got \"{}\"",
                crate::auth::redact_url(url)
            ));
        }
        if self.webhook_timeout_ms == 0 {
            return Err("[alerts] webhook_timeout must be more than 0s".into());
        }
        Ok(())
    }
}

/// The longest window any alert looks at.
const LONGEST: Duration = Duration::from_secs(3 * 24 * 3600);

fn window(w: &str) -> Duration {
    humantime::parse_duration(w).unwrap_or(LONGEST)
}

/// Cumulative counts of one SLO at one evaluation.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    total: u64,
    bad: u64,
}

/// One firing alert.
#[derive(Debug, Clone)]
struct Firing {
    since: SystemTime,
}

struct SloState {
    slo: SloConfig,
    points: VecDeque<Point>,
    /// Counts summed over versions, kept monotonic across version changes
    /// and counter resets (as Prometheus' `rate` does).
    total: u64,
    bad: u64,
    last: HashMap<Arc<str>, (u64, u64)>,
    /// [page, ticket]
    firing: [Option<Firing>; 2],
    ratios: Vec<(&'static str, f64)>,
}

const SEVERITIES: [(&str, &str); 2] = [
    ("page", "GreenbeltSLOBurnRatePage"),
    ("ticket", "GreenbeltSLOBurnRateTicket"),
];

/// One alert state change.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub status: &'static str,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub annotations: serde_json::Map<String, serde_json::Value>,
    pub starts_at: SystemTime,
    pub ends_at: Option<SystemTime>,
}

impl Transition {
    /// An alert that started at `since` and, with `ended`, has resolved;
    /// `labels` beyond `alertname` and `severity`, and the two annotations
    /// every Greenbelt alert carries.
    pub fn new(
        alert: &str,
        severity: &str,
        extra: [(&str, serde_json::Value); 2],
        summary: String,
        runbook_url: String,
        since: SystemTime,
        ended: Option<SystemTime>,
    ) -> Transition {
        let mut labels = serde_json::Map::new();
        labels.insert("alertname".into(), alert.into());
        labels.insert("severity".into(), severity.into());
        for (k, v) in extra {
            labels.insert(k.into(), v);
        }
        let mut annotations = serde_json::Map::new();
        annotations.insert("summary".into(), summary.into());
        annotations.insert("runbook_url".into(), runbook_url.into());
        Transition {
            status: if ended.is_some() {
                "resolved"
            } else {
                "firing"
            },
            labels,
            annotations,
            starts_at: since,
            ends_at: ended,
        }
    }
}

/// The server's SLO evaluator.
pub struct Alerts {
    config: AlertsConfig,
    slos: Mutex<Vec<SloState>>,
    client: reqwest::Client,
}

impl Alerts {
    pub fn new(slos: &[SloConfig], config: AlertsConfig) -> Alerts {
        Alerts {
            slos: Mutex::new(
                slos.iter()
                    .map(|s| SloState {
                        slo: s.clone(),
                        points: VecDeque::new(),
                        total: 0,
                        bad: 0,
                        last: HashMap::new(),
                        firing: [None, None],
                        ratios: Vec::new(),
                    })
                    .collect(),
            ),
            client: reqwest::Client::new(),
            config,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slos.lock().map_or(true, |s| s.is_empty())
    }

    /// Evaluate every `eval_interval` until the process ends.
    pub fn spawn(self: Arc<Self>, repository: Arc<Repository>) {
        let Ok(every) = self.config.interval() else {
            return; // validated with the config
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let changes = self.evaluate(&repository, Instant::now());
                for t in changes {
                    self.notify(t);
                }
            }
        });
    }

    /// Take the counts now and return the alerts that changed state.
    pub fn evaluate(&self, repository: &Repository, now: Instant) -> Vec<Transition> {
        let Ok(mut slos) = self.slos.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for st in slos.iter_mut() {
            let versions = repository
                .get(&st.slo.deployment)
                .map(|e| e.versions.values().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            for v in versions {
                let (total, bad) = counts(&st.slo, &v);
                let (pt, pb) = st
                    .last
                    .insert(v.version_label.clone(), (total, bad))
                    .unwrap_or((0, 0));
                // A counter that went down was reset: all of it is new.
                st.total += if total >= pt { total - pt } else { total };
                st.bad += if bad >= pb { bad - pb } else { bad };
            }
            st.points.push_back(Point {
                at: now,
                total: st.total,
                bad: st.bad,
            });
            // Keep one point at or before the longest window.
            while st.points.len() > 2
                && st
                    .points
                    .get(1)
                    .is_some_and(|p| now.duration_since(p.at) >= LONGEST)
            {
                st.points.pop_front();
            }
            st.ratios = WINDOWS
                .iter()
                .map(|w| (*w, ratio(&st.points, now, window(w))))
                .collect();
            let budget = st.slo.budget();
            for (i, (severity, alert)) in SEVERITIES.iter().enumerate() {
                let burning = BURN_WINDOWS.iter().filter(|(s, ..)| s == severity).any(
                    |(_, long, short, factor)| {
                        let limit = factor * budget;
                        ratio(&st.points, now, window(long)) > limit
                            && ratio(&st.points, now, window(short)) > limit
                    },
                );
                let was = st.firing[i].clone();
                match (was, burning) {
                    (None, true) => {
                        let since = SystemTime::now();
                        st.firing[i] = Some(Firing { since });
                        out.push(self.transition(&st.slo, severity, alert, since, None));
                    }
                    (Some(f), false) => {
                        st.firing[i] = None;
                        out.push(self.transition(
                            &st.slo,
                            severity,
                            alert,
                            f.since,
                            Some(SystemTime::now()),
                        ));
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn transition(
        &self,
        slo: &SloConfig,
        severity: &str,
        alert: &str,
        since: SystemTime,
        ended: Option<SystemTime>,
    ) -> Transition {
        Transition::new(
            alert,
            severity,
            [
                ("slo", slo.name().into()),
                ("deployment", slo.deployment.clone().into()),
            ],
            slo.burn_summary(),
            crate::slo::runbook(&self.config.runbook_url_base, alert),
            since,
            ended,
        )
    }

    /// Log a transition and POST it to the webhook (in the background,
    /// bounded by `webhook_timeout_ms`).
    pub fn notify(&self, t: Transition) {
        let alert = t.labels.get("alertname").cloned().unwrap_or_default();
        let slo = t.labels.get("slo").cloned();
        let budget = t.labels.get("budget").cloned().unwrap_or_default();
        match (slo, t.status == "firing") {
            (Some(slo), true) => tracing::warn!(alert = %alert, slo = %slo, "SLO alert firing"),
            (Some(slo), false) => tracing::info!(alert = %alert, slo = %slo, "SLO alert resolved"),
            (None, true) => {
                tracing::warn!(alert = %alert, budget = %budget, "budget alert firing")
            }
            (None, false) => {
                tracing::info!(alert = %alert, budget = %budget, "budget alert resolved")
            }
        }
        let Some(url) = self.config.webhook_url.clone() else {
            return;
        };
        let body = alertmanager_payload(&t);
        let req = self
            .client
            .post(url)
            .timeout(Duration::from_millis(self.config.webhook_timeout_ms))
            .json(&body);
        tokio::spawn(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(status = r.status().as_u16(), alert = %alert, "alert webhook refused the notification")
                }
                // without the URL: it may carry credentials
                Err(e) => {
                    tracing::warn!(error = %e.without_url(), alert = %alert, "alert webhook failed")
                }
            }
        });
    }

    /// `GET /admin/alerts`: every SLO with its error ratio per window, burn
    /// rates, and alert states.
    pub fn report(&self) -> serde_json::Value {
        let Ok(slos) = self.slos.lock() else {
            return json!({ "slos": [] });
        };
        let items: Vec<_> = slos
            .iter()
            .map(|st| {
                let budget = st.slo.budget();
                let alerts: Vec<_> = SEVERITIES
                    .iter()
                    .zip(&st.firing)
                    .map(|((severity, alert), f)| {
                        json!({
                            "alertname": alert,
                            "severity": severity,
                            "state": if f.is_some() { "firing" } else { "inactive" },
                            "since": f.as_ref().map(|f| humantime::format_rfc3339_millis(f.since).to_string()),
                        })
                    })
                    .collect();
                json!({
                    "slo": st.slo.name(),
                    "deployment": st.slo.deployment,
                    "kind": st.slo.kind,
                    "objective": st.slo.objective,
                    "error_budget": budget,
                    "requests": st.total,
                    "bad": st.bad,
                    "error_ratio": st.ratios.iter().map(|(w, r)| (w.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
                    "burn_rate": st.ratios.iter().map(|(w, r)| (w.to_string(), json!(r / budget))).collect::<serde_json::Map<_, _>>(),
                    "alerts": alerts,
                })
            })
            .collect();
        json!({ "eval_interval": self.config.eval_interval, "slos": items })
    }
}

/// (total, bad) of one version for one SLO, cumulative.
fn counts(slo: &SloConfig, v: &crate::repository::ServedVersion) -> (u64, u64) {
    match slo.kind {
        SloKind::Availability => {
            let by = v.metrics.outcome_counts();
            let total: u64 = by.iter().map(|(_, n)| n).sum();
            let bad = by
                .iter()
                .filter(|(o, _)| {
                    matches!(
                        o,
                        crate::error::Outcome::ServerError
                            | crate::error::Outcome::Timeout
                            | crate::error::Outcome::Shed
                    )
                })
                .map(|(_, n)| n)
                .sum();
            (total, bad)
        }
        SloKind::Latency => {
            let live = v.metrics.live();
            let threshold_us = (slo.threshold_ms.unwrap_or(0.0) * 1000.0) as u64;
            let good = live.at_most_us(threshold_us);
            (live.requests, live.requests.saturating_sub(good))
        }
    }
}

/// The share of bad requests over the last `w`: from the newest point at or
/// before `now - w` (or the oldest one, when the server has not been up that
/// long) to the newest.
fn ratio(points: &VecDeque<Point>, now: Instant, w: Duration) -> f64 {
    let Some(last) = points.back() else {
        return 0.0;
    };
    let from = points
        .iter()
        .rev()
        .find(|p| now.duration_since(p.at) >= w)
        .or_else(|| points.front())
        .copied()
        .unwrap_or(*last);
    let total = last.total.saturating_sub(from.total);
    if total == 0 {
        return 0.0;
    }
    last.bad.saturating_sub(from.bad) as f64 / total as f64
}

/// Alertmanager's webhook body (version 4) for one transition.
pub fn alertmanager_payload(t: &Transition) -> serde_json::Value {
    let ts = |s: SystemTime| humantime::format_rfc3339_millis(s).to_string();
    let fingerprint = {
        // FNV-1a over the sorted labels: stable per alert, as Alertmanager's.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (k, v) in &t.labels {
            for b in k.bytes().chain(v.to_string().bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    };
    let alertname = t.labels.get("alertname").cloned().unwrap_or_default();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname={alertname}}}"),
        "truncatedAlerts": 0,
        "status": t.status,
        "receiver": "greenbelt",
        "groupLabels": { "alertname": alertname },
        "commonLabels": t.labels,
        "commonAnnotations": t.annotations,
        "externalURL": "",
        "alerts": [{
            "status": t.status,
            "labels": t.labels,
            "annotations": t.annotations,
            "startsAt": ts(t.starts_at),
            "endsAt": t.ends_at.map_or("0001-01-01T00:00:00Z".to_string(), ts),
            "generatorURL": "",
            "fingerprint": fingerprint,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(u64, u64, u64)]) -> VecDeque<Point> {
        let base = Instant::now();
        v.iter()
            .map(|(s, total, bad)| Point {
                at: base + Duration::from_secs(*s),
                total: *total,
                bad: *bad,
            })
            .collect()
    }

    #[test]
    fn ratio_takes_the_window_or_what_history_there_is() {
        let p = pts(&[(0, 0, 0), (60, 100, 50), (360, 1100, 50)]);
        let now = p.back().unwrap().at;
        // last 5 minutes: from t=60 → 1000 requests, 0 bad
        assert_eq!(ratio(&p, now, Duration::from_secs(300)), 0.0);
        // last hour: only 6 minutes of history → from t=0
        assert!((ratio(&p, now, Duration::from_secs(3600)) - 50.0 / 1100.0).abs() < 1e-12);
        assert_eq!(ratio(&VecDeque::new(), now, Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn config_errors_name_the_field_and_hide_credentials() {
        let c = AlertsConfig {
            webhook_url: Some("ftp://ops:s3cret@hooks.example/x".into()),
            ..AlertsConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("[alerts] webhook_url") && !e.contains("s3cret"),
            "{e}"
        );
        let c = AlertsConfig {
            eval_interval: "soon".into(),
            ..AlertsConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("[alerts] eval_interval"));
        assert!(AlertsConfig::default().validate().is_ok());
    }

    #[test]
    fn payload_has_alertmanagers_shape() {
        let a = Alerts::new(&[], AlertsConfig::default());
        let slo = SloConfig {
            deployment: "fraud".into(),
            kind: SloKind::Availability,
            objective: 0.99,
            window: "30d".into(),
            threshold_ms: None,
            name: None,
        };
        let t = a.transition(
            &slo,
            "page",
            "GreenbeltSLOBurnRatePage",
            SystemTime::UNIX_EPOCH,
            None,
        );
        let p = alertmanager_payload(&t);
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(
            p["alerts"][0]["labels"]["alertname"],
            "GreenbeltSLOBurnRatePage"
        );
        assert_eq!(p["alerts"][0]["labels"]["slo"], "fraud-availability");
        assert_eq!(p["alerts"][0]["startsAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(p["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(
            p["alerts"][0]["annotations"]["runbook_url"],
            "docs/runbooks/slo-burn-rate.md"
        );
    }
}
