//! The gRPC API: `inference.GRPCInferenceService` (V2), wire-compatible with
//! the published proto. Inputs arrive in `raw_input_contents` or typed
//! `contents`; outputs always go in `raw_output_contents`, which is what
//! `tritonclient.grpc` reads.

pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use greenbelt_core::limits::{Budget, DecodeLimits};
use greenbelt_core::{DataType, InferRequest, RequestedOutput, Tensor, TensorData, raw, tensor};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::error::ServeError;
use crate::infer::{AppState, RequestContext, infer};
use crate::metrics::Protocol;
use crate::repository::{ModelState, check_model_name};

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

pub struct GrpcService {
    state: Arc<AppState>,
}

/// The service, with `[limits]` checked on the wire before a
/// `ModelInferRequest` is decoded (see [`wire`]).
pub fn service(state: Arc<AppState>) -> wire::WithLimits<GrpcInferenceServiceServer<GrpcService>> {
    let limit = state.config.server.max_request_bytes;
    let limits = state.config.limits.decode();
    let svc = GrpcInferenceServiceServer::new(GrpcService { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    wire::WithLimits::new(svc, limits)
}

/// tonic rejects an over-limit message in its codec with OUT_OF_RANGE; the
/// gRPC status-code guide (and grpc-core) answer RESOURCE_EXHAUSTED, as our
/// own `ServeError::PayloadTooLarge` does. Rewrite that one status.
pub fn too_large_is_resource_exhausted<B>(
    mut resp: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let h = resp.headers_mut();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        h.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
        tracing::info!(target: "greenbelt::request", protocol = "grpc", outcome = "client_error", status = 413, "message larger than [server] max_request_bytes");
    }
    resp
}

/// `traceparent`, `traceresponse` and `x-request-id` on an answer or a
/// failure, as the REST side sends them.
fn trace_headers(meta: &mut tonic::metadata::MetadataMap, ctx: &RequestContext) {
    if let Ok(v) = ctx
        .trace
        .header()
        .parse::<tonic::metadata::MetadataValue<_>>()
    {
        meta.insert("traceparent", v.clone());
        meta.insert("traceresponse", v);
    }
    if let Ok(v) = ctx.request_id.parse() {
        meta.insert("x-request-id", v);
    }
}

fn status(e: ServeError) -> Status {
    Status::new(e.grpc_code(), e.to_string())
}

fn stats_pb(m: crate::stats::ModelStat) -> pb::ModelStatistics {
    let d = |d: crate::stats::DurationStat| {
        Some(pb::StatisticDuration {
            count: d.count,
            ns: d.ns,
        })
    };
    let i = m.inference_stats;
    pb::ModelStatistics {
        name: m.name,
        version: m.version,
        last_inference: m.last_inference,
        inference_count: m.inference_count,
        execution_count: m.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: d(i.success),
            fail: d(i.fail),
            queue: d(i.queue),
            compute_input: d(i.compute_input),
            compute_infer: d(i.compute_infer),
            compute_output: d(i.compute_output),
            cache_hit: d(i.cache_hit),
            cache_miss: d(i.cache_miss),
        }),
        batch_stats: m
            .batch_stats
            .into_iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: d(b.compute_input),
                compute_infer: d(b.compute_infer),
                compute_output: d(b.compute_output),
            })
            .collect(),
    }
}

fn tensor_meta(
    specs: &[greenbelt_core::TensorSpec],
) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

