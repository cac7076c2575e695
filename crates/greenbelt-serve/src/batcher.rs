//! The dynamic batcher of one model version, an actor: one task owns the
//! queue; requests arrive on a bounded `mpsc` channel and are answered on a
//! `oneshot`. Requests of compatible shape are merged along the first
//! dimension into one runtime call and split back. Entries whose caller went
//! away (timed out, disconnected) are dropped before they cost compute.
//!
//! Knobs follow Triton's: `max_batch_size`, `max_queue_delay`, optional
//! preferred batch sizes, a bounded queue, and a queue timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_core::Tensor;
use greenbelt_runtime::Model;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::compute::{Compute, QueueBudget};
use crate::error::ServeError;
use crate::instances::Width;
use crate::metrics::VersionMetrics;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most rows merged into one runtime call.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch.
    /// (Old key `max_queue_delay_us`, an integer in microseconds, is still accepted.)
    #[serde(
        rename = "max_queue_delay",
        alias = "max_queue_delay_us",
        with = "greenbelt_core::duration::us"
    )]
    #[schemars(with = "String")]
    pub max_queue_delay_us: u64,
    /// Dispatch as soon as the batch reaches one of these row counts.
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests waiting beyond this are refused with 503.
    pub max_queue_size: usize,
    /// A request still queued after this long fails with a timeout ("0s" = only the request timeout).
    /// (Old key `queue_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "queue_timeout",
        alias = "queue_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub queue_timeout_ms: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: 32,
            max_queue_delay_us: 500,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            queue_timeout_ms: 0,
        }
    }
}

impl BatchingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err("batching.max_batch_size must be > 0".into());
        }
        if self.max_queue_size == 0 {
            return Err("batching.max_queue_size must be > 0".into());
        }
        if let Some(p) = self
            .preferred_batch_sizes
            .iter()
            .find(|p| **p == 0 || **p > self.max_batch_size)
        {
            return Err(format!(
                "batching.preferred_batch_sizes: {p} must be between 1 and max_batch_size ({})",
                self.max_batch_size
            ));
        }
        Ok(())
    }
}

/// What a batched request gets back.
#[derive(Debug)]
pub struct BatchReply {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub compute: Duration,
    /// This request's share of the batch's CPU, by rows.
    pub cpu: Duration,
    pub batch_rows: usize,
}

/// The part of a batch's `cpu` that `rows` of its `total` rows account for.
fn share(cpu: Duration, rows: usize, total: usize) -> Duration {
    if total == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(
        u64::try_from(cpu.as_nanos() * rows as u128 / total as u128).unwrap_or(u64::MAX),
    )
}

struct Item {
    /// Inputs in signature order.
    inputs: Vec<Tensor>,
    rows: usize,
    enqueued: Instant,
    /// Shed before compute once this runs out.
    budget: Option<QueueBudget>,
    reply: oneshot::Sender<Result<BatchReply, ServeError>>,
    span: tracing::Span,
}

impl Item {
    fn compatible(&self, other: &Item) -> bool {
        self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

/// Handle to a running batcher; dropping every handle stops it.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Item>,
    max_batch_size: usize,
    metrics: VersionMetrics,
}

impl Batcher {
    /// Start the actor. `width` is its concurrency: a batch runs only
    /// while it holds one of its permits (one per model instance; resized
    /// by in-process scaling, `instances.rs`).
    pub fn spawn(
        config: BatchingConfig,
        model: Arc<dyn Model>,
        width: Arc<Width>,
        compute: Compute,
        metrics: VersionMetrics,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(config.max_queue_size);
        let max_batch_size = config.max_batch_size;
        let handle_metrics = metrics.clone();
        let actor = Actor {
            config,
            model,
            compute,
            metrics,
            slots: width,
            pending: VecDeque::new(),
        };
        tokio::spawn(actor.run(rx));
        Batcher {
            tx,
            max_batch_size,
            metrics: handle_metrics,
        }
    }

