//! OpenTelemetry traces end to end: a real OTLP receiver (the collector's
//! `TraceService` over gRPC, and `/v1/traces` over HTTP/protobuf) gets the
//! spans of REST and gRPC requests, with the parent/child structure, the
//! attributes, parent-based sampling, `traceresponse`, and the trace id as
//! an exemplar of the latency histogram.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenbelt_serve::grpc::pb;
use greenbelt_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::support::*;

/// Every span a receiver got, with its resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut all = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Any::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    all.push((service.clone(), span));
                }
            }
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Wait (bounded) until a span named `name` of trace `trace` arrived.
    async fn wait_for(&self, trace: &str, name: &str) -> Span {
        for _ in 0..200 {
            if let Some(s) = self
                .spans()
                .into_iter()
                .find(|s| hex(&s.trace_id) == trace && s.name == name)
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no span {name} of trace {trace}; got {:?}",
            self.spans()
                .iter()
                .map(|s| (hex(&s.trace_id), s.name.clone()))
                .collect::<Vec<_>>()
        );
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<Any> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn str_attr(span: &Span, key: &str) -> Option<String> {
    match attr(span, key) {
        Some(Any::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Any::IntValue(i)) => Some(i),
        _ => None,
    }
}

/// A gRPC OTLP receiver on a free port; its endpoint URL.
async fn grpc_receiver(received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// An HTTP/protobuf OTLP receiver (`POST /v1/traces`); its base URL.
async fn http_receiver(received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").unwrap(),
                        "application/x-protobuf"
                    );
                    let req = <ExportTraceServiceRequest as prost::Message>::decode(body).unwrap();
                    received.add(req);
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn logreg(r: &std::path::Path) {
    copy_model(r, "logreg", 1, "logreg", 1);
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_grpc_receiver_with_their_stages() {
    let received = Received::default();
    let endpoint = grpc_receiver(received.clone()).await;
    // Ratio 0: only the caller's sampled flag records a trace.
    let s = start(
        logreg,
        &format!(
            "[tracing]\nendpoint = \"{endpoint}\"\nsample_ratio = 0.0\nservice_name = \"gb-test\"\nexport_interval_ms = 100\n"
        ),
    )
    .await;
    let parent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .header("traceparent", &parent)
        .json(&logreg_request(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let back = r.headers()["traceresponse"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["traceparent"].to_str().unwrap(), back);
    let parts: Vec<&str> = back.split('-').collect();
    assert_eq!(parts[1], CALLER_TRACE);
    assert_eq!(parts[3], "01", "recorded: the sampled flag stays set");
    let our_span = parts[2].to_string();

    // Not sampled by the caller, and a new trace at ratio 0: not recorded.
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-00",
        )
        .json(&logreg_request(1))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["traceresponse"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .json(&logreg_request(1))
        .send()
        .await
        .unwrap();
    let unsampled_new = r.headers()["traceresponse"].to_str().unwrap().to_string();
    assert!(unsampled_new.ends_with("-00"), "{unsampled_new}");

    // A failure (unknown model) in a sampled trace: a span, not an error
    // status (4xx is the client's).
    let failed_trace = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let r = s
        .client
        .post(format!("{}/v2/models/nope/infer", s.http))
        .header("traceparent", format!("00-{failed_trace}-{CALLER_SPAN}-01"))
        .json(&logreg_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // gRPC, continued the same way through metadata.
    let grpc_trace = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::ModelInferRequest {
        model_name: "logreg".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 20],
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![
            logreg_row()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let resp = c.model_infer(req).await.unwrap();
    let grpc_back = resp
        .metadata()
        .get("traceresponse")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(grpc_back.starts_with(&format!("00-{grpc_trace}-")));

    // The REST request: a server span under the caller's span, named for
    // the route, and its stages as children.
    let server = received
        .wait_for(CALLER_TRACE, "POST /v2/models/{model_name}/infer")
        .await;
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&server.span_id),
        our_span,
        "traceresponse names the span"
    );
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(
        str_attr(&server, "http.route").as_deref(),
        Some("/v2/models/{model_name}/infer")
    );
    assert_eq!(
        str_attr(&server, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(int_attr(&server, "http.response.status_code"), Some(200));
    assert_eq!(
        str_attr(&server, "greenbelt.model").as_deref(),
        Some("logreg")
    );
    assert_eq!(
        str_attr(&server, "greenbelt.model_version").as_deref(),
        Some("1")
    );
    assert!(str_attr(&server, "greenbelt.request_id").is_some());
    for stage in ["admission", "decode", "batch_queue", "compute"] {
        let child = received.wait_for(CALLER_TRACE, stage).await;
        assert_eq!(hex(&child.parent_span_id), our_span, "{stage} is a child");
        assert!(
            child.start_time_unix_nano >= server.start_time_unix_nano
                && child.end_time_unix_nano <= server.end_time_unix_nano,
            "{stage} lies inside the request"
        );
    }
    let compute = received.wait_for(CALLER_TRACE, "compute").await;
    assert_eq!(int_attr(&compute, "greenbelt.rows"), Some(2));

    let failed = received
        .wait_for(failed_trace, "POST /v2/models/{model_name}/infer")
        .await;
    assert_eq!(int_attr(&failed, "http.response.status_code"), Some(404));
    assert_ne!(
        failed.status.as_ref().map(|s| s.code),
        Some(2),
        "a 4xx is not the server's error"
    );

    let g = received
        .wait_for(grpc_trace, "inference.GRPCInferenceService/ModelInfer")
        .await;
    assert_eq!(g.kind, SpanKind::Server as i32);
    assert_eq!(str_attr(&g, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(int_attr(&g, "rpc.grpc.status_code"), Some(0));

    // Nothing from the unsampled requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let traces: std::collections::BTreeSet<String> =
        received.spans().iter().map(|s| hex(&s.trace_id)).collect();
    assert!(!traces.contains("11111111111111111111111111111111"));
    assert!(!traces.contains(unsampled_new.split('-').nth(1).unwrap()));
    assert_eq!(
        received.0.lock().unwrap()[0].0,
        "gb-test",
        "service.name comes from [tracing]"
    );

    // A recorded request is an exemplar of the latency histogram, in the
    // OpenMetrics exposition. The REST and the gRPC request share the
    // version's histogram, and a bucket keeps its latest exemplar: when
    // both land in one bucket, the gRPC request's replaces the caller's.
    let om = s
        .client
        .get(format!("{}/metrics", s.http))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        om.lines().any(
            |l| l.starts_with("greenbelt_request_duration_seconds_bucket")
                && [CALLER_TRACE, grpc_trace]
                    .iter()
                    .any(|t| l.contains(&format!("# {{trace_id=\"{t}\"}}")))
        ),
        "no exemplar in:\n{om}"
    );
    // The 0.0.4 text format has no exemplars.
    assert!(!s.metrics_text().await.contains("trace_id="));

    // An operation that is not a request (the registry, the feature store
    // and the rollout controller use this) is a root span, always recorded.
    let op: Result<u8, String> = greenbelt_core::spans::traced(
        "registry.set_alias",
        vec![greenbelt_core::spans::attr("greenbelt.model", "logreg")],
        async { Ok(1) },
    )
    .await;
    assert_eq!(op, Ok(1));
    for _ in 0..200 {
        if received
            .spans()
            .iter()
            .any(|s| s.name == "registry.set_alias")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let op = received
        .spans()
        .into_iter()
        .find(|s| s.name == "registry.set_alias")
        .expect("the operation's span arrived");
    assert!(op.parent_span_id.is_empty());
    assert_eq!(str_attr(&op, "greenbelt.model").as_deref(), Some("logreg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_receiver_and_new_traces_follow_the_ratio() {
    let received = Received::default();
    let endpoint = http_receiver(received.clone()).await;
    let s = start(
        logreg,
        &format!(
            "[tracing]\nendpoint = \"{endpoint}\"\nprotocol = \"http/protobuf\"\nsample_ratio = 1.0\nexport_interval_ms = 100\n"
        ),
    )
    .await;
    // No traceparent: a new trace, recorded at ratio 1.
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/versions/1/infer", s.http))
        .json(&logreg_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let back = r.headers()["traceresponse"].to_str().unwrap().to_string();
    let parts: Vec<&str> = back.split('-').collect();
    assert_eq!(parts[3], "01");
    let server = received
        .wait_for(
            parts[1],
            "POST /v2/models/{model_name}/versions/{model_version}/infer",
        )
        .await;
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&server.span_id), parts[2]);
    received.wait_for(parts[1], "compute").await;
}
