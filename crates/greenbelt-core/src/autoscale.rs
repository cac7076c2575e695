//! The autoscaling recommender: how many replicas a deployment needs, from
//! what it observed. Pure: no I/O and no clock; time is an argument (a
//! [`Duration`] since any fixed origin), so every rule is tested with
//! hand-computed numbers. The server feeds it every couple of seconds from
//! its live windows (`greenbelt-serve` `autoscale.rs`); `greenbelt
//! autoscale simulate` replays a trace through it.
//!
//! Two algorithms for the load metric (concurrency or requests per second):
//!
//! - **Knative KPA** ([`Algorithm::Kpa`]): the desired count is
//!   `ceil(observed / (target × utilization))` over a stable window (60 s)
//!   and a panic window (6 s). When the panic window's desired count is at
//!   least `panic_threshold` (2.0) times the ready replicas, panic mode
//!   begins; while it lasts the larger of the two windows' counts is used
//!   and the count never goes down. It ends once the panic window has not
//!   crossed the threshold for a whole stable window. Each evaluation moves
//!   at most to `ceil(ready × max_scale_up_rate)` (1000) and at least to
//!   `floor(ready / max_scale_down_rate)` (2).
//! - **Kubernetes HPA v2** ([`Algorithm::Hpa`]): `desired = ceil(current ×
//!   metric / target)`, unchanged while `|metric / target − 1| ≤ tolerance`
//!   (0.1); a scale-down stabilization window (300 s: the highest
//!   recommendation in the window is used); and the default behavior
//!   policies (up: the larger of +100 % and +4 replicas per 15 s; down:
//!   −100 % per 15 s), measured from the replicas at the period's start.
//!
//! Latency is an extra HPA-style metric whichever algorithm runs: the p99
//! over its SLO, `desired = ceil(current × p99 / slo)` with the same
//! tolerance. The recommendation is the larger of the two (HPA's rule for
//! several metrics), then bounded by `min_replicas..=max_replicas`.
//!
//! Observations are deployment totals (all replicas together, as Knative's
//! autoscaler aggregates them); a server that sees only its own share
//! multiplies by the replicas it is one of.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which algorithm turns the load metric into replicas.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Knative's pod autoscaler: a stable and a panic window.
    #[default]
    Kpa,
    /// Kubernetes HPA v2: a ratio to the target with a tolerance and a
    /// scale-down stabilization window.
    Hpa,
}

/// What load is measured in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Requests in flight (time-averaged).
    #[default]
    Concurrency,
    /// Requests per second.
    Rps,
}

/// Validated settings of one deployment's recommender.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub algorithm: Algorithm,
    pub metric: Metric,
    /// What one replica can take of `metric` (Knative's target /
    /// container concurrency).
    pub target: f64,
    /// Share of `target` to aim for, in (0, 1] (Knative: 0.7).
    pub target_utilization: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// KPA: the stable window (60 s).
    pub stable_window: Duration,
    /// KPA: the panic window (6 s, 10 % of the stable window).
    pub panic_window: Duration,
    /// KPA: panic when the panic window wants this many times the ready
    /// replicas (2.0 = 200 %).
    pub panic_threshold: f64,
    /// KPA: at most this many times the ready replicas per evaluation (1000).
    pub max_scale_up_rate: f64,
    /// KPA: at least the ready replicas divided by this per evaluation (2).
    pub max_scale_down_rate: f64,
    /// HPA (and the latency metric): no change while the ratio is within
    /// `1 ± tolerance` (0.1).
    pub tolerance: f64,
    /// HPA: the highest recommendation of this window is used when scaling
    /// down (300 s).
    pub scale_down_stabilization: Duration,
    /// HPA: scale up by at most the larger of `scale_up_percent` % and
    /// `scale_up_pods` replicas per `scale_up_period` (100 %, 4, 15 s).
    pub scale_up_percent: f64,
    pub scale_up_pods: u32,
    pub scale_up_period: Duration,
    /// HPA: scale down by at most `scale_down_percent` % per
    /// `scale_down_period` (100 %, 15 s).
    pub scale_down_percent: f64,
    pub scale_down_period: Duration,
    /// The latency objective the p99 is held to; `None`: latency is not a
    /// metric.
    pub latency_slo: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            algorithm: Algorithm::Kpa,
            metric: Metric::Concurrency,
            target: 100.0,
            target_utilization: 0.7,
            min_replicas: 1,
            max_replicas: 100,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            tolerance: 0.1,
            scale_down_stabilization: Duration::from_secs(300),
            scale_up_percent: 100.0,
            scale_up_pods: 4,
            scale_up_period: Duration::from_secs(15),
            scale_down_percent: 100.0,
            scale_down_period: Duration::from_secs(15),
            latency_slo: None,
        }
    }
}

