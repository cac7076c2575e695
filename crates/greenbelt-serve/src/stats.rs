//! Per-version inference statistics in Triton's shape (the `statistics`
//! extension: `GET /v2/models/{m}[/versions/{v}]/stats` and gRPC
//! `ModelStatistics`), so `tritonclient`'s `get_inference_statistics` and
//! perf_analyzer read Greenbelt as they read Triton.
//!
//! Counted since the version was loaded: a few relaxed atomic adds per
//! request, and one short lock per runtime call for the per-batch-size table.
//! Greenbelt does not time input and output copies apart from the runtime
//! call, so `compute_input`/`compute_output` stay zero and `compute_infer`
//! is the whole runtime call (as `greenbelt_compute_duration_seconds`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// A count of events and their total time, as Triton reports it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DurationStat {
    pub count: u64,
    pub ns: u64,
}

#[derive(Default)]
struct AtomicDuration {
    count: AtomicU64,
    ns: AtomicU64,
}

impl AtomicDuration {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> DurationStat {
        DurationStat {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// The live counters of one version.
#[derive(Default)]
pub struct VersionStats {
    success: AtomicDuration,
    fail: AtomicDuration,
    queue: AtomicDuration,
    compute_infer: AtomicDuration,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    /// Runtime calls by batch size: (count, ns).
    batches: Mutex<BTreeMap<u64, (u64, u64)>>,
}

impl VersionStats {
    /// One finished request, successful or not, and when it finished.
    pub fn request(&self, ok: bool, took: Duration) {
        if ok {
            self.success.add(took);
        } else {
            self.fail.add(took);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// A successful request's rows (Triton's inference count: a batch of
    /// N rows counts N).
    pub fn rows(&self, rows: usize) {
        self.inference_count
            .fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn queue(&self, took: Duration) {
        self.queue.add(took);
    }

    pub fn compute(&self, took: Duration) {
        self.compute_infer.add(took);
    }

    /// One runtime call of `rows` rows (a dynamic batch counts once).
    pub fn execution(&self, rows: usize, took: Duration) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        if let Ok(mut b) = self.batches.lock() {
            let slot = b.entry(rows as u64).or_default();
            slot.0 += 1;
            slot.1 = slot.1.saturating_add(ns);
        }
    }

    pub fn snapshot(&self, name: &str, version: &str) -> ModelStat {
        let batch_stats = self
            .batches
            .lock()
            .map(|b| {
                b.iter()
                    .map(|(size, (count, ns))| BatchStat {
                        batch_size: *size,
                        compute_input: DurationStat::default(),
                        compute_infer: DurationStat {
                            count: *count,
                            ns: *ns,
                        },
                        compute_output: DurationStat::default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ModelStat {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferStats {
                success: self.success.get(),
                fail: self.fail.get(),
                queue: self.queue.get(),
                compute_input: DurationStat::default(),
                compute_infer: self.compute_infer.get(),
                compute_output: DurationStat::default(),
                cache_hit: DurationStat::default(),
                cache_miss: DurationStat::default(),
            },
            batch_stats,
            memory_usage: Vec::new(),
        }
    }
}

/// One version's statistics (Triton's `$model_stat`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelStat {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last request (0 = none yet).
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferStats,
    pub batch_stats: Vec<BatchStat>,
    pub memory_usage: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferStats {
    pub success: DurationStat,
    pub fail: DurationStat,
    pub queue: DurationStat,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
    pub cache_hit: DurationStat,
    pub cache_miss: DurationStat,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchStat {
    pub batch_size: u64,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_rows_and_batches() {
        let s = VersionStats::default();
        s.request(true, Duration::from_micros(300));
        s.rows(4);
        s.queue(Duration::from_micros(100));
        s.compute(Duration::from_micros(150));
        s.execution(4, Duration::from_micros(150));
        s.request(false, Duration::from_micros(50));
        s.execution(4, Duration::from_micros(250));
        s.execution(1, Duration::from_micros(10));
        let m = s.snapshot("fraud", "3");
        assert_eq!((m.name.as_str(), m.version.as_str()), ("fraud", "3"));
        assert_eq!(
            m.inference_stats.success,
            DurationStat {
                count: 1,
                ns: 300_000
            }
        );
        assert_eq!(
            m.inference_stats.fail,
            DurationStat {
                count: 1,
                ns: 50_000
            }
        );
        assert_eq!(m.inference_stats.queue.ns, 100_000);
        assert_eq!(m.inference_count, 4);
        assert_eq!(m.execution_count, 3);
        assert!(m.last_inference > 1_700_000_000_000);
        let sizes: Vec<(u64, u64, u64)> = m
            .batch_stats
            .iter()
            .map(|b| (b.batch_size, b.compute_infer.count, b.compute_infer.ns))
            .collect();
        assert_eq!(sizes, vec![(1, 1, 10_000), (4, 2, 400_000)]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["inference_stats"]["success"]["count"], 1);
        assert_eq!(json["batch_stats"][1]["batch_size"], 4);
    }
}
