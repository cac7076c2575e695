//! Execute: run validated inputs on one version, through its batcher when
//! it has one, else on the bounded compute pool. [`Executor`] is all that
//! running a model needs, so shadow workers get this handle and nothing of
//! the request path's state.

use std::sync::Arc;
use std::time::Duration;

use greenbelt_core::Tensor;

use crate::compute::{Compute, QueueBudget};
use crate::error::ServeError;
use crate::repository::ServedVersion;

/// What a runtime call returned, with its timing.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub compute: Duration,
    /// The request's CPU in the model call (its rows' share of a batch).
    pub cpu: Duration,
    pub batch_rows: usize,
}

/// The compute pool and the request timeout.
#[derive(Clone)]
pub struct Executor {
    pub compute: Compute,
    pub timeout: Duration,
}

impl Executor {
    pub fn new(compute: Compute, timeout: Duration) -> Executor {
        Executor { compute, timeout }
    }

    /// Run `inputs` (validated, in signature order) on `served`. No timeout
    /// of its own: the request path's timeout wraps it.
    pub async fn execute(
        &self,
        served: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<Executed, ServeError> {
        self.execute_within(served, inputs, None).await
    }

    /// [`Executor::execute`], shed before compute (503,
    /// [`ServeError::QueueTimeout`]) if it waits past `budget`.
    pub async fn execute_within(
        &self,
        served: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
        budget: Option<QueueBudget>,
    ) -> Result<Executed, ServeError> {
        let rows = inputs.first().map_or(0, Tensor::rows);
        match &served.batcher {
            Some(batcher) => {
                let reply = batcher.infer_within(inputs, budget).await?;
                Ok(Executed {
                    outputs: reply.outputs,
                    queue: reply.queue,
                    compute: reply.compute,
                    cpu: reply.cpu,
                    batch_rows: reply.batch_rows,
                })
            }
            None => {
                let inline = served.runtime.inline_safe() && served.inline.inline(rows);
                let (result, timing) = if inline {
                    self.compute
                        .run_inline(budget, || served.runtime.infer(&inputs))
                        .await?
                } else {
                    let runtime = served.runtime.clone();
                    self.compute
                        .run_within(budget, move || runtime.infer(&inputs))
                        .await?
                };
                served
                    .metrics
                    .cost()
                    .compute_call(timing.cpu, timing.compute);
                if result.is_ok() {
                    served.metrics.execution(rows, timing.compute);
                    served.inline.observe(rows, timing.compute);
                }
                Ok(Executed {
                    outputs: result?,
                    queue: timing.wait,
                    compute: timing.compute,
                    cpu: timing.cpu,
                    batch_rows: rows,
                })
            }
        }
    }

    /// [`Executor::execute`] under the request timeout (504), for work that
    /// is not inside a request's timeout (shadows).
    pub async fn execute_within_timeout(
        &self,
        served: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<Executed, ServeError> {
        tokio::time::timeout(self.timeout, self.execute(served, inputs))
            .await
            .map_err(|_| ServeError::Timeout(self.timeout))?
    }
}
