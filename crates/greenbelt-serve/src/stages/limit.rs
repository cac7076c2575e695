//! Limit: the adaptive concurrency limit of one deployment (or repository
//! model), taken after route and before enrich/execute.
//!
//! Two layers keep the server answering under overload:
//!
//! 1. [`crate::stages::admit`]: the static, global `[server] max_inflight`
//!    and byte budget, before the body is decoded. It is the hard cap that
//!    bounds memory; it knows nothing about models.
//! 2. This stage: one [`Limiter`] per model name, whose limit follows the
//!    model's latency with Netflix's Gradient2 algorithm. It sits after
//!    route because only then is the model known, and a slow model must
//!    not lower the limit of a fast one. A request over its priority's
//!    share of the limit is refused at once (503 + `Retry-After`), never
//!    queued.
//!
//! Priorities (`x-greenbelt-priority: low|normal|high`, else the
//! deployment's `priority`, else `normal`) share one limit: `low` may use
//! `low_share` of it, `normal` `normal_share`, `high` all of it, so low
//! sheds first and high last.
//!
//! The latency a limit learns from is the time requests spend waiting for
//! and inside the model (queue + compute), not their whole time in the
//! server: when the CPU is saturated by connection and decode work
//! (shed requests included), lowering the model's limit would not help,
//! and learning from that delay would spiral the limit down while the
//! model itself is idle.
//!
//! Gradient2 alone reads any rise of latency over its long-term average as
//! overload, so at a load the model carries it sheds requests that would
//! have waited a few milliseconds. Here the queue the operator allows
//! bounds it from both sides: while requests wait less than
//! `tolerated_queue` (a quarter of `[server] queue_budget` unless set) for
//! the model, the limit never falls; past it, it falls by at least a step
//! that grows with the excess; at twice it (half the budget), by the largest
//! step whatever the long-term average says (which, learned during a cold
//! start under overload, would otherwise let the limit grow until the
//! queue budget sheds instead).
//!
//! [`Gradient2`] is a pure state machine: time is an argument, so its tests
//! run on tokio's paused clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::ServeError;
use crate::metrics::Metrics;

/// The request header that carries a request's priority.
pub const PRIORITY_HEADER: &str = "x-greenbelt-priority";

/// A request's class: low sheds first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Shed first: may use `low_share` of the limit.
    Low,
    /// May use `normal_share` of the limit.
    #[default]
    Normal,
    /// May use the whole limit.
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    pub fn parse(text: &str) -> Result<Priority, ServeError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            other => Err(ServeError::InvalidInput(format!(
                "header {PRIORITY_HEADER}: \"{other}\" is not a priority; use low, normal or high"
            ))),
        }
    }

    /// The priority a request asked for, else `default`.
    pub fn of_request(
        headers: &axum::http::HeaderMap,
        default: Priority,
    ) -> Result<Priority, ServeError> {
        match headers.get(PRIORITY_HEADER) {
            None => Ok(default),
            Some(v) => v
                .to_str()
                .map_err(|_| {
                    ServeError::InvalidInput(format!(
                        "header {PRIORITY_HEADER} is not text; use low, normal or high"
                    ))
                })
                .and_then(Priority::parse),
        }
    }
}

/// Which algorithm sets the per-model limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Netflix concurrency-limits' Gradient2.
    Gradient2,
    /// No per-model limit: only `[server] max_inflight` and the queues.
    Off,
}

