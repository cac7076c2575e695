//! Budgets (`[[budget]]`: an amount of dollars per period for a deployment
//! or a model) and their burn-rate alerts, with the SLO alerts' maths: the
//! same window pairs and factors (`crate::slo::BURN_WINDOWS`: page at 14.4x
//! over 1h and 5m or 6x over 6h and 30m, ticket at 3x over 1d and 2h or 1x
//! over 3d and 6h), where a burn rate of 1 spends exactly the amount over
//! the period. `greenbelt slo rules` writes them as Prometheus rules over
//! `greenbelt_cost_dollars_total`; the server evaluates the same rules
//! itself every `[cost] interval` (`GET /admin/alerts`, `/admin/cost`,
//! the `[alerts]` webhook) and forecasts the period's end spend.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use greenbelt_core::cost::{BudgetWatch, BurnPair, Forecast, Row, Snapshot, forecast};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alerts::Transition;
use crate::slo::{BURN_WINDOWS, WINDOWS, runbook};

/// The budget alerts, with their runbook file (under docs/runbooks/).
pub const ALERTS: [(&str, &str); 2] = [
    ("GreenbeltBudgetBurnPage", "cost-budget.md"),
    ("GreenbeltBudgetBurnTicket", "cost-budget.md"),
];

/// One `[[budget]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The deployment (served name) whose cost counts; or set `model`.
    #[serde(default)]
    pub deployment: Option<String>,
    /// The registry model whose cost counts, every deployment of it.
    #[serde(default)]
    pub model: Option<String>,
    /// Dollars per period.
    pub amount: f64,
    /// The period (humantime; default "30d"). Periods are aligned to the
    /// Unix epoch: "1d" is a UTC day.
    #[serde(default = "default_period")]
    pub period: String,
    /// Name used in rule labels (default `<deployment or model>-budget`).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_period() -> String {
    "30d".into()
}

impl BudgetConfig {
    /// The label the budget selects on and its value.
    pub fn selector(&self) -> (&'static str, &str) {
        match (&self.deployment, &self.model) {
            (Some(d), _) => ("deployment", d),
            (None, Some(m)) => ("model", m),
            (None, None) => ("deployment", ""),
        }
    }

    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-budget", self.selector().1))
    }

    pub fn period_seconds(&self) -> f64 {
        humantime::parse_duration(&self.period).map_or(30.0 * 86_400.0, |d| d.as_secs_f64())
    }

    /// Whether a ledger row counts against this budget.
    pub fn matches(&self, row: &Row) -> bool {
        match self.selector() {
            ("model", m) => row.model == m,
            (_, d) => row.deployment == d,
        }
    }

    pub fn validate(&self, i: usize) -> Result<(), String> {
        let at = format!("[[budget]] #{}", i + 1);
        match (&self.deployment, &self.model) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(format!(
                    "{at}: set exactly one of deployment or model (whose cost the budget caps)"
                ));
            }
            _ => {}
        }
        crate::repository::check_model_name(self.selector().1)
            .map_err(|e| format!("{at} {}: {e}", self.selector().0))?;
        if !(self.amount.is_finite() && self.amount > 0.0) {
            return Err(format!(
                "{at} amount must be a number of dollars > 0, got {}",
                self.amount
            ));
        }
        let period = humantime::parse_duration(&self.period)
            .map_err(|e| format!("{at} period \"{}\": {e} (e.g. \"30d\")", self.period))?;
        if period.as_secs() < 3600 {
            return Err(format!(
                "{at} period \"{}\" is shorter than an hour; budgets are per day, week or month (e.g. \"30d\")",
                self.period
            ));
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

    /// PromQL for the burn rate over `window`: the spend rate over the
    /// rate that spends `amount` in `period`.
    pub fn burn_rate_expr(&self, window: &str) -> String {
        let (label, value) = self.selector();
        format!(
            "sum(rate(greenbelt_cost_dollars_total{{{label}=\"{value}\"}}[{window}])) * {} / {}",
            self.period_seconds(),
            self.amount
        )
    }

    pub fn summary(&self) -> String {
        let (label, value) = self.selector();
        format!(
            "{label} {value}: spending faster than its budget of ${} per {} allows",
            self.amount, self.period
        )
    }
}

