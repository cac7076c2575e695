//! Gate rules: a comparison in the [`crate::expr`] language (the one
//! rollout analysis uses): numbers and metrics with `+ - * /`, unary minus
//! and parentheses, e.g. `auc >= 0.8`, `auc >= champion.auc - 0.005`,
//! `log_loss <= champion.log_loss * 1.02`, `p99_ms <= 5 + parent.p99_ms * 1.1`.
//! A bare metric is the candidate's; `champion.<metric>` the champion's;
//! `parent.<metric>` means the same: a derived version (`greenbelt
//! optimize`) is compared with the version it came from as a candidate is
//! with the champion. Metrics: roc_auc (alias auc), pr_auc, log_loss,
//! accuracy, precision, recall, f1 (classification), rmse, mae
//! (regression), p50_ms, p99_ms; size_bytes (the artifact) and agreement
//! (share of rows whose predicted class equals the parent's) are measured by
//! `optimize` only.

use std::collections::BTreeMap;

use serde::Serialize;

use super::PipelineError;
use crate::expr::{self, Comparison, Undefined};

pub const METRICS: &[&str] = &[
    "roc_auc",
    "pr_auc",
    "log_loss",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "rmse",
    "mae",
    "p50_ms",
    "p99_ms",
    "size_bytes",
    "agreement",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub text: String,
    /// The first metric the rule names (canonical, without a prefix): the
    /// one its value is reported as.
    pub metric: String,
    /// Identifiers canonical: `roc_auc`, `champion.roc_auc`.
    cmp: Comparison,
}

fn canonical(metric: &str) -> Result<String, PipelineError> {
    let m = if metric == "auc" { "roc_auc" } else { metric };
    if METRICS.contains(&m) {
        Ok(m.to_string())
    } else {
        Err(PipelineError::Definition(format!(
            "gate metric \"{metric}\" is unknown; use one of auc, {}",
            METRICS.join(", ")
        )))
    }
}

/// `champion.x` / `parent.x` (the reference version's), or the candidate's.
fn reference(name: &str) -> Option<&str> {
    name.strip_prefix("champion.")
        .or_else(|| name.strip_prefix("parent."))
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, PipelineError> {
        let mut cmp = expr::parse(text).map_err(|e| {
            PipelineError::Definition(format!(
                "gate \"{text}\" {e}; write <metric> <op> <expression> over numbers, metrics and champion.<metric>, e.g. \"auc >= champion.auc - 0.005\""
            ))
        })?;
        cmp.map_identifiers(&mut |name, _| match reference(name) {
            Some(m) => {
                let prefix = &name[..name.len() - m.len()];
                Ok(format!("{prefix}{}", canonical(m)?))
            }
            None => canonical(name),
        })
        .map_err(|e| match e {
            PipelineError::Definition(m) => {
                PipelineError::Definition(format!("gate \"{text}\": {m}"))
            }
            other => other,
        })?;
        let metric = cmp
            .identifiers()
            .first()
            .map(|n| reference(n).unwrap_or(*n).to_string())
            .ok_or_else(|| {
                PipelineError::Definition(format!(
                    "gate \"{text}\" names no metric; compare one, e.g. \"auc >= 0.8\""
                ))
            })?;
        Ok(Rule {
            text: text.to_string(),
            metric,
            cmp,
        })
    }

    /// Whether the rule needs a champion (or parent) to be judged.
    pub fn references_champion(&self) -> bool {
        self.cmp
            .identifiers()
            .iter()
            .any(|n| reference(n).is_some())
    }
}

