//! Release analysis: conditions like `error_rate <= 0.01` or
//! `p99_ms <= stable.p99_ms * 1.5 + 5`, evaluated on one window of the
//! candidate's and the stable version's own live metrics, the shadow
//! comparison of the candidate, and optional PromQL queries.
//!
//! Conditions are parsed by [`crate::expr`], the language pipeline gates
//! use too; this module decides which metrics exist and what they measure.
//!
//! A window where the candidate served fewer than `min_samples` requests, or
//! where a condition has no value (a metric without one — no shadow
//! comparisons, a failed query — or a division by zero), is
//! **inconclusive**: the rollout pauses instead of promoting.

use std::collections::BTreeMap;
use std::time::Duration;

use greenbelt_serve::deployment::AnalysisSpec;
use greenbelt_serve::live::Window;
use greenbelt_serve::shadow::ShadowWindow;

use super::machine::{AnalysisRun, Verdict};
use crate::expr::{self, Comparison, Undefined};

/// Metrics a condition may name (each also as `stable.<metric>`, except the
/// shadow ones), besides `prom.<query name>`.
pub const METRICS: &[&str] = &[
    "requests",
    "errors",
    "error_rate",
    "p50_ms",
    "p99_ms",
    "shadow_agreement",
    "shadow_error_rate",
    "shadow_compared",
];

/// Whether a condition must hold (`conditions`) or must not
/// (`failure_conditions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A run succeeds only when every success condition holds.
    Success,
    /// A run fails when any failure condition holds.
    Failure,
}

/// One parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub text: String,
    pub kind: Kind,
    cmp: Comparison,
}

fn check_metric(text: &str, name: &str, queries: &BTreeMap<String, String>) -> Result<(), String> {
    if let Some(q) = name.strip_prefix("prom.") {
        return if queries.contains_key(q) {
            Ok(())
        } else {
            let dash = if q.contains('-') {
                " (to subtract, put spaces around the -)"
            } else {
                ""
            };
            Err(format!(
                "condition \"{text}\": prom.{q} has no query{dash}; add it under analysis.queries"
            ))
        };
    }
    let base = name.strip_prefix("stable.").unwrap_or(name);
    if METRICS.contains(&base) && !(name.starts_with("stable.") && base.starts_with("shadow_")) {
        Ok(())
    } else {
        Err(format!(
            "condition \"{text}\": metric \"{name}\" is unknown; use one of {}, stable.<metric> or prom.<query>",
            METRICS.join(", ")
        ))
    }
}

impl Condition {
    /// Parse a condition: a comparison of two expressions of numbers and
    /// metrics with `+ - * /`, unary minus and parentheses (the
    /// [`crate::expr`] language), e.g. `p99_ms <= stable.p99_ms * 1.5 + 5`.
    pub fn parse(text: &str, queries: &BTreeMap<String, String>) -> Result<Condition, String> {
        Self::parse_kind(text, Kind::Success, queries)
    }

    /// Parse a success or a failure condition.
    pub fn parse_kind(
        text: &str,
        kind: Kind,
        queries: &BTreeMap<String, String>,
    ) -> Result<Condition, String> {
        let cmp = expr::parse_with(text, &["prom."]).map_err(|e| {
            format!(
                "condition \"{text}\" {e}; write <metric> <op> <expression>, e.g. \"error_rate <= 0.01\" or \"p99_ms <= stable.p99_ms * 1.5 + 5\""
            )
        })?;
        let names = cmp.identifiers();
        if names.is_empty() {
            return Err(format!(
                "condition \"{text}\" names no metric; compare a metric, e.g. \"error_rate <= 0.01\""
            ));
        }
        for name in names {
            check_metric(text, name, queries)?;
        }
        Ok(Condition {
            text: text.to_string(),
            kind,
            cmp,
        })
    }