/// The recorded series of a budget's burn rate over `window`.
pub fn burn_series(window: &str) -> String {
    format!("greenbelt:budget_burn_rate:rate{window}")
}

/// YAML-quote a string (single quotes, doubled inside).
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The budgets' rule groups (recording rules, then burn-rate alerts), to
/// append under a rule file's `groups:`; empty without budgets.
pub fn prometheus_rules(budgets: &[BudgetConfig], runbook_base: &str) -> String {
    let mut y = String::new();
    if budgets.is_empty() {
        return y;
    }
    y.push_str("  - name: greenbelt-budget-recording\n    rules:\n");
    for b in budgets {
        let (label, value) = b.selector();
        for w in WINDOWS {
            let _ = write!(
                y,
                "      - record: {}\n        expr: {}\n        labels:\n          budget: {}\n          {label}: {}\n",
                burn_series(w),
                q(&b.burn_rate_expr(w)),
                q(&b.name()),
                q(value),
            );
        }
    }
    y.push_str("  - name: greenbelt-budget-alerts\n    rules:\n");
    for b in budgets {
        let (label, value) = b.selector();
        for (severity, alert) in [
            ("page", "GreenbeltBudgetBurnPage"),
            ("ticket", "GreenbeltBudgetBurnTicket"),
        ] {
            let sel = format!("{{budget=\"{}\"}}", b.name());
            let clauses: Vec<String> = BURN_WINDOWS
                .iter()
                .filter(|(s, ..)| *s == severity)
                .map(|(_, long, short, factor)| {
                    format!(
                        "({}{sel} > {factor} and {}{sel} > {factor})",
                        burn_series(long),
                        burn_series(short)
                    )
                })
                .collect();
            let _ = write!(
                y,
                "      - alert: {alert}\n        expr: {}\n        labels:\n          severity: {severity}\n          budget: {}\n          {label}: {}\n        annotations:\n          summary: {}\n          runbook_url: {}\n",
                q(&clauses.join(" or ")),
                q(&b.name()),
                q(value),
                q(&b.summary()),
                q(&runbook(runbook_base, alert)),
            );
        }
    }
    y
}

/// The SLO burn pairs in seconds.
fn pairs() -> Vec<BurnPair> {
    let secs = |w: &str| humantime::parse_duration(w).map_or(0.0, |d| d.as_secs_f64());
    BURN_WINDOWS
        .iter()
        .map(|(s, long, short, f)| (*s, secs(long), secs(short), *f))
        .collect()
}

const SEVERITIES: [(&str, &str); 2] = [
    ("page", "GreenbeltBudgetBurnPage"),
    ("ticket", "GreenbeltBudgetBurnTicket"),
];

/// Where the current period started, and the cumulative spend then.
#[derive(Debug, Clone, Copy)]
struct Period {
    start_unix: f64,
    base: f64,
    partial: bool,
}

