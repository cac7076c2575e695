//! Spans for operations that are not requests: registry writes, feature
//! materialization, rollout steps and version loads. They go to the global
//! OpenTelemetry tracer, which `greenbelt serve` installs when `[tracing]`
//! has an endpoint; without one the global tracer is a no-op and a span
//! costs a few allocations, so these wrap rare operations only, never a
//! per-request path.

use std::fmt::Display;
use std::future::Future;

use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

/// Run `fut` inside a span named `name` (a child of the current span, if
/// any); a failure sets the span's status to error with its message.
pub async fn traced<T, E, F>(name: &'static str, attributes: Vec<KeyValue>, fut: F) -> Result<T, E>
where
    E: Display,
    F: Future<Output = Result<T, E>>,
{
    let tracer = opentelemetry::global::tracer("greenbelt");
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attributes)
        .start_with_context(&tracer, &Context::current());
    let cx = Context::current_with_span(span);
    let out = fut.with_context(cx.clone()).await;
    let span = cx.span();
    if let Err(e) = &out {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
    out
}

/// A string attribute.
pub fn attr(key: &'static str, value: impl Into<String>) -> KeyValue {
    KeyValue::new(key, value.into())
}

/// An integer attribute.
pub fn int(key: &'static str, value: i64) -> KeyValue {
    KeyValue::new(key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_results_through_without_a_provider() {
        let ok: Result<u8, String> = traced("t.ok", vec![attr("k", "v")], async { Ok(3) }).await;
        assert_eq!(ok, Ok(3));
        let err: Result<u8, String> = traced("t.err", vec![int("n", 1)], async {
            Err("boom".to_string())
        })
        .await;
        assert_eq!(err, Err("boom".to_string()));
    }
}
