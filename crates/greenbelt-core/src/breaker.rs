//! A circuit breaker with resilience4j's semantics, for any call to a
//! dependency (the online store, a registry database, a remote model).
//!
//! - **Closed**: calls pass; each outcome goes into a count-based sliding
//!   window of the last `sliding_window_size` calls. Once the window holds
//!   at least `minimum_number_of_calls` outcomes, the breaker opens when the
//!   failure rate reaches `failure_rate_threshold` percent or the slow-call
//!   rate (calls that took at least `slow_call_duration`) reaches
//!   `slow_call_rate_threshold` percent.
//! - **Open**: calls are refused at once for `wait_duration_in_open`; the
//!   first call after that moves it to half-open.
//! - **Half-open**: `permitted_calls_in_half_open` trial calls pass (more are
//!   refused); when all have finished, the same two rates over them decide:
//!   over a threshold, open again; otherwise closed with an empty window.
//!
//! [`Breaker`] is the pure state machine: time is an argument, so it is
//! tested without a clock. [`SharedBreaker`] wraps it for concurrent use
//! and runs a future under it with a per-call timeout, reading
//! `tokio::time::Instant` so paused-clock tests drive it. An outcome from a
//! call that started in an earlier state (a slow call that ends after the
//! breaker opened) is ignored: each permit carries the generation it was
//! taken in.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Settings, with resilience4j's names.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Percent of failed calls (of the window) that opens the breaker.
    pub failure_rate_threshold: f64,
    /// Percent of slow calls that opens the breaker.
    pub slow_call_rate_threshold: f64,
    /// A call that takes at least this long is slow.
    pub slow_call_duration: Duration,
    /// Calls in the count-based sliding window.
    pub sliding_window_size: u32,
    /// Calls the window must hold before the rates count.
    pub minimum_number_of_calls: u32,
    /// How long the breaker stays open before it lets trial calls through.
    pub wait_duration_in_open: Duration,
    /// Trial calls in half-open.
    pub permitted_calls_in_half_open: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(1),
            sliding_window_size: 20,
            minimum_number_of_calls: 10,
            wait_duration_in_open: Duration::from_secs(5),
            permitted_calls_in_half_open: 3,
        }
    }
}