#[derive(Debug)]
struct State {
    budget: BudgetConfig,
    watch: BudgetWatch,
    period: Option<Period>,
    /// Cumulative spend at the last evaluation.
    spent: f64,
    /// Per severity: firing since.
    since: [Option<SystemTime>; 2],
    /// Burn rate per window at the last evaluation.
    burn: Vec<(&'static str, f64)>,
    forecast: Option<Forecast>,
}

/// The in-process budget evaluator.
#[derive(Debug)]
pub struct Budgets {
    states: Mutex<Vec<State>>,
    runbook_base: String,
}

impl Budgets {
    pub fn new(budgets: &[BudgetConfig], runbook_base: &str) -> Budgets {
        Budgets {
            states: Mutex::new(
                budgets
                    .iter()
                    .map(|b| State {
                        watch: BudgetWatch::new(b.amount, b.period_seconds()),
                        budget: b.clone(),
                        period: None,
                        spent: 0.0,
                        since: [None, None],
                        burn: Vec::new(),
                        forecast: None,
                    })
                    .collect(),
            ),
            runbook_base: runbook_base.to_string(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.states.lock().map_or(true, |s| s.is_empty())
    }

    /// Evaluate every budget against a ledger snapshot taken at `now_unix`
    /// (wall clock; the snapshot's own clock times the windows) and
    /// return the alerts that changed state.
    pub fn evaluate(&self, s: &Snapshot, now_unix: f64) -> Vec<Transition> {
        let Ok(mut states) = self.states.lock() else {
            return Vec::new();
        };
        let pairs = pairs();
        let now = s.at_seconds;
        let mut out = Vec::new();
        for st in states.iter_mut() {
            let cumulative = s.spend(|r| st.budget.matches(r));
            let period = st.watch.period_seconds;
            let start = (now_unix / period).floor() * period;
            st.period = match st.period {
                Some(p) if p.start_unix == start => Some(p),
                // A new period: what was spent before this evaluation
                // belongs to the last one.
                Some(_) => Some(Period {
                    start_unix: start,
                    base: st.spent,
                    partial: false,
                }),
                None => Some(Period {
                    start_unix: start,
                    base: 0.0,
                    partial: now_unix - s.process.uptime_seconds > start,
                }),
            };
            st.spent = cumulative;
            for change in st.watch.tick(now, cumulative, &pairs) {
                let Some(i) = SEVERITIES
                    .iter()
                    .position(|(sev, _)| *sev == change.severity)
                else {
                    continue;
                };
                let (severity, alert) = SEVERITIES[i];
                let t = SystemTime::now();
                let started = if change.firing {
                    st.since[i] = Some(t);
                    t
                } else {
                    st.since[i].take().unwrap_or(t)
                };
                out.push(self.transition(
                    &st.budget,
                    severity,
                    alert,
                    started,
                    (!change.firing).then_some(t),
                ));
            }
            st.burn = WINDOWS
                .iter()
                .map(|w| {
                    let secs = humantime::parse_duration(w).map_or(0.0, |d| d.as_secs_f64());
                    (*w, st.watch.burn_rate(now, secs))
                })
                .collect();
            let p = st.period.unwrap_or(Period {
                start_unix: start,
                base: 0.0,
                partial: true,
            });
            st.forecast = Some(forecast(
                st.budget.amount,
                period,
                now_unix,
                cumulative - p.base,
                st.watch.spend_rate(now, 3600.0),
                p.partial,
            ));
        }
        out
    }

    fn transition(
        &self,
        b: &BudgetConfig,
        severity: &str,
        alert: &str,
        since: SystemTime,
        ended: Option<SystemTime>,
    ) -> Transition {
        let (label, value) = b.selector();
        Transition::new(
            alert,
            severity,
            [("budget", b.name().into()), (label, value.into())],
            b.summary(),
            runbook(&self.runbook_base, alert),
            since,
            ended,
        )
    }

    /// Every budget as last evaluated: spend in the period, burn rates,
    /// alert states and the forecast.
    pub fn report(&self) -> serde_json::Value {
        let Ok(states) = self.states.lock() else {
            return json!([]);
        };
        let items: Vec<_> = states
            .iter()
            .map(|st| {
                let (label, value) = st.budget.selector();
                let alerts: Vec<_> = SEVERITIES
                    .iter()
                    .zip(&st.since)
                    .map(|((severity, alert), f)| {
                        json!({
                            "alertname": alert,
                            "severity": severity,
                            "state": if f.is_some() { "firing" } else { "inactive" },
                            "since": f.map(|f| humantime::format_rfc3339_millis(f).to_string()),
                        })
                    })
                    .collect();
                json!({
                    "budget": st.budget.name(),
                    label: value,
                    "amount": st.budget.amount,
                    "period": st.budget.period,
                    "burn_rate": st.burn.iter().map(|(w, r)| (w.to_string(), json!(r))).collect::<serde_json::Map<_, _>>(),
                    "forecast": st.forecast,
                    "alerts": alerts,
                })
            })
            .collect();
        json!(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::cost::{EgressClass, Prices, Process, Usage};

    fn budget(deployment: &str, amount: f64) -> BudgetConfig {
        BudgetConfig {
            deployment: Some(deployment.into()),
            model: None,
            amount,
            period: "30d".into(),
            name: None,
        }
    }

    #[test]
    fn validation_names_the_field_and_the_fix() {
        assert!(budget("fraud", 100.0).validate(0).is_ok());
        let e = budget("fraud", 0.0).validate(0).unwrap_err();
        assert!(e.contains("amount"), "{e}");
        let mut b = budget("fraud", 1.0);
        b.model = Some("fraud".into());
        assert!(b.validate(0).unwrap_err().contains("exactly one"));
        let mut b = budget("fraud", 1.0);
        b.period = "a month".into();
        assert!(b.validate(0).unwrap_err().contains("period"));
        b.period = "5m".into();
        assert!(b.validate(0).unwrap_err().contains("shorter than an hour"));
        assert!(budget("../x", 1.0).validate(0).is_err());
    }

    #[test]
    fn every_budget_alert_has_its_runbook() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks");
        for (alert, file) in ALERTS {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(
                text.contains(alert),
                "docs/runbooks/{file} does not name {alert}"
            );
            assert_eq!(runbook("rb", alert), format!("rb/{file}"));
        }
    }

    #[test]
    fn rules_record_every_window_and_alert_with_the_slo_factors() {
        let y = prometheus_rules(&[budget("fraud", 720.0)], "https://rb.example");
        for w in WINDOWS {
            assert!(y.contains(&format!("record: greenbelt:budget_burn_rate:rate{w}\n")));
        }
        assert!(
            y.contains(
                "sum(rate(greenbelt_cost_dollars_total{deployment=\"fraud\"}[1h])) * 2592000 / 720"
            ),
            "{y}"
        );
        assert!(y.contains("greenbelt:budget_burn_rate:rate1h{budget=\"fraud-budget\"} > 14.4"));
        assert!(y.contains("https://rb.example/cost-budget.md"));
        assert_eq!(prometheus_rules(&[], "x"), "");
    }

    fn snapshot(at: f64, dollars_of_cpu: f64) -> Snapshot {
        let p = Prices::default();
        let usage = Usage {
            compute_cpu_seconds: dollars_of_cpu / p.cpu_core_hour * 3600.0,
            ..Usage::default()
        };
        Snapshot::new(
            at,
            p,
            EgressClass::Internet,
            vec![("fraud".into(), "1".into(), "fraud".into(), usage)],
            Process {
                uptime_seconds: at,
                ..Process::default()
            },
        )
    }

    #[test]
    fn a_fast_burn_pages_and_the_forecast_follows_the_rate() {
        // $720 per 30 days: $1 an hour on pace. Spend $30 an hour.
        let b = Budgets::new(&[budget("fraud", 720.0)], "docs/runbooks");
        let day = 86_400.0;
        let t0 = 1000.0 * 30.0 * day + 10.0 * day; // ten days into a period
        let mut changes = Vec::new();
        for m in 0..=70 {
            let at = f64::from(m) * 60.0;
            changes.extend(b.evaluate(&snapshot(at, at / 3600.0 * 30.0), t0 + at));
        }
        // the page, once the last hour holds more than 14.4 hours' share
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].status, "firing");
        assert_eq!(changes[0].labels["alertname"], "GreenbeltBudgetBurnPage");
        assert_eq!(changes[0].labels["deployment"], "fraud");
        let r = b.report();
        let f = &r[0]["forecast"];
        // $35 spent, 20 days less 70 minutes left at $30 an hour.
        let left = 20.0 * 24.0 - 70.0 / 60.0;
        assert!(
            (f["forecast"].as_f64().unwrap() - (35.0 + left * 30.0)).abs() < 1e-6,
            "{f}"
        );
        assert_eq!(f["partial"], true);
        assert!((r[0]["burn_rate"]["1h"].as_f64().unwrap() - 30.0).abs() < 1e-6);
        assert_eq!(r[0]["alerts"][0]["state"], "firing");
    }
}
