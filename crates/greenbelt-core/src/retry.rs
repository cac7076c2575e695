//! A retry budget, as Finagle and Envoy keep one: retries may add at most
//! `ratio` of the calls made (plus a small floor of `min_per_second` so a
//! quiet dependency can still be retried), counted over the last `ttl`.
//! When a dependency fails every call, its callers make at most
//! `1 + ratio` times their normal load on it instead of a retry storm.
//!
//! Each first attempt is [`RetryBudget::deposit`]ed; each retry asks
//! [`RetryBudget::try_withdraw`] and is not made when it says no. Counts
//! are kept in one-second buckets on tokio's clock, so tests run on the
//! paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per call made, over the window (0.1: 10% extra load).
    pub ratio: f64,
    /// Retries allowed per second of the window regardless of traffic.
    pub min_per_second: u32,
    /// The window.
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.1,
            min_per_second: 1,
            ttl: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    calls: u64,
    retries: u64,
}

#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<Bucket>,
    calls: u64,
    retries: u64,
}

/// What the budget has granted and refused (for metrics and `/admin`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryCounts {
    pub calls: u64,
    pub retries: u64,
    pub refused: u64,
}

/// A retry budget shared by the callers of one dependency.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    origin: Instant,
    window: Mutex<Window>,
    calls: AtomicU64,
    retries: AtomicU64,
    refused: AtomicU64,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> RetryBudget {
        RetryBudget {
            config,
            origin: Instant::now(),
            window: Mutex::new(Window::default()),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn ttl_secs(&self) -> u64 {
        self.config.ttl.as_secs().max(1)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Window, u64) -> T) -> T {
        let second = Instant::now()
            .saturating_duration_since(self.origin)
            .as_secs();
        let ttl = self.ttl_secs();
        let mut w = match self.window.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while let Some(b) = w.buckets.front().copied() {
            if b.second + ttl > second {
                break;
            }
            w.calls -= b.calls;
            w.retries -= b.retries;
            w.buckets.pop_front();
        }
        if w.buckets.back().is_none_or(|b| b.second != second) {
            w.buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
        }
        f(&mut w, second)
    }

    /// A first attempt was made.
    pub fn deposit(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.with(|w, _| {
            w.calls += 1;
            if let Some(b) = w.buckets.back_mut() {
                b.calls += 1;
            }
        });
    }

    /// May a retry be made now? Yes takes it from the budget.
    pub fn try_withdraw(&self) -> bool {
        let floor = u64::from(self.config.min_per_second) * self.ttl_secs();
        let ok = self.with(|w, _| {
            let allowed = floor as f64 + self.config.ratio * w.calls as f64;
            if (w.retries + 1) as f64 <= allowed {
                w.retries += 1;
                if let Some(b) = w.buckets.back_mut() {
                    b.retries += 1;
                }
                true
            } else {
                false
            }
        });
        if ok {
            self.retries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn counts(&self) -> RetryCounts {
        RetryCounts {
            calls: self.calls.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
            ttl: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_held_to_the_ratio_plus_the_floor() {
        let b = budget();
        // No traffic: the floor (1/s over 10 s) allows 10 retries.
        let quiet = (0..50).filter(|_| b.try_withdraw()).count();
        assert_eq!(quiet, 10);
        // 100 calls add 20 more, and no more than that.
        for _ in 0..100 {
            b.deposit();
        }
        let busy = (0..50).filter(|_| b.try_withdraw()).count();
        assert_eq!(busy, 20);
        let c = b.counts();
        assert_eq!((c.calls, c.retries, c.refused), (100, 30, 70));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_dependency_sees_at_most_one_plus_ratio_times_the_load() {
        let b = budget();
        let mut attempts = 0u64;
        // 60 s of 100 calls a second, each failing and asking to retry up
        // to 3 times.
        for _ in 0..60 {
            for _ in 0..100 {
                b.deposit();
                attempts += 1;
                for _ in 0..3 {
                    if !b.try_withdraw() {
                        break;
                    }
                    attempts += 1;
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let calls = 6000.0;
        let extra = attempts as f64 / calls - 1.0;
        // ratio 0.2 plus the floor (1/s): about 0.21, never a storm.
        assert!(extra > 0.15 && extra < 0.25, "extra load {extra}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_old_retries() {
        let b = budget();
        assert_eq!((0..20).filter(|_| b.try_withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!((0..20).filter(|_| b.try_withdraw()).count(), 10);
    }
}