/// `[server.concurrency]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencyConfig {
    /// `gradient2` (an adaptive limit per model) or `off` (only `[server]
    /// max_inflight` and the queues bound concurrency).
    pub algorithm: Algorithm,
    /// The limit a model starts with.
    pub initial_limit: usize,
    /// The limit never falls below this.
    pub min_limit: usize,
    /// The limit never rises above this (and never above `[server] max_inflight`).
    pub max_limit: usize,
    /// Latency growth tolerated before the limit falls: the limit shrinks
    /// when recent latency is over `rtt_tolerance` x the long-term latency.
    pub rtt_tolerance: f64,
    /// Share of each new estimate taken into the limit (0 < x <= 1).
    pub smoothing: f64,
    /// Headroom added to the estimate on each update (requests).
    pub queue_size: usize,
    /// Samples are averaged over windows of this length.
    /// (Old key `window_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "window",
        alias = "window_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub window_ms: u64,
    /// Queue wait for the model that is not overload: while a window's
    /// requests waited less than this on average, the limit never falls;
    /// past it the limit falls by a step that grows with the excess, the
    /// largest at twice this. "0s": a quarter of `[server] queue_budget`.
    #[serde(rename = "tolerated_queue", with = "greenbelt_core::duration::ms")]
    #[schemars(with = "String")]
    pub tolerated_queue_ms: u64,
    /// The long-term latency averages over about this many windows.
    pub long_window: usize,
    /// Share of the limit `low` priority requests may use (0 < x <= 1).
    pub low_share: f64,
    /// Share of the limit `normal` priority requests may use (0 < x <= 1).
    pub normal_share: f64,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            // Off until it is tuned: Gradient2 kept 84-86% goodput under
            // open-loop overload of a compute-bound model where the static
            // cap collapsed (docs/benchmarks.md, "Overload"), but on the
            // serving bench (a 12 us model, 64 closed-loop clients on 2
            // cores) it settles near 18 in flight and answers most of the
            // rest 503, where queueing would have served them all within
            // a few ms (docs/resilience.md).
            algorithm: Algorithm::Off,
            initial_limit: 100,
            min_limit: 8,
            max_limit: 1000,
            rtt_tolerance: 2.0,
            smoothing: 0.2,
            queue_size: 4,
            window_ms: 100,
            tolerated_queue_ms: 0,
            long_window: 600,
            low_share: 0.5,
            normal_share: 0.9,
        }
    }
}

impl ConcurrencyConfig {
    /// Check every field, naming it.
    pub fn validate(&self) -> Result<(), String> {
        let at = "[server.concurrency]";
        if self.min_limit == 0 {
            return Err(format!("{at} min_limit must be >= 1"));
        }
        if self.max_limit < self.min_limit {
            return Err(format!(
                "{at} max_limit ({}) must be >= min_limit ({})",
                self.max_limit, self.min_limit
            ));
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return Err(format!(
                "{at} initial_limit ({}) must be between min_limit ({}) and max_limit ({})",
                self.initial_limit, self.min_limit, self.max_limit
            ));
        }
        if !(self.rtt_tolerance.is_finite() && self.rtt_tolerance >= 1.0) {
            return Err(format!(
                "{at} rtt_tolerance must be >= 1.0, got {}",
                self.rtt_tolerance
            ));
        }
        for (name, v) in [
            ("smoothing", self.smoothing),
            ("low_share", self.low_share),
            ("normal_share", self.normal_share),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("{at} {name} must be in (0, 1], got {v}"));
            }
        }
        if self.low_share > self.normal_share {
            return Err(format!(
                "{at} low_share ({}) must be <= normal_share ({}): low priority sheds first",
                self.low_share, self.normal_share
            ));
        }
        if self.window_ms == 0 {
            return Err(format!("{at} window must be more than 0s"));
        }
        if self.long_window == 0 {
            return Err(format!("{at} long_window must be > 0"));
        }
        Ok(())
    }
}

/// Gradient2 (Netflix concurrency-limits): compare the latency of the
/// last window (short) with an exponential average over many windows
/// (long); when short grows past `rtt_tolerance` x long, the limit shrinks
/// by up to half per window, else it grows by `queue_size`, smoothed.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    config: ConcurrencyConfig,
    max_limit: usize,
    limit: f64,
    long_rtt: ExpAvg,
    window: Window,
}

#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    sum: Duration,
    queued: Duration,
    samples: u32,
    max_inflight: usize,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            sum: Duration::ZERO,
            queued: Duration::ZERO,
            samples: 0,
            max_inflight: 0,
        }
    }
}

