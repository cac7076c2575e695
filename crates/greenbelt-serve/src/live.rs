//! Live per-version request statistics for release analysis: request and
//! failure counts and a log-bucketed latency histogram, all atomics, so the
//! request path pays a few uncontended `fetch_add`s. The rollout controller
//! takes snapshots and analyses the difference between two of them (a
//! window), which Prometheus histograms with fixed coarse buckets cannot
//! give precisely enough for a p99 condition.
//!
//! The autoscaler reads the same counters, plus one more atomic: the
//! microseconds requests spent in the server (`busy_us`), whose growth over
//! an interval divided by the interval is the average concurrency (Little's
//! law), so nothing samples the in-flight gauge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::error::Outcome;

/// Values below this many microseconds get a bucket each.
const LINEAR: u64 = 16;
/// Sub-buckets per power of two above `LINEAR` (relative error ≤ 1/8).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Octaves from 2^4 µs up to 2^40 µs (~12 days).
const OCTAVES: u64 = 37;
const BUCKETS: usize = (LINEAR + OCTAVES * SUB) as usize;

fn bucket_of(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let e = u64::from(63 - us.leading_zeros());
    let octave = (e - 4).min(OCTAVES - 1);
    let sub = if e - 4 >= OCTAVES {
        SUB - 1
    } else {
        (us >> (e - u64::from(SUB_BITS))) & (SUB - 1)
    };
    (LINEAR + octave * SUB + sub) as usize
}

/// The largest latency (µs) that falls in bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let octave = (i - LINEAR) / SUB;
    let sub = (i - LINEAR) % SUB;
    let e = octave + 4;
    let width = 1u64 << (e - u64::from(SUB_BITS));
    (1u64 << e) + (sub + 1) * width - 1
}