    /// Requests waiting in the queue now (not yet taken by the batching loop).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's bound (`max_queue_size`).
    pub fn queue_limit(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Queue `inputs` (in signature order) and wait for the batched answer.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<BatchReply, ServeError> {
        self.infer_within(inputs, None).await
    }

    /// [`Batcher::infer`] with a queue budget: if the request is still
    /// waiting (in the queue or for a compute slot) when it runs out, it is
    /// answered with [`ServeError::QueueTimeout`] and never computed.
    pub async fn infer_within(
        &self,
        inputs: Vec<Tensor>,
        budget: Option<QueueBudget>,
    ) -> Result<BatchReply, ServeError> {
        let rows = inputs.first().map_or(0, Tensor::rows);
        if rows > self.max_batch_size {
            return Err(ServeError::InvalidInput(format!(
                "request has {rows} rows, more than this model's max_batch_size ({}); split it",
                self.max_batch_size
            )));
        }
        let (reply, rx) = oneshot::channel();
        let item = Item {
            inputs,
            rows,
            enqueued: Instant::now(),
            budget,
            reply,
            span: tracing::Span::current(),
        };
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.metrics.shed_batch_queue();
                ServeError::Overloaded {
                    what: "batch queue full".into(),
                    retry_after_s: 1,
                }
            }
            mpsc::error::TrySendError::Closed(_) => ServeError::ShuttingDown,
        })?;
        rx.await.map_err(|_| ServeError::ShuttingDown)?
    }
}

struct Actor {
    config: BatchingConfig,
    model: Arc<dyn Model>,
    compute: Compute,
    metrics: VersionMetrics,
    /// One permit per model instance: batches in flight at once.
    slots: Arc<Width>,
    /// Items received but left out of the last batch (did not fit or had another shape).
    pending: VecDeque<Item>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>) {
        loop {
            let first = match self.pending.pop_front() {
                Some(item) => item,
                None => match rx.recv().await {
                    Some(item) => item,
                    None => return,
                },
            };
            let Some(first) = self.live(first) else {
                continue;
            };
            let batch = self.collect(first, &mut rx).await;
            if batch.is_empty() {
                continue;
            }
            let Ok(slot) = self.slots.acquire().await else {
                return;
            };
            let model = self.model.clone();
            let compute = self.compute.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                run_batch(batch, model, compute, metrics).await;
                drop(slot);
            });
        }
    }

    /// Drop items whose caller is gone or whose queue time ran out.
    fn live(&self, item: Item) -> Option<Item> {
        if item.reply.is_closed() {
            return None;
        }
        if let Some(b) = item.budget {
            let now = Instant::now();
            if b.expired(now) {
                let _ = item.reply.send(Err(b.error(now)));
                return None;
            }
        }
        if self.config.queue_timeout_ms > 0 {
            let limit = Duration::from_millis(self.config.queue_timeout_ms);
            if item.enqueued.elapsed() > limit {
                let _ = item.reply.send(Err(ServeError::Timeout(limit)));
                return None;
            }
        }
        Some(item)
    }

    async fn collect(&mut self, first: Item, rx: &mut mpsc::Receiver<Item>) -> Vec<Item> {
        let max = self.config.max_batch_size;
        let deadline = first.enqueued + Duration::from_micros(self.config.max_queue_delay_us);
        let mut rows = first.rows;
        let mut batch = vec![first];
        // Earlier leftovers first, in arrival order.
        let mut i = 0;
        while i < self.pending.len() && rows < max {
            let fits = self
                .pending
                .get(i)
                .is_some_and(|p| rows + p.rows <= max && batch[0].compatible(p));
            if fits {
                if let Some(p) = self.pending.remove(i).and_then(|p| self.live(p)) {
                    rows += p.rows;
                    batch.push(p);
                }
            } else {
                i += 1;
            }
        }
        while rows < max && !self.preferred(rows) && self.pending.len() < self.config.max_queue_size
        {
            let next = match rx.try_recv() {
                Ok(item) => item,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(item)) => item,
                    Ok(None) | Err(_) => break,
                },
            };
            let Some(next) = self.live(next) else {
                continue;
            };
            if rows + next.rows <= max && batch[0].compatible(&next) {
                rows += next.rows;
                batch.push(next);
            } else {
                self.pending.push_back(next);
            }
        }
        batch
    }

    fn preferred(&self, rows: usize) -> bool {
        self.config.preferred_batch_sizes.contains(&rows)
    }
}