impl Policy {
    /// Check every value, naming the field (`Err("target = 0 must be > 0")`).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("target", self.target),
            ("max_scale_up_rate", self.max_scale_up_rate),
            ("max_scale_down_rate", self.max_scale_down_rate),
            ("panic_threshold", self.panic_threshold),
        ];
        for (field, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{field} = {v} must be a number > 0"));
            }
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return Err(format!(
                "target_utilization = {} must be in (0, 1]",
                self.target_utilization
            ));
        }
        if self.max_scale_up_rate <= 1.0 {
            return Err(format!(
                "max_scale_up_rate = {} must be > 1 (1000 is Knative's default)",
                self.max_scale_up_rate
            ));
        }
        if self.max_scale_down_rate < 1.0 {
            return Err(format!(
                "max_scale_down_rate = {} must be >= 1 (2 is Knative's default)",
                self.max_scale_down_rate
            ));
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(format!("tolerance = {} must be in [0, 1)", self.tolerance));
        }
        for (field, v) in [
            ("scale_up_percent", self.scale_up_percent),
            ("scale_down_percent", self.scale_down_percent),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{field} = {v} must be a percentage >= 0"));
            }
        }
        if self.scale_down_percent > 100.0 {
            return Err(format!(
                "scale_down_percent = {} must be at most 100",
                self.scale_down_percent
            ));
        }
        if self.min_replicas == 0 {
            return Err("min_replicas must be >= 1 (no scale to zero)".into());
        }
        if self.max_replicas < self.min_replicas {
            return Err(format!(
                "max_replicas = {} is below min_replicas = {}",
                self.max_replicas, self.min_replicas
            ));
        }
        if self.panic_window.is_zero() || self.stable_window < self.panic_window {
            return Err(format!(
                "panic_window = {:?} must be > 0 and at most stable_window = {:?}",
                self.panic_window, self.stable_window
            ));
        }
        if self.scale_up_period.is_zero() || self.scale_down_period.is_zero() {
            return Err("scale_up_period and scale_down_period must be > 0".into());
        }
        if self.latency_slo.is_some_and(|s| s.is_zero()) {
            return Err("latency_slo must be > 0".into());
        }
        Ok(())
    }

    /// What one replica should carry: `target × target_utilization`.
    pub fn effective_target(&self) -> f64 {
        self.target * self.target_utilization
    }
}

/// What the deployment did during one evaluation interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Observation {
    /// Average requests in flight, all replicas together.
    pub concurrency: f64,
    /// Requests per second, all replicas together.
    pub rps: f64,
    /// The interval's p99 latency in seconds; `None` when too few requests
    /// were answered to tell.
    pub p99_s: Option<f64>,
}

impl Observation {
    fn value(&self, metric: Metric) -> f64 {
        let v = match metric {
            Metric::Concurrency => self.concurrency,
            Metric::Rps => self.rps,
        };
        if v.is_finite() { v.max(0.0) } else { 0.0 }
    }
}

/// One evaluation's answer and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub desired_replicas: u32,
    /// The replicas the evaluation started from.
    pub current_replicas: u32,
    /// The load metric averaged over the stable and the panic window
    /// (deployment totals).
    pub stable_value: f64,
    pub panic_value: f64,
    pub panic_mode: bool,
    /// What the load metric alone asks for (after the algorithm's rate
    /// limits), and what latency alone asks for.
    pub load_replicas: u32,
    pub latency_replicas: Option<u32>,
    /// p99 over the SLO (the panic window's mean of interval p99s).
    pub latency_ratio: Option<f64>,
}

/// `ceil(current × ratio)`, or `current` while the ratio is within the
/// tolerance (HPA's rule).
pub fn hpa_replicas(current: u32, ratio: f64, tolerance: f64) -> u32 {
    if !ratio.is_finite() || (ratio - 1.0).abs() <= tolerance {
        return current;
    }
    ceil_u32(f64::from(current) * ratio)
}

