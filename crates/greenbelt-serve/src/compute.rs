//! The bounded pool that runs inference off the async executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::ServeError;

/// At most `threads` inferences run at once, each on a blocking thread.
#[derive(Clone)]
pub struct Compute {
    permits: Arc<Semaphore>,
}

/// What a compute call measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Time waiting for a compute slot.
    pub wait: Duration,
    /// Time inside the closure.
    pub compute: Duration,
    /// CPU time of the thread that ran the closure, while it ran
    /// (`crate::cost::meter::thread_cpu`): the model call's CPU when the
    /// runtime computes on the calling thread (ONNX Runtime with
    /// `intra_op_threads = 1`, the native engine, tract). For a call run
    /// inline it is the call's wall time: such a call runs start to end on
    /// the request's thread without yielding, and reading the thread's CPU
    /// clock is a system call (two of them cost more than a tabular model's
    /// whole compute: 5% of the server's CPU at c=64 on the serving bench).
    pub cpu: Duration,
}

/// Run `f`, measuring its wall time.
fn timed_wall<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// Run `f`, measuring its wall and thread CPU time.
fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration, Duration) {
    let cpu = crate::cost::meter::thread_cpu();
    let (r, wall) = timed_wall(f);
    let cpu = crate::cost::meter::thread_cpu().saturating_sub(cpu);
    (r, wall, cpu)
}

/// How long a request may wait for compute before it is shed
/// (`[server] queue_budget_ms`, bounded by the request's deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBudget {
    /// When the request started waiting.
    pub since: Instant,
    /// Past this it is dropped before compute.
    pub deadline: Instant,
}

