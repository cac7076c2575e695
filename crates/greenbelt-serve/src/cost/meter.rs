//! What the request path meters, kept cheap: per-version atomic counters
//! reached through the version's pre-resolved metric handles (no lock, no
//! label lookup, no formatting per request), CPU clocks read with
//! `clock_gettime` through rustix (no `unsafe` here), and the CPU of
//! decoding and encoding measured on one request in [`SAMPLE`] and scaled.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use greenbelt_core::cost::{GIB, Usage};
use tokio::time::Instant;

/// One request in this many (per thread) has its decode and encode CPU
/// measured; each measurement stands for this many requests.
pub const SAMPLE: u32 = 64;

fn duration(t: rustix::time::Timespec) -> Duration {
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu() -> Duration {
    duration(rustix::time::clock_gettime(
        rustix::time::ClockId::ThreadCPUTime,
    ))
}

/// CPU time of the whole process, user and system, every thread
/// (`CLOCK_PROCESS_CPUTIME_ID`: the kernel's accounting that `getrusage`
/// reports as `ru_utime + ru_stime`, in nanoseconds).
pub fn process_cpu() -> Duration {
    duration(rustix::time::clock_gettime(
        rustix::time::ClockId::ProcessCPUTime,
    ))
}

/// Resident memory of the process (`/proc/self/statm`; 0 where there is none).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

thread_local! {
    static COUNT: Cell<u32> = const { Cell::new(0) };
}

/// The CPU a request spends outside compute (decoding its body, encoding
/// its answer), measured when the request is in the sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestCpu {
    sampled: bool,
    ns: u64,
}

impl RequestCpu {
    /// Every [`SAMPLE`]th request of the calling thread is measured.
    pub fn sample() -> RequestCpu {
        let n = COUNT.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        RequestCpu {
            sampled: n.is_multiple_of(SAMPLE),
            ns: 0,
        }
    }

    /// Run `f`, adding its thread CPU time when the request is sampled.
    /// `f` must not yield (it runs on one thread from start to end).
    pub fn measure<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if !self.sampled {
            return f();
        }
        let start = thread_cpu();
        let r = f();
        self.ns += nanos(thread_cpu().saturating_sub(start));
        r
    }

    /// The CPU this request stands for: what was measured × [`SAMPLE`].
    pub fn estimate_ns(&self) -> u64 {
        if self.sampled {
            self.ns.saturating_mul(u64::from(SAMPLE))
        } else {
            0
        }
    }
}

/// What a loaded version holds, integrated over the time it holds it.
#[derive(Debug, Default)]
struct Held {
    memory_bytes: u64,
    storage_bytes: u64,
    since: Option<Instant>,
    memory_byte_seconds: f64,
    storage_byte_seconds: f64,
}

impl Held {
    fn fold(&mut self, now: Instant) {
        if let Some(since) = self.since {
            let dt = now.saturating_duration_since(since).as_secs_f64();
            self.memory_byte_seconds += self.memory_bytes as f64 * dt;
            self.storage_byte_seconds += self.storage_bytes as f64 * dt;
            self.since = Some(now);
        }
    }
}

/// One model version's meter (shared by every load of the same version,
/// so its counters continue across reloads).
#[derive(Debug, Default)]
pub struct VersionMeter {
    compute_cpu_ns: AtomicU64,
    /// Set at load for a version on a GPU (`device = "cuda"`).
    gpu: AtomicBool,
    gpu_ns: AtomicU64,
    request_cpu_ns: AtomicU64,
    wall_ns: AtomicU64,
    requests: AtomicU64,
    predictions: AtomicU64,
    ingress_bytes: AtomicU64,
    egress_bytes: AtomicU64,
    feature_reads: AtomicU64,
    /// Touched at load, unload and snapshot only.
    held: Mutex<Held>,
}

impl VersionMeter {
    /// One runtime call (a whole batch): its thread CPU, and on a GPU its
    /// wall time as GPU time (the device is held for the call; ONNX
    /// Runtime's CUDA provider runs one call's kernels at a time per session).
    pub fn compute_call(&self, cpu: Duration, wall: Duration) {
        self.compute_cpu_ns.fetch_add(nanos(cpu), Ordering::Relaxed);
        if self.gpu.load(Ordering::Relaxed) {
            self.gpu_ns.fetch_add(nanos(wall), Ordering::Relaxed);
        }
    }

    /// Whether the version runs on a GPU (set when it is loaded).
    pub fn on_gpu(&self, gpu: bool) {
        self.gpu.store(gpu, Ordering::Relaxed);
    }

