//! The two CloudEvents of a logged request: attributes (binary-mode
//! headers) and the KServe V2 bodies, and the structured-mode JSON line.

use greenbelt_core::Tensor;
use greenbelt_core::json::JsonData;
use serde::Serialize;

use super::Payload;

/// The CloudEvents `type` of the two events.
pub const REQUEST_TYPE: &str = "org.kubeflow.serving.inference.request";
pub const RESPONSE_TYPE: &str = "org.kubeflow.serving.inference.response";

/// Which of a request's two events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

impl Kind {
    pub const BOTH: [Kind; 2] = [Kind::Request, Kind::Response];

    pub fn event_type(self) -> &'static str {
        match self {
            Kind::Request => REQUEST_TYPE,
            Kind::Response => RESPONSE_TYPE,
        }
    }

    pub(super) fn suffix(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Response => "response",
        }
    }
}

/// A tensor in the V2 JSON layout.
#[derive(Serialize)]
struct V2Tensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    data: JsonData<'a>,
}

fn v2_tensors(tensors: &[Tensor]) -> Vec<V2Tensor<'_>> {
    tensors
        .iter()
        .map(|t| V2Tensor {
            name: &t.name,
            datatype: t.datatype().as_str(),
            shape: &t.shape,
            data: JsonData(&t.data),
        })
        .collect()
}

/// The data of an event: a V2 request or response body.
#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Request {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        inputs: Vec<V2Tensor<'a>>,
    },
    Response {
        model_name: &'a str,
        model_version: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<V2Tensor<'a>>,
    },
}

fn body(p: &Payload, kind: Kind) -> Body<'_> {
    match kind {
        Kind::Request => Body::Request {
            id: p.client_id.as_deref(),
            inputs: v2_tensors(&p.inputs),
        },
        Kind::Response => Body::Response {
            model_name: &p.model,
            model_version: &p.version,
            id: p.client_id.as_deref(),
            outputs: v2_tensors(&p.outputs),
        },
    }
}

/// The CloudEvents attributes of one event (KServe's logger names its
/// extensions `inferenceservicename`, `endpoint` and `component`; we add
/// `modelversion` and `traceid`).
#[derive(Debug, Clone, PartialEq)]
pub struct Attributes<'a> {
    pub id: &'a str,
    pub event_type: &'static str,
    pub source: String,
    pub time: String,
    pub model: &'a str,
    pub version: &'a str,
    pub endpoint: &'a str,
    pub trace_id: &'a str,
}

impl<'a> Attributes<'a> {
    pub fn of(p: &'a Payload, kind: Kind, source: &str) -> Attributes<'a> {
        let at = match kind {
            Kind::Request => p.received,
            Kind::Response => p.answered,
        };
        Attributes {
            id: &p.request_id,
            event_type: kind.event_type(),
            source: format!("{source}/{}", p.model),
            time: humantime::format_rfc3339_micros(at).to_string(),
            model: &p.model,
            version: &p.version,
            endpoint: p.track,
            trace_id: &p.trace_id,
        }
    }

    /// The binary-mode headers (`ce-` + attribute name) with their values.
    pub fn headers(&self) -> [(&'static str, &str); 11] {
        [
            ("ce-specversion", "1.0"),
            ("ce-id", self.id),
            ("ce-type", self.event_type),
            ("ce-source", self.source.as_str()),
            ("ce-time", self.time.as_str()),
            ("ce-inferenceservicename", self.model),
            ("ce-modelversion", self.version),
            ("ce-endpoint", self.endpoint),
            ("ce-component", "predictor"),
            ("ce-traceid", self.trace_id),
            ("content-type", "application/json"),
        ]
    }
}

/// A structured-mode CloudEvent: the attributes beside `data`.
#[derive(Serialize)]
struct Structured<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    source: &'a str,
    time: &'a str,
    datacontenttype: &'static str,
    inferenceservicename: &'a str,
    modelversion: &'a str,
    endpoint: &'a str,
    component: &'static str,
    traceid: &'a str,
    data: Body<'a>,
}

/// Append the request's two events to `buf`, one JSON line each.
pub fn jsonl_lines(p: &Payload, source: &str, buf: &mut Vec<u8>) {
    for kind in Kind::BOTH {
        let a = Attributes::of(p, kind, source);
        // Serializing plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(
            &mut *buf,
            &Structured {
                specversion: "1.0",
                id: a.id,
                event_type: a.event_type,
                source: &a.source,
                time: &a.time,
                datacontenttype: "application/json",
                inferenceservicename: a.model,
                modelversion: a.version,
                endpoint: a.endpoint,
                component: "predictor",
                traceid: a.trace_id,
                data: body(p, kind),
            },
        );
        buf.push(b'\n');
    }
}

/// The V2 body of one event (the binary-mode payload).
pub fn data(p: &Payload, kind: Kind) -> Vec<u8> {
    serde_json::to_vec(&body(p, kind)).unwrap_or_default()
}