fn ceil_u32(x: f64) -> u32 {
    round_u32(x, f64::ceil)
}

fn floor_u32(x: f64) -> u32 {
    round_u32(x, f64::floor)
}

/// `x` rounded by `dir` into u32 (NaN and negatives are 0, too large is
/// `u32::MAX`), with float noise guarded: 3.0000000000000004 is 3.
fn round_u32(x: f64, dir: fn(f64) -> f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        let r = x.round();
        if (x - r).abs() < 1e-9 {
            r as u32
        } else {
            dir(x) as u32
        }
    }
}

/// One deployment's recommender: the samples of its windows and the state
/// of panic mode and of HPA's stabilization and rate limits.
#[derive(Debug, Clone)]
pub struct Recommender {
    policy: Policy,
    samples: VecDeque<(Duration, Observation)>,
    /// When the panic window last crossed the threshold (KPA).
    panic_since: Option<Duration>,
    /// The most replicas asked for during this panic.
    panic_max: u32,
    /// Recent recommendations (HPA scale-down stabilization).
    recommendations: VecDeque<(Duration, u32)>,
    /// Replica changes seen between evaluations (HPA rate limits).
    changes: VecDeque<(Duration, i64)>,
    last_current: Option<u32>,
}

impl Recommender {
    pub fn new(policy: Policy) -> Recommender {
        Recommender {
            policy,
            samples: VecDeque::new(),
            panic_since: None,
            panic_max: 0,
            recommendations: VecDeque::new(),
            changes: VecDeque::new(),
            last_current: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Add what was observed in the interval that ended at `at`.
    pub fn observe(&mut self, at: Duration, observation: Observation) {
        self.samples.push_back((at, observation));
        let keep = self.policy.stable_window;
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) >= keep)
        {
            self.samples.pop_front();
        }
    }