/// Exponential moving average with a warm-up of plain averaging.
#[derive(Debug, Clone)]
struct ExpAvg {
    value: f64,
    count: usize,
    window: usize,
}

impl ExpAvg {
    const WARMUP: usize = 10;

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < Self::WARMUP.min(self.window) {
            self.count += 1;
            self.value += (sample - self.value) / self.count as f64;
        } else {
            let factor = 2.0 / (self.window as f64 + 1.0);
            self.value = self.value * (1.0 - factor) + sample * factor;
        }
        self.value
    }
}

impl Gradient2 {
    /// `hard_cap` is `[server] max_inflight`: the limit never exceeds it.
    pub fn new(config: ConcurrencyConfig, hard_cap: usize, now: Instant) -> Gradient2 {
        let max_limit = config.max_limit.min(hard_cap).max(1);
        let limit = (config.initial_limit.min(max_limit)) as f64;
        Gradient2 {
            long_rtt: ExpAvg {
                value: 0.0,
                count: 0,
                window: config.long_window,
            },
            window: Window::new(now),
            max_limit,
            limit,
            config,
        }
    }

    /// The current limit, whole requests.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).clamp(1, self.max_limit)
    }

    /// One finished request: how long it held its slot (`rtt`), the part
    /// of that it waited for the model (`queued`), and how many were in
    /// flight when it started. Returns the new limit when a window closed.
    pub fn sample(
        &mut self,
        now: Instant,
        rtt: Duration,
        queued: Duration,
        inflight: usize,
    ) -> Option<usize> {
        let w = &mut self.window;
        w.sum += rtt;
        w.queued += queued;
        w.samples += 1;
        w.max_inflight = w.max_inflight.max(inflight);
        if now.duration_since(w.started) < Duration::from_millis(self.config.window_ms) {
            return None;
        }
        let short = (w.sum / w.samples.max(1)).as_secs_f64().max(1e-6);
        let queued = (w.queued / w.samples.max(1)).as_secs_f64();
        let inflight = w.max_inflight;
        self.window = Window::new(now);
        self.update(short, queued, inflight);
        Some(self.limit())
    }

    fn update(&mut self, short: f64, queued: f64, inflight: usize) {
        let mut long = self.long_rtt.add(short);
        // After a slow spell the long average lags far behind: let it
        // catch up faster so the limit can recover.
        if long / short > 2.0 {
            self.long_rtt.value *= 0.95;
            long = self.long_rtt.value;
        }
        let gradient2 = (self.config.rtt_tolerance * long / short).clamp(0.5, 1.0);
        let tolerated = self.config.tolerated_queue_ms as f64 / 1000.0;
        let gradient = if tolerated > 0.0 {
            // Within the tolerated queue no step (queueing the operator
            // allows); past it a step that grows with the excess, so a
            // short burst trims the limit rather than halving it; at twice
            // it (half the budget by default) the largest step, whatever
            // Gradient2 says.
            let excess = ((queued - tolerated) / tolerated).max(0.0);
            if excess >= 1.0 {
                0.5
            } else {
                gradient2.max(1.0 - 0.5 * excess)
            }
        } else {
            gradient2
        };
        let estimate = self.limit * gradient + self.config.queue_size as f64;
        let smoothed =
            self.limit * (1.0 - self.config.smoothing) + estimate * self.config.smoothing;
        // Not using the limit (app-limited): no reason to grow it past
        // where it started. Below that it recovers even unused: at a load
        // the model carries, each burst past the tolerated queue trims the
        // limit, and a limit that only fell would end up shedding the next
        // burst. Unlike Netflix's Gradient2 a latency rise still lowers it,
        // so a model that turns slow under a limit it never filled is
        // caught too.
        if smoothed > self.limit
            && (inflight as f64) < self.limit / 2.0
            && self.limit >= self.config.initial_limit as f64
        {
            return;
        }
        self.limit = smoothed.clamp(
            self.config.min_limit.min(self.max_limit) as f64,
            self.max_limit as f64,
        );
    }

    /// Requests of `priority` may start while fewer than this are in flight.
    pub fn allowance(&self, priority: Priority) -> usize {
        let limit = self.limit() as f64;
        let share = match priority {
            Priority::Low => self.config.low_share,
            Priority::Normal => self.config.normal_share,
            Priority::High => 1.0,
        };
        ((limit * share).floor() as usize).max(1)
    }
}

