//! A circuit breaker with resilience4j's semantics, for any call to a
//! dependency (the online store, a registry database, a remote model).
//!
//! - **Closed**: calls pass; each outcome goes into a sliding window:
//!   count-based (the last `sliding_window_size` calls) or time-based (the
//!   calls of the last `sliding_window_size` seconds, kept as one bucket per
//!   second, as resilience4j does). Once the window holds
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
    /// Count-based (the last N calls) or time-based (the last N seconds).
    pub sliding_window_type: WindowType,
    /// Calls (count-based) or seconds (time-based) in the sliding window.
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
            sliding_window_type: WindowType::CountBased,
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
        let max = match self.sliding_window_type {
            WindowType::CountBased => 100_000,
            WindowType::TimeBased => 3_600,
        };
        if self.sliding_window_size > max {
            let unit = match self.sliding_window_type {
                WindowType::CountBased => "calls",
                WindowType::TimeBased => "seconds",
            };
            return Err(format!(
                "{what} sliding_window_size = {}: at most {max} {unit} for sliding_window_type = \"{}\"",
                self.sliding_window_size,
                self.sliding_window_type.as_str()
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

/// Breaker settings as written in a config file (`[store.online_breaker]`,
/// `[registry.breaker]`, ...): every field optional, durations as text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Percent of failed calls in the window that opens the breaker, in
    /// (0, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate_threshold: Option<f64>,
    /// Percent of slow calls in the window that opens the breaker, in
    /// (0, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call_rate_threshold: Option<f64>,
    /// A call that takes at least this long is slow (humantime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call_duration: Option<String>,
    /// `count_based` (the last N calls) or `time_based` (the calls of the
    /// last N seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_type: Option<String>,
    /// N: calls (count-based, at most 100000) or seconds (time-based, at
    /// most 3600) in the sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_size: Option<u32>,
    /// Calls the window must hold before the rates count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_number_of_calls: Option<u32>,
    /// How long the breaker stays open before it lets trial calls through
    /// (humantime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_duration_in_open: Option<String>,
    /// Trial calls let through in half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permitted_calls_in_half_open: Option<u32>,
}

impl BreakerSpec {
    /// `config` written out with every field set, the way a config file
    /// would say it (the configuration reference shows a table's defaults
    /// this way).
    pub fn written(config: &BreakerConfig) -> BreakerSpec {
        BreakerSpec {
            failure_rate_threshold: Some(config.failure_rate_threshold),
            slow_call_rate_threshold: Some(config.slow_call_rate_threshold),
            slow_call_duration: Some(crate::duration::text(config.slow_call_duration)),
            sliding_window_type: Some(config.sliding_window_type.as_str().into()),
            sliding_window_size: Some(config.sliding_window_size),
            minimum_number_of_calls: Some(config.minimum_number_of_calls),
            wait_duration_in_open: Some(crate::duration::text(config.wait_duration_in_open)),
            permitted_calls_in_half_open: Some(config.permitted_calls_in_half_open),
        }
    }

    /// The settings over `defaults`, validated. `what` names the table in
    /// errors (`[registry.breaker]`); `duration(field, text)` parses the
    /// duration fields the way the rest of that file does.
    pub fn to_config(
        &self,
        what: &str,
        defaults: BreakerConfig,
        duration: impl Fn(&str, &str) -> Result<Duration, String>,
    ) -> Result<BreakerConfig, String> {
        let d = defaults;
        let dur = |field: &str, text: &Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(t) => duration(field, t),
        };
        let window_type = match &self.sliding_window_type {
            None => d.sliding_window_type,
            Some(t) => WindowType::parse(t).map_err(|e| format!("{what} {e}"))?,
        };
        let c = BreakerConfig {
            failure_rate_threshold: self
                .failure_rate_threshold
                .unwrap_or(d.failure_rate_threshold),
            slow_call_rate_threshold: self
                .slow_call_rate_threshold
                .unwrap_or(d.slow_call_rate_threshold),
            slow_call_duration: dur(
                "slow_call_duration",
                &self.slow_call_duration,
                d.slow_call_duration,
            )?,
            sliding_window_type: window_type,
            sliding_window_size: self.sliding_window_size.unwrap_or(d.sliding_window_size),
            minimum_number_of_calls: self
                .minimum_number_of_calls
                .unwrap_or(d.minimum_number_of_calls),
            wait_duration_in_open: dur(
                "wait_duration_in_open",
                &self.wait_duration_in_open,
                d.wait_duration_in_open,
            )?,
            permitted_calls_in_half_open: self
                .permitted_calls_in_half_open
                .unwrap_or(d.permitted_calls_in_half_open),
        };
        c.validate(what)?;
        Ok(c)
    }
}

/// How the closed state's sliding window is measured (resilience4j's
/// `slidingWindowType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowType {
    /// The last `sliding_window_size` calls.
    #[default]
    CountBased,
    /// The calls of the last `sliding_window_size` seconds.
    TimeBased,
}