/// One rule's outcome, as stored in the gate report.
#[derive(Debug, Clone, Serialize)]
pub struct RuleResult {
    pub rule: String,
    pub metric: String,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    /// "pass", "fail", or "skipped" (champion rule with no champion yet).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Evaluate every rule against the candidate's and (optionally) the
/// champion's metrics. A rule with no value (a metric missing, a division
/// by zero) fails, saying why; a rule naming the champion is skipped while
/// there is none.
pub fn evaluate(
    rules: &[Rule],
    candidate: &BTreeMap<String, f64>,
    champion: Option<&BTreeMap<String, f64>>,
) -> Vec<RuleResult> {
    let lookup = |name: &str| match reference(name) {
        Some(m) => champion.and_then(|c| c.get(m).copied()),
        None => candidate.get(name).copied(),
    };
    let why = |e: Undefined| match e {
        Undefined::Missing(name) => match name.split_once('.') {
            Some((who, m)) => format!("{who} has no {m}"),
            None => format!("candidate has no {name}"),
        },
        other => other.to_string(),
    };
    rules
        .iter()
        .map(|r| {
            let result = |value, threshold, outcome: &str, note| RuleResult {
                rule: r.text.clone(),
                metric: r.metric.clone(),
                value,
                threshold,
                outcome: outcome.into(),
                note,
            };
            let value = r.cmp.left.eval(&lookup);
            if champion.is_none() && r.references_champion() {
                return result(
                    value.ok(),
                    None,
                    "skipped",
                    Some("no champion yet: rule skipped".to_string()),
                );
            }
            match (value, r.cmp.right.eval(&lookup)) {
                (value, Err(e)) => result(value.ok(), None, "fail", Some(why(e))),
                (Err(e), Ok(t)) => result(None, Some(t), "fail", Some(why(e))),
                (Ok(v), Ok(t)) => {
                    let pass = r.cmp.op.holds(v, t);
                    result(Some(v), Some(t), if pass { "pass" } else { "fail" }, None)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn parses_and_rejects() {
        let r = Rule::parse("auc >= champion.auc - 0.005").unwrap();
        assert_eq!(r.metric, "roc_auc");
        assert_eq!(r.cmp.identifiers(), ["roc_auc", "champion.roc_auc"]);
        assert!(r.references_champion());
        let r = Rule::parse("p99_ms <= 5").unwrap();
        assert_eq!(
            (r.metric.as_str(), r.references_champion()),
            ("p99_ms", false)
        );
        let r = Rule::parse("size_bytes < parent.size_bytes").unwrap();
        assert_eq!(r.cmp.identifiers(), ["size_bytes", "parent.size_bytes"]);
        // The new forms: division, precedence, parentheses, unary minus,
        // no spaces.
        for good in [
            "auc >= champion.auc / 2",
            "log_loss <= 0.01 + champion.log_loss * 1.02",
            "accuracy-parent.accuracy >= -0.01",
            "(rmse - champion.rmse) / champion.rmse <= 0.02",
            "auc>=0.8",
            "accuracy != 0",
        ] {
            Rule::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, want) in [
            ("auc", "no comparison"),
            ("auc >= ", "at the end"),
            ("auc => 1", "\"=>\" is not a comparison"),
            ("speed >= 1", "\"speed\" is unknown"),
            ("auc >= champion.nope", "\"nope\" is unknown"),
            ("auc >= champion.auc ^ 2", "at column 21"),
            ("auc >= x", "\"x\" is unknown"),
            ("0.5 < 1", "names no metric"),
        ] {
            let e = Rule::parse(bad).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn evaluates_against_champion() {
        let rules: Vec<Rule> = [
            "auc >= 0.8",
            "auc >= champion.auc - 0.005",
            "log_loss <= champion.log_loss * 1.02",
        ]
        .iter()
        .map(|r| Rule::parse(r).unwrap())
        .collect();
        let cand = m(&[("roc_auc", 0.85), ("log_loss", 0.40)]);
        let champ = m(&[("roc_auc", 0.853), ("log_loss", 0.395)]);
        let out = evaluate(&rules, &cand, Some(&champ));
        assert_eq!(
            out.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
            vec!["pass", "pass", "pass"]
        );
        let worse = m(&[("roc_auc", 0.84), ("log_loss", 0.5)]);
        let out = evaluate(&rules, &worse, Some(&champ));
        assert_eq!(
            out.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
            vec!["pass", "fail", "fail"]
        );
        let out = evaluate(&rules, &cand, None);
        assert_eq!(out[1].outcome, "skipped");
    }

    #[test]
    fn precedence_missing_values_and_division_by_zero() {
        let rules: Vec<Rule> = [
            "log_loss <= 0.01 + champion.log_loss * 2",
            "accuracy >= parent.accuracy - 0.01",
            "recall >= champion.recall",
            "f1 >= champion.f1 / champion.recall",
        ]
        .iter()
        .map(|r| Rule::parse(r).unwrap())
        .collect();
        let cand = m(&[("log_loss", 0.8), ("accuracy", 0.9), ("f1", 0.5)]);
        let champ = m(&[
            ("log_loss", 0.4),
            ("accuracy", 0.95),
            ("recall", 0.0),
            ("f1", 0.4),
        ]);
        let out = evaluate(&rules, &cand, Some(&champ));
        // 0.01 + 0.4 * 2 = 0.81 (left to right it was 0.82).
        assert_eq!(out[0].outcome, "pass");
        assert!((out[0].threshold.unwrap() - 0.81).abs() < 1e-12);
        assert_eq!(out[1].outcome, "fail");
        assert_eq!(out[2].outcome, "fail");
        assert_eq!(out[2].note.as_deref(), Some("candidate has no recall"));
        assert_eq!(out[3].outcome, "fail");
        assert_eq!(out[3].note.as_deref(), Some("division by zero"));
        let out = evaluate(&rules, &cand, Some(&m(&[])));
        assert_eq!(out[0].note.as_deref(), Some("champion has no log_loss"));
        assert_eq!(out[1].note.as_deref(), Some("parent has no accuracy"));
    }
}