/// One model's limit and the requests inside it.
pub struct Limiter {
    model: String,
    algorithm: Mutex<Gradient2>,
    inflight: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Held while a request is inside the limit; dropping it records the
/// request's latency as a sample (unless [`LimitPermit::ignore`]d).
pub struct LimitPermit {
    limiter: Arc<Limiter>,
    started: Instant,
    inflight: usize,
    record: bool,
    /// The latency to learn from and the part of it spent waiting for the
    /// model, when the caller measured them (else the time the permit was
    /// held, with no queue).
    sample: Option<(Duration, Duration)>,
}

impl std::fmt::Debug for LimitPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitPermit")
            .field("model", &self.limiter.model)
            .field("inflight", &self.inflight)
            .finish()
    }
}

impl LimitPermit {
    /// The request failed for a reason that says nothing about load (a
    /// client error): release without a sample.
    pub fn ignore(&mut self) {
        self.record = false;
    }

    /// Learn from `latency` (of which `queued` waiting for the model)
    /// instead of the time the permit was held.
    pub fn set_sample(&mut self, latency: Duration, queued: Duration) {
        self.sample = Some((latency, queued));
    }
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        self.limiter.inflight.fetch_sub(1, Ordering::SeqCst);
        if !self.record {
            return;
        }
        let now = Instant::now();
        let (rtt, queued) = self
            .sample
            .unwrap_or_else(|| (now.duration_since(self.started), Duration::ZERO));
        if let Ok(mut a) = self.limiter.algorithm.lock()
            && let Some(limit) = a.sample(now, rtt, queued, self.inflight)
        {
            self.limiter
                .metrics
                .set_concurrency_limit(&self.limiter.model, limit);
        }
    }
}

impl Limiter {
    fn new(
        model: &str,
        config: ConcurrencyConfig,
        hard_cap: usize,
        metrics: Arc<Metrics>,
    ) -> Limiter {
        let algorithm = Gradient2::new(config, hard_cap, Instant::now());
        metrics.set_concurrency_limit(model, algorithm.limit());
        Limiter {
            model: model.to_string(),
            algorithm: Mutex::new(algorithm),
            inflight: AtomicUsize::new(0),
            metrics,
        }
    }