impl WindowType {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowType::CountBased => "count_based",
            WindowType::TimeBased => "time_based",
        }
    }

    /// Parse `count_based` / `time_based` (also resilience4j's upper-case
    /// spelling); the error lists the two.
    pub fn parse(s: &str) -> Result<WindowType, String> {
        match s.to_ascii_lowercase().as_str() {
            "count_based" => Ok(WindowType::CountBased),
            "time_based" => Ok(WindowType::TimeBased),
            _ => Err(format!(
                "sliding_window_type = \"{s}\": use \"count_based\" or \"time_based\""
            )),
        }
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
struct CountWindow {
    calls: VecDeque<Outcome>,
    failed: u32,
    slow: u32,
}

impl CountWindow {
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
}

/// Outcomes of one second of a time-based window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the breaker's origin.
    second: u64,
    calls: u32,
    failed: u32,
    slow: u32,
}

/// A time-based window: one bucket per second that saw a call, the oldest
/// dropped once it is `size` seconds old, with running sums.
#[derive(Debug, Clone, Default)]
struct TimeWindow {
    buckets: VecDeque<Bucket>,
    calls: u32,
    failed: u32,
    slow: u32,
}

impl TimeWindow {
    /// Drop the buckets that left the window at `second`.
    fn expire(&mut self, second: u64, size: u32) {
        while let Some(b) = self.buckets.front() {
            if b.second + u64::from(size) > second {
                break;
            }
            self.calls -= b.calls;
            self.failed -= b.failed;
            self.slow -= b.slow;
            self.buckets.pop_front();
        }
    }

    fn push(&mut self, o: Outcome, second: u64, size: u32) {
        self.expire(second, size);
        let b = match self.buckets.back_mut() {
            Some(b) if b.second == second => b,
            _ => {
                self.buckets.push_back(Bucket {
                    second,
                    ..Bucket::default()
                });
                // Just pushed: present.
                let Some(b) = self.buckets.back_mut() else {
                    return;
                };
                b
            }
        };
        b.calls += 1;
        b.failed += u32::from(o.failed);
        b.slow += u32::from(o.slow);
        self.calls += 1;
        self.failed += u32::from(o.failed);
        self.slow += u32::from(o.slow);
    }
}