    /// The mean of the load metric over the samples of the last `window`
    /// before `now` (`None`: no sample in it).
    fn window_mean(&self, now: Duration, window: Duration) -> Option<f64> {
        let metric = self.policy.metric;
        let (sum, n) = self
            .samples
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) < window && *t <= now)
            .fold((0.0, 0u32), |(s, n), (_, o)| (s + o.value(metric), n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// The mean of the interval p99s in the panic window.
    fn recent_p99(&self, now: Duration) -> Option<f64> {
        let w = self.policy.panic_window;
        let (sum, n) = self
            .samples
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) < w && *t <= now)
            .filter_map(|(_, o)| o.p99_s.filter(|p| p.is_finite() && *p >= 0.0))
            .fold((0.0, 0u32), |(s, n), p| (s + p, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// Evaluate at `now` with `current` replicas running.
    pub fn recommend(&mut self, now: Duration, current: u32) -> Recommendation {
        let p = self.policy.clone();
        if let Some(last) = self.last_current
            && last != current
        {
            self.changes
                .push_back((now, i64::from(current) - i64::from(last)));
        }
        self.last_current = Some(current);
        let ready = current.max(1);
        let stable = self.window_mean(now, p.stable_window);
        let panic = self.window_mean(now, p.panic_window);
        let (load, panic_mode) = match (p.algorithm, stable, panic) {
            (_, None, _) | (_, _, None) => (ready, self.panic_since.is_some()),
            (Algorithm::Kpa, Some(s), Some(q)) => {
                (self.kpa(now, ready, s, q), self.panic_since.is_some())
            }
            (Algorithm::Hpa, Some(_), Some(_)) => {
                let latest = self.samples.back().map_or(0.0, |(_, o)| o.value(p.metric));
                let per_replica = latest / f64::from(ready);
                (
                    hpa_replicas(ready, per_replica / p.effective_target(), p.tolerance),
                    false,
                )
            }
        };
        let latency_ratio = match (p.latency_slo, self.recent_p99(now)) {
            (Some(slo), Some(p99)) => Some(p99 / slo.as_secs_f64()),
            _ => None,
        };
        let latency = latency_ratio.map(|r| hpa_replicas(ready, r, p.tolerance));
        let mut desired = load.max(latency.unwrap_or(0));
        if p.algorithm == Algorithm::Kpa {
            // Latency moves within the same per-evaluation bounds as load.
            let (down, up) = self.kpa_bounds(ready);
            desired = desired.clamp(down.min(up), up);
        } else {
            desired = self.hpa_stabilize(now, current, desired);
        }
        let desired = desired.clamp(p.min_replicas, p.max_replicas);
        Recommendation {
            desired_replicas: desired,
            current_replicas: current,
            stable_value: stable.unwrap_or(0.0),
            panic_value: panic.unwrap_or(0.0),
            panic_mode,
            load_replicas: load,
            latency_replicas: latency,
            latency_ratio,
        }
    }

    /// `[floor(ready / down_rate), ceil(ready × up_rate)]`.
    fn kpa_bounds(&self, ready: u32) -> (u32, u32) {
        let p = &self.policy;
        (
            floor_u32(f64::from(ready) / p.max_scale_down_rate),
            ceil_u32(f64::from(ready) * p.max_scale_up_rate),
        )
    }

    /// Knative's decision for the load metric; updates panic mode.
    fn kpa(&mut self, now: Duration, ready: u32, stable: f64, panic: f64) -> u32 {
        let p = &self.policy;
        let target = p.effective_target();
        let want_stable = ceil_u32(stable / target);
        let want_panic = ceil_u32(panic / target);
        let (down, up) = self.kpa_bounds(ready);
        let desired_stable = want_stable.clamp(down.min(up), up);
        let desired_panic = want_panic.clamp(down.min(up), up);
        let over = f64::from(want_panic) / f64::from(ready) >= p.panic_threshold;
        let stable_window = p.stable_window;
        match self.panic_since {
            // Entering, or still over: panic (again) from now.
            _ if over => self.panic_since = Some(now),
            // Under the threshold for more than a whole stable window:
            // calm again.
            Some(since) if now.saturating_sub(since) > stable_window => {
                self.panic_since = None;
                self.panic_max = 0;
            }
            _ => {}
        }
        if self.panic_since.is_none() {
            return desired_stable;
        }
        // In panic: the larger window's need, and never down.
        self.panic_max = self.panic_max.max(desired_stable.max(desired_panic));
        self.panic_max
    }

    /// HPA's scale-down stabilization and rate limits around `desired`.
    fn hpa_stabilize(&mut self, now: Duration, current: u32, desired: u32) -> u32 {
        let p = &self.policy;
        self.recommendations.push_back((now, desired));
        let window = p.scale_down_stabilization;
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= window)
        {
            self.recommendations.pop_front();
        }
        // Scale-down: the highest recommendation in the window (scale-up
        // has no stabilization by default, so the newest stands).
        let highest = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(desired);
        let stabilized = if desired >= current {
            desired
        } else {
            highest.min(current).max(desired)
        };
        let keep = p.scale_up_period.max(p.scale_down_period);
        while self
            .changes
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > keep)
        {
            self.changes.pop_front();
        }
        let added: i64 = self
            .changes
            .iter()
            .filter(|(t, c)| *c > 0 && now.saturating_sub(*t) <= p.scale_up_period)
            .map(|(_, c)| *c)
            .sum();
        let removed: i64 = self
            .changes
            .iter()
            .filter(|(t, c)| *c < 0 && now.saturating_sub(*t) <= p.scale_down_period)
            .map(|(_, c)| -*c)
            .sum();
        let cur = i64::from(current);
        if stabilized > current {
            let start = (cur - added).max(0) as f64;
            let by_percent = ceil_u32(start * (1.0 + p.scale_up_percent / 100.0));
            let by_pods = ceil_u32(start + f64::from(p.scale_up_pods));
            let limit = by_percent.max(by_pods);
            stabilized.min(limit.max(current))
        } else if stabilized < current {
            let start = (cur + removed) as f64;
            let limit = ceil_u32(start * (1.0 - p.scale_down_percent / 100.0));
            stabilized.max(limit.min(current))
        } else {
            stabilized
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn conc(c: f64) -> Observation {
        Observation {
            concurrency: c,
            rps: 0.0,
            p99_s: None,
        }
    }

    /// Knative's concurrency defaults with a target of 10 (utilization 1.0
    /// unless a case says otherwise).
    fn kpa(target: f64, utilization: f64) -> Recommender {
        Recommender::new(Policy {
            target,
            target_utilization: utilization,
            max_replicas: 10_000,
            ..Policy::default()
        })
    }

    #[test]
    fn kpa_target_utilization_example() {
        // Knative docs (and the KPA guides built on them): container
        // concurrency 10 at 70 % utilization, 100 concurrent requests:
        // 100 / (10 × 0.7) = 14.29 → 15 pods. From 10 ready pods the panic
        // window wants 15 / 10 = 1.5 < 2: no panic, stable answer.
        let mut r = kpa(10.0, 0.7);
        for t in (2..=60).step_by(2) {
            r.observe(s(t), conc(100.0));
        }
        let rec = r.recommend(s(60), 10);
        assert_eq!(rec.desired_replicas, 15);
        assert!(!rec.panic_mode);
        assert!((rec.stable_value - 100.0).abs() < 1e-9);
    }

    #[test]
    fn kpa_enters_panic_at_200_percent_and_never_scales_down_in_it() {
        // Target 10, 1 ready pod, steady 5 in flight for a minute, then a
        // burst of 50 for 6 s (3 samples of 2 s).
        let mut r = kpa(10.0, 1.0);
        for t in (2..=60).step_by(2) {
            r.observe(s(t), conc(5.0));
        }
        assert_eq!(r.recommend(s(60), 1).desired_replicas, 1);
        for t in [62, 64, 66] {
            r.observe(s(t), conc(50.0));
        }
        // Panic window (6 s): samples 62, 64, 66 → mean 50 → ceil(50/10) = 5
        // pods; 5 / 1 ready = 500 % ≥ 200 %: panic. Stable window (60 s):
        // samples 8..66 = 27 × 5 + 3 × 50 = 285 / 30 = 9.5 → 1 pod.
        // In panic the larger of the two: 5.
        let rec = r.recommend(s(66), 1);
        assert!(rec.panic_mode);
        assert_eq!(rec.desired_replicas, 5);
        assert!((rec.panic_value - 50.0).abs() < 1e-9);
        assert!((rec.stable_value - 9.5).abs() < 1e-9);
        // The burst ends; 5 pods now ready. Panic window: 68, 70, 72 at 5
        // → 1 pod; 1 / 5 < 2, not over, but panic holds for a stable window
        // after it last crossed (66 s) and never scales down: still 5.
        for t in [68, 70, 72] {
            r.observe(s(t), conc(5.0));
        }
        let rec = r.recommend(s(72), 5);
        assert!(rec.panic_mode);
        assert_eq!(rec.desired_replicas, 5);
        // Still in panic at 124 s (58 s after 66 s).
        for t in (74..=124).step_by(2) {
            r.observe(s(t), conc(5.0));
        }
        assert!(r.recommend(s(124), 5).panic_mode);
        // At 126 s exactly a stable window has passed since 66 s: Knative
        // leaves panic only once it is over (strictly), so still 5.
        r.observe(s(126), conc(5.0));
        assert!(r.recommend(s(126), 5).panic_mode);
        // At 128 s: calm. The stable window (70..128) is all 5 → 1 pod, but
        // from 5 ready the scale-down rate 2 goes no lower than
        // floor(5 / 2) = 2.
        r.observe(s(128), conc(5.0));
        let rec = r.recommend(s(128), 5);
        assert!(!rec.panic_mode);
        assert_eq!(rec.desired_replicas, 2);
        // Next evaluation from 2 ready: floor(2 / 2) = 1.
        r.observe(s(130), conc(5.0));
        assert_eq!(r.recommend(s(130), 2).desired_replicas, 1);
    }

    #[test]
    fn kpa_panic_uses_the_stable_window_when_it_wants_more() {
        // Knative (serving#8106): in panic, provision for the larger of the
        // two windows. Target 10, 2 ready, stable window 6 s and panic 4 s
        // (2 s samples): samples 1000, 0, 1000 at 2, 4, 6 s.
        let mut r = Recommender::new(Policy {
            target: 10.0,
            target_utilization: 1.0,
            stable_window: s(6),
            panic_window: s(4),
            max_replicas: 1000,
            ..Policy::default()
        });
        for (t, c) in [(2, 1000.0), (4, 0.0), (6, 1000.0)] {
            r.observe(s(t), conc(c));
        }
        // Panic (4 s: samples 4, 6): 500 → 50 pods, 50 / 2 ≥ 2: panic.
        // Stable (6 s: 2, 4, 6): 2000 / 3 = 666.7 → 67 pods. Max: 67.
        let rec = r.recommend(s(6), 2);
        assert!(rec.panic_mode);
        assert_eq!(rec.desired_replicas, 67);
    }

    #[test]
    fn kpa_rate_limits_per_evaluation() {
        // max_scale_up_rate 1000 from 1 ready: at most 1000 pods even if
        // 5000 are wanted (50 000 in flight, target 10).
        let mut r = kpa(10.0, 1.0);
        r.observe(s(2), conc(50_000.0));
        assert_eq!(r.recommend(s(2), 1).desired_replicas, 1000);
        // Rate 10 (Knative lets operators lower it): from 3 ready at most
        // ceil(3 × 10) = 30.
        let mut r = Recommender::new(Policy {
            target: 10.0,
            target_utilization: 1.0,
            max_scale_up_rate: 10.0,
            max_replicas: 1000,
            ..Policy::default()
        });
        r.observe(s(2), conc(50_000.0));
        assert_eq!(r.recommend(s(2), 3).desired_replicas, 30);
        // Down: from 9 ready with no load, floor(9 / 2) = 4.
        let mut r = kpa(10.0, 1.0);
        r.observe(s(2), conc(0.0));
        assert_eq!(r.recommend(s(2), 9).desired_replicas, 4);
    }

    #[test]
    fn kpa_rps_metric_and_bounds() {
        // RPS target 200 at Knative's RPS utilization 0.75 → 150 per pod;
        // 1000 rps → ceil(6.67) = 7; bounded by max_replicas = 5.
        let mut r = Recommender::new(Policy {
            metric: Metric::Rps,
            target: 200.0,
            target_utilization: 0.75,
            max_replicas: 5,
            ..Policy::default()
        });
        r.observe(
            s(2),
            Observation {
                concurrency: 0.0,
                rps: 1000.0,
                p99_s: None,
            },
        );
        let rec = r.recommend(s(2), 4);
        assert_eq!(rec.load_replicas, 7);
        assert_eq!(rec.desired_replicas, 5);
        // min_replicas holds with no load at all.
        let mut r = Recommender::new(Policy {
            min_replicas: 3,
            ..Policy::default()
        });
        r.observe(s(2), conc(0.0));
        assert_eq!(r.recommend(s(2), 3).desired_replicas, 3);
    }

    #[test]
    fn no_samples_keep_the_current_count() {
        let mut r = Recommender::new(Policy::default());
        assert_eq!(r.recommend(s(10), 4).desired_replicas, 4);
    }

    #[test]
    fn hpa_formula_and_tolerance() {
        // Kubernetes docs: current metric 200m, target 100m → ratio 2.0,
        // replicas double; 50m → ratio 0.5, halve.
        assert_eq!(hpa_replicas(3, 200.0 / 100.0, 0.1), 6);
        assert_eq!(hpa_replicas(4, 50.0 / 100.0, 0.1), 2);
        // Within tolerance (0.9..=1.1) nothing changes: 105/100 on 10.
        assert_eq!(hpa_replicas(10, 1.05, 0.1), 10);
        assert_eq!(hpa_replicas(10, 0.91, 0.1), 10);
        // Just outside: 1.15 × 10 = 11.5 → 12.
        assert_eq!(hpa_replicas(10, 1.15, 0.1), 12);
        // ceil: 3 × 1.5 = 4.5 → 5.
        assert_eq!(hpa_replicas(3, 1.5, 0.1), 5);
    }

    fn hpa(target: f64) -> Recommender {
        Recommender::new(Policy {
            algorithm: Algorithm::Hpa,
            target,
            target_utilization: 1.0,
            max_replicas: 1000,
            ..Policy::default()
        })
    }

    #[test]
    fn hpa_scale_down_stabilization_takes_the_window_maximum() {
        // The KEP-853 example, with a 60 s evaluation period: current 10
        // and recommendations 10, 9, 8, 9, 9, 8, 9, 8, 9, 8 (a window of
        // 600 s). Recommendations are made from concurrency = rec × target.
        let mut r = Recommender::new(Policy {
            algorithm: Algorithm::Hpa,
            target: 1.0,
            target_utilization: 1.0,
            tolerance: 0.0,
            scale_down_stabilization: s(600),
            max_replicas: 100,
            ..Policy::default()
        });
        let recs = [10.0, 9.0, 8.0, 9.0, 9.0, 8.0, 9.0, 8.0, 9.0, 8.0];
        let mut t = 0;
        for c in recs {
            t += 60;
            r.observe(s(t), conc(c));
            // Each is the highest in the window so far: 10.
            assert_eq!(r.recommend(s(t), 10).desired_replicas, 10);
        }
        // 11th minute: 7 is added and the first (10, at 60 s) leaves the
        // 600 s window; the highest left is 9: 10 → 9.
        t += 60;
        r.observe(s(t), conc(7.0));
        assert_eq!(r.recommend(s(t), 10).desired_replicas, 9);
    }

    #[test]
    fn hpa_scale_up_policy_doubles_or_adds_four_per_period() {
        // Default scale-up: the larger of +100 % and +4 pods per 15 s.
        // From 2 replicas, load for 40 (target 1): limit max(4, 6) = 6.
        let mut r = hpa(1.0);
        r.observe(s(2), conc(40.0));
        assert_eq!(r.recommend(s(2), 2).desired_replicas, 6);
        // Scaled to 6 at 4 s (4 added in the period, start = 2): the limit
        // stays 6 until the period ends.
        r.observe(s(4), conc(40.0));
        assert_eq!(r.recommend(s(4), 6).desired_replicas, 6);
        // At 20 s the +4 at 4 s is more than 15 s old: start = 6, limit
        // max(12, 10) = 12.
        r.observe(s(20), conc(40.0));
        assert_eq!(r.recommend(s(20), 6).desired_replicas, 12);
    }

    #[test]
    fn latency_is_an_extra_metric_and_the_larger_wins() {
        // Concurrency alone wants 2 of 4 (ceil(20 / 10)) in HPA terms,
        // p99 = 300 ms against a 200 ms SLO: ratio 1.5 → ceil(4 × 1.5) = 6.
        let mut r = Recommender::new(Policy {
            algorithm: Algorithm::Hpa,
            target: 10.0,
            target_utilization: 1.0,
            latency_slo: Some(Duration::from_millis(200)),
            scale_up_pods: 4,
            max_replicas: 100,
            ..Policy::default()
        });
        r.observe(
            s(2),
            Observation {
                concurrency: 20.0,
                rps: 0.0,
                p99_s: Some(0.3),
            },
        );
        let rec = r.recommend(s(2), 4);
        assert_eq!(rec.load_replicas, 2);
        assert_eq!(rec.latency_replicas, Some(6));
        assert!((rec.latency_ratio.unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(rec.desired_replicas, 6);
        // Under KPA the same: stable/panic want 2 of 4 (no panic), latency 6.
        let mut r = Recommender::new(Policy {
            target: 10.0,
            target_utilization: 1.0,
            latency_slo: Some(Duration::from_millis(200)),
            ..Policy::default()
        });
        r.observe(
            s(2),
            Observation {
                concurrency: 20.0,
                rps: 0.0,
                p99_s: Some(0.3),
            },
        );
        let rec = r.recommend(s(2), 4);
        assert_eq!((rec.load_replicas, rec.desired_replicas), (2, 6));
        // A p99 within 10 % of the SLO keeps the current count (4), which
        // then is the larger.
        let mut r = Recommender::new(Policy {
            target: 10.0,
            target_utilization: 1.0,
            latency_slo: Some(Duration::from_millis(200)),
            ..Policy::default()
        });
        r.observe(
            s(2),
            Observation {
                concurrency: 20.0,
                rps: 0.0,
                p99_s: Some(0.21),
            },
        );
        assert_eq!(r.recommend(s(2), 4).desired_replicas, 4);
    }

    #[test]
    fn bad_policies_name_the_field() {
        for (p, field) in [
            (
                Policy {
                    target: 0.0,
                    ..Policy::default()
                },
                "target",
            ),
            (
                Policy {
                    target_utilization: 1.5,
                    ..Policy::default()
                },
                "target_utilization",
            ),
            (
                Policy {
                    min_replicas: 5,
                    max_replicas: 2,
                    ..Policy::default()
                },
                "max_replicas",
            ),
            (
                Policy {
                    panic_window: s(120),
                    ..Policy::default()
                },
                "panic_window",
            ),
            (
                Policy {
                    tolerance: f64::NAN,
                    ..Policy::default()
                },
                "tolerance",
            ),
        ] {
            let e = p.validate().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        assert!(Policy::default().validate().is_ok());
    }
}
