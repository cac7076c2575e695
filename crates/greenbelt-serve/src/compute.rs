//! The bounded pool that runs inference off the async executor.

use std::sync::Arc;
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
        let queued = Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServeError::ShuttingDown)?;
        let wait = queued.elapsed();
        let handle = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let r = f();
            drop(permit);
            (r, start.elapsed())
        });
        let (r, compute) = handle
            .await
            .map_err(|e| ServeError::Internal(format!("inference task failed: {e}")))?;
        Ok((r, Timing { wait, compute }))
    }
}