    pub fn limit(&self) -> usize {
        self.algorithm.lock().map(|a| a.limit()).unwrap_or(1)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Enter the limit, or be refused now.
    pub fn try_acquire(self: &Arc<Self>, priority: Priority) -> Result<LimitPermit, ServeError> {
        let allowance = self
            .algorithm
            .lock()
            .map(|a| (a.allowance(priority), a.limit()))
            .map_err(|_| ServeError::Internal("concurrency limiter lock poisoned".into()))?;
        let (allowance, limit) = allowance;
        let mut current = self.inflight.load(Ordering::SeqCst);
        loop {
            if current >= allowance {
                self.metrics
                    .overload_shed(&self.model, "concurrency_limit", priority.as_str());
                return Err(ServeError::Overloaded {
                    what: format!(
                        "model \"{}\" is at its concurrency limit for {} priority ({current} in flight, limit {limit})",
                        self.model,
                        priority.as_str()
                    ),
                    retry_after_s: 1,
                });
            }
            match self.inflight.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        Ok(LimitPermit {
            limiter: self.clone(),
            started: Instant::now(),
            inflight: current + 1,
            record: true,
            sample: None,
        })
    }
}

/// The limiters of every model, created on first use.
pub struct Limiters {
    config: ConcurrencyConfig,
    hard_cap: usize,
    metrics: Arc<Metrics>,
    by_model: Mutex<HashMap<String, Arc<Limiter>>>,
    /// Each deployment's default priority.
    defaults: HashMap<String, Priority>,
}

impl Limiters {
    /// `queue_budget` is `[server] queue_budget`: a quarter of it is the
    /// tolerated queue unless the config sets one.
    pub fn new(
        mut config: ConcurrencyConfig,
        hard_cap: usize,
        queue_budget: Duration,
        defaults: HashMap<String, Priority>,
        metrics: Arc<Metrics>,
    ) -> Limiters {
        if config.tolerated_queue_ms == 0 {
            let quarter = queue_budget.as_millis() / 4;
            config.tolerated_queue_ms = u64::try_from(quarter).unwrap_or(u64::MAX).max(1);
        }
        Limiters {
            config,
            hard_cap,
            metrics,
            by_model: Mutex::new(HashMap::new()),
            defaults,
        }
    }

    /// The priority of a request to `model`.
    pub fn priority(
        &self,
        model: &str,
        headers: &axum::http::HeaderMap,
    ) -> Result<Priority, ServeError> {
        Priority::of_request(
            headers,
            self.defaults.get(model).copied().unwrap_or_default(),
        )
    }

    /// The limiter of `model` (a routed, loaded model: the set is bounded by
    /// the repository). None when the algorithm is off.
    pub fn get(&self, model: &str) -> Option<Arc<Limiter>> {
        if self.config.algorithm == Algorithm::Off {
            return None;
        }
        let mut map = self.by_model.lock().ok()?;
        // The common case allocates nothing: the model's limiter exists.
        if let Some(l) = map.get(model) {
            return Some(l.clone());
        }
        Some(
            map.entry(model.to_string())
                .or_insert_with(|| {
                    Arc::new(Limiter::new(
                        model,
                        self.config.clone(),
                        self.hard_cap,
                        self.metrics.clone(),
                    ))
                })
                .clone(),
        )
    }

    /// Enter `model`'s limit at `priority` (always succeeds when off).
    pub fn acquire(
        &self,
        model: &str,
        priority: Priority,
    ) -> Result<Option<LimitPermit>, ServeError> {
        match self.get(model) {
            None => Ok(None),
            Some(l) => l.try_acquire(priority).map(Some).inspect_err(|_| {
                self.metrics.shed("concurrency_limit");
            }),
        }
    }

    /// Keep the limiters of models `keep` says are still served; the
    /// others go, with their gauge.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut map) = self.by_model.lock() {
            map.retain(|model, _| {
                let kept = keep(model);
                if !kept {
                    self.metrics.forget_concurrency_limit(model);
                }
                kept
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConcurrencyConfig {
        ConcurrencyConfig {
            algorithm: Algorithm::Gradient2,
            initial_limit: 20,
            min_limit: 2,
            max_limit: 200,
            ..ConcurrencyConfig::default()
        }
    }

    /// Run windows of `n` requests of `rtt` each with `inflight` in flight
    /// on the paused clock, returning the limit after them.
    async fn drive(g: &mut Gradient2, windows: usize, rtt: Duration, inflight: usize) -> usize {
        drive_queued(g, windows, rtt, Duration::ZERO, inflight).await
    }

    /// [`drive`], the requests having waited `queued` of their `rtt`.
    async fn drive_queued(
        g: &mut Gradient2,
        windows: usize,
        rtt: Duration,
        queued: Duration,
        inflight: usize,
    ) -> usize {
        for _ in 0..windows {
            for _ in 0..5 {
                tokio::time::advance(Duration::from_millis(25)).await;
                g.sample(Instant::now(), rtt, queued, inflight);
            }
        }
        g.limit()
    }

    #[tokio::test(start_paused = true)]
    async fn queueing_within_the_tolerated_queue_never_lowers_the_limit() {
        let tolerant = ConcurrencyConfig {
            tolerated_queue_ms: 25,
            ..config()
        };
        let mut g = Gradient2::new(tolerant.clone(), 4096, Instant::now());
        let ms = Duration::from_millis;
        let learned = drive_queued(&mut g, 20, ms(2), ms(0), 1000).await;
        // 10x the learned latency, but 20 ms of it is queue: allowed.
        let l = drive_queued(&mut g, 30, ms(22), ms(20), 1000).await;
        assert!(l >= learned, "tolerated queue: holds ({learned} -> {l})");
        // The same latency as plain Gradient2 sees it: it falls.
        let mut plain = Gradient2::new(config(), 4096, Instant::now());
        drive_queued(&mut plain, 20, ms(2), ms(0), 1000).await;
        let p = drive_queued(&mut plain, 30, ms(22), ms(20), 1000).await;
        assert!(p < learned / 2, "plain Gradient2 falls ({learned} -> {p})");
        // Over twice the tolerated queue: falls, even when the long-term
        // average was learned under the same overload (a cold start).
        let mut cold = Gradient2::new(tolerant, 4096, Instant::now());
        let start = cold.limit();
        let l = drive_queued(&mut cold, 30, ms(80), ms(78), 1000).await;
        assert!(
            l < start / 2,
            "half the budget queued: falls ({start} -> {l})"
        );
    }

    #[test]
    fn the_tolerated_queue_defaults_to_a_quarter_of_the_queue_budget() {
        let metrics = Arc::new(Metrics::new());
        let at = |set: u64| {
            let l = Limiters::new(
                ConcurrencyConfig {
                    tolerated_queue_ms: set,
                    ..config()
                },
                4096,
                Duration::from_millis(200),
                HashMap::new(),
                metrics.clone(),
            );
            l.config.tolerated_queue_ms
        };
        assert_eq!(at(0), 50);
        assert_eq!(at(7), 7, "a set value is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_grows_under_steady_latency_and_falls_when_latency_rises() {
        let mut g = Gradient2::new(config(), 4096, Instant::now());
        assert_eq!(g.limit(), 20);
        let grown = drive(&mut g, 50, Duration::from_millis(5), 1000).await;
        assert!(grown > 40, "steady latency, saturated: grows ({grown})");
        let fallen = drive(&mut g, 30, Duration::from_millis(50), 1000).await;
        assert!(
            fallen < grown / 4,
            "10x latency: falls ({grown} -> {fallen})"
        );
        assert!(fallen >= 2, "never below min_limit");
        let recovered = drive(&mut g, 200, Duration::from_millis(5), 1000).await;
        assert!(
            recovered > fallen * 3,
            "fast again: recovers ({fallen} -> {recovered})"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_limited_window_leaves_the_limit_alone() {
        let mut g = Gradient2::new(config(), 4096, Instant::now());
        let l = drive(&mut g, 20, Duration::from_millis(5), 3).await;
        assert_eq!(l, 20, "3 in flight of 20: no reason to grow");
        let l = drive(&mut g, 10, Duration::from_millis(50), 3).await;
        assert!(l < 20, "latency rose: falls even when app-limited ({l})");
        let l = drive(&mut g, 300, Duration::from_millis(5), 3).await;
        assert_eq!(l, 20, "calm again: back to where it started, not past it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_respects_the_hard_cap_and_the_bounds() {
        let mut g = Gradient2::new(config(), 30, Instant::now());
        let l = drive(&mut g, 200, Duration::from_millis(5), 1000).await;
        assert_eq!(l, 30, "max_inflight is the hard cap");
        let l = drive(&mut g, 60, Duration::from_secs(2), 1000).await;
        assert!(l < 10, "slow: falls to where the headroom holds it ({l})");
        let mut g = Gradient2::new(
            ConcurrencyConfig {
                min_limit: 5,
                queue_size: 0,
                ..config()
            },
            4096,
            Instant::now(),
        );
        drive(&mut g, 50, Duration::from_millis(5), 1000).await;
        let l = drive(&mut g, 60, Duration::from_secs(2), 1000).await;
        assert_eq!(l, 5, "never below min_limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_closes_only_after_window_ms() {
        let mut g = Gradient2::new(config(), 4096, Instant::now());
        assert_eq!(
            g.sample(
                Instant::now(),
                Duration::from_millis(1),
                Duration::ZERO,
                100
            ),
            None
        );
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(
            g.sample(
                Instant::now(),
                Duration::from_millis(1),
                Duration::ZERO,
                100
            ),
            None
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            g.sample(
                Instant::now(),
                Duration::from_millis(1),
                Duration::ZERO,
                100
            )
            .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn low_priority_sheds_first_and_high_last() {
        let metrics = Arc::new(Metrics::new());
        let limiters = Limiters::new(
            ConcurrencyConfig {
                initial_limit: 10,
                ..config()
            },
            4096,
            Duration::from_secs(5),
            HashMap::new(),
            metrics.clone(),
        );
        let mut held = Vec::new();
        // low may use 5 of 10, normal 9, high 10.
        for _ in 0..5 {
            held.push(limiters.acquire("m", Priority::Low).unwrap());
        }
        assert!(limiters.acquire("m", Priority::Low).is_err());
        for _ in 0..4 {
            held.push(limiters.acquire("m", Priority::Normal).unwrap());
        }
        assert!(limiters.acquire("m", Priority::Normal).is_err());
        held.push(limiters.acquire("m", Priority::High).unwrap());
        let e = limiters.acquire("m", Priority::High).unwrap_err();
        assert_eq!(e.retry_after(), Some(1));
        assert!(e.to_string().contains("concurrency limit"), "{e}");
        held.clear();
        assert!(limiters.acquire("m", Priority::Low).is_ok());
        let text = metrics.encode();
        assert!(
            text.contains(
                "greenbelt_overload_shed_total{model=\"m\",reason=\"concurrency_limit\",priority=\"low\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("greenbelt_concurrency_limit{model=\"m\"} 10"),
            "{text}"
        );
        limiters.retain(|m| m != "m");
        assert!(
            !metrics.encode().contains("greenbelt_concurrency_limit{"),
            "gone with its model"
        );
    }

    #[test]
    fn priorities_parse_and_a_bad_one_names_the_header() {
        assert_eq!(Priority::parse(" HIGH ").unwrap(), Priority::High);
        let e = Priority::parse("urgent").unwrap_err();
        assert!(e.to_string().contains(PRIORITY_HEADER), "{e}");
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(
            Priority::of_request(&h, Priority::Low).unwrap(),
            Priority::Low
        );
        h.insert(PRIORITY_HEADER, "high".parse().unwrap());
        assert_eq!(
            Priority::of_request(&h, Priority::Low).unwrap(),
            Priority::High
        );
    }

    #[test]
    fn a_tolerated_queue_that_is_not_a_duration_is_refused_with_the_fix() {
        let ok: ConcurrencyConfig = toml::from_str("tolerated_queue = \"40ms\"").unwrap();
        assert_eq!(ok.tolerated_queue_ms, 40);
        for bad in ["\"soon\"", "-5", "\"1500us\""] {
            let e = toml::from_str::<ConcurrencyConfig>(&format!("tolerated_queue = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("tolerated_queue"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let bad = |c: ConcurrencyConfig| c.validate().unwrap_err();
        assert!(
            bad(ConcurrencyConfig {
                min_limit: 0,
                ..config()
            })
            .contains("min_limit")
        );
        assert!(
            bad(ConcurrencyConfig {
                initial_limit: 500,
                ..config()
            })
            .contains("initial_limit")
        );
        assert!(
            bad(ConcurrencyConfig {
                smoothing: 0.0,
                ..config()
            })
            .contains("smoothing")
        );
        assert!(
            bad(ConcurrencyConfig {
                low_share: 1.0,
                normal_share: 0.5,
                ..config()
            })
            .contains("low_share")
        );
        assert!(
            bad(ConcurrencyConfig {
                rtt_tolerance: 0.5,
                ..config()
            })
            .contains("rtt_tolerance")
        );
        assert!(ConcurrencyConfig::default().validate().is_ok());
    }
}
