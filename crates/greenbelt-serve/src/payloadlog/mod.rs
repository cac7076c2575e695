//! The sampled payload log: the inputs and outputs of a share of answered
//! requests, as CloudEvents in KServe's inference-logger shape, for the
//! drift monitor and for tools outside the server (Evidently, a data lake).
//!
//! Each logged request becomes two events with the same `id` (the request
//! id): `org.kubeflow.serving.inference.request`, whose data is the KServe
//! V2 request body (the validated inputs, after feature enrichment), and
//! `org.kubeflow.serving.inference.response`, whose data is the V2 response
//! body. Sinks (`[telemetry.payload_log] sink`):
//!
//! - `jsonl`: one structured-mode CloudEvent per line in
//!   `<path>/payloads-<unix ms>-<seq>.jsonl`, a new file past
//!   `max_file_bytes`, the oldest removed past `max_files`; a file is
//!   complete once a newer one exists. Written by one OS thread.
//! - `nats`: binary-mode CloudEvents (`ce-*` headers, the V2 body as the
//!   payload) published to NATS JetStream on `<subject>.<model>.request` and
//!   `.response` (a `.` in a model name becomes `_`), into `stream`, created
//!   when missing. Published by one tokio task; every connect, publish and
//!   ack has a timeout, and a failed connect is retried at most once per
//!   [`RECONNECT`] (events meanwhile are counted as failed).
//!
//! The request path pays only when a request is sampled (by trace id, the
//! rule the request log uses, so a trace is logged by every service or by
//! none): a copy of the inputs and outputs and one `try_send` into a
//! bounded queue. A full queue drops the request and counts its two events
//! (`greenbelt_payload_log_dropped_total`); nothing ever waits for the sink.
//! Formatting happens on the writer.
//!
//! This module owns the payload-log settings, queue, formatting and sinks;
//! it does not decide what a request is (that is `crate::infer`).

mod config;
mod event;
mod jsonl;
mod nats;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use greenbelt_core::Tensor;
use prometheus_client::metrics::counter::Counter;

pub use config::{PayloadLogConfig, Sink};
pub use event::{Attributes, Kind, REQUEST_TYPE, RESPONSE_TYPE, data, jsonl_lines};
pub use jsonl::jsonl_files;

/// How long after a failed connect the NATS sink tries again.
pub const RECONNECT: Duration = Duration::from_secs(5);

/// The payload-log counters, registered in [`crate::metrics::Metrics`];
/// each counts events (two per logged request).
#[derive(Clone, Default)]
pub struct PayloadCounters {
    /// Events written (JSONL) or acknowledged by JetStream (NATS).
    pub events: Counter,
    /// Events dropped because the queue was full.
    pub dropped: Counter,
    /// Events the sink could not write or publish.
    pub failed: Counter,
}