/// Decode a gRPC infer request into the transport-neutral form, within
/// `limits` (the service's codec has already checked the counts on the
/// wire; they are checked again here for callers that build the message).
pub fn decode_request(
    req: pb::ModelInferRequest,
    limits: &DecodeLimits,
) -> Result<InferRequest, ServeError> {
    greenbelt_core::infer::check_unique("input", req.inputs.iter().map(|i| i.name.as_str()))?;
    greenbelt_core::infer::check_unique(
        "requested output",
        req.outputs.iter().map(|o| o.name.as_str()),
    )?;
    check_counts(&req, limits)?;
    let raw_mode = !req.raw_input_contents.is_empty();
    if raw_mode && req.raw_input_contents.len() != req.inputs.len() {
        return Err(ServeError::InvalidInput(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in order",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut budget = Budget::new(limits);
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        let datatype: DataType =
            input
                .datatype
                .parse()
                .map_err(|e: greenbelt_core::CoreError| {
                    ServeError::InvalidInput(format!("input \"{}\": {e}", input.name))
                })?;
        let count = tensor::element_count(&input.name, &input.shape)?;
        let data = if raw_mode {
            let bytes = req.raw_input_contents.get(i).map_or(&[][..], |b| &b[..]);
            raw::decode_limited(&input.name, datatype, count, bytes, &mut budget)?
        } else {
            budget.charge_elements(&input.name, datatype, count)?;
            let contents = input.contents.unwrap_or_default();
            for b in &contents.bytes_contents {
                budget.charge_payload(&input.name, b.len())?;
            }
            from_contents(&input.name, datatype, contents)?
        };
        inputs.push(Tensor::new(input.name, input.shape, data)?);
    }
    Ok(InferRequest {
        id: (!req.id.is_empty()).then_some(req.id),
        inputs,
        outputs: req
            .outputs
            .into_iter()
            .map(|o| RequestedOutput {
                name: o.name,
                binary: true,
            })
            .collect(),
        binary_output: true,
    })
}

/// The counts [`wire`] checks before decoding, on a decoded message.
fn check_counts(req: &pb::ModelInferRequest, l: &DecodeLimits) -> Result<(), ServeError> {
    DecodeLimits::check("inputs", req.inputs.len(), l.max_inputs, "max_inputs")?;
    DecodeLimits::check("outputs", req.outputs.len(), l.max_outputs, "max_outputs")?;
    DecodeLimits::check(
        "raw_input_contents entries",
        req.raw_input_contents.len(),
        l.max_inputs,
        "max_inputs",
    )?;
    let params =
        |what: &str, n: usize| DecodeLimits::check(what, n, l.max_parameters, "max_parameters");
    params("request parameters", req.parameters.len())?;
    for i in &req.inputs {
        params(
            &format!("input \"{}\" parameters", i.name),
            i.parameters.len(),
        )?;
        DecodeLimits::check(
            &format!("input \"{}\" shape dimensions", i.name),
            i.shape.len(),
            l.max_shape_dims,
            "max_shape_dims",
        )?;
    }
    for o in &req.outputs {
        params("requested output parameters", o.parameters.len())?;
    }
    Ok(())
}

fn from_contents(
    name: &str,
    datatype: DataType,
    c: pb::InferTensorContents,
) -> Result<TensorData, ServeError> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        name: &str,
        datatype: DataType,
        v: Vec<S>,
    ) -> Result<Vec<T>, ServeError> {
        v.into_iter()
            .enumerate()
            .map(|(i, x)| {
                T::try_from(x).map_err(|_| {
                    ServeError::InvalidInput(format!(
                        "input \"{name}\": element {i} ({x}) is out of range for {datatype}"
                    ))
                })
            })
            .collect()
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(name, datatype, c.uint_contents)?),
        DataType::Uint16 => TensorData::Uint16(narrow(name, datatype, c.uint_contents)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        DataType::Int8 => TensorData::Int8(narrow(name, datatype, c.int_contents)?),
        DataType::Int16 => TensorData::Int16(narrow(name, datatype, c.int_contents)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
        DataType::Fp16 => {
            return Err(ServeError::InvalidInput(format!(
                "input \"{name}\": FP16 has no typed contents field; send it in raw_input_contents"
            )));
        }
    })
}

/// Encode a response with every output in `raw_output_contents`.
pub fn encode_response(resp: greenbelt_core::InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raws = Vec::with_capacity(resp.outputs.len());
    for t in resp.outputs {
        raws.push(Bytes::from(raw::encode(&t.data)));
        outputs.push(pb::model_infer_response::InferOutputTensor {
            datatype: t.datatype().as_str().to_string(),
            name: t.name,
            shape: t.shape,
            parameters: Default::default(),
            contents: None,
        });
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version,
        id: resp.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raws,
    }
}

