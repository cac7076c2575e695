//! Gate rules: `<metric> <op> <rhs>` where `rhs` is a number, or
//! `champion.<metric>` optionally followed by `+ x`, `- x` or `* x`.
//! `parent.<metric>` means the same: a derived version (`greenbelt optimize`)
//! is compared with the version it came from as a candidate is with the
//! champion. Metrics: roc_auc (alias auc), pr_auc, log_loss, accuracy,
//! precision, recall, f1 (classification), rmse, mae (regression), p50_ms,
//! p99_ms; size_bytes (the artifact) and agreement (share of rows whose
//! predicted class equals the parent's) are measured by `optimize` only.

use std::collections::BTreeMap;

use serde::Serialize;

use super::PipelineError;

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

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Op {
    Ge,
    Gt,
    Le,
    Lt,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Ge => a >= b,
            Op::Gt => a > b,
            Op::Le => a <= b,
            Op::Lt => a < b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    Value(f64),
    /// champion.<metric> <op> <x>
    Champion {
        metric: String,
        adjust: Option<(char, f64)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub text: String,
    pub metric: String,
    pub op: Op,
    pub rhs: Rhs,
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

fn number(text: &str, s: &str) -> Result<f64, PipelineError> {
    s.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| {
            PipelineError::Definition(format!("gate \"{text}\": \"{s}\" is not a number"))
        })
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, PipelineError> {
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let bad = || {
            PipelineError::Definition(format!(
                "gate \"{text}\" is not `<metric> <op> <number | champion.<metric> [+|-|* <number>]>`, e.g. \"auc >= champion.auc - 0.005\""
            ))
        };
        let (metric, op, rest) = match tokens.as_slice() {
            [m, op, rest @ ..] if !rest.is_empty() => (*m, *op, rest),
            _ => return Err(bad()),
        };
        let op = match op {
            ">=" => Op::Ge,
            ">" => Op::Gt,
            "<=" => Op::Le,
            "<" => Op::Lt,
            _ => return Err(bad()),
        };
        let metric = canonical(metric)?;
        let rhs = match rest {
            [v] if !v.starts_with("champion.") && !v.starts_with("parent.") => {
                Rhs::Value(number(text, v)?)
            }
            [c, tail @ ..] => {
                let Some(m) = c
                    .strip_prefix("champion.")
                    .or_else(|| c.strip_prefix("parent."))
                else {
                    return Err(bad());
                };
                let adjust = match tail {
                    [] => None,
                    [sign, x] => {
                        let sign = match *sign {
                            "+" => '+',
                            "-" => '-',
                            "*" => '*',
                            _ => return Err(bad()),
                        };
                        Some((sign, number(text, x)?))
                    }
                    _ => return Err(bad()),
                };
                Rhs::Champion {
                    metric: canonical(m)?,
                    adjust,
                }
            }
            [] => return Err(bad()),
        };
        Ok(Rule {
            text: text.to_string(),
            metric,
            op,
            rhs,
        })
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

/// Evaluate every rule against the candidate's and (optionally) the champion's metrics.
pub fn evaluate(
    rules: &[Rule],
    candidate: &BTreeMap<String, f64>,
    champion: Option<&BTreeMap<String, f64>>,
) -> Vec<RuleResult> {
    rules
        .iter()
        .map(|r| {
            let value = candidate.get(&r.metric).copied();
            let threshold = match &r.rhs {
                Rhs::Value(v) => Ok(Some(*v)),
                Rhs::Champion { metric, adjust } => match champion {
                    None => Err("no champion yet: rule skipped".to_string()),
                    Some(c) => match c.get(metric) {
                        None => Err(format!("champion has no {metric}")),
                        Some(base) => Ok(Some(match adjust {
                            None => *base,
                            Some(('+', x)) => base + x,
                            Some(('-', x)) => base - x,
                            Some((_, x)) => base * x,
                        })),
                    },
                },
            };
            match (value, threshold) {
                (_, Err(note)) if champion.is_none() => RuleResult {
                    rule: r.text.clone(),
                    metric: r.metric.clone(),
                    value,
                    threshold: None,
                    outcome: "skipped".into(),
                    note: Some(note),
                },
                (_, Err(note)) => RuleResult {
                    rule: r.text.clone(),
                    metric: r.metric.clone(),
                    value,
                    threshold: None,
                    outcome: "fail".into(),
                    note: Some(note),
                },
                (None, Ok(t)) => RuleResult {
                    rule: r.text.clone(),
                    metric: r.metric.clone(),
                    value: None,
                    threshold: t,
                    outcome: "fail".into(),
                    note: Some(format!("candidate has no {}", r.metric)),
                },
                (Some(v), Ok(t)) => {
                    let pass = t.is_some_and(|t| r.op.holds(v, t));
                    RuleResult {
                        rule: r.text.clone(),
                        metric: r.metric.clone(),
                        value: Some(v),
                        threshold: t,
                        outcome: if pass { "pass" } else { "fail" }.into(),
                        note: None,
                    }
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
        assert_eq!(
            r.rhs,
            Rhs::Champion {
                metric: "roc_auc".into(),
                adjust: Some(('-', 0.005))
            }
        );
        assert_eq!(Rule::parse("p99_ms <= 5").unwrap().rhs, Rhs::Value(5.0));
        assert_eq!(
            Rule::parse("size_bytes < parent.size_bytes").unwrap().rhs,
            Rhs::Champion {
                metric: "size_bytes".into(),
                adjust: None
            }
        );
        for bad in [
            "auc",
            "auc >= ",
            "auc => 1",
            "speed >= 1",
            "auc >= champion.nope",
            "auc >= champion.auc / 2",
            "auc >= x",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
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
}