impl QueueBudget {
    /// Wait at most `budget` from `since`, and never past `request_deadline`.
    pub fn new(since: Instant, budget: Duration, request_deadline: Instant) -> QueueBudget {
        QueueBudget {
            since,
            deadline: since
                .checked_add(budget)
                .map_or(request_deadline, |d| d.min(request_deadline)),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The shed error for a request that ran out of it at `now`.
    pub fn error(&self, now: Instant) -> ServeError {
        ServeError::QueueTimeout {
            waited_ms: millis(now.saturating_duration_since(self.since)),
            budget_ms: millis(self.deadline.saturating_duration_since(self.since)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Compute {
    pub fn new(threads: usize) -> Compute {
        Compute {
            permits: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// Run `f` on the blocking pool once a slot is free.
    pub async fn run<R, F>(&self, f: F) -> Result<(R, Timing), ServeError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        self.run_within(None, f).await
    }

    /// [`Compute::run`], shedding with [`ServeError::QueueTimeout`] (and
    /// never running `f`) when no slot frees before the budget's deadline.
    /// [`Compute::run_inline`] is the same on the calling task's thread.
    pub async fn run_within<R, F>(
        &self,
        budget: Option<QueueBudget>,
        f: F,
    ) -> Result<(R, Timing), ServeError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let queued = Instant::now();
        let permit = within(budget, self.permits.clone().acquire_owned()).await?;
        let wait = queued.elapsed();
        let handle = tokio::task::spawn_blocking(move || {
            let done = timed(f);
            drop(permit);
            done
        });
        let (r, compute, cpu) = handle
            .await
            .map_err(|e| ServeError::Internal(format!("inference task failed: {e}")))?;
        Ok((r, Timing { wait, compute, cpu }))
    }

    /// Run `f` on the calling task's thread once it holds a slot (for calls
    /// of a few microseconds; see [`InlineHint`]). It borrows `f`'s inputs
    /// and the slot: no reference count is touched, which two cores running
    /// requests would otherwise bounce between them on every call.
    pub async fn run_inline<R>(
        &self,
        budget: Option<QueueBudget>,
        f: impl FnOnce() -> R,
    ) -> Result<(R, Timing), ServeError> {
        let queued = Instant::now();
        let permit = within(budget, self.permits.acquire()).await?;
        let wait = queued.elapsed();
        let (r, compute) = timed_wall(f);
        drop(permit);
        Ok((
            r,
            Timing {
                wait,
                compute,
                cpu: compute,
            },
        ))
    }
}

/// A compute slot, waited for at most until the budget's deadline.
async fn within<P>(
    budget: Option<QueueBudget>,
    acquire: impl Future<Output = Result<P, tokio::sync::AcquireError>>,
) -> Result<P, ServeError> {
    match budget {
        None => acquire.await,
        Some(b) => match tokio::time::timeout_at(b.deadline, acquire).await {
            Ok(p) => p,
            Err(_) => return Err(b.error(Instant::now())),
        },
    }
    .map_err(|_| ServeError::ShuttingDown)
}

/// Whether a version's calls are cheap enough to run on the async worker
/// that holds the request instead of handing them to a blocking thread: two
/// cross-thread wake-ups cost more than a tabular model's whole compute.
/// Only models that say they are pure computation
/// ([`greenbelt_runtime::Model::inline_safe`]: the native engine) qualify. It
/// keeps a moving average of small calls' compute time; a call runs inline
/// when it is small (≤ [`InlineHint::MAX_ROWS`] rows) and that average is
/// under [`InlineHint::MAX_COMPUTE`]. Until a version has been measured its
/// calls go to the blocking pool.
#[derive(Debug)]
pub struct InlineHint {
    /// Exponential moving average (weight 1/8) of small calls' compute, ns;
    /// `u64::MAX` until the first measurement.
    avg_ns: AtomicU64,
}

impl Default for InlineHint {
    fn default() -> Self {
        InlineHint {
            avg_ns: AtomicU64::new(u64::MAX),
        }
    }
}

impl InlineHint {
    /// Calls of more rows always go to the blocking pool.
    pub const MAX_ROWS: usize = 16;
    /// Average compute above which small calls go to the blocking pool.
    pub const MAX_COMPUTE: Duration = Duration::from_micros(50);

    pub fn inline(&self, rows: usize) -> bool {
        rows <= Self::MAX_ROWS
            && self.avg_ns.load(Ordering::Relaxed) <= Self::MAX_COMPUTE.as_nanos() as u64
    }

    /// Record one call's compute time. A sample counts for at most twice
    /// [`InlineHint::MAX_COMPUTE`]: one call that the kernel preempted
    /// (wall time, on a busy machine: a millisecond is common) must not send
    /// the next dozen calls of a microsecond model to the blocking pool,
    /// while a model that is really slow still crosses the line.
    pub fn observe(&self, rows: usize, took: Duration) {
        if rows > Self::MAX_ROWS {
            return;
        }
        let cap = 2 * Self::MAX_COMPUTE.as_nanos() as u64;
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).min(cap);
        let old = self.avg_ns.load(Ordering::Relaxed);
        let new = if old == u64::MAX {
            ns
        } else {
            old - old / 8 + ns / 8
        };
        self.avg_ns.store(new, Ordering::Relaxed);
    }
}

/// Work that must never take CPU from live requests: threads scheduled
/// `SCHED_IDLE` on Linux (they run only when no normal thread wants the
/// core), fed through a bounded queue. A job that waited longer than its
/// deadline before a thread picked it up is skipped, not run late.
pub struct IdlePool {
    tx: std::sync::mpsc::SyncSender<IdleJob>,
}

type IdleJob = Box<dyn FnOnce() + Send>;

/// Why background work did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Every idle thread is busy and the queue is full.
    QueueFull,
    /// The CPU never went idle before the deadline.
    Starved,
}

impl IdlePool {
    /// `threads` idle-priority threads sharing a queue of `queue` jobs.
    pub fn new(threads: usize, queue: usize) -> IdlePool {
        let (tx, rx) = std::sync::mpsc::sync_channel::<IdleJob>(queue.max(1));
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("greenbelt-idle-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start an idle-priority thread");
            }
        }
        IdlePool { tx }
    }

    /// Run `f` on an idle thread if one picks it up within `deadline`.
    pub async fn run<R, F>(&self, deadline: Duration, f: F) -> Result<(R, Timing), Skipped>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let queued = Instant::now();
        let job: IdleJob = Box::new(move || {
            let wait = queued.elapsed();
            if wait > deadline {
                let _ = done.send(Err(Skipped::Starved));
                return;
            }
            let (r, compute, cpu) = timed(f);
            let _ = done.send(Ok((r, Timing { wait, compute, cpu })));
        });
        self.tx.try_send(job).map_err(|_| Skipped::QueueFull)?;
        // The job answers once a thread reaches it; if the CPU stays busy
        // the job reports Starved then. The outer bound covers a job that
        // started in time and then ran long.
        match tokio::time::timeout(deadline * 4, result).await {
            Ok(Ok(r)) => r,
            _ => Err(Skipped::Starved),
        }
    }
}

/// Lower the calling thread to `SCHED_IDLE` (Linux) or the lowest normal
/// priority elsewhere; best effort, logged when refused.
fn lower_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let policy = if cfg!(target_os = "linux") {
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
    } else {
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
    };
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, policy)
    {
        tracing::warn!(error = ?e, "could not lower a background thread's priority; shadows will compete with live requests for CPU");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_only_once_small_calls_are_measured_cheap() {
        let h = InlineHint::default();
        assert!(!h.inline(1), "unmeasured: blocking pool");
        h.observe(1, Duration::from_micros(3));
        assert!(h.inline(1));
        assert!(
            !h.inline(InlineHint::MAX_ROWS + 1),
            "big calls never inline"
        );
        // Big calls do not move the average; slow small calls do.
        h.observe(1000, Duration::from_secs(1));
        assert!(h.inline(1));
        for _ in 0..40 {
            h.observe(1, Duration::from_millis(2));
        }
        assert!(!h.inline(1), "a model that got slow goes back to the pool");
    }

    #[test]
    fn one_preempted_call_does_not_send_a_fast_model_to_the_pool() {
        let h = InlineHint::default();
        for _ in 0..20 {
            h.observe(1, Duration::from_micros(2));
        }
        h.observe(1, Duration::from_millis(3));
        assert!(h.inline(1), "a 3 ms outlier among 2 us calls");
    }

    #[tokio::test]
    async fn an_inline_call_counts_its_wall_time_as_its_cpu() {
        let c = Compute::new(1);
        let (_, t) = c.run_inline(None, || 1).await.unwrap();
        assert_eq!(t.cpu, t.compute);
    }

    #[tokio::test]
    async fn an_inline_call_still_holds_a_slot_and_reports_its_timing() {
        let c = Compute::new(1);
        let (r, t) = c.run_inline(None, || 6 * 7).await.unwrap();
        assert_eq!(r, 42);
        assert!(t.compute < Duration::from_secs(1));
        // The slot was released: a second call runs.
        let (r, _) = c.run_within(None, || 1).await.unwrap();
        assert_eq!(r, 1);
    }

    #[tokio::test]
    async fn idle_pool_runs_work_and_bounds_its_queue() {
        let pool = IdlePool::new(1, 1);
        let (r, t) = pool.run(Duration::from_secs(5), || 6 * 7).await.unwrap();
        assert_eq!(r, 42);
        assert!(t.wait < Duration::from_secs(5));
        // One thread blocked and one job queued: the next is refused at once.
        let pool = Arc::new(pool);
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let blocker = tokio::spawn(async move {
            p.run(Duration::from_secs(5), move || {
                let _ = hold_rx.recv_timeout(Duration::from_secs(5));
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.run(Duration::from_millis(1), || ()).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let full = pool.run(Duration::from_secs(5), || ()).await;
        assert_eq!(full.err(), Some(Skipped::QueueFull));
        let _ = hold_tx.send(());
        assert!(blocker.await.unwrap().is_ok());
        assert_eq!(
            queued.await.unwrap().err(),
            Some(Skipped::Starved),
            "waited past its deadline: skipped, not run late"
        );
    }
}
