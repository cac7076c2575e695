//! The NATS sink: one tokio task publishes binary-mode events to
//! JetStream, with a timeout on every connect, publish and ack.

use std::sync::Arc;
use std::time::Duration;

use super::event::{Attributes, Kind, data};
use super::{Payload, PayloadCounters, PayloadLogConfig, RECONNECT};

/// What the NATS task needs from the settings.
pub(super) struct Nats {
    url: String,
    subject: String,
    stream: String,
    stream_max_bytes: i64,
    timeout: Duration,
}

impl Nats {
    pub(super) fn from_config(c: &PayloadLogConfig) -> Nats {
        Nats {
            url: c.nats_url.clone().unwrap_or_default(),
            subject: c.subject.clone(),
            stream: c.stream.clone(),
            stream_max_bytes: c.stream_max_bytes,
            timeout: Duration::from_millis(c.timeout_ms),
        }
    }

    /// `<subject>.<model>.request|response`; a `.` in the model name would
    /// split the token, so it becomes `_`.
    pub(super) fn subject_for(&self, model: &str, kind: Kind) -> String {
        format!(
            "{}.{}.{}",
            self.subject,
            model.replace('.', "_"),
            kind.suffix()
        )
    }

    /// Connect, and make sure the stream exists.
    async fn connect(&self) -> Result<async_nats::jetstream::Context, String> {
        let connect = async_nats::ConnectOptions::new()
            .name("greenbelt-payload-log")
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .connect(self.url.as_str());
        let client = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| format!("connecting to {} timed out", self.url))?
            .map_err(|e| format!("connecting to {}: {e}", self.url))?;
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(self.timeout)
            .ack_timeout(self.timeout)
            .build(client);
        let stream = async_nats::jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject)],
            max_bytes: self.stream_max_bytes,
            ..Default::default()
        };
        tokio::time::timeout(self.timeout, js.get_or_create_stream(stream))
            .await
            .map_err(|_| format!("creating stream {} timed out", self.stream))?
            .map_err(|e| format!("stream {}: {e}", self.stream))?;
        Ok(js)
    }

    /// Publish the requests' events, then wait (up to the timeout, all
    /// together) for their acks; returns (acknowledged, failed) events.
    async fn publish(
        &self,
        js: &async_nats::jetstream::Context,
        batch: &[Payload],
        source: &str,
    ) -> (u64, u64) {
        let mut acks = Vec::with_capacity(batch.len() * 2);
        let mut failed = 0u64;
        for p in batch {
            for kind in Kind::BOTH {
                let attributes = Attributes::of(p, kind, source);
                let mut headers = async_nats::HeaderMap::new();
                for (name, value) in attributes.headers() {
                    headers.insert(name, value);
                }
                let sent = tokio::time::timeout(
                    self.timeout,
                    js.publish_with_headers(
                        self.subject_for(&p.model, kind),
                        headers,
                        data(p, kind).into(),
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(ack)) => acks.push(ack),
                    Ok(Err(e)) => {
                        failed += 1;
                        tracing::debug!(error = %e, "payload-log publish failed");
                    }
                    Err(_) => failed += 1,
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut acked = 0u64;
        for ack in acks {
            match tokio::time::timeout_at(deadline, ack.into_future()).await {
                Ok(Ok(_)) => acked += 1,
                Ok(Err(e)) => {
                    failed += 1;
                    tracing::debug!(error = %e, "payload-log ack failed");
                }
                Err(_) => failed += 1,
            }
        }
        (acked, failed)
    }
}

/// Requests published per round at most.
const NATS_BATCH: usize = 64;

pub(super) async fn publish_loop(
    mut rx: tokio::sync::mpsc::Receiver<Payload>,
    nats: Nats,
    source: Arc<str>,
    counters: PayloadCounters,
) {
    let mut js = None;
    let mut retry_at = tokio::time::Instant::now();
    let mut failing = false;
    let mut batch = Vec::with_capacity(NATS_BATCH);
    // Waiting here has no timeout: the task waits for work, and ends when
    // the log is dropped.
    while rx.recv_many(&mut batch, NATS_BATCH).await > 0 {
        if js.is_none() && tokio::time::Instant::now() >= retry_at {
            match nats.connect().await {
                Ok(c) => {
                    tracing::info!(url = %nats.url, stream = %nats.stream, "payload log publishing to NATS JetStream");
                    js = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?RECONNECT, "payload log cannot reach NATS; events are counted in greenbelt_payload_log_failed_total");
                    retry_at = tokio::time::Instant::now() + RECONNECT;
                }
            }
        }
        let events = 2 * batch.len() as u64;
        let (acked, failed) = match &js {
            Some(js) => nats.publish(js, &batch, &source).await,
            None => (0, events),
        };
        batch.clear();
        counters.events.inc_by(acked);
        counters.failed.inc_by(failed);
        if failed > 0 && !failing && js.is_some() {
            tracing::warn!(
                failed,
                subject = %nats.subject,
                stream = %nats.stream,
                "payload-log events were not acknowledged (is the stream over `<subject>.>`?); counted in greenbelt_payload_log_failed_total"
            );
        }
        failing = failed > 0;
    }
}