/// One answered request, owned, as the sink will log it.
#[derive(Debug, Clone)]
pub struct Payload {
    pub received: SystemTime,
    pub answered: SystemTime,
    /// The server's request id: the `id` of both events.
    pub request_id: String,
    pub trace_id: String,
    pub model: String,
    pub version: String,
    /// The track that answered (`stable`, `canary`, ...): the `endpoint`.
    pub track: &'static str,
    /// The client's `id` from the request body, echoed in both bodies.
    pub client_id: Option<String>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

enum Queue {
    Off,
    Thread(SyncSender<Payload>),
    Task(tokio::sync::mpsc::Sender<Payload>),
}

/// The payload log: a sampling rule and a bounded queue to one sink.
/// Dropping it lets the sink finish what is queued (the JSONL thread is
/// joined; the NATS task ends on its own).
pub struct PayloadLog {
    queue: Queue,
    /// Requests whose trace id's low 64 bits are at most this are logged;
    /// `None`: none.
    threshold: Option<u64>,
    counters: PayloadCounters,
    worker: Option<JoinHandle<()>>,
}

impl PayloadLog {
    /// The log `config` asks for. A sink that cannot start (no tokio
    /// runtime, no thread) is reported and the log is off.
    pub fn start(config: &PayloadLogConfig, counters: PayloadCounters) -> PayloadLog {
        if config.fraction <= 0.0 {
            return PayloadLog::off(counters);
        }
        let source: Arc<str> = match &config.source {
            Some(s) => s.trim_end_matches('/').into(),
            None => format!("http://{}/greenbelt", host_name()).into(),
        };
        let bound = config.queue.max(1);
        let threshold = crate::traces::threshold(config.fraction);
        match config.sink {
            Sink::Off => PayloadLog::off(counters),
            Sink::Jsonl => {
                let (tx, rx) = std::sync::mpsc::sync_channel(bound);
                let files =
                    jsonl::Files::new(&config.path, config.max_file_bytes, config.max_files);
                let c = counters.clone();
                let spawned = std::thread::Builder::new()
                    .name("greenbelt-payloads".into())
                    .spawn(move || jsonl::write_loop(rx, files, &source, &c));
                match spawned {
                    Ok(worker) => PayloadLog {
                        queue: Queue::Thread(tx),
                        threshold,
                        counters,
                        worker: Some(worker),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the payload-log writer; payload log off");
                        PayloadLog::off(counters)
                    }
                }
            }
            Sink::Nats => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    tracing::error!("the NATS payload log needs a tokio runtime; payload log off");
                    return PayloadLog::off(counters);
                };
                let (tx, rx) = tokio::sync::mpsc::channel(bound);
                let nats = nats::Nats::from_config(config);
                runtime.spawn(nats::publish_loop(rx, nats, source, counters.clone()));
                PayloadLog {
                    queue: Queue::Task(tx),
                    threshold,
                    counters,
                    worker: None,
                }
            }
        }
    }

    /// A log that logs nothing.
    pub fn off(counters: PayloadCounters) -> PayloadLog {
        PayloadLog {
            queue: Queue::Off,
            threshold: None,
            counters,
            worker: None,
        }
    }

    /// Whether a request with this trace id is logged (decide before
    /// copying anything).
    /// `trace_low`: the low 64 bits of the trace id
    /// ([`crate::traces::TraceIds::low64`]), as the trace sampler and the
    /// request log compare them.
    pub fn wants(&self, trace_low: u64) -> bool {
        !matches!(self.queue, Queue::Off) && self.threshold.is_some_and(|t| trace_low <= t)
    }

    /// Queue one request; never waits. A full queue drops it and counts
    /// its two events.
    pub fn offer(&self, payload: Payload) {
        let full = match &self.queue {
            Queue::Off => return,
            Queue::Thread(tx) => match tx.try_send(payload) {
                Ok(()) => false,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => true,
            },
            Queue::Task(tx) => tx.try_send(payload).is_err(),
        };
        if full {
            self.counters.dropped.inc_by(2);
        }
    }

    /// Queue an answered request: `inputs` are the validated inputs (already
    /// copied for the log); the outputs are copied from `response`.
    pub fn answered(
        &self,
        ctx: &crate::stages::observe::RequestContext,
        track: &'static str,
        inputs: Vec<Tensor>,
        response: &greenbelt_core::InferResponse,
    ) {
        let answered = SystemTime::now();
        self.offer(Payload {
            received: answered
                .checked_sub(ctx.started.elapsed())
                .unwrap_or(answered),
            answered,
            request_id: ctx.request_id.clone(),
            trace_id: ctx.trace.trace_hex(),
            model: response.model_name.clone(),
            version: response.model_version.clone(),
            track,
            client_id: response.id.clone(),
            inputs,
            outputs: response.outputs.clone(),
        });
    }

    /// A log over a queue the caller holds the other end of (tests).
    #[cfg(test)]
    fn over(tx: SyncSender<Payload>, counters: PayloadCounters) -> PayloadLog {
        PayloadLog {
            queue: Queue::Thread(tx),
            threshold: Some(u64::MAX),
            counters,
            worker: None,
        }
    }
}

impl Drop for PayloadLog {
    fn drop(&mut self) {
        // Closing the queue ends the sink after it has written the rest.
        self.queue = Queue::Off;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The machine's name for the default `source`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