/// The outcomes that judge the breaker: the closed state's sliding window,
/// or the half-open trial calls (always counted).
#[derive(Debug, Clone)]
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    fn new(kind: WindowType) -> Window {
        match kind {
            WindowType::CountBased => Window::Count(CountWindow::default()),
            WindowType::TimeBased => Window::Time(TimeWindow::default()),
        }
    }

    fn push(&mut self, o: Outcome, second: u64, size: u32) {
        match self {
            Window::Count(w) => w.push(o, size),
            Window::Time(w) => w.push(o, second, size),
        }
    }

    /// Forget what is older than the window at `second` (time-based only).
    fn expire(&mut self, second: u64, size: u32) {
        if let Window::Time(w) = self {
            w.expire(second, size);
        }
    }

    /// (calls, failed, slow)
    fn sums(&self) -> (u32, u32, u32) {
        match self {
            Window::Count(w) => (w.calls.len() as u32, w.failed, w.slow),
            Window::Time(w) => (w.calls, w.failed, w.slow),
        }
    }

    fn len(&self) -> u32 {
        self.sums().0
    }

    fn rates(&self) -> (f64, f64) {
        let (calls, failed, slow) = self.sums();
        let n = f64::from(calls.max(1));
        (f64::from(failed) * 100.0 / n, f64::from(slow) * 100.0 / n)
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
    /// Where a time-based window's seconds count from.
    origin: Instant,
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
        let window = Window::new(config.sliding_window_type);
        Breaker {
            config,
            origin: now,
            state: State::Closed,
            since: now,
            generation: 0,
            window,
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
        // Half-open judges its trial calls by count, whatever the window.
        self.window = match to {
            State::HalfOpen => Window::Count(CountWindow::default()),
            State::Closed | State::Open => Window::new(self.config.sliding_window_type),
        };
        self.trial_taken = 0;
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn advance(&mut self, now: Instant) {
        if self.state == State::Closed {
            let second = self.second(now);
            self.window.expire(second, self.config.sliding_window_size);
        }
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
                let second = self.second(now);
                self.window
                    .push(outcome, second, self.config.sliding_window_size);
                if self.window.len() >= self.minimum() && self.over() {
                    self.transition(State::Open, now);
                }
            }
            State::HalfOpen => {
                self.window
                    .push(outcome, 0, self.config.permitted_calls_in_half_open);
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

    /// The minimum number of calls, never more than a count-based window
    /// holds (a time-based window has no such cap).
    fn minimum(&self) -> u32 {
        match self.config.sliding_window_type {
            WindowType::CountBased => self
                .config
                .minimum_number_of_calls
                .min(self.config.sliding_window_size),
            WindowType::TimeBased => self.config.minimum_number_of_calls,
        }
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

/// Every named breaker of a process, and the retry budgets beside them,
/// for `/metrics` and the admin view. Breakers are registered once by the
/// part that owns the dependency (the controller's registry breaker, the
/// artifact store's, a webhook's); names are a small fixed set, so they are
/// safe as a metric label.
#[derive(Debug, Clone, Default)]
pub struct BreakerSet {
    inner: Arc<Mutex<std::collections::BTreeMap<String, SharedBreaker>>>,
    budgets: Arc<Mutex<std::collections::BTreeMap<String, Arc<crate::retry::RetryBudget>>>>,
}

/// `GET /admin/breakers`.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerReport {
    pub breakers: std::collections::BTreeMap<String, Snapshot>,
    pub retry_budgets: std::collections::BTreeMap<String, crate::retry::RetryCounts>,
}

impl BreakerSet {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut std::collections::BTreeMap<String, SharedBreaker>) -> T,
    ) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }

    /// The breaker named `name`, made with `config` the first time.
    pub fn get_or_insert(&self, name: &str, config: BreakerConfig) -> SharedBreaker {
        self.with(|m| {
            m.entry(name.to_string())
                .or_insert_with(|| SharedBreaker::new(name, config))
                .clone()
        })
    }

    /// Add a breaker made elsewhere (it keeps its own name).
    pub fn insert(&self, breaker: SharedBreaker) {
        self.with(|m| {
            m.insert(breaker.name().to_string(), breaker);
        });
    }

    /// The retry budget named `name`, made with `config` the first time.
    pub fn retry_budget(
        &self,
        name: &str,
        config: crate::retry::RetryBudgetConfig,
    ) -> Arc<crate::retry::RetryBudget> {
        let mut m = match self.budgets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.entry(name.to_string())
            .or_insert_with(|| Arc::new(crate::retry::RetryBudget::new(config)))
            .clone()
    }

    /// Add a retry budget made elsewhere, under `name`.
    pub fn insert_retry_budget(&self, name: &str, budget: Arc<crate::retry::RetryBudget>) {
        let mut m = match self.budgets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.insert(name.to_string(), budget);
    }

    fn budget_counts(&self) -> std::collections::BTreeMap<String, crate::retry::RetryCounts> {
        let m = match self.budgets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.iter().map(|(k, b)| (k.clone(), b.counts())).collect()
    }

    /// Snapshots of every breaker and the counts of every retry budget.
    pub fn report(&self) -> BreakerReport {
        BreakerReport {
            breakers: self.snapshots(),
            retry_budgets: self.budget_counts(),
        }
    }

    /// Each breaker's snapshot, by name.
    pub fn snapshots(&self) -> std::collections::BTreeMap<String, Snapshot> {
        let all: Vec<SharedBreaker> = self.with(|m| m.values().cloned().collect());
        all.into_iter()
            .map(|b| (b.name().to_string(), b.snapshot()))
            .collect()
    }

    /// Prometheus text: `greenbelt_breaker_state` (0 closed, 1 open, 2
    /// half-open), `greenbelt_breaker_calls_total` by outcome and
    /// `greenbelt_breaker_opened_total`, each labelled `breaker`, and
    /// `greenbelt_retries_total` by `dependency` and `outcome` (granted,
    /// refused by the budget). Empty when nothing is registered.
    pub fn prometheus_text(&self) -> String {
        use std::fmt::Write as _;
        let snaps = self.snapshots();
        let budgets = self.budget_counts();
        let mut out = String::new();
        if !budgets.is_empty() {
            let _ = writeln!(
                out,
                "# HELP greenbelt_retries Retries of calls to a dependency: granted or refused by its retry budget.\n# TYPE greenbelt_retries counter"
            );
            for (name, c) in &budgets {
                for (outcome, n) in [("granted", c.retries), ("refused", c.refused)] {
                    let _ = writeln!(
                        out,
                        "greenbelt_retries_total{{dependency=\"{name}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
        }
        if snaps.is_empty() {
            return out;
        }
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "greenbelt_breaker_state",
            "gauge",
            "Circuit breaker state around a dependency: 0 closed, 1 open, 2 half-open.",
        );
        for (name, s) in &snaps {
            let _ = writeln!(
                out,
                "greenbelt_breaker_state{{breaker=\"{name}\"}} {}",
                s.state.as_gauge()
            );
        }
        head(
            &mut out,
            "greenbelt_breaker_calls",
            "counter",
            "Calls through a circuit breaker by outcome (rejected: refused while open).",
        );
        for (name, s) in &snaps {
            for (outcome, n) in [
                ("successful", s.counts.successful),
                ("failed", s.counts.failed),
                ("rejected", s.counts.rejected),
            ] {
                let _ = writeln!(
                    out,
                    "greenbelt_breaker_calls_total{{breaker=\"{name}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        head(
            &mut out,
            "greenbelt_breaker_opened",
            "counter",
            "Times a circuit breaker opened.",
        );
        for (name, s) in &snaps {
            let _ = writeln!(
                out,
                "greenbelt_breaker_opened_total{{breaker=\"{name}\"}} {}",
                s.counts.opened
            );
        }
        out
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
            sliding_window_type: WindowType::CountBased,
            sliding_window_size: 10,
            minimum_number_of_calls: 4,
            wait_duration_in_open: Duration::from_secs(5),
            permitted_calls_in_half_open: 2,
        }
    }

    #[test]
    fn written_settings_read_back_as_the_same_config() {
        let parse = |_: &str, text: &str| -> Result<Duration, String> {
            match (text.strip_suffix("ms"), text.strip_suffix("us")) {
                (Some(ms), _) => ms.parse().map(Duration::from_millis),
                (_, Some(us)) => us.parse().map(Duration::from_micros),
                _ => text
                    .strip_suffix('s')
                    .unwrap_or(text)
                    .parse()
                    .map(Duration::from_secs),
            }
            .map_err(|e| e.to_string())
        };
        let mut c = cfg();
        c.slow_call_duration = Duration::from_micros(1500);
        c.sliding_window_type = WindowType::TimeBased;
        for want in [cfg(), c, BreakerConfig::default()] {
            let spec = BreakerSpec::written(&want);
            let got = spec
                .to_config("[t]", BreakerConfig::default(), parse)
                .unwrap();
            assert_eq!(got, want, "{spec:?}");
        }
        assert_eq!(
            BreakerSpec::written(&cfg()).slow_call_duration.as_deref(),
            Some("500ms")
        );
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

    fn timed() -> BreakerConfig {
        BreakerConfig {
            sliding_window_type: WindowType::TimeBased,
            sliding_window_size: 10,
            ..cfg()
        }
    }

    #[test]
    fn a_time_based_window_forgets_calls_older_than_its_seconds() {
        let t = Instant::now();
        let mut b = Breaker::new(timed(), t);
        // Three failures at t: under the minimum of 4.
        for _ in 0..3 {
            call(&mut b, t, true);
        }
        assert_eq!(b.snapshot(t).window_calls, 3);
        // Ten seconds on, those three have left the window.
        let later = t + Duration::from_secs(10);
        assert_eq!(b.snapshot(later).window_calls, 0);
        call(&mut b, later, true);
        assert_eq!(b.state(later), State::Closed, "1 call < minimum 4");
        // Within the window they add up: 4 failures in 3 seconds open it.
        for i in 1..=3 {
            call(&mut b, later + Duration::from_secs(i), true);
        }
        assert_eq!(b.state(later + Duration::from_secs(3)), State::Open);
    }

    #[test]
    fn a_time_based_window_judges_the_rate_over_its_seconds() {
        let t = Instant::now();
        let mut b = Breaker::new(timed(), t);
        // 100 calls a second with 40% failures: stays closed (threshold 50%).
        for sec in 0..20u64 {
            let now = t + Duration::from_secs(sec);
            for i in 0..100 {
                call(&mut b, now, i % 5 >= 3);
            }
            assert_eq!(b.state(now), State::Closed, "second {sec}");
            let s = b.snapshot(now);
            assert!(s.window_calls <= 1000, "{}", s.window_calls);
        }
        // Then 60% for long enough to pull the 10 s average over 50%.
        let mut opened_at = None;
        for sec in 20..40u64 {
            let now = t + Duration::from_secs(sec);
            for i in 0..100 {
                let Ok(p) = b.try_acquire(now) else { break };
                b.record(p, now, i % 5 >= 2, Duration::from_millis(1));
            }
            if b.state(now) == State::Open {
                opened_at = Some(sec);
                break;
            }
        }
        // After 5 s at 60% the window averages 50%.
        assert_eq!(opened_at, Some(24));
    }

    #[test]
    fn half_open_counts_its_trials_even_with_a_time_based_window() {
        let t = Instant::now();
        let mut b = Breaker::new(timed(), t);
        for _ in 0..4 {
            call(&mut b, t, true);
        }
        let t2 = t + Duration::from_secs(5);
        assert_eq!(b.state(t2), State::HalfOpen);
        call(&mut b, t2, false);
        call(&mut b, t2, false);
        assert_eq!(b.state(t2), State::Closed);
    }

    #[test]
    fn window_type_parses_and_limits_the_size() {
        assert_eq!(WindowType::parse("TIME_BASED"), Ok(WindowType::TimeBased));
        assert!(
            WindowType::parse("sliding")
                .unwrap_err()
                .contains("count_based")
        );
        let mut c = timed();
        c.sliding_window_size = 7200;
        let e = c.validate("[x]").unwrap_err();
        assert!(e.contains("at most 3600 seconds"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_set_exports_each_breaker() {
        let set = BreakerSet::default();
        assert_eq!(set.prometheus_text(), "");
        let b = set.get_or_insert("registry", cfg());
        // The same breaker the second time.
        let again = set.get_or_insert("registry", timed());
        for _ in 0..4 {
            let _ = again
                .call(
                    Duration::from_secs(1),
                    async { Err::<(), _>("down") },
                    |_| true,
                )
                .await;
        }
        assert_eq!(b.state(), State::Open);
        set.insert(SharedBreaker::new("artifacts", cfg()));
        let text = set.prometheus_text();
        assert!(
            text.contains("greenbelt_breaker_state{breaker=\"registry\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("greenbelt_breaker_state{breaker=\"artifacts\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "greenbelt_breaker_calls_total{breaker=\"registry\",outcome=\"failed\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains("greenbelt_breaker_opened_total{breaker=\"registry\"} 1"),
            "{text}"
        );
        assert_eq!(set.snapshots().len(), 2);
    }
}