async fn run_batch(
    batch: Vec<Item>,
    model: Arc<dyn Model>,
    compute: Compute,
    metrics: VersionMetrics,
) {
    // Last chance to skip callers that went away, or whose queue budget
    // ran out, while we waited for a slot.
    let now = Instant::now();
    let batch: Vec<Item> = batch
        .into_iter()
        .filter_map(|i| match i.budget {
            Some(b) if b.expired(now) => {
                let _ = i.reply.send(Err(b.error(now)));
                None
            }
            _ => (!i.reply.is_closed()).then_some(i),
        })
        .collect();
    if batch.is_empty() {
        return;
    }
    // The batch waits for a compute slot as long as its most patient member.
    let budget = batch
        .iter()
        .map(|i| i.budget)
        .collect::<Option<Vec<_>>>()
        .and_then(|b| b.into_iter().max_by_key(|b| b.deadline));
    let dispatched = Instant::now();
    let rows: Vec<usize> = batch.iter().map(|i| i.rows).collect();
    let total_rows: usize = rows.iter().sum();
    let merged = merge(&batch);
    let result = match merged {
        Ok(inputs) => compute
            .run_within(budget, move || model.infer(&inputs))
            .await
            .and_then(|(r, t)| r.map(|o| (o, t)).map_err(ServeError::from)),
        Err(e) => Err(e),
    };
    metrics.batch(total_rows);
    match result {
        Ok((outputs, timing)) => {
            metrics.execution(total_rows, timing.compute);
            metrics.cost().compute_call(timing.cpu, timing.compute);
            let mut per_item: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::new()).collect();
            for out in &outputs {
                match out.split(&rows) {
                    Ok(parts) => {
                        for (slot, part) in per_item.iter_mut().zip(parts) {
                            slot.push(part);
                        }
                    }
                    Err(e) => {
                        let err =
                            ServeError::Runtime(format!("batched output could not be split: {e}"));
                        for item in batch {
                            let _ = item.reply.send(Err(err.clone()));
                        }
                        return;
                    }
                }
            }
            for (item, outputs) in batch.into_iter().zip(per_item) {
                let _enter = item.span.enter();
                let queue = dispatched.duration_since(item.enqueued) + timing.wait;
                let _ = item.reply.send(Ok(BatchReply {
                    outputs,
                    queue,
                    compute: timing.compute,
                    cpu: share(timing.cpu, item.rows, total_rows),
                    batch_rows: total_rows,
                }));
            }
        }
        Err(e) => {
            for item in batch {
                let _ = item.reply.send(Err(e.clone()));
            }
        }
    }
}

