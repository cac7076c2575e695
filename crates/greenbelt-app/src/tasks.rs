//! The application's background tasks and their shutdown. Tasks written
//! for it watch a stop signal and finish their current step; tasks that
//! only stop when aborted (the rollout controller's) are aborted at once.
//! Shutdown waits a bounded time, then aborts whatever is still running.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`Tasks::shutdown`] waits by default.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A set of background tasks that stop together.
pub struct Tasks {
    stop: watch::Sender<bool>,
    cooperative: Vec<JoinHandle<()>>,
    abort_only: Vec<JoinHandle<()>>,
}

/// Handed to a task: resolves when the application stops.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Wait until stop is asked for (at once when it already was, or when
    /// the task set is gone).
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks {
            stop: watch::channel(false).0,
            cooperative: Vec::new(),
            abort_only: Vec::new(),
        }
    }

    /// Run `task(stop)`; it should return soon after `stop` resolves.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let signal = StopSignal(self.stop.subscribe());
        self.cooperative.push(tokio::spawn(task(signal)));
    }

    /// Run `step(now)` every `every` until stop (a missed tick is delayed,
    /// not bunched up).
    pub fn spawn_ticker<F>(&mut self, every: Duration, mut step: F)
    where
        F: FnMut(tokio::time::Instant) + Send + 'static,
    {
        self.spawn_async_ticker(every, move || {
            step(tokio::time::Instant::now());
            std::future::ready(())
        });
    }

    /// Run the future `step()` makes every `every` until stop, the first at
    /// once; a step still running when stop comes is dropped (a missed tick
    /// is delayed, not bunched up). Bound the step's own time in `step`.
    pub fn spawn_async_ticker<F, Fut>(&mut self, every: Duration, mut step: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn(move |mut stop| async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.stopped() => return,
                    _ = tick.tick() => {}
                }
                tokio::select! {
                    _ = stop.stopped() => return,
                    _ = step() => {}
                }
            }
        });
    }

    /// Keep tasks that run until aborted.
    pub fn adopt(&mut self, handles: impl IntoIterator<Item = JoinHandle<()>>) {
        self.abort_only.extend(handles);
    }

    /// How many tasks there are.
    pub fn len(&self) -> usize {
        self.cooperative.len() + self.abort_only.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ask every task to stop, abort those that only stop that way, and
    /// wait at most `wait` for the rest; those still running are aborted.
    /// Returns how many had to be aborted after the wait.
    pub async fn shutdown(self, wait: Duration) -> usize {
        let _ = self.stop.send(true);
        for h in &self.abort_only {
            h.abort();
        }
        let mut handles = self.cooperative;
        handles.extend(self.abort_only);
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let all = futures::future::join_all(handles);
        match tokio::time::timeout(wait, all).await {
            Ok(_) => 0,
            Err(_) => {
                let left = aborts.iter().filter(|a| !a.is_finished()).count();
                for a in &aborts {
                    a.abort();
                }
                tracing::warn!(
                    tasks = left,
                    wait_ms = wait.as_millis() as u64,
                    "background tasks did not stop in time; aborted"
                );
                left
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn cooperative_tasks_finish_and_abort_only_tasks_are_aborted() {
        let mut tasks = Tasks::new();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        tasks.spawn(move |mut stop| async move {
            stop.stopped().await;
            f.store(true, Ordering::SeqCst);
        });
        tasks.adopt([tokio::spawn(std::future::pending::<()>())]);
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks.shutdown(Duration::from_secs(1)).await, 0);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_stop_is_aborted_after_the_wait() {
        let mut tasks = Tasks::new();
        tasks.spawn(|_stop| std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        assert_eq!(tasks.shutdown(Duration::from_secs(2)).await, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
