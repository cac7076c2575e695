//! `greenbelt rollout status --watch`: poll a deployment's rollout (the
//! same read as `rollout status`) every interval and report a block each
//! time what a person watches changes — phase, step, weight, analysis —
//! until the rollout reaches a terminal phase or the caller stops it.
//!
//! Every poll has a timeout; a few failed polls in a row end the watch with
//! the last error instead of waiting forever.

use std::future::Future;
use std::time::Duration;

use greenbelt_registry::{Registry, RegistryError};

use super::machine::{Phase, Rollout, Verdict};
use super::{Status, status};

/// How a watch polls.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Time between polls.
    pub interval: Duration,
    /// Longest one poll may take.
    pub poll_timeout: Duration,
    /// Failed polls in a row that end the watch.
    pub max_failed_polls: u32,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            interval: Duration::from_secs(2),
            poll_timeout: Duration::from_secs(10),
            max_failed_polls: 5,
        }
    }
}

/// What a watch reports as it goes.
#[derive(Debug)]
pub enum Seen<'a> {
    /// The first status, or one where something a person watches changed.
    Changed(&'a Status),
    /// A poll failed or timed out; the watch goes on.
    PollFailed(&'a str),
}

/// How a watch ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    /// The rollout reached a terminal phase (promoted or aborted).
    Finished(Box<Rollout>),
    /// The caller's stop signal (Ctrl-C) came first.
    Stopped,
}

/// The part of a rollout a watcher sees change.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub id: String,
    pub phase: Phase,
    pub step: usize,
    pub weight: f64,
    pub pause_reason: Option<String>,
    pub successes: u32,
    pub failures: u32,
    /// Time and verdict of the newest analysis run.
    pub last_run: Option<(i64, Verdict)>,
    pub reason: Option<String>,
    pub alias_done: bool,
}

impl View {
    pub fn of(r: &Rollout) -> View {
        View {
            id: r.id.clone(),
            phase: r.phase,
            step: r.step,
            weight: r.weight,
            pause_reason: r.pause_reason.clone(),
            successes: r.successes,
            failures: r.failures,
            last_run: r.runs.last().map(|run| (run.at_ms, run.verdict.clone())),
            reason: r.reason.clone(),
            alias_done: r.alias_done,
        }
    }
}

/// The block a watcher prints for `r`, seen at `now_ms`.
pub fn block(r: &Rollout, now_ms: i64) -> String {
    let steps = r.spec.steps.len();
    let mut out = format!(
        "[{}] rollout {}: {:?}, step {}/{steps}, {}% on candidate v{} (stable v{})\n",
        greenbelt_registry::format_us(now_ms.saturating_mul(1000)),
        r.id,
        r.phase,
        r.step.min(steps),
        r.weight,
        r.candidate,
        r.stable,
    );
    out.push_str(&format!(
        "  analysis: {} failed, {} passed in this step",
        r.failures, r.successes
    ));
    if let Some(run) = r.runs.last() {
        out.push_str(&format!("; last run {:?}", run.verdict));
        if !run.notes.is_empty() {
            out.push_str(&format!(" ({})", run.notes.join("; ")));
        }
    }
    out.push('\n');
    if let Some(p) = &r.pause_reason {
        out.push_str(&format!("  paused: {p}\n"));
    }
    if let Some(reason) = &r.reason {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    out
}

/// Watch `deployment`'s rollout until it finishes or `stop` completes;
/// `seen` hears every change and every failed poll. A deployment with no
/// rollout is an error at once; a rollout already finished is reported
/// once.
pub async fn watch(
    registry: &Registry,
    deployment: &str,
    opts: WatchOptions,
    stop: impl Future<Output = ()>,
    mut seen: impl FnMut(Seen<'_>),
) -> Result<Watched, RegistryError> {
    tokio::pin!(stop);
    let mut last: Option<View> = None;
    let mut failed = 0u32;
    loop {
        let polled = tokio::select! {
            biased;
            () = &mut stop => return Ok(Watched::Stopped),
            r = tokio::time::timeout(opts.poll_timeout, status(registry, deployment)) => r,
        };
        match polled {
            Ok(Ok(st)) => {
                failed = 0;
                let view = View::of(&st.rollout);
                if last.as_ref() != Some(&view) {
                    seen(Seen::Changed(&st));
                    last = Some(view);
                }
                if st.rollout.phase.is_terminal() {
                    return Ok(Watched::Finished(Box::new(st.rollout)));
                }
            }
            Ok(Err(e @ RegistryError::NotFound(_))) if last.is_none() => return Err(e),
            other => {
                let e = match other {
                    Ok(Err(e)) => e,
                    _ => RegistryError::Db(format!(
                        "no answer within {:?} reading the rollout of \"{deployment}\"",
                        opts.poll_timeout
                    )),
                };
                failed += 1;
                if failed >= opts.max_failed_polls.max(1) {
                    return Err(e);
                }
                seen(Seen::PollFailed(&e.to_string()));
            }
        }
        tokio::select! {
            biased;
            () = &mut stop => return Ok(Watched::Stopped),
            () = tokio::time::sleep(opts.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::{AnalysisRun, Command};
    use greenbelt_serve::deployment::{RolloutSpec, StepSpec};

    fn rollout() -> Rollout {
        let spec = RolloutSpec {
            steps: vec![
                StepSpec {
                    set_weight: Some(20.0),
                    ..StepSpec::default()
                },
                StepSpec {
                    pause: Some("1m".into()),
                    ..StepSpec::default()
                },
            ],
            ..RolloutSpec::default()
        };
        Rollout::start("fraud", "fraud", 1, 2, spec, 1_000)
    }

    #[test]
    fn a_view_changes_with_what_people_watch() {
        let mut r = rollout();
        let v0 = View::of(&r);
        assert_eq!(
            (v0.step, v0.weight, v0.phase),
            (1, 20.0, Phase::Progressing)
        );
        // Time passing inside a pause changes nothing a watcher sees.
        r.tick(2_000);
        assert_eq!(View::of(&r), v0);
        r.record(
            3_000,
            AnalysisRun {
                at_ms: 3_000,
                verdict: Verdict::Inconclusive,
                values: Default::default(),
                notes: vec!["3 requests < min_samples 50".into()],
            },
        );
        let v1 = View::of(&r);
        assert_ne!(v1, v0);
        assert_eq!(v1.phase, Phase::Paused);
        let text = block(&r, 3_000);
        assert!(
            text.contains("Paused, step 1/2, 20% on candidate v2 (stable v1)"),
            "{text}"
        );
        assert!(text.contains("last run Inconclusive (3 requests"), "{text}");
        assert!(text.contains("paused: inconclusive"), "{text}");
        r.command(Command::PromoteFull, 4_000, "alice").unwrap();
        let v2 = View::of(&r);
        assert!(v2.phase.is_terminal());
        assert!(block(&r, 4_000).contains("reason: promoted by alice"));
    }

    #[tokio::test]
    async fn a_missing_rollout_is_an_error_and_stop_ends_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&format!("sqlite://{}/r.db", dir.path().display()))
            .await
            .unwrap();
        let opts = WatchOptions {
            interval: Duration::from_millis(10),
            ..WatchOptions::default()
        };
        let e = watch(&reg, "fraud", opts, std::future::pending(), |_| {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("has no rollout"), "{e}");
        // Stopped before anything was read.
        let w = watch(&reg, "fraud", opts, async {}, |_| {}).await.unwrap();
        assert_eq!(w, Watched::Stopped);
    }
}
