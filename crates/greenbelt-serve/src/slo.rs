//! Service-level objectives (`[[slo]]` in greenbelt.toml) and the Prometheus
//! rules that watch them: recording rules for the error ratio over each
//! window, the SRE workbook's multi-window, multi-burn-rate alerts (page:
//! 14.4x over 1h and 5m, 6x over 6h and 30m; ticket: 3x over 1d and 2h, 1x
//! over 3d and 6h), and the saturation, freshness, rollout and model-load
//! alerts every deployment needs. `greenbelt slo rules` prints them; every
//! alert names its runbook in `docs/runbooks/`.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::metrics::LATENCY_BUCKETS;

/// What an SLO counts as a good request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SloKind {
    /// Answered without a server-side failure (not 5xx: server error,
    /// timeout, shed).
    Availability,
    /// Answered within `threshold_ms` (successful requests only).
    Latency,
}

/// One `[[slo]]`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// The model or deployment name (the `model` label of the metrics).
    pub deployment: String,
    /// `availability` (answered without a server-side failure) or `latency`
    /// (answered within `threshold_ms`).
    pub kind: SloKind,
    /// Target share of good requests, e.g. 0.999.
    pub objective: f64,
    /// The compliance window (humantime, e.g. "30d"; default 30 days).
    #[serde(default = "default_window")]
    pub window: String,
    /// Latency SLOs: a request is good when it took at most this long. Must
    /// be a bucket bound of `greenbelt_request_duration_seconds`.
    #[serde(default)]
    pub threshold_ms: Option<f64>,
    /// Name used in rule labels (default `<deployment>-<kind>`).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_window() -> String {
    "30d".into()
}

/// The burn-rate pairs of the SRE workbook (chapter 5, table 5-8):
/// (severity, long window, short window, burn-rate factor).
pub const BURN_WINDOWS: [(&str, &str, &str, f64); 4] = [
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6.0),
    ("ticket", "1d", "2h", 3.0),
    ("ticket", "3d", "6h", 1.0),
];

/// Every window a recording rule is kept for.
pub const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