    /// A request's estimated CPU outside compute.
    pub fn request_cpu(&self, ns: u64) {
        if ns > 0 {
            self.request_cpu_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Time a request spent in the server (any outcome).
    pub fn wall(&self, took: Duration) {
        self.wall_ns.fetch_add(nanos(took), Ordering::Relaxed);
    }

    /// A successful request of `rows` predictions.
    pub fn answered(&self, rows: usize, read_features: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.predictions.fetch_add(rows as u64, Ordering::Relaxed);
        if read_features {
            self.feature_reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A successful request's bytes on the wire, in and out.
    pub fn wire(&self, received: usize, sent: usize) {
        self.ingress_bytes
            .fetch_add(received as u64, Ordering::Relaxed);
        self.egress_bytes.fetch_add(sent as u64, Ordering::Relaxed);
    }

    /// The version is loaded and holds `memory` bytes of RAM and `storage`
    /// bytes of artifact from `now` (a reload replaces the sizes).
    pub fn hold(&self, memory: u64, storage: u64, now: Instant) {
        if let Ok(mut h) = self.held.lock() {
            h.fold(now);
            h.memory_bytes = memory;
            h.storage_bytes = storage;
            h.since.get_or_insert(now);
        }
    }

    /// The version is no longer loaded.
    pub fn release(&self, now: Instant) {
        if let Ok(mut h) = self.held.lock() {
            h.fold(now);
            h.since = None;
        }
    }

    /// Whether the version is loaded now.
    pub fn loaded(&self) -> bool {
        self.held.lock().is_ok_and(|h| h.since.is_some())
    }

    /// Bytes of memory held now (0 when not loaded).
    pub fn memory_bytes(&self) -> u64 {
        self.held
            .lock()
            .map_or(0, |h| if h.since.is_some() { h.memory_bytes } else { 0 })
    }

    /// Cumulative usage up to `now`.
    pub fn usage(&self, now: Instant) -> Usage {
        let (memory, storage) = self.held.lock().map_or((0.0, 0.0), |mut h| {
            h.fold(now);
            (h.memory_byte_seconds, h.storage_byte_seconds)
        });
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
        Usage {
            requests: self.requests.load(Ordering::Relaxed),
            predictions: self.predictions.load(Ordering::Relaxed),
            compute_cpu_seconds: secs(&self.compute_cpu_ns),
            request_cpu_seconds: secs(&self.request_cpu_ns),
            gpu_seconds: secs(&self.gpu_ns),
            wall_seconds: secs(&self.wall_ns),
            memory_gib_hours: memory / GIB / 3600.0,
            storage_gib_hours: storage / GIB / 3600.0,
            ingress_bytes: self.ingress_bytes.load(Ordering::Relaxed) as f64,
            egress_bytes: self.egress_bytes.load(Ordering::Relaxed) as f64,
            feature_reads: self.feature_reads.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_with_work() {
        let t0 = thread_cpu();
        let p0 = process_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(thread_cpu() > t0);
        assert!(process_cpu() >= p0 + (thread_cpu() - t0) / 2);
        assert!(rss_bytes() > 0);
    }

    #[test]
    fn a_gpu_version_is_charged_its_calls_wall_time_as_gpu_time() {
        let cpu_only = VersionMeter::default();
        cpu_only.compute_call(Duration::from_millis(2), Duration::from_millis(5));
        let gpu = VersionMeter::default();
        gpu.on_gpu(true);
        gpu.compute_call(Duration::from_millis(2), Duration::from_millis(5));
        gpu.compute_call(Duration::from_millis(1), Duration::from_millis(3));
        let now = Instant::now();
        let (c, g) = (cpu_only.usage(now), gpu.usage(now));
        assert_eq!(c.gpu_seconds, 0.0);
        assert!((c.compute_cpu_seconds - 0.002).abs() < 1e-12);
        assert!((g.gpu_seconds - 0.008).abs() < 1e-12, "{}", g.gpu_seconds);
        assert!((g.compute_cpu_seconds - 0.003).abs() < 1e-12);
    }

    #[test]
    fn one_request_in_sample_is_measured_and_scaled() {
        let mut sampled = 0;
        for _ in 0..SAMPLE * 4 {
            let mut c = RequestCpu::sample();
            c.measure(|| std::hint::black_box((0..20_000u64).sum::<u64>()));
            if c.sampled {
                sampled += 1;
                assert_eq!(c.estimate_ns(), c.ns * u64::from(SAMPLE));
            } else {
                assert_eq!(c.estimate_ns(), 0);
            }
        }
        assert_eq!(sampled, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn held_memory_is_integrated_while_loaded() {
        let m = VersionMeter::default();
        let t0 = Instant::now();
        m.hold(GIB as u64, 0, t0);
        let u = m.usage(t0 + Duration::from_secs(1800));
        assert!((u.memory_gib_hours - 0.5).abs() < 1e-9);
        m.release(t0 + Duration::from_secs(3600));
        let u = m.usage(t0 + Duration::from_secs(7200));
        assert!(
            (u.memory_gib_hours - 1.0).abs() < 1e-9,
            "stops when unloaded"
        );
        assert_eq!(m.memory_bytes(), 0);
        // loaded again at twice the size
        m.hold(2 * GIB as u64, GIB as u64, t0 + Duration::from_secs(7200));
        let u = m.usage(t0 + Duration::from_secs(9000));
        assert!((u.memory_gib_hours - 2.0).abs() < 1e-9);
        assert!((u.storage_gib_hours - 0.5).abs() < 1e-9);
    }
}
