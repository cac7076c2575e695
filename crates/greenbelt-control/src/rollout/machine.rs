//! The rollout state machine: pure, with time passed in (milliseconds since
//! the Unix epoch), so every transition is tested without a clock. The
//! controller persists it as JSON after each change; a restarted process
//! resumes from what was stored.
//!
//! ```text
//! canary:     Progressing ──steps done──▶ Promoted
//!               │  ▲ resume / promote
//!               ▼  │
//!             Paused (pause step, by hand, inconclusive analysis)
//!             any non-terminal ──analysis failed past failure_limit / abort──▶ Aborted
//! blue/green: Progressing (preview) ──pre-analysis ok, auto or promote──▶ PostPromotion
//!             PostPromotion ──post-analysis ok + scale_down_delay──▶ Promoted
//!             PostPromotion ──post-analysis failed──▶ Aborted (switched back)
//! ```

use std::collections::BTreeMap;

use greenbelt_serve::deployment::{RolloutSpec, Strategy};
use serde::{Deserialize, Serialize};

/// Analysis runs kept in the state (newest last).
const RUNS_KEPT: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Progressing,
    Paused,
    PostPromotion,
    Promoted,
    Aborted,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::Aborted)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Success,
    Failure,
    Inconclusive,
}

/// One analysis run: the values measured and what they decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRun {
    pub at_ms: i64,
    pub verdict: Verdict,
    pub values: BTreeMap<String, f64>,
    /// Conditions that failed, or why the run was inconclusive.
    pub notes: Vec<String>,
}

/// A command from a person (CLI or admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Skip the current pause (canary) or switch the preview (blue/green).
    Promote,
    /// Skip every remaining step and analysis.
    PromoteFull,
    Abort,
    Pause,
    Resume,
}

/// What traffic should look like now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub stable: i64,
    /// Canary version and its weight in percent.
    pub canary: Option<(i64, f64)>,
    pub preview: Option<i64>,
    /// Candidate mirrored at this fraction (0..=1) for output comparison.
    pub shadow: Option<(i64, f64)>,
    /// Versions kept loaded without traffic (fast switch back).
    pub warm: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub deployment: String,
    pub model: String,
    pub stable: i64,
    pub candidate: i64,
    pub spec: RolloutSpec,
    pub phase: Phase,
    /// Canary: index of the step being executed.
    pub step: usize,
    /// Canary: percent of traffic on the candidate.
    pub weight: f64,
    pub pause_reason: Option<String>,
    /// End of a timed pause step.
    pub pause_until_ms: Option<i64>,
    /// Successful analysis runs in the current analysis step / pre / post phase.
    pub successes: u32,
    /// Failed analysis runs in the whole rollout.
    pub failures: u32,
    /// Start of the current analysis window.
    pub window_start_ms: i64,
    pub runs: Vec<AnalysisRun>,
    pub started_ms: i64,
    pub switched_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Why it was aborted or how it was promoted.
    pub reason: Option<String>,
    /// The controller moved the aliases this finished rollout decided.
    #[serde(default)]
    pub alias_done: bool,
    /// Events produced by the last transitions, for the store's log; the
    /// controller drains them when it persists.
    #[serde(skip)]
    pub pending: Vec<(String, serde_json::Value)>,
}

impl Rollout {
    pub fn start(
        deployment: &str,
        model: &str,
        stable: i64,
        candidate: i64,
        spec: RolloutSpec,
        now_ms: i64,
    ) -> Rollout {
        let mut r = Rollout {
            id: format!("{deployment}-v{candidate}-{now_ms}"),
            deployment: deployment.to_string(),
            model: model.to_string(),
            stable,
            candidate,
            spec,
            phase: Phase::Progressing,
            step: 0,
            weight: 0.0,
            pause_reason: None,
            pause_until_ms: None,
            successes: 0,
            failures: 0,
            window_start_ms: now_ms,
            runs: Vec::new(),
            started_ms: now_ms,
            switched_ms: None,
            finished_ms: None,
            reason: None,
            alias_done: false,
            pending: Vec::new(),
        };
        r.event(
            "started",
            serde_json::json!({"stable": stable, "candidate": candidate, "strategy": r.spec.strategy}),
        );
        r.advance(now_ms);
        r
    }