impl GrpcService {
    /// The caller named by the `authorization` metadata (UNAUTHENTICATED
    /// for a token that matches nothing).
    fn caller<T>(&self, req: &Request<T>) -> Result<Option<crate::auth::Principal>, Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<not text>"));
        self.state
            .auth
            .authenticate(presented)
            .map_err(|e| status(e.into()))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        match self.state.repository.resolve(&r.name, Some(&r.version)) {
            Ok(served) => Ok(Response::new(pb::ModelReadyResponse {
                ready: crate::features::readiness(
                    &served,
                    self.state.repository.features().map(|f| &**f),
                )
                .is_ok(),
            })),
            Err(ServeError::ModelNotReady { .. }) => {
                Ok(Response::new(pb::ModelReadyResponse { ready: false }))
            }
            Err(e) => Err(status(e)),
        }
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "greenbelt".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into(), "statistics".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let served = self
            .state
            .repository
            .resolve(&r.name, Some(&r.version))
            .map_err(status)?;
        let versions = if r.version.is_empty() {
            self.state
                .repository
                .get(&r.name)
                .map(|e| e.versions.keys().map(u64::to_string).collect())
                .unwrap_or_default()
        } else {
            vec![served.version_label.to_string()]
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: served.model_name.to_string(),
            versions,
            platform: served.platform.into(),
            inputs: tensor_meta(&served.signature.inputs),
            outputs: tensor_meta(&served.signature.outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let principal = self.caller(&req)?;
        let mut ctx = RequestContext::new(
            Protocol::Grpc,
            "inference.GRPCInferenceService/ModelInfer",
            req.metadata().clone().into_headers(),
            principal,
            &self.state.traces,
        );
        let r = req.into_inner();
        let model = r.model_name.clone();
        let version = r.model_version.clone();
        // tonic has decoded the message (bounded by max_request_bytes);
        // admission by its size comes before the tensors are built from it.
        let wire_len = prost::Message::encoded_len(&r);
        let admitted = self.state.admission.admit(wire_len).and_then(|permit| {
            ctx.admitted = Some(Instant::now());
            let limits = self.state.config.limits.decode();
            let decoded = ctx.cpu.measure(|| decode_request(r, &limits))?;
            ctx.decoded = Some(Instant::now());
            Ok((permit, decoded))
        });
        let (permit, decoded) = match admitted {
            Ok(d) => d,
            Err(e) => {
                self.state.reject(&ctx, &model, &e);
                let mut s = status(e);
                trace_headers(s.metadata_mut(), &ctx);
                return Err(s);
            }
        };
        let (out, meta, served) =
            match infer(&self.state, permit, &model, Some(&version), decoded, &ctx).await {
                Ok(answer) => answer,
                Err(e) => {
                    let mut s = status(e);
                    trace_headers(s.metadata_mut(), &ctx);
                    return Err(s);
                }
            };
        let encoded = ctx.cpu.measure(|| encode_response(out));
        served
            .metrics
            .wire(wire_len, prost::Message::encoded_len(&encoded));
        served.metrics.cost().request_cpu(ctx.cpu.estimate_ns());
        let mut resp = Response::new(encoded);
        resp.metadata_mut().insert(
            crate::routing::TRACK_HEADER,
            tonic::metadata::MetadataValue::from_static(meta.track.as_str()),
        );
        if meta.degraded {
            resp.metadata_mut().insert(
                crate::features::DEGRADED_HEADER,
                tonic::metadata::MetadataValue::from_static("features"),
            );
        }
        trace_headers(resp.metadata_mut(), &ctx);
        Ok(resp)
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = req.into_inner();
        let repo = &self.state.repository;
        // Triton's rules: no name = every model, no version = every version.
        let versions: Vec<Arc<crate::repository::ServedVersion>> = if r.name.is_empty() {
            repo.loaded()
                .iter()
                .flat_map(|e| e.versions.values().cloned())
                .collect()
        } else if r.version.is_empty() {
            match repo.get(&r.name) {
                Some(e) => e.versions.values().cloned().collect(),
                None => {
                    return Err(status(
                        repo.resolve(&r.name, None)
                            .err()
                            .unwrap_or_else(|| ServeError::ModelNotFound(r.name.clone())),
                    ));
                }
            }
        } else {
            vec![repo.resolve(&r.name, Some(&r.version)).map_err(status)?]
        };
        let model_stats = versions
            .iter()
            .map(|v| stats_pb(v.metrics.stats(&v.model_name, &v.version_label)))
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready_only = req.into_inner().ready;
        let models = self
            .state
            .repository
            .index(ready_only)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.unwrap_or_default(),
                state: match e.state {
                    ModelState::Ready => "READY".into(),
                    ModelState::Unavailable => "UNAVAILABLE".into(),
                },
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let who = self.caller(&req)?;
        self.state
            .auth
            .may_control_models(who.as_ref())
            .map_err(|e| status(e.into()))?;
        let name = req.into_inner().model_name;
        check_model_name(&name).map_err(status)?;
        let repo = self.state.repository.clone();
        tokio::task::spawn_blocking(move || repo.load(&name))
            .await
            .map_err(|e| Status::internal(format!("load task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let who = self.caller(&req)?;
        self.state
            .auth
            .may_control_models(who.as_ref())
            .map_err(|e| status(e.into()))?;
        let name = req.into_inner().model_name;
        let repo = self.state.repository.clone();
        tokio::task::spawn_blocking(move || repo.unload(&name))
            .await
            .map_err(|e| Status::internal(format!("unload task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        dt: &str,
        shape: Vec<i64>,
        contents: Option<pb::InferTensorContents>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn typed_contents_decode_and_narrow() {
        let req = pb::ModelInferRequest {
            inputs: vec![input(
                "x",
                "INT8",
                vec![2],
                Some(pb::InferTensorContents {
                    int_contents: vec![-1, 127],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        let r = decode_request(req, &DecodeLimits::default()).unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Int8(vec![-1, 127]));
        let req = pb::ModelInferRequest {
            inputs: vec![input(
                "x",
                "INT8",
                vec![1],
                Some(pb::InferTensorContents {
                    int_contents: vec![300],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        let e = decode_request(req, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("out of range for INT8"), "{e}");
    }

    #[test]
    fn raw_contents_must_match_inputs() {
        let req = pb::ModelInferRequest {
            inputs: vec![
                input("x", "FP32", vec![1], None),
                input("y", "FP32", vec![1], None),
            ],
            raw_input_contents: vec![Bytes::from(1.0f32.to_le_bytes().to_vec())],
            ..Default::default()
        };
        let e = decode_request(req, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("1 entries for 2 inputs"), "{e}");
        let req = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![2], None)],
            raw_input_contents: vec![Bytes::from(1.0f32.to_le_bytes().to_vec())],
            ..Default::default()
        };
        let e = decode_request(req, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("raw data is 4 bytes"), "{e}");
        let e = decode_request(
            pb::ModelInferRequest {
                inputs: vec![input("x", "FP16", vec![1], None)],
                ..Default::default()
            },
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("raw_input_contents"), "{e}");
    }
}