impl BreakerConfig {
    /// Check the settings; the error names the field (prefixed by `what`,
    /// e.g. `[store.breaker]`) and the allowed range.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        let pct = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 100.0 {
                Ok(())
            } else {
                Err(format!(
                    "{what} {name} = {v}: must be a percentage in (0, 100]"
                ))
            }
        };
        pct("failure_rate_threshold", self.failure_rate_threshold)?;
        pct("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        let positive = |name: &str, v: u32| {
            if v == 0 {
                Err(format!("{what} {name} = 0: must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("sliding_window_size", self.sliding_window_size)?;
        positive("minimum_number_of_calls", self.minimum_number_of_calls)?;
        positive(
            "permitted_calls_in_half_open",
            self.permitted_calls_in_half_open,
        )?;
        if self.sliding_window_size > 100_000 {
            return Err(format!(
                "{what} sliding_window_size = {}: at most 100000",
                self.sliding_window_size
            ));
        }
        if self.slow_call_duration.is_zero() {
            return Err(format!("{what} slow_call_duration: must be more than 0"));
        }
        if self.wait_duration_in_open.is_zero() {
            return Err(format!("{what} wait_duration_in_open: must be more than 0"));
        }
        Ok(())
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open (resilience4j's
    /// order).
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// Leave to make one call, from [`Breaker::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    generation: u64,
}

/// The breaker refused a call: it is open (or half-open with every trial
/// call taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub state: State,
    /// How long until trial calls are let through (0 when half-open).
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    failed: bool,
    slow: bool,
}

/// A count-based window of the last N outcomes with running sums.
#[derive(Debug, Clone, Default)]
struct Window {
    calls: VecDeque<Outcome>,
    failed: u32,
    slow: u32,
}

impl Window {
    fn push(&mut self, o: Outcome, size: u32) {
        if self.calls.len() >= size as usize
            && let Some(old) = self.calls.pop_front()
        {
            self.failed -= u32::from(old.failed);
            self.slow -= u32::from(old.slow);
        }
        self.failed += u32::from(o.failed);
        self.slow += u32::from(o.slow);
        self.calls.push_back(o);
    }

    fn len(&self) -> u32 {
        self.calls.len() as u32
    }

    fn rates(&self) -> (f64, f64) {
        let n = f64::from(self.len().max(1));
        (
            f64::from(self.failed) * 100.0 / n,
            f64::from(self.slow) * 100.0 / n,
        )
    }
}

/// Counters since the breaker was made (for metrics and the admin view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub successful: u64,
    pub failed: u64,
    pub slow: u64,
    pub rejected: u64,
    /// Times it went to open.
    pub opened: u64,
}

/// A snapshot for metrics and the admin view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub state: State,
    /// Failure and slow-call rates (percent) over the current window; `None`
    /// while it holds fewer than the minimum number of calls.
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    /// Calls in the current window (or half-open trial).
    pub window_calls: u32,
    /// How long it has been in this state, seconds.
    pub in_state_seconds: f64,
    pub counts: Counts,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    since: Instant,
    generation: u64,
    window: Window,
    /// Half-open: trial calls handed out.
    trial_taken: u32,
    counts: Counts,
}

impl Breaker {
    pub fn new(config: BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            config,
            state: State::Closed,
            since: now,
            generation: 0,
            window: Window::default(),
            trial_taken: 0,
            counts: Counts::default(),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now` (open turns half-open once its wait is over).
    pub fn state(&mut self, now: Instant) -> State {
        self.advance(now);
        self.state
    }

    fn transition(&mut self, to: State, now: Instant) {
        if to == State::Open {
            self.counts.opened += 1;
        }
        self.state = to;
        self.since = now;
        self.generation += 1;
        self.window = Window::default();
        self.trial_taken = 0;
    }

    fn advance(&mut self, now: Instant) {
        if self.state == State::Open
            && now.saturating_duration_since(self.since) >= self.config.wait_duration_in_open
        {
            self.transition(State::HalfOpen, now);
        }
    }

    /// Ask to make a call.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        self.advance(now);
        let permit = Permit {
            generation: self.generation,
        };
        match self.state {
            State::Closed => Ok(permit),
            State::HalfOpen if self.trial_taken < self.config.permitted_calls_in_half_open => {
                self.trial_taken += 1;
                Ok(permit)
            }
            State::HalfOpen => {
                self.counts.rejected += 1;
                Err(Rejected {
                    state: State::HalfOpen,
                    retry_after: Duration::ZERO,
                })
            }
            State::Open => {
                self.counts.rejected += 1;
                let waited = now.saturating_duration_since(self.since);
                Err(Rejected {
                    state: State::Open,
                    retry_after: self.config.wait_duration_in_open.saturating_sub(waited),
                })
            }
        }
    }

    /// Record how a permitted call ended: `failed`, and how long it took.
    pub fn record(&mut self, permit: Permit, now: Instant, failed: bool, took: Duration) {
        let slow = took >= self.config.slow_call_duration;
        if failed {
            self.counts.failed += 1;
        } else {
            self.counts.successful += 1;
        }
        if slow {
            self.counts.slow += 1;
        }
        if permit.generation != self.generation {
            // Started under an earlier state: it does not judge this one.
            return;
        }
        let outcome = Outcome { failed, slow };
        match self.state {
            State::Closed => {
                self.window.push(outcome, self.config.sliding_window_size);
                if self.window.len() >= self.minimum() && self.over() {
                    self.transition(State::Open, now);
                }
            }
            State::HalfOpen => {
                self.window
                    .push(outcome, self.config.permitted_calls_in_half_open);
                if self.window.len() >= self.config.permitted_calls_in_half_open {
                    let to = if self.over() {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.transition(to, now);
                }
            }
            // A call cannot hold a permit of the current generation while
            // open: every permit is from closed or half-open.
            State::Open => {}
        }
    }

    /// The minimum number of calls, never more than the window holds.
    fn minimum(&self) -> u32 {
        self.config
            .minimum_number_of_calls
            .min(self.config.sliding_window_size)
    }

    /// Give back a permit whose call ended without an outcome (its caller
    /// went away): a half-open trial slot is free again.
    pub fn release(&mut self, permit: Permit) {
        if permit.generation == self.generation && self.state == State::HalfOpen {
            self.trial_taken = self.trial_taken.saturating_sub(1);
        }
    }

    fn over(&self) -> bool {
        let (failure, slow) = self.window.rates();
        failure >= self.config.failure_rate_threshold
            || slow >= self.config.slow_call_rate_threshold
    }

    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        self.advance(now);
        let enough = match self.state {
            State::Closed => self.window.len() >= self.minimum(),
            State::HalfOpen | State::Open => self.window.len() > 0,
        };
        let (failure, slow) = self.window.rates();
        Snapshot {
            state: self.state,
            failure_rate: enough.then_some(failure),
            slow_call_rate: enough.then_some(slow),
            window_calls: self.window.len(),
            in_state_seconds: now.saturating_duration_since(self.since).as_secs_f64(),
            counts: self.counts,
        }
    }
}

/// Why a call under a [`SharedBreaker`] did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError<E> {
    /// Refused without calling: the breaker is open.
    Rejected(Rejected),
    /// The call did not finish within its timeout (counted as a failure).
    Timeout(Duration),
    /// The call failed.
    Failed(E),
}

impl<E: std::fmt::Display> std::fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Rejected(r) => write!(
                f,
                "circuit breaker {} (retry in {:?})",
                r.state.as_str().replace('_', "-"),
                r.retry_after
            ),
            CallError::Timeout(d) => write!(f, "no answer within {d:?}"),
            CallError::Failed(e) => e.fmt(f),
        }
    }
}

/// A [`Breaker`] shared by concurrent callers, on tokio's clock.
#[derive(Debug, Clone)]
pub struct SharedBreaker {
    name: Arc<str>,
    inner: Arc<Mutex<Breaker>>,
}

impl SharedBreaker {
    pub fn new(name: &str, config: BreakerConfig) -> SharedBreaker {
        SharedBreaker {
            name: name.into(),
            inner: Arc::new(Mutex::new(Breaker::new(config, Instant::now()))),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn with<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> T {
        // A poisoned lock only means another caller panicked mid-update;
        // the state is still a valid state machine.
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }

    pub fn state(&self) -> State {
        self.with(|b| b.state(Instant::now()))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|b| b.snapshot(Instant::now()))
    }

    /// Run `call` if the breaker lets it, cut at `timeout`; `is_failure`
    /// says which errors count against the dependency (a caller's bad
    /// request does not).
    pub async fn call<T, E, F>(
        &self,
        timeout: Duration,
        call: F,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self
            .with(|b| b.try_acquire(Instant::now()))
            .map_err(CallError::Rejected)?;
        let mut pending = Pending {
            breaker: self,
            permit: Some(permit),
            started: Instant::now(),
        };
        let result = tokio::time::timeout(timeout, call).await;
        let (failed, out) = match result {
            Ok(Ok(v)) => (false, Ok(v)),
            Ok(Err(e)) => (is_failure(&e), Err(CallError::Failed(e))),
            Err(_) => (true, Err(CallError::Timeout(timeout))),
        };
        pending.finish(failed);
        out
    }
}

/// A permitted call in flight. Dropped unfinished (the caller went away,
/// e.g. its request timed out): after running at least the slow-call
/// duration it counts as a slow failure (the dependency was slow);
/// before that it is released without an outcome (a client that hangs up
/// says nothing about the dependency), which frees its half-open trial
/// slot. Either way a trial that never ends cannot wedge the breaker.
struct Pending<'a> {
    breaker: &'a SharedBreaker,
    permit: Option<Permit>,
    started: Instant,
}

impl Pending<'_> {
    fn finish(&mut self, failed: bool) {
        if let Some(permit) = self.permit.take() {
            let now = Instant::now();
            let took = now.saturating_duration_since(self.started);
            self.breaker.with(|b| b.record(permit, now, failed, took));
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let now = Instant::now();
        let took = now.saturating_duration_since(self.started);
        self.breaker.with(|b| {
            if took >= b.config.slow_call_duration {
                b.record(permit, now, true, took);
            } else {
                b.release(permit);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_millis(500),
            sliding_window_size: 10,
            minimum_number_of_calls: 4,
            wait_duration_in_open: Duration::from_secs(5),
            permitted_calls_in_half_open: 2,
        }
    }

    fn call(b: &mut Breaker, now: Instant, failed: bool) {
        let p = b.try_acquire(now).unwrap();
        b.record(p, now, failed, Duration::from_millis(1));
    }

    #[test]
    fn stays_closed_below_the_minimum_number_of_calls() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for _ in 0..3 {
            call(&mut b, t, true);
        }
        assert_eq!(b.state(t), State::Closed);
        call(&mut b, t, true);
        assert_eq!(b.state(t), State::Open);
    }

    #[test]
    fn opens_at_the_failure_rate_threshold_over_the_sliding_window() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        // 10 successes fill the window; then failures push them out.
        for _ in 0..10 {
            call(&mut b, t, false);
        }
        for i in 0..5 {
            assert_eq!(b.state(t), State::Closed, "after {i} failures");
            call(&mut b, t, true);
        }
        // 5 of the last 10 failed: 50% reaches the threshold.
        assert_eq!(b.state(t), State::Open);
        let s = b.snapshot(t);
        assert_eq!(s.counts.opened, 1);
        assert_eq!(s.counts.failed, 5);
    }

    #[test]
    fn opens_on_slow_calls() {
        let t = Instant::now();
        let mut c = cfg();
        c.slow_call_rate_threshold = 75.0;
        let mut b = Breaker::new(c, t);
        for i in 0..4 {
            let p = b.try_acquire(t).unwrap();
            let took = if i == 0 { 1 } else { 600 };
            b.record(p, t, false, Duration::from_millis(took));
        }
        assert_eq!(b.state(t), State::Open);
    }

    #[test]
    fn open_rejects_then_half_opens_after_the_wait() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for _ in 0..4 {
            call(&mut b, t, true);
        }
        let r = b.try_acquire(t + Duration::from_secs(2)).unwrap_err();
        assert_eq!(r.state, State::Open);
        assert_eq!(r.retry_after, Duration::from_secs(3));
        let t2 = t + Duration::from_secs(5);
        assert_eq!(b.state(t2), State::HalfOpen);
        // Two trial calls, the third is refused.
        let p1 = b.try_acquire(t2).unwrap();
        let p2 = b.try_acquire(t2).unwrap();
        assert_eq!(b.try_acquire(t2).unwrap_err().state, State::HalfOpen);
        b.record(p1, t2, false, Duration::ZERO);
        assert_eq!(b.state(t2), State::HalfOpen);
        b.record(p2, t2, false, Duration::ZERO);
        assert_eq!(b.state(t2), State::Closed);
        // Closed again with an empty window: a single failure does not open.
        call(&mut b, t2, true);
        assert_eq!(b.state(t2), State::Closed);
    }

    #[test]
    fn a_failed_trial_opens_again() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        for _ in 0..4 {
            call(&mut b, t, true);
        }
        let t2 = t + Duration::from_secs(5);
        let p1 = b.try_acquire(t2).unwrap();
        let p2 = b.try_acquire(t2).unwrap();
        b.record(p1, t2, true, Duration::ZERO);
        b.record(p2, t2, false, Duration::ZERO);
        // 1 of 2 failed = 50%.
        assert_eq!(b.state(t2), State::Open);
        assert_eq!(b.snapshot(t2).counts.opened, 2);
        assert!(b.try_acquire(t2 + Duration::from_secs(4)).is_err());
        assert!(b.try_acquire(t2 + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn late_outcomes_from_an_earlier_state_are_ignored() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg(), t);
        let slow = b.try_acquire(t).unwrap();
        for _ in 0..4 {
            call(&mut b, t, true);
        }
        assert_eq!(b.state(t), State::Open);
        let t2 = t + Duration::from_secs(5);
        assert_eq!(b.state(t2), State::HalfOpen);
        // The old call finishes now: it does not count as a trial.
        b.record(slow, t2, false, Duration::ZERO);
        assert_eq!(b.snapshot(t2).window_calls, 0);
        assert_eq!(b.state(t2), State::HalfOpen);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let mut c = cfg();
        c.failure_rate_threshold = 0.0;
        let e = c.validate("[store.breaker]").unwrap_err();
        assert!(e.contains("[store.breaker] failure_rate_threshold"), "{e}");
        let mut c = cfg();
        c.permitted_calls_in_half_open = 0;
        let e = c.validate("x").unwrap_err();
        assert!(e.contains("permitted_calls_in_half_open"), "{e}");
        assert!(cfg().validate("x").is_ok());
        assert!(BreakerConfig::default().validate("x").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn shared_breaker_times_out_opens_and_recovers_on_the_paused_clock() {
        let b = SharedBreaker::new("test", cfg());
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<u32, String>(1)
        };
        for _ in 0..4 {
            let e = b
                .call(Duration::from_millis(100), slow(), |_| true)
                .await
                .unwrap_err();
            assert_eq!(e, CallError::Timeout(Duration::from_millis(100)));
        }
        assert_eq!(b.state(), State::Open);
        let started = Instant::now();
        let e = b
            .call(
                Duration::from_millis(100),
                async { Ok::<u32, String>(1) },
                |_| true,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Rejected(_)));
        assert_eq!(Instant::now(), started, "a rejected call does not wait");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(b.state(), State::HalfOpen);
        for _ in 0..2 {
            let v = b
                .call(
                    Duration::from_millis(100),
                    async { Ok::<u32, String>(7) },
                    |_| true,
                )
                .await
                .unwrap();
            assert_eq!(v, 7);
        }
        assert_eq!(b.state(), State::Closed);
        // An error the classifier does not count keeps it closed.
        for _ in 0..10 {
            let _ = b
                .call(
                    Duration::from_millis(100),
                    async { Err::<u32, String>("bad request".into()) },
                    |_| false,
                )
                .await;
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_call_is_released_unless_it_was_already_slow() {
        let b = SharedBreaker::new("test", cfg());
        for _ in 0..4 {
            let _ = b
                .call(
                    Duration::from_millis(100),
                    async { Err::<u32, String>("down".into()) },
                    |_| true,
                )
                .await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let abandon = |after_ms: u64| {
            // The caller gives up before the call's own timeout.
            tokio::time::timeout(
                Duration::from_millis(after_ms),
                b.call(
                    Duration::from_secs(60),
                    std::future::pending::<Result<u32, String>>(),
                    |_| true,
                ),
            )
        };
        // Quick hang-ups say nothing: the trial slots come back.
        for _ in 0..5 {
            let _ = abandon(10).await;
        }
        let s = b.snapshot();
        assert_eq!((s.state, s.window_calls), (State::HalfOpen, 0));
        // Calls abandoned after the slow-call duration were slow failures.
        for _ in 0..2 {
            let _ = abandon(600).await;
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn a_minimum_above_the_window_size_uses_the_window_size() {
        let t = Instant::now();
        let mut c = cfg();
        c.minimum_number_of_calls = 50;
        let mut b = Breaker::new(c, t);
        for _ in 0..10 {
            call(&mut b, t, true);
        }
        assert_eq!(b.state(t), State::Open);
    }
}