    /// Whether the condition judges a shadow comparison (`shadow_*`).
    pub fn needs_shadow(&self) -> bool {
        self.cmp
            .identifiers()
            .iter()
            .any(|n| n.starts_with("shadow_"))
    }

    /// (measured, threshold, holds), or why there is no value.
    fn evaluate(&self, values: &BTreeMap<String, f64>) -> Result<(f64, f64, bool), String> {
        self.cmp
            .eval(&|name| values.get(name).copied())
            .map_err(|e| match e {
                Undefined::Missing(m) => format!("{m} has no value in this window"),
                other => format!("{other}: no value in this window"),
            })
    }
}

/// Every condition of `spec`, parsed: `conditions`, then
/// `failure_conditions`; the first error names the field and the condition.
pub fn conditions(spec: &AnalysisSpec) -> Result<Vec<Condition>, String> {
    let parse = |field: &'static str, kind: Kind, texts: &[String]| {
        texts
            .iter()
            .map(|c| {
                Condition::parse_kind(c, kind, &spec.queries).map_err(|e| format!("{field}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let mut all = parse("conditions", Kind::Success, &spec.conditions)?;
    all.extend(parse(
        "failure_conditions",
        Kind::Failure,
        &spec.failure_conditions,
    )?);
    Ok(all)
}

/// What one window measured.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    pub candidate: Window,
    pub stable: Window,
    pub shadow: Option<ShadowWindow>,
    /// PromQL results by query name; a failed query is absent.
    pub prom: BTreeMap<String, f64>,
    /// Set when the stable version served nothing in this window and
    /// `stable` is its last measured window instead (see
    /// [`Measurement::carry_stable`]): when that window was measured.
    pub stable_baseline_at_ms: Option<i64>,
}

/// The value key that records where a carried stable baseline came from.
const BASELINE_AT: &str = "stable.baseline_at_ms";

impl Measurement {
    /// When the stable version served no request in this window (the
    /// canary is at 100%, or blue/green switched all traffic), take
    /// `stable.*` from the newest earlier run of this rollout in which it
    /// did: a relative condition such as `p99_ms <= stable.p99_ms * 1.5`
    /// then compares the candidate at full traffic with the baseline it was
    /// measured against, instead of having no value. Without such a run the
    /// stable window stays empty and those conditions stay inconclusive.
    pub fn carry_stable(&mut self, runs: &[AnalysisRun]) {
        if self.stable.requests > 0 {
            return;
        }
        let carried = runs.iter().rev().find_map(|run| {
            let get = |k: &str| run.values.get(&format!("stable.{k}")).copied();
            let requests = get("requests").filter(|n| *n >= 1.0)?;
            let window = Window {
                requests: requests as u64,
                errors: get("errors")? as u64,
                error_rate: get("error_rate")?,
                p50_ms: get("p50_ms")?,
                p99_ms: get("p99_ms")?,
            };
            let at = run
                .values
                .get(BASELINE_AT)
                .map_or(run.at_ms, |ms| *ms as i64);
            Some((window, at))
        });
        if let Some((window, at)) = carried {
            self.stable = window;
            self.stable_baseline_at_ms = Some(at);
        }
    }

    fn values(&self) -> BTreeMap<String, f64> {
        let mut v = BTreeMap::new();
        for (prefix, w) in [("", &self.candidate), ("stable.", &self.stable)] {
            v.insert(format!("{prefix}requests"), w.requests as f64);
            v.insert(format!("{prefix}errors"), w.errors as f64);
            v.insert(format!("{prefix}error_rate"), w.error_rate);
            if w.requests > 0 {
                v.insert(format!("{prefix}p50_ms"), w.p50_ms);
                v.insert(format!("{prefix}p99_ms"), w.p99_ms);
            }
        }
        if let Some(at) = self.stable_baseline_at_ms {
            v.insert(BASELINE_AT.into(), at as f64);
        }
        if let Some(s) = &self.shadow {
            v.insert("shadow_compared".into(), s.compared as f64);
            if s.compared + s.errors > 0 {
                v.insert("shadow_error_rate".into(), s.error_rate);
            }
            if s.rows > 0 {
                v.insert("shadow_agreement".into(), s.agreement);
            }
        }
        for (k, x) in &self.prom {
            v.insert(format!("prom.{k}"), *x);
        }
        v
    }
}

/// Judge one window: a failure condition that holds fails the run, even
/// in a small window; else a success condition that does not hold fails it
/// when the candidate served requests; else a condition without a value
/// (or too few requests) makes it inconclusive; else a failed success
/// condition fails it; else it passes.
pub fn judge(
    conditions: &[Condition],
    min_samples: u64,
    m: &Measurement,
    at_ms: i64,
) -> AnalysisRun {
    let values = m.values();
    let mut met = Vec::new();
    let mut failed = Vec::new();
    let mut missing = Vec::new();
    if m.candidate.requests < min_samples {
        missing.push(format!(
            "{} requests < min_samples {}",
            m.candidate.requests, min_samples
        ));
    }
    for c in conditions {
        // Shadow conditions judge a running shadow; after a blue/green
        // switch there is none, and the other conditions decide.
        if m.shadow.is_none() && c.needs_shadow() {
            continue;
        }
        match (c.kind, c.evaluate(&values)) {
            (Kind::Success, Ok((_, _, true))) | (Kind::Failure, Ok((_, _, false))) => {}
            (Kind::Success, Ok((left, right, false))) => failed.push(format!(
                "{} (measured {left:.6}, threshold {right:.6})",
                c.text
            )),
            (Kind::Failure, Ok((left, right, true))) => met.push(format!(
                "failure condition {} (measured {left:.6}, threshold {right:.6})",
                c.text
            )),
            (_, Err(e)) => missing.push(format!("{}: {e}", c.text)),
        }
    }
    // A measured failure is a failure even in a small window: errors from a
    // broken candidate must abort, not pause.
    let (verdict, mut notes) = if !met.is_empty() {
        met.extend(failed);
        (Verdict::Failure, met)
    } else if !failed.is_empty() && m.candidate.requests > 0 {
        (Verdict::Failure, failed)
    } else if !missing.is_empty() {
        (Verdict::Inconclusive, missing)
    } else if !failed.is_empty() {
        (Verdict::Failure, failed)
    } else {
        (Verdict::Success, Vec::new())
    };
    if let Some(at) = m.stable_baseline_at_ms {
        notes.push(format!(
            "the stable version served no requests in this window; stable.* are its window measured at {at} ms"
        ));
    }
    AnalysisRun {
        at_ms,
        verdict,
        values,
        notes,
    }
}

/// Run the named PromQL queries against `base_url`; a query that fails or
/// returns no sample is left out (its conditions become inconclusive).
pub async fn prometheus(
    base_url: &str,
    queries: &BTreeMap<String, String>,
    deployment: &str,
    version: i64,
    timeout: Duration,
    breaker: &greenbelt_core::breaker::SharedBreaker,
) -> BTreeMap<String, f64> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for (name, q) in queries {
        let query = q
            .replace("{deployment}", deployment)
            .replace("{version}", &version.to_string());
        let url = format!("{}/api/v1/query", base_url.trim_end_matches('/'));
        // One query is one call through the breaker: an unreachable,
        // failing or slow Prometheus is skipped at once while it is open
        // (the measurement is missing, so the run is inconclusive).
        let call = async {
            let r = client
                .get(&url)
                .query(&[("query", query.as_str())])
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| e.to_string())?;
            r.json::<serde_json::Value>()
                .await
                .map_err(|e| e.to_string())
        };
        let value = match breaker.call(timeout, call, |_| true).await {
            Ok(j) => scalar(&j),
            Err(e) => {
                tracing::warn!(query = %name, error = %e, "prometheus query failed");
                None
            }
        };
        if let Some(x) = value {
            out.insert(name.clone(), x);
        }
    }
    out
}

/// The first sample of a Prometheus `/api/v1/query` answer (vector or scalar).
fn scalar(j: &serde_json::Value) -> Option<f64> {
    let data = j.get("data")?;
    let value = match data.get("resultType")?.as_str()? {
        "vector" => data.get("result")?.get(0)?.get("value")?,
        "scalar" => data.get("result")?,
        _ => return None,
    };
    value
        .get(1)?
        .as_str()?
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, errors: u64, p99_ms: f64) -> Window {
        Window {
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: p99_ms / 2.0,
            p99_ms,
        }
    }

    #[test]
    fn parse_errors_name_the_fix() {
        let q = BTreeMap::new();
        for (text, want) in [
            ("error_rate", "at column 11: no comparison"),
            ("eror_rate <= 0.01", "unknown"),
            (
                "error_rate => 0.01",
                "at column 12: \"=>\" is not a comparison",
            ),
            (
                "p99_ms <= stable.p99_ms ^ 2",
                "at column 25: \"^\" is not an operator",
            ),
            ("prom.x < 1", "analysis.queries"),
            ("stable.shadow_agreement > 1", "unknown"),
            ("prom.burn-x < 1", "put spaces around the -"),
            ("1 < 2", "names no metric"),
            ("p99_ms <= (stable.p99_ms + 5", "never closed"),
        ] {
            let e = Condition::parse(text, &q).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains(&format!("\"{text}\"")), "{text}: {e}");
        }
    }

    #[test]
    fn expressions_follow_precedence() {
        let q = BTreeMap::new();
        let m = Measurement {
            candidate: window(100, 0, 19.0),
            stable: window(100, 0, 10.0),
            ..Measurement::default()
        };
        // 5 + 10 * 1.5 = 20 (left to right it was 22.5); both spellings agree.
        for (text, measured, threshold) in [
            ("p99_ms <= 5 + stable.p99_ms * 1.5", 19.0, 20.0),
            ("p99_ms <= stable.p99_ms * 1.5 + 5", 19.0, 20.0),
            ("p99_ms<=stable.p99_ms*1.5+5", 19.0, 20.0),
            ("p99_ms - 5 <= (stable.p99_ms) * 1.5", 14.0, 15.0),
            ("-p99_ms >= -(stable.p99_ms * 1.5 + 5)", -19.0, -20.0),
        ] {
            let c = Condition::parse(text, &q).unwrap();
            assert_eq!(
                c.evaluate(&m.values()),
                Ok((measured, threshold, true)),
                "{text}"
            );
        }
        let c = Condition::parse("p99_ms <= 5 + stable.p99_ms * 1.5", &q).unwrap();
        let slow = Measurement {
            candidate: window(100, 0, 21.0),
            ..m.clone()
        };
        let r = judge(&[c], 1, &slow, 0);
        assert_eq!(r.verdict, Verdict::Failure);
        assert!(r.notes[0].contains("threshold 20.0"), "{:?}", r.notes);
    }

    #[test]
    fn old_forms_still_parse() {
        let mut q = BTreeMap::new();
        q.insert("burn-rate".to_string(), "sum(x)".to_string());
        q.insert("burn".to_string(), "sum(x)".to_string());
        for text in [
            "error_rate <= 0.01",
            "p99_ms <= stable.p99_ms * 1.5 + 5",
            "p99_ms <= stable.p99_ms * 20 + 50",
            "shadow_agreement >= 0.99",
            "prom.burn < 2",
            "prom.burn-rate < 2",
            "p50_ms < stable.p50_ms / 2 - 1",
        ] {
            Condition::parse(text, &q).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        // Outside prom.<query>, a dash without spaces subtracts.
        let c = Condition::parse("error_rate-stable.error_rate <= 0.01", &q).unwrap();
        assert_eq!(c.cmp.identifiers(), ["error_rate", "stable.error_rate"]);
    }

    #[test]
    fn division_by_zero_is_inconclusive() {
        let q = BTreeMap::new();
        let c = Condition::parse("errors <= stable.errors / stable.requests * 100", &q).unwrap();
        let m = Measurement {
            candidate: window(100, 0, 1.0),
            stable: window(0, 0, 1.0),
            ..Measurement::default()
        };
        let r = judge(&[c], 1, &m, 0);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.notes[0].contains("division by zero"), "{:?}", r.notes);
    }

    #[test]
    fn judge_success_failure_inconclusive() {
        let c = conditions(&AnalysisSpec {
            conditions: vec![
                "error_rate <= 0.05".into(),
                "p99_ms <= stable.p99_ms * 2 + 1".into(),
            ],
            ..AnalysisSpec::default()
        })
        .unwrap();
        let ok = Measurement {
            candidate: window(100, 1, 10.0),
            stable: window(900, 0, 5.0),
            ..Measurement::default()
        };
        assert_eq!(judge(&c, 50, &ok, 0).verdict, Verdict::Success);
        let slow = Measurement {
            candidate: window(100, 0, 12.0),
            ..ok.clone()
        };
        let r = judge(&c, 50, &slow, 0);
        assert_eq!(r.verdict, Verdict::Failure);
        assert!(r.notes[0].contains("threshold 11"), "{:?}", r.notes);
        // Too few requests and nothing failing: inconclusive, not success.
        let few = Measurement {
            candidate: window(10, 0, 1.0),
            ..ok.clone()
        };
        let r = judge(&c, 50, &few, 0);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.notes[0].contains("min_samples"));
        // But errors in a small window are a failure.
        let failing = Measurement {
            candidate: window(10, 10, 1.0),
            ..ok
        };
        assert_eq!(judge(&c, 50, &failing, 0).verdict, Verdict::Failure);
    }

    #[test]
    fn failure_conditions_fail_before_success_conditions_decide() {
        let spec = AnalysisSpec {
            conditions: vec!["p99_ms <= stable.p99_ms * 2".into()],
            failure_conditions: vec![
                "error_rate > 0.1".into(),
                "p99_ms - stable.p99_ms > 100".into(),
            ],
            ..AnalysisSpec::default()
        };
        let c = conditions(&spec).unwrap();
        assert_eq!(
            c.iter().map(|c| c.kind).collect::<Vec<_>>(),
            [Kind::Success, Kind::Failure, Kind::Failure]
        );
        let ok = Measurement {
            candidate: window(100, 1, 10.0),
            stable: window(900, 0, 6.0),
            ..Measurement::default()
        };
        assert_eq!(judge(&c, 50, &ok, 0).verdict, Verdict::Success);
        // A failure condition that holds fails the run, named as such, even
        // below min_samples, where a success condition alone would wait.
        let broken = Measurement {
            candidate: window(10, 5, 10.0),
            ..ok.clone()
        };
        let r = judge(&c, 50, &broken, 0);
        assert_eq!(r.verdict, Verdict::Failure);
        assert!(
            r.notes[0].starts_with("failure condition error_rate > 0.1 (measured 0.5"),
            "{:?}",
            r.notes
        );
        // Both kinds failing: the failure condition first, then the rest.
        let slow = Measurement {
            candidate: window(100, 0, 200.0),
            ..ok.clone()
        };
        let r = judge(&c, 50, &slow, 0);
        assert_eq!(r.verdict, Verdict::Failure);
        assert!(
            r.notes[0].starts_with("failure condition p99_ms - stable.p99_ms"),
            "{:?}",
            r.notes
        );
        assert!(
            r.notes[1].starts_with("p99_ms <= stable.p99_ms * 2"),
            "{:?}",
            r.notes
        );
        // A failure condition without a value is inconclusive, not a pass.
        let no_stable = Measurement {
            stable: window(0, 0, 0.0),
            ..ok.clone()
        };
        let r = judge(&c[2..], 50, &no_stable, 0);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(
            r.notes[0].contains("stable.p99_ms has no value"),
            "{:?}",
            r.notes
        );
        // With an earlier run that measured the stable version (the canary
        // went to 100%), stable.* come from that window and say so.
        let earlier = judge(&c[2..], 50, &ok, 1_000);
        let mut carried = no_stable.clone();
        carried.carry_stable(std::slice::from_ref(&earlier));
        let r = judge(&c[2..], 50, &carried, 2_000);
        assert_eq!(r.verdict, Verdict::Success, "{:?}", r.notes);
        assert_eq!(r.values["stable.p99_ms"], 6.0);
        assert_eq!(r.values["stable.requests"], 900.0);
        assert_eq!(r.values[BASELINE_AT], 1_000.0);
        assert!(r.notes[0].contains("measured at 1000 ms"), "{:?}", r.notes);
        // Carried again, it still names the window that was measured.
        let mut again = no_stable.clone();
        again.carry_stable(&[earlier.clone(), r]);
        assert_eq!(again.stable_baseline_at_ms, Some(1_000));
        assert_eq!(again.stable.p99_ms, 6.0);
        // A stable window with requests is never replaced, and a run that
        // never measured the stable version is no baseline.
        let mut own = ok.clone();
        own.carry_stable(std::slice::from_ref(&earlier));
        assert_eq!((own.stable.p99_ms, own.stable_baseline_at_ms), (6.0, None));
        let blind = judge(&c[2..], 50, &no_stable, 3_000);
        let mut none = no_stable.clone();
        none.carry_stable(&[blind]);
        assert_eq!(none.stable_baseline_at_ms, None);
        assert_eq!(
            judge(&c[2..], 50, &none, 4_000).verdict,
            Verdict::Inconclusive
        );
        // Failure conditions alone: the run passes while none holds.
        assert_eq!(judge(&c[1..], 50, &ok, 0).verdict, Verdict::Success);
        // The field is named in errors.
        let e = conditions(&AnalysisSpec {
            failure_conditions: vec!["error_rate >> 1".into()],
            ..AnalysisSpec::default()
        })
        .unwrap_err();
        assert!(
            e.starts_with("failure_conditions: condition \"error_rate >> 1\""),
            "{e}"
        );
        let e = conditions(&AnalysisSpec {
            conditions: vec!["latency < 1".into()],
            ..AnalysisSpec::default()
        })
        .unwrap_err();
        assert!(
            e.starts_with("conditions: condition \"latency < 1\""),
            "{e}"
        );
    }

    #[test]
    fn shadow_and_prom_values() {
        let mut queries = BTreeMap::new();
        queries.insert("burn".to_string(), "sum(rate(x[1m]))".to_string());
        let c = vec![
            Condition::parse("shadow_agreement >= 0.99", &queries).unwrap(),
            Condition::parse("prom.burn < 2", &queries).unwrap(),
        ];
        let mut m = Measurement {
            candidate: window(100, 0, 1.0),
            stable: window(100, 0, 1.0),
            shadow: None,
            prom: BTreeMap::new(),
            stable_baseline_at_ms: None,
        };
        assert_eq!(judge(&c, 1, &m, 0).verdict, Verdict::Inconclusive);
        m.shadow = Some(ShadowWindow {
            compared: 100,
            rows: 100,
            agreement: 0.9,
            ..ShadowWindow::default()
        });
        m.prom.insert("burn".into(), 1.0);
        let r = judge(&c, 1, &m, 0);
        assert_eq!(r.verdict, Verdict::Failure);
        assert!(r.notes[0].starts_with("shadow_agreement"), "{:?}", r.notes);
        assert_eq!(
            scalar(
                &serde_json::json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"1.5"]}]}})
            ),
            Some(1.5)
        );
    }
}