fn merge(batch: &[Item]) -> Result<Vec<Tensor>, ServeError> {
    let Some(first) = batch.first() else {
        return Ok(Vec::new());
    };
    if batch.len() == 1 {
        return Ok(first.inputs.clone());
    }
    (0..first.inputs.len())
        .map(|i| {
            let parts: Vec<&Tensor> = batch.iter().filter_map(|item| item.inputs.get(i)).collect();
            Tensor::concat(&parts).map_err(ServeError::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::{DataType, Signature, TensorData, TensorSpec};
    use greenbelt_runtime::{Backend, RuntimeError};
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    /// Doubles its input; records every batch size it saw.
    struct Doubler {
        sig: Signature,
        calls: Mutex<Vec<usize>>,
        delay: Duration,
        /// Calls running now, and the most seen at once.
        running: std::sync::atomic::AtomicUsize,
        peak: std::sync::atomic::AtomicUsize,
    }

    impl Model for Doubler {
        fn signature(&self) -> &Signature {
            &self.sig
        }
        fn backend(&self) -> Backend {
            Backend::Tract
        }
        fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            let t = &inputs[0];
            self.calls.lock().unwrap().push(t.rows());
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            if !self.delay.is_zero() {
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(self.delay);
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            let TensorData::Fp32(v) = &t.data else {
                return Err(RuntimeError::Inference("want fp32".into()));
            };
            Ok(vec![
                Tensor::new(
                    "y",
                    t.shape.clone(),
                    TensorData::Fp32(v.iter().map(|x| x * 2.0).collect()),
                )
                .unwrap(),
            ])
        }
    }

    fn doubler(delay: Duration) -> Arc<Doubler> {
        Arc::new(Doubler {
            sig: Signature {
                inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, 2])],
                outputs: vec![TensorSpec::new("y", DataType::Fp32, vec![-1, 2])],
            },
            calls: Mutex::new(Vec::new()),
            delay,
            running: Default::default(),
            peak: Default::default(),
        })
    }

    fn input(rows: usize, v: f32) -> Vec<Tensor> {
        vec![
            Tensor::new(
                "x",
                vec![rows as i64, 2],
                TensorData::Fp32(vec![v; rows * 2]),
            )
            .unwrap(),
        ]
    }

    fn batcher(model: Arc<Doubler>, cfg: BatchingConfig) -> Batcher {
        let metrics = crate::metrics::Metrics::new().version("m", "1");
        Batcher::spawn(cfg, model, Width::new(1), Compute::new(1), metrics)
    }

    #[tokio::test]
    async fn merges_concurrent_requests_and_splits_answers() {
        let model = doubler(Duration::ZERO);
        let b = batcher(
            model.clone(),
            BatchingConfig {
                max_batch_size: 8,
                max_queue_delay_us: 200_000,
                preferred_batch_sizes: vec![6],
                ..Default::default()
            },
        );
        let (a, c, d) = tokio::join!(
            b.infer(input(1, 1.0)),
            b.infer(input(2, 2.0)),
            b.infer(input(3, 3.0))
        );
        for (reply, rows, v) in [(a, 1, 2.0), (c, 2, 4.0), (d, 3, 6.0)] {
            let reply = reply.unwrap();
            assert_eq!(reply.outputs[0].shape, vec![rows, 2]);
            assert_eq!(
                reply.outputs[0].data,
                TensorData::Fp32(vec![v; rows as usize * 2])
            );
            assert_eq!(reply.batch_rows, 6);
        }
        // One runtime call of 6 rows: the preferred size dispatched it before the delay.
        assert_eq!(*model.calls.lock().unwrap(), vec![6]);
    }

    #[tokio::test]
    async fn never_exceeds_max_batch_size() {
        let model = doubler(Duration::ZERO);
        let b = batcher(
            model.clone(),
            BatchingConfig {
                max_batch_size: 4,
                max_queue_delay_us: 50_000,
                ..Default::default()
            },
        );
        let futs: Vec<_> = (0..5).map(|i| b.infer(input(3, i as f32))).collect();
        for r in futures::future::join_all(futs).await {
            assert_eq!(r.unwrap().outputs[0].rows(), 3);
        }
        assert!(model.calls.lock().unwrap().iter().all(|n| *n <= 4));
        let e = b.infer(input(5, 0.0)).await.unwrap_err();
        assert!(e.to_string().contains("max_batch_size (4)"), "{e}");
    }

    #[tokio::test]
    async fn full_queue_sheds_and_gone_callers_cost_nothing() {
        let model = doubler(Duration::from_millis(100));
        let b = batcher(
            model.clone(),
            BatchingConfig {
                max_batch_size: 1,
                max_queue_delay_us: 0,
                max_queue_size: 1,
                ..Default::default()
            },
        );
        // The first occupies the only instance; later ones queue or are shed.
        let busy = tokio::spawn({
            let b = b.clone();
            async move { b.infer(input(1, 1.0)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Caller that gives up while queued.
        let gone = tokio::time::timeout(Duration::from_millis(10), b.infer(input(1, 9.0))).await;
        assert!(gone.is_err());
        let mut shed = 0;
        for _ in 0..4 {
            if let Err(ServeError::Overloaded { .. }) =
                tokio::time::timeout(Duration::from_millis(5), b.infer(input(1, 2.0)))
                    .await
                    .unwrap_or(Ok(BatchReply {
                        outputs: vec![],
                        queue: Duration::ZERO,
                        compute: Duration::ZERO,
                        cpu: Duration::ZERO,
                        batch_rows: 0,
                    }))
            {
                shed += 1;
            }
        }
        assert!(shed >= 1, "a full queue must shed");
        assert!(busy.await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Only the first request and at most one queued one reached the model;
        // the abandoned 9.0 request never did.
        let calls = model.calls.lock().unwrap().len();
        assert!(
            calls <= 2,
            "abandoned requests must not be computed: {calls} calls"
        );
    }

    #[tokio::test]
    async fn a_request_past_its_queue_budget_is_answered_503_and_never_computed() {
        let model = doubler(Duration::from_millis(150));
        let b = batcher(
            model.clone(),
            BatchingConfig {
                max_batch_size: 1,
                max_queue_delay_us: 0,
                ..Default::default()
            },
        );
        let budget = |ms| {
            let now = Instant::now();
            Some(QueueBudget::new(
                now,
                Duration::from_millis(ms),
                now + Duration::from_secs(10),
            ))
        };
        // The first holds the only instance for 150 ms; the second may wait
        // 50 ms, the third 1 s.
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.infer_within(input(1, 1.0), budget(1000)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (late, patient) = tokio::join!(
            b.infer_within(input(1, 2.0), budget(50)),
            b.infer_within(input(1, 3.0), budget(1000)),
        );
        let e = late.unwrap_err();
        assert!(
            matches!(e, ServeError::QueueTimeout { budget_ms: 50, .. }),
            "{e}"
        );
        assert_eq!(e.retry_after(), Some(1));
        assert!(patient.is_ok());
        assert!(first.await.unwrap().is_ok());
        let calls = model.calls.lock().unwrap().len();
        assert_eq!(calls, 2, "the request past its budget was not computed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_in_flight_follow_the_width_as_it_is_resized() {
        let model = doubler(Duration::from_millis(40));
        let width = Width::new(1);
        let metrics = crate::metrics::Metrics::new().version("m", "1");
        let b = Batcher::spawn(
            BatchingConfig {
                max_batch_size: 1,
                max_queue_delay_us: 0,
                ..Default::default()
            },
            model.clone(),
            width.clone(),
            Compute::new(8),
            metrics,
        );
        let burst = |b: Batcher| async move {
            let futs: Vec<_> = (0..8).map(|i| b.infer(input(1, i as f32))).collect();
            for r in futures::future::join_all(futs).await {
                assert!(r.is_ok());
            }
        };
        burst(b.clone()).await;
        assert_eq!(model.peak.swap(0, Ordering::SeqCst), 1, "one instance");
        width.resize(4);
        burst(b.clone()).await;
        let peak = model.peak.swap(0, Ordering::SeqCst);
        assert!((3..=4).contains(&peak), "four instances: {peak} at once");
        width.resize(2);
        burst(b.clone()).await;
        let peak = model.peak.swap(0, Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "two instances: {peak} at once");
    }
}