pub struct LiveStats {
    requests: AtomicU64,
    server_errors: AtomicU64,
    timeouts: AtomicU64,
    client_errors: AtomicU64,
    /// Microseconds spent by every request recorded (all outcomes).
    busy_us: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            requests: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LiveStats {
    /// Record one answered request. Shed requests are not the version's fault
    /// and are not counted; client errors are counted apart and are neither
    /// samples nor latencies.
    pub fn record(&self, outcome: Outcome, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Every request occupied the server, shed or not: concurrency.
        self.busy_us.fetch_add(us, Ordering::Relaxed);
        match outcome {
            Outcome::Shed => return,
            Outcome::ServerError => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Timeout => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::ClientError => {
                // The caller's mistake says nothing of the version, and a
                // flood of cheap bad requests must not fill a canary's
                // samples or pull its latency down: counted apart only.
                self.client_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Outcome::Success => {}
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = self.latency.get(bucket_of(us)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            busy_us: self.busy_us.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Cumulative counts at one instant; `since` turns two into a window.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    pub requests: u64,
    pub server_errors: u64,
    pub timeouts: u64,
    pub client_errors: u64,
    /// Microseconds spent in the server by the requests counted so far.
    pub busy_us: u64,
    latency: Vec<u64>,
}

/// What a version did during a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Window {
    pub requests: u64,
    /// Server errors plus timeouts: failures that are the version's fault.
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl LiveSnapshot {
    /// Requests that took at most `us` microseconds (whole buckets only:
    /// a bucket straddling `us` counts as slower).
    pub fn at_most_us(&self, us: u64) -> u64 {
        self.latency
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_upper(*i) <= us)
            .map(|(_, n)| n)
            .sum()
    }

    /// The counts added since `earlier`, as a snapshot of their own (a
    /// reset version counts from zero).
    pub fn minus(&self, earlier: &LiveSnapshot) -> LiveSnapshot {
        LiveSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            client_errors: self.client_errors.saturating_sub(earlier.client_errors),
            busy_us: self.busy_us.saturating_sub(earlier.busy_us),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Add `other`'s counts to these (several versions of a deployment).
    pub fn add(&mut self, other: &LiveSnapshot) {
        self.requests += other.requests;
        self.server_errors += other.server_errors;
        self.timeouts += other.timeouts;
        self.client_errors += other.client_errors;
        self.busy_us = self.busy_us.saturating_add(other.busy_us);
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// The `q` quantile of the latencies counted, in milliseconds (0 when
    /// none).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency, q)
    }

    /// The window between `earlier` and `self` (counts never go down; a
    /// reset version counts from zero).
    pub fn since(&self, earlier: &LiveSnapshot) -> Window {
        let requests = self.requests.saturating_sub(earlier.requests);
        let errors = (self.server_errors + self.timeouts)
            .saturating_sub(earlier.server_errors + earlier.timeouts);
        let counts: Vec<u64> = self
            .latency
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
            .collect();
        Window {
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: quantile_ms(&counts, 0.50),
            p99_ms: quantile_ms(&counts, 0.99),
        }
    }
}

fn quantile_ms(counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_upper(i) as f64 / 1000.0;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_neither_samples_nor_latencies() {
        let live = LiveStats::default();
        let before = live.snapshot();
        for _ in 0..1000 {
            live.record(Outcome::ClientError, Duration::from_micros(5));
        }
        live.record(Outcome::Success, Duration::from_millis(20));
        live.record(Outcome::ServerError, Duration::from_millis(30));
        let now = live.snapshot();
        assert_eq!(now.client_errors, 1000);
        let w = now.since(&before);
        assert_eq!(w.requests, 2);
        assert_eq!(w.errors, 1);
        assert!((w.error_rate - 0.5).abs() < 1e-9);
        // The cheap bad requests did not pull the latency down.
        assert!(w.p50_ms >= 19.0, "{w:?}");
    }

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in [
            0,
            1,
            15,
            16,
            17,
            31,
            32,
            100,
            999,
            1000,
            12_345,
            1 << 30,
            u64::MAX,
        ] {
            let b = bucket_of(us);
            assert!(b >= last, "{us}");
            last = b;
            assert!(b < BUCKETS);
            if us < (1 << 40) {
                assert!(bucket_upper(b) >= us, "{us} > upper {}", bucket_upper(b));
                assert!(bucket_upper(b) as f64 <= us as f64 * 1.13 + 1.0, "{us}");
            }
        }
    }

    #[test]
    fn window_rates_and_quantiles() {
        let s = LiveStats::default();
        let before = s.snapshot();
        for _ in 0..98 {
            s.record(Outcome::Success, Duration::from_millis(1));
        }
        s.record(Outcome::ServerError, Duration::from_millis(50));
        s.record(Outcome::Timeout, Duration::from_millis(100));
        s.record(Outcome::Shed, Duration::from_millis(100));
        let w = s.snapshot().since(&before);
        assert_eq!(w.requests, 100);
        assert_eq!(w.errors, 2);
        assert!((w.error_rate - 0.02).abs() < 1e-12);
        assert!((1.0..1.13).contains(&w.p50_ms), "{}", w.p50_ms);
        assert!((50.0..57.0).contains(&w.p99_ms), "{}", w.p99_ms);
        // An empty window.
        let now = s.snapshot();
        assert_eq!(now.since(&now), Window::default());
    }

    #[test]
    fn deltas_add_up_across_versions_and_count_busy_time() {
        let a = LiveStats::default();
        let b = LiveStats::default();
        let (a0, b0) = (a.snapshot(), b.snapshot());
        for _ in 0..99 {
            a.record(Outcome::Success, Duration::from_millis(2));
        }
        b.record(Outcome::Success, Duration::from_millis(80));
        b.record(Outcome::Shed, Duration::from_millis(1));
        let mut sum = a.snapshot().minus(&a0);
        sum.add(&b.snapshot().minus(&b0));
        assert_eq!(sum.requests, 100);
        // 99 × 2 ms + 80 ms + the shed request's 1 ms.
        assert_eq!(sum.busy_us, 99 * 2000 + 80_000 + 1000);
        assert!((2.0..2.3).contains(&sum.quantile_ms(0.5)));
        assert!((2.0..2.3).contains(&sum.quantile_ms(0.99)));
        assert!((80.0..91.0).contains(&sum.quantile_ms(1.0)));
        assert_eq!(LiveSnapshot::default().quantile_ms(0.99), 0.0);
    }
}