impl SloConfig {
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                self.deployment,
                match self.kind {
                    SloKind::Availability => "availability",
                    SloKind::Latency => "latency",
                }
            )
        })
    }

    /// The allowed error share, 1 - objective.
    pub fn budget(&self) -> f64 {
        1.0 - self.objective
    }

    /// The histogram bound (seconds) the threshold names, as Prometheus
    /// prints it in `le`.
    fn le(&self) -> Option<String> {
        let t = self.threshold_ms? / 1000.0;
        LATENCY_BUCKETS
            .iter()
            .find(|b| ((**b - t) / t).abs() < 1e-9)
            .map(|b| format!("{b}"))
    }

    pub fn validate(&self, i: usize) -> Result<(), String> {
        let at = format!("[[slo]] #{} ({})", i + 1, self.name());
        crate::repository::check_model_name(&self.deployment)
            .map_err(|e| format!("{at} deployment: {e}"))?;
        if !(self.objective > 0.0 && self.objective < 1.0) {
            return Err(format!(
                "{at} objective must be between 0 and 1 (e.g. 0.999), got {}",
                self.objective
            ));
        }
        humantime::parse_duration(&self.window)
            .map_err(|e| format!("{at} window \"{}\": {e} (e.g. \"30d\")", self.window))?;
        match (self.kind, self.threshold_ms) {
            (SloKind::Latency, None) => {
                return Err(format!("{at} threshold_ms is required for a latency SLO"));
            }
            (SloKind::Latency, Some(_)) if self.le().is_none() => {
                let bounds: Vec<String> = LATENCY_BUCKETS
                    .iter()
                    .map(|b| format!("{}", b * 1000.0))
                    .collect();
                return Err(format!(
                    "{at} threshold_ms must be a bucket bound of greenbelt_request_duration_seconds (ms): {}",
                    bounds.join(", ")
                ));
            }
            (SloKind::Availability, Some(_)) => {
                return Err(format!("{at} threshold_ms is only for kind = \"latency\""));
            }
            _ => {}
        }
        if let Some(n) = &self.name
            && (n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(format!(
                "{at} name must be letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(())
    }

    /// The burn-rate alerts' summary annotation.
    pub fn burn_summary(&self) -> String {
        let what = match self.kind {
            SloKind::Availability => "errors".to_string(),
            SloKind::Latency => format!(
                "requests slower than {} ms",
                self.threshold_ms.unwrap_or(0.0)
            ),
        };
        format!(
            "{}: {what} are burning the {} error budget ({} of requests over {}) too fast",
            self.deployment,
            self.name(),
            (self.budget() * 1e9).round() / 1e9,
            self.window
        )
    }

    /// PromQL for the share of bad requests over `window`.
    pub fn error_ratio(&self, window: &str) -> String {
        let m = &self.deployment;
        match self.kind {
            SloKind::Availability => format!(
                "sum(rate(greenbelt_requests_total{{model=\"{m}\",outcome=~\"server_error|timeout|shed\"}}[{window}])) / sum(rate(greenbelt_requests_total{{model=\"{m}\"}}[{window}]))"
            ),
            SloKind::Latency => format!(
                "1 - sum(rate(greenbelt_request_duration_seconds_bucket{{model=\"{m}\",le=\"{}\"}}[{window}])) / sum(rate(greenbelt_request_duration_seconds_count{{model=\"{m}\"}}[{window}]))",
                self.le().unwrap_or_default()
            ),
        }
    }
}

/// The recorded series of an SLO's error ratio over `window`.
pub fn ratio_series(window: &str) -> String {
    format!("greenbelt:slo_error_ratio:rate{window}")
}

/// Every alert `rules` writes, with its runbook file (under docs/runbooks/).
pub const ALERTS: [(&str, &str); 13] = [
    ("GreenbeltSLOBurnRatePage", "slo-burn-rate.md"),
    ("GreenbeltSLOBurnRateTicket", "slo-burn-rate.md"),
    ("GreenbeltInflightNearLimit", "saturation.md"),
    ("GreenbeltBatchQueueNearFull", "saturation.md"),
    ("GreenbeltShedding", "saturation.md"),
    ("GreenbeltCPUSaturated", "saturation.md"),
    ("GreenbeltFeatureFreshnessBreach", "feature-freshness.md"),
    ("GreenbeltFeaturePipelineStalled", "pipeline-outage.md"),
    ("GreenbeltCanaryFailed", "bad-deployment.md"),
    ("GreenbeltModelLoadFailed", "model-load-failure.md"),
    ("GreenbeltRequestLogDropping", "saturation.md"),
    ("GreenbeltFeatureDrift", "drift.md"),
    ("GreenbeltPredictionDrift", "drift.md"),
];

/// An alert's `runbook_url` under `base`.
pub fn runbook(base: &str, alert: &str) -> String {
    let file = ALERTS
        .iter()
        .chain(crate::cost::budget::ALERTS.iter())
        .find(|(a, _)| *a == alert)
        .map_or("README.md", |(_, f)| f);
    format!("{}/{file}", base.trim_end_matches('/'))
}

/// YAML-quote a string (single quotes, doubled inside).
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The Prometheus rule file for `slos`: recording rules, burn-rate alerts
/// per SLO, and the operational alerts. `runbook_base` prefixes each
/// alert's `runbook_url` (e.g. a link to docs/runbooks in your repository).
pub fn prometheus_rules(slos: &[SloConfig], runbook_base: &str) -> String {
    let mut y =
        String::from("# Generated by `greenbelt slo rules`; do not edit, regenerate.\ngroups:\n");
    if !slos.is_empty() {
        y.push_str("  - name: greenbelt-slo-recording\n    rules:\n");
        for slo in slos {
            for w in WINDOWS {
                let _ = write!(
                    y,
                    "      - record: {}\n        expr: {}\n        labels:\n          slo: {}\n          deployment: {}\n",
                    ratio_series(w),
                    q(&slo.error_ratio(w)),
                    q(&slo.name()),
                    q(&slo.deployment),
                );
            }
        }
        y.push_str("  - name: greenbelt-slo-alerts\n    rules:\n");
        for slo in slos {
            for severity in ["page", "ticket"] {
                let alert = if severity == "page" {
                    "GreenbeltSLOBurnRatePage"
                } else {
                    "GreenbeltSLOBurnRateTicket"
                };
                let clauses: Vec<String> = BURN_WINDOWS
                    .iter()
                    .filter(|(s, ..)| *s == severity)
                    .map(|(_, long, short, factor)| {
                        let sel = format!("{{slo=\"{}\"}}", slo.name());
                        // rounded so that 14.4 x 0.001 prints as 0.0144
                        let limit = (factor * slo.budget() * 1e12).round() / 1e12;
                        format!(
                            "({long_s}{sel} > {limit} and {short_s}{sel} > {limit})",
                            long_s = ratio_series(long),
                            short_s = ratio_series(short),
                        )
                    })
                    .collect();
                let _ = write!(
                    y,
                    "      - alert: {alert}\n        expr: {}\n        labels:\n          severity: {severity}\n          slo: {}\n          deployment: {}\n        annotations:\n          summary: {}\n          runbook_url: {}\n",
                    q(&clauses.join(" or ")),
                    q(&slo.name()),
                    q(&slo.deployment),
                    q(&slo.burn_summary()),
                    q(&runbook(runbook_base, alert)),
                );
            }
        }
    }
    y.push_str("  - name: greenbelt-operations\n    rules:\n");
    let ops: [(&str, &str, &str, &str, &str); 11] = [
        (
            "GreenbeltInflightNearLimit",
            "sum(greenbelt_inflight_requests) / max(greenbelt_inflight_limit) > 0.9",
            "5m",
            "warning",
            "In-flight requests are above 90% of [server] max_inflight",
        ),
        (
            "GreenbeltBatchQueueNearFull",
            "max by (model, version) (greenbelt_batch_queue_depth / greenbelt_batch_queue_limit) > 0.8",
            "5m",
            "warning",
            "A batch queue is above 80% of its max_queue_size",
        ),
        (
            "GreenbeltShedding",
            "sum(rate(greenbelt_shed_total[5m])) / clamp_min(sum(rate(greenbelt_requests_total[5m])), 1e-9) > 0.01",
            "5m",
            "page",
            "More than 1% of requests are shed",
        ),
        (
            "GreenbeltCPUSaturated",
            "rate(process_cpu_seconds_total[5m]) / on(instance, job) greenbelt_cpu_cores > 0.9",
            "10m",
            "warning",
            "The server uses more than 90% of the CPUs it has",
        ),
        (
            "GreenbeltFeatureFreshnessBreach",
            "max by (view) (greenbelt_feature_view_freshness_breach) > 0",
            "5m",
            "page",
            "A feature view is staler than its contract's max_age",
        ),
        (
            "GreenbeltFeaturePipelineStalled",
            "max by (view) (1 - greenbelt_feature_batch_canary_success) > 0",
            "5m",
            "page",
            "The batch path (source, materialize, online) has not delivered a feature view within its freshness SLA",
        ),
        (
            "GreenbeltCanaryFailed",
            "sum by (deployment) (increase(greenbelt_rollout_events_total{event=~\"aborted|rolled_back\"}[15m])) > 0",
            "0m",
            "ticket",
            "A canary was aborted or rolled back by analysis",
        ),
        (
            "GreenbeltModelLoadFailed",
            "sum by (model) (increase(greenbelt_model_load_failures_total[15m])) > 0",
            "0m",
            "ticket",
            "A model version failed to load",
        ),
        (
            "GreenbeltRequestLogDropping",
            "rate(greenbelt_request_log_dropped_total[5m]) > 0",
            "10m",
            "ticket",
            "The request log drops lines (its writer cannot keep up)",
        ),
        (
            "GreenbeltFeatureDrift",
            "max by (model, version) (greenbelt_drift_drifted_features) > 0",
            "15m",
            "ticket",
            "Live inputs of a model version departed from its training reference ([drift] psi_threshold, ks_pvalue)",
        ),
        (
            "GreenbeltPredictionDrift",
            "max by (model, version) (greenbelt_prediction_drift_psi) > 0.2",
            "15m",
            "ticket",
            "A model version's predictions departed from its holdout predictions (PSI > 0.2)",
        ),
    ];
    for (alert, expr, for_, severity, summary) in ops {
        let _ = write!(
            y,
            "      - alert: {alert}\n        expr: {}\n        for: {for_}\n        labels:\n          severity: {severity}\n        annotations:\n          summary: {}\n          runbook_url: {}\n",
            q(expr),
            q(summary),
            q(&runbook(runbook_base, alert)),
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(kind: SloKind, threshold_ms: Option<f64>) -> SloConfig {
        SloConfig {
            deployment: "fraud".into(),
            kind,
            objective: 0.999,
            window: "30d".into(),
            threshold_ms,
            name: None,
        }
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        assert!(slo(SloKind::Availability, None).validate(0).is_ok());
        assert!(slo(SloKind::Latency, Some(102.4)).validate(0).is_ok());
        let e = slo(SloKind::Latency, Some(100.0)).validate(0).unwrap_err();
        assert!(e.contains("threshold_ms") && e.contains("102.4"), "{e}");
        let e = slo(SloKind::Latency, None).validate(0).unwrap_err();
        assert!(e.contains("threshold_ms is required"), "{e}");
        let mut s = slo(SloKind::Availability, None);
        s.objective = 99.9;
        assert!(s.validate(0).unwrap_err().contains("objective"));
        s.objective = 0.99;
        s.window = "a month".into();
        assert!(s.validate(0).unwrap_err().contains("window"));
    }

    #[test]
    fn every_alert_has_its_runbook() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks");
        for (alert, file) in ALERTS {
            let text = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{alert}: docs/runbooks/{file}: {e}"));
            assert!(
                text.contains(alert),
                "docs/runbooks/{file} does not name {alert}"
            );
        }
    }

    #[test]
    fn rules_have_every_window_and_both_severities() {
        let y = prometheus_rules(
            &[
                slo(SloKind::Availability, None),
                slo(SloKind::Latency, Some(51.2)),
            ],
            "https://example.test/runbooks",
        );
        for w in WINDOWS {
            assert!(y.contains(&format!("record: greenbelt:slo_error_ratio:rate{w}\n")));
        }
        assert!(y.contains("le=\"0.0512\""), "{y}");
        // 14.4 x 0.001 budget
        assert!(
            y.contains("greenbelt:slo_error_ratio:rate1h{slo=\"fraud-availability\"} > 0.0144"),
            "{y}"
        );
        assert_eq!(y.matches("alert: GreenbeltSLOBurnRatePage").count(), 2);
        for (alert, file) in ALERTS {
            assert!(y.contains(&format!("alert: {alert}\n")), "{alert}");
            assert!(y.contains(&format!("https://example.test/runbooks/{file}")));
        }
    }
}