    fn event(&mut self, name: &str, detail: serde_json::Value) {
        self.pending.push((name.to_string(), detail));
    }

    pub fn is_active(&self) -> bool {
        !self.phase.is_terminal()
    }

    fn interval_ms(&self) -> i64 {
        self.spec
            .analysis
            .interval()
            .map_or(10_000, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Whether analysis is running in the current state.
    fn analysing(&self) -> bool {
        match (self.spec.strategy, self.phase) {
            (Strategy::Canary, Phase::Progressing) => {
                self.weight > 0.0 || self.current_step().is_some_and(|s| s.analysis.is_some())
            }
            (Strategy::BlueGreen, Phase::Progressing) => {
                self.successes < self.spec.pre_promotion_analysis
            }
            (Strategy::BlueGreen, Phase::PostPromotion) => {
                self.successes < self.spec.post_promotion_analysis
            }
            _ => false,
        }
    }

    /// Whether an analysis run is due at `now_ms`.
    pub fn analysis_due(&self, now_ms: i64) -> bool {
        self.analysing() && now_ms >= self.window_start_ms.saturating_add(self.interval_ms())
    }

    fn current_step(&self) -> Option<&greenbelt_serve::deployment::StepSpec> {
        self.spec.steps.get(self.step)
    }

    /// Let time pass: expire timed pauses, take the steps that need nothing.
    /// Returns whether anything changed.
    pub fn tick(&mut self, now_ms: i64) -> bool {
        let before = (
            self.phase,
            self.step,
            self.weight.to_bits(),
            self.pause_until_ms,
        );
        self.advance(now_ms);
        before
            != (
                self.phase,
                self.step,
                self.weight.to_bits(),
                self.pause_until_ms,
            )
    }

    fn advance(&mut self, now_ms: i64) {
        match self.spec.strategy {
            Strategy::Canary => self.advance_canary(now_ms),
            Strategy::BlueGreen => self.advance_blue_green(now_ms),
        }
    }

    fn advance_canary(&mut self, now_ms: i64) {
        while self.phase == Phase::Progressing {
            let Some(step) = self.current_step().cloned() else {
                self.finish_promoted(now_ms, "all steps passed");
                return;
            };
            if let Some(w) = step.set_weight {
                self.weight = w;
                self.event(
                    "weight",
                    serde_json::json!({"step": self.step, "weight": w}),
                );
                self.next_step();
            } else if let Some(p) = &step.pause {
                if p.trim().is_empty() {
                    self.phase = Phase::Paused;
                    self.pause_reason = Some(format!("step {}: pause until promoted", self.step));
                    self.event(
                        "paused",
                        serde_json::json!({"step": self.step, "reason": "pause step"}),
                    );
                    return;
                }
                let ms = greenbelt_serve::deployment::duration("pause", p)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                let until = *self.pause_until_ms.get_or_insert(now_ms.saturating_add(ms));
                if now_ms < until {
                    return;
                }
                self.pause_until_ms = None;
                self.next_step();
            } else if let Some(n) = step.analysis {
                if self.successes < n {
                    return;
                }
                self.event(
                    "analysis_passed",
                    serde_json::json!({"step": self.step, "runs": n}),
                );
                self.next_step();
            } else {
                self.next_step();
            }
        }
    }

    fn next_step(&mut self) {
        self.step += 1;
        self.successes = 0;
    }

    fn advance_blue_green(&mut self, now_ms: i64) {
        match self.phase {
            Phase::Progressing if self.successes >= self.spec.pre_promotion_analysis => {
                if self.spec.auto_promote {
                    self.switch(now_ms, "pre-promotion analysis passed");
                } else {
                    self.phase = Phase::Paused;
                    self.pause_reason = Some("preview ready: waiting for promote".into());
                    self.event("paused", serde_json::json!({"reason": "preview ready"}));
                }
            }
            Phase::PostPromotion if self.successes >= self.spec.post_promotion_analysis => {
                let delay = greenbelt_serve::deployment::duration(
                    "scale_down_delay",
                    &self.spec.scale_down_delay,
                )
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                if now_ms >= self.switched_ms.unwrap_or(now_ms).saturating_add(delay) {
                    self.finish_promoted(now_ms, "post-promotion analysis passed");
                }
            }
            _ => {}
        }
    }

    fn switch(&mut self, now_ms: i64, why: &str) {
        self.phase = Phase::PostPromotion;
        self.switched_ms = Some(now_ms);
        self.successes = 0;
        self.window_start_ms = now_ms;
        self.weight = 100.0;
        self.pause_reason = None;
        self.event(
            "switched",
            serde_json::json!({"to": self.candidate, "reason": why}),
        );
        self.advance_blue_green(now_ms);
    }

    fn finish_promoted(&mut self, now_ms: i64, why: &str) {
        self.phase = Phase::Promoted;
        self.weight = 100.0;
        self.finished_ms = Some(now_ms);
        self.reason = Some(why.to_string());
        self.pause_reason = None;
        self.event(
            "promoted",
            serde_json::json!({"version": self.candidate, "reason": why}),
        );
    }

    fn abort(&mut self, now_ms: i64, why: String) {
        let was_switched = self.phase == Phase::PostPromotion;
        self.phase = Phase::Aborted;
        self.weight = 0.0;
        self.finished_ms = Some(now_ms);
        self.pause_reason = None;
        self.reason = Some(why.clone());
        let event = if was_switched {
            "rolled_back"
        } else {
            "aborted"
        };
        self.event(
            event,
            serde_json::json!({"stable": self.stable, "reason": why}),
        );
    }

    /// Record an analysis run taken at `now_ms`.
    pub fn record(&mut self, now_ms: i64, run: AnalysisRun) {
        if !self.is_active() {
            return;
        }
        self.window_start_ms = now_ms;
        let verdict = run.verdict.clone();
        let notes = run.notes.join("; ");
        self.runs.push(run);
        if self.runs.len() > RUNS_KEPT {
            self.runs.remove(0);
        }
        match verdict {
            Verdict::Success => {
                self.successes += 1;
                self.advance(now_ms);
            }
            Verdict::Failure => {
                self.failures += 1;
                self.event(
                    "analysis_failed",
                    serde_json::json!({"failures": self.failures, "notes": notes}),
                );
                if self.failures > self.spec.analysis.failure_limit {
                    self.abort(now_ms, format!("analysis failed: {notes}"));
                }
            }
            Verdict::Inconclusive => {
                self.phase = Phase::Paused;
                self.pause_reason = Some(format!("inconclusive: {notes}"));
                self.event("inconclusive", serde_json::json!({"notes": notes}));
            }
        }
    }

    /// Apply a person's command.
    pub fn command(&mut self, cmd: Command, now_ms: i64, actor: &str) -> Result<(), String> {
        if !self.is_active() {
            return Err(format!(
                "rollout {} is already {:?}; start a new one",
                self.id, self.phase
            )
            .to_lowercase());
        }
        self.event(
            "command",
            serde_json::json!({"command": cmd, "actor": actor}),
        );
        match cmd {
            Command::Abort => self.abort(now_ms, format!("aborted by {actor}")),
            Command::PromoteFull => match self.spec.strategy {
                Strategy::Canary => self.finish_promoted(now_ms, &format!("promoted by {actor}")),
                Strategy::BlueGreen if self.phase == Phase::PostPromotion => {
                    self.finish_promoted(now_ms, &format!("promoted by {actor}"))
                }
                Strategy::BlueGreen => {
                    self.switch(now_ms, &format!("promoted by {actor}"));
                    self.finish_promoted(now_ms, &format!("promoted by {actor}"));
                }
            },
            Command::Promote => match (self.spec.strategy, self.phase) {
                (Strategy::BlueGreen, Phase::Progressing | Phase::Paused) => {
                    self.switch(now_ms, &format!("promoted by {actor}"))
                }
                (Strategy::BlueGreen, _) => {
                    self.finish_promoted(now_ms, &format!("promoted by {actor}"))
                }
                (Strategy::Canary, _) => {
                    // Skip the current step (a pause, or an analysis wait).
                    self.phase = Phase::Progressing;
                    self.pause_reason = None;
                    self.pause_until_ms = None;
                    self.window_start_ms = now_ms;
                    self.next_step();
                    self.advance(now_ms);
                }
            },
            Command::Pause => {
                if self.phase != Phase::Paused {
                    self.phase = Phase::Paused;
                    self.pause_reason = Some(format!("paused by {actor}"));
                }
            }
            Command::Resume => {
                if self.phase != Phase::Paused {
                    return Err(format!("rollout {} is not paused", self.id));
                }
                let at_pause_step = self.spec.strategy == Strategy::Canary
                    && self
                        .current_step()
                        .and_then(|s| s.pause.as_deref())
                        .is_some_and(|p| p.trim().is_empty());
                self.phase = Phase::Progressing;
                self.pause_reason = None;
                self.window_start_ms = now_ms;
                if at_pause_step {
                    self.next_step();
                } else if self.spec.strategy == Strategy::BlueGreen
                    && self.successes >= self.spec.pre_promotion_analysis
                {
                    // A preview that passed analysis: resuming means promote.
                    self.switch(now_ms, &format!("resumed by {actor}"));
                    return Ok(());
                }
                self.advance(now_ms);
            }
        }
        Ok(())
    }

    /// The traffic plan for the current state.
    pub fn plan(&self) -> Plan {
        let shadow_fraction = self.spec.analysis.shadow_fraction;
        let shadow = (shadow_fraction > 0.0).then_some((self.candidate, shadow_fraction));
        match (self.spec.strategy, self.phase) {
            (_, Phase::Promoted) => Plan {
                stable: self.candidate,
                canary: None,
                preview: None,
                shadow: None,
                warm: vec![self.stable],
            },
            (_, Phase::Aborted) => Plan {
                stable: self.stable,
                canary: None,
                preview: None,
                shadow: None,
                warm: Vec::new(),
            },
            (Strategy::Canary, _) => Plan {
                stable: self.stable,
                canary: Some((self.candidate, self.weight)),
                preview: None,
                shadow,
                warm: Vec::new(),
            },
            (Strategy::BlueGreen, Phase::PostPromotion) => Plan {
                stable: self.candidate,
                canary: None,
                preview: None,
                shadow: None,
                warm: vec![self.stable],
            },
            (Strategy::BlueGreen, _) => Plan {
                stable: self.stable,
                canary: None,
                preview: Some(self.candidate),
                shadow,
                warm: Vec::new(),
            },
        }
    }

    /// The version the deployment's alias should point to.
    pub fn desired_alias(&self) -> i64 {
        match self.phase {
            Phase::Promoted | Phase::PostPromotion => self.candidate,
            _ => self.stable,
        }
    }

    /// The version under analysis and its baseline.
    pub fn analysed(&self) -> (i64, i64) {
        (self.candidate, self.stable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_serve::deployment::{AnalysisSpec, StepSpec};

    fn spec(steps: Vec<StepSpec>) -> RolloutSpec {
        RolloutSpec {
            strategy: Strategy::Canary,
            steps,
            analysis: AnalysisSpec {
                interval: "1s".into(),
                failure_limit: 1,
                ..AnalysisSpec::default()
            },
            ..RolloutSpec::default()
        }
    }

    fn run(at_ms: i64, verdict: Verdict) -> AnalysisRun {
        AnalysisRun {
            at_ms,
            verdict,
            values: BTreeMap::new(),
            notes: vec!["note".into()],
        }
    }

    fn events(r: &mut Rollout) -> Vec<String> {
        r.pending.drain(..).map(|(e, _)| e).collect()
    }

    #[test]
    fn canary_walks_its_steps_and_promotes() {
        let mut r = Rollout::start(
            "fraud",
            "fraud",
            1,
            2,
            spec(vec![
                StepSpec::weight(20.0),
                StepSpec::pause("5s"),
                StepSpec::analysis(2),
                StepSpec::weight(60.0),
                StepSpec::pause(""),
                StepSpec::weight(100.0),
            ]),
            0,
        );
        assert_eq!(events(&mut r), ["started", "weight"]);
        assert_eq!((r.phase, r.weight, r.step), (Phase::Progressing, 20.0, 1));
        assert_eq!(r.plan().canary, Some((2, 20.0)));
        // The timed pause holds until 5 s have passed.
        assert!(!r.tick(4_999));
        assert_eq!(r.step, 1);
        // Analysis runs during the pause (weight > 0) once per interval.
        assert!(!r.analysis_due(999) && r.analysis_due(1_000));
        r.record(1_000, run(1_000, Verdict::Success));
        assert!(r.tick(5_000));
        assert_eq!(r.step, 2, "now waiting on the analysis step");
        r.record(6_000, run(6_000, Verdict::Success));
        assert_eq!(r.step, 2);
        r.record(7_000, run(7_000, Verdict::Success));
        // Analysis passed → weight 60 → indefinite pause.
        assert_eq!((r.phase, r.weight, r.step), (Phase::Paused, 60.0, 4));
        events(&mut r);
        assert!(!r.analysis_due(100_000), "no analysis while paused");
        r.command(Command::Promote, 8_000, "ana").unwrap();
        assert_eq!(r.phase, Phase::Promoted);
        assert_eq!(r.desired_alias(), 2);
        assert_eq!(r.plan().stable, 2);
        assert_eq!(r.plan().warm, vec![1]);
        assert!(events(&mut r).contains(&"promoted".to_string()));
        assert!(r.command(Command::Abort, 9_000, "ana").is_err());
    }

    #[test]
    fn failures_past_the_limit_abort_to_stable() {
        let mut r = Rollout::start(
            "d",
            "m",
            1,
            2,
            spec(vec![StepSpec::weight(50.0), StepSpec::analysis(5)]),
            0,
        );
        r.record(1_000, run(1_000, Verdict::Failure));
        assert_eq!(
            r.phase,
            Phase::Progressing,
            "failure_limit = 1 tolerates one"
        );
        r.record(2_000, run(2_000, Verdict::Failure));
        assert_eq!(r.phase, Phase::Aborted);
        assert_eq!(r.weight, 0.0);
        assert_eq!(r.plan().canary, None);
        assert_eq!(r.plan().stable, 1);
        assert_eq!(r.desired_alias(), 1);
        assert!(
            r.reason
                .as_deref()
                .unwrap_or("")
                .contains("analysis failed")
        );
        assert!(events(&mut r).contains(&"aborted".to_string()));
        // Nothing moves a finished rollout.
        r.record(3_000, run(3_000, Verdict::Success));
        assert_eq!(r.phase, Phase::Aborted);
    }

    #[test]
    fn inconclusive_pauses_and_resume_continues() {
        let mut r = Rollout::start(
            "d",
            "m",
            1,
            2,
            spec(vec![StepSpec::weight(10.0), StepSpec::analysis(1)]),
            0,
        );
        r.record(1_000, run(1_000, Verdict::Inconclusive));
        assert_eq!(r.phase, Phase::Paused);
        assert!(
            r.pause_reason
                .as_deref()
                .unwrap_or("")
                .starts_with("inconclusive")
        );
        assert_eq!(r.plan().canary, Some((2, 10.0)), "paused keeps the weight");
        assert!(!r.analysis_due(10_000));
        r.command(Command::Resume, 10_000, "ops").unwrap();
        assert_eq!(r.phase, Phase::Progressing);
        assert!(
            !r.analysis_due(10_500) && r.analysis_due(11_000),
            "a fresh window after resume"
        );
        r.record(11_000, run(11_000, Verdict::Success));
        assert_eq!(r.phase, Phase::Promoted);
    }

    #[test]
    fn manual_pause_abort_and_full_promotion() {
        let mut r = Rollout::start(
            "d",
            "m",
            1,
            2,
            spec(vec![StepSpec::weight(10.0), StepSpec::analysis(3)]),
            0,
        );
        r.command(Command::Pause, 100, "ops").unwrap();
        assert_eq!(r.phase, Phase::Paused);
        assert!(r.command(Command::Resume, 200, "ops").is_ok());
        assert!(
            r.command(Command::Resume, 300, "ops").is_err(),
            "not paused"
        );
        let mut full = r.clone();
        full.command(Command::PromoteFull, 400, "ops").unwrap();
        assert_eq!((full.phase, full.desired_alias()), (Phase::Promoted, 2));
        r.command(Command::Abort, 400, "ops").unwrap();
        assert_eq!(r.phase, Phase::Aborted);
        assert_eq!(r.reason.as_deref(), Some("aborted by ops"));
    }

    #[test]
    fn blue_green_previews_then_switches_and_rolls_back_on_post_failure() {
        let bg = RolloutSpec {
            strategy: Strategy::BlueGreen,
            pre_promotion_analysis: 1,
            post_promotion_analysis: 2,
            auto_promote: true,
            scale_down_delay: "3s".into(),
            analysis: AnalysisSpec {
                interval: "1s".into(),
                ..AnalysisSpec::default()
            },
            ..RolloutSpec::default()
        };
        let mut r = Rollout::start("d", "m", 1, 2, bg.clone(), 0);
        let p = r.plan();
        assert_eq!((p.stable, p.preview, p.canary), (1, Some(2), None));
        assert!(r.analysis_due(1_000));
        r.record(1_000, run(1_000, Verdict::Success));
        assert_eq!(r.phase, Phase::PostPromotion);
        assert_eq!((r.plan().stable, r.plan().warm.clone()), (2, vec![1]));
        assert_eq!(r.desired_alias(), 2);
        r.record(2_000, run(2_000, Verdict::Failure));
        assert_eq!(r.phase, Phase::Aborted);
        assert_eq!((r.plan().stable, r.desired_alias()), (1, 1));
        assert!(events(&mut r).contains(&"rolled_back".to_string()));

        // Passing post-promotion analysis still waits out scale_down_delay.
        let mut r = Rollout::start("d", "m", 1, 2, bg.clone(), 0);
        r.record(1_000, run(1_000, Verdict::Success));
        r.record(2_000, run(2_000, Verdict::Success));
        r.record(3_000, run(3_000, Verdict::Success));
        assert_eq!(r.phase, Phase::PostPromotion);
        assert!(r.tick(4_000));
        assert_eq!(r.phase, Phase::Promoted);

        // Without auto_promote the preview waits for a person.
        let mut r = Rollout::start(
            "d",
            "m",
            1,
            2,
            RolloutSpec {
                auto_promote: false,
                ..bg
            },
            0,
        );
        r.record(1_000, run(1_000, Verdict::Success));
        assert_eq!(r.phase, Phase::Paused);
        r.command(Command::Promote, 1_500, "ops").unwrap();
        assert_eq!(r.phase, Phase::PostPromotion);
    }

    #[test]
    fn state_survives_a_restart_as_json() {
        let mut r = Rollout::start(
            "d",
            "m",
            1,
            2,
            spec(vec![StepSpec::weight(30.0), StepSpec::pause("10s")]),
            0,
        );
        r.record(1_000, run(1_000, Verdict::Success));
        let text = serde_json::to_string(&r).unwrap();
        let mut back: Rollout = serde_json::from_str(&text).unwrap();
        assert!(back.pending.is_empty());
        r.pending.clear();
        assert_eq!(back, r);
        // The restored machine finishes the timed pause where it left off.
        assert!(!back.tick(9_999));
        assert!(back.tick(10_000));
        assert_eq!(back.phase, Phase::Promoted);
    }
}
