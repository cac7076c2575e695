//! Bounded decoding through the real server: a request over a `[limits]`
//! setting is a 413 / RESOURCE_EXHAUSTED naming it, a name given twice is a
//! 400 / INVALID_ARGUMENT found at once, and a burst of 60 MB hostile bodies
//! leaves the server's peak RSS under a stated bound.
//!
//! The memory test runs the server in a child process (VmHWM is per
//! process) under an address-space cap, so a regression fails the test
//! instead of exhausting the machine. Measured (debug build, 2 shared
//! cores, glibc mmap threshold 1 MiB, 8 concurrent ~60 MB bodies per kind):
//!
//! - before bounded decoding: the REST rounds peaked at 3287 MiB (one body
//!   alone: ~1500 MiB, a `serde_json::Value` per element) and took four
//!   minutes; the first gRPC round asked for a 2.6 GB block (one 60 MB
//!   message of empty `inputs` alone: 10.4 GB) and died at the 6 GiB cap.
//! - after: every body answered 400/413/RESOURCE_EXHAUSTED/INVALID_ARGUMENT
//!   in ~45 s for all seven rounds, peak 774–857 MiB over runs. Most of it is
//!   the bodies themselves: axum and tonic buffer each whole body (8 × 60 MB,
//!   briefly twice while a buffer grows) before decoding starts; decoding
//!   adds little. Bounding the bodies in flight is admission's job.
//!
//! The bound, 1280 MiB, is 8 bodies × 2 × 64 MiB + 256 MiB of server.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use greenbelt_serve::grpc::pb;
use greenbelt_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::json;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::support::*;

const MIB: u64 = 1024 * 1024;
/// The server's peak RSS over all rounds must stay under this: 8 bodies,
/// each buffered up to twice, plus the server (see the module doc).
const PEAK_BOUND_MIB: u64 = 1280;
/// The child's address-space cap: past it an allocation fails and the
/// server aborts, so the test fails without taking the machine down.
const ADDRESS_SPACE_CAP_MIB: u64 = 6 * 1024;
/// Size of each hostile body; `GREENBELT_TEST_HOSTILE_BYTES` overrides it
/// for exploring by hand (as `GREENBELT_TEST_HOSTILE_CONCURRENCY` and
/// `GREENBELT_TEST_HOSTILE_CAP_MIB` do the concurrency and the cap).
fn body_size() -> usize {
    std::env::var("GREENBELT_TEST_HOSTILE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000_000)
}
/// Concurrent bodies per round.
const CONCURRENCY: usize = 8;
/// Kinds of hostile body, one round each.
const KINDS: usize = 7;

const CHILD: &str = "GREENBELT_TEST_CHILD";

#[tokio::test]
async fn duplicate_names_are_400_at_once() {
    let mut s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), "").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // 200k duplicate requested outputs (2.6 MB): once these kept a core
    // busy for minutes.
    let mut body = logreg_request(1);
    body["outputs"] = json!(vec![json!({"name": "probabilities"}); 200_000]);
    let started = tokio::time::Instant::now();
    let r = client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: serde_json::Value = r.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("requested output \"probabilities\" is given more than once"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let mut body = logreg_request(1);
    let input = body["inputs"][0].clone();
    body["inputs"] = json!([input.clone(), input]);
    let (status, err) = s.post("/v2/models/logreg/infer", &body).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("input \"input\" is given more than once"),
        "{err}"
    );

    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX);
    let out = pb::model_infer_request::InferRequestedOutputTensor {
        name: "probabilities".into(),
        parameters: Default::default(),
    };
    let req = pb::ModelInferRequest {
        model_name: "logreg".into(),
        inputs: vec![grpc_input("input")],
        raw_input_contents: vec![row_bytes()],
        outputs: vec![out; 200_000],
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("is given more than once"), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let req = pb::ModelInferRequest {
        model_name: "logreg".into(),
        inputs: vec![grpc_input("input"), grpc_input("input")],
        raw_input_contents: vec![row_bytes(), row_bytes()],
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("input \"input\" is given"), "{e:?}");

    // Still serving.
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    s.stop().await;
}

fn grpc_input(name: &str) -> pb::model_infer_request::InferInputTensor {
    pb::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![1, 20],
        parameters: Default::default(),
        contents: None,
    }
}

fn row_bytes() -> Bytes {
    logreg_row().iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[tokio::test]
async fn requests_over_a_limit_get_413_naming_the_setting() {
    let mut s = start(
        |r| copy_model(r, "logreg", 1, "logreg", 1),
        "[limits]\nmax_inputs = 1\nmax_outputs = 2\nmax_elements = 100\nmax_bytes_elements = 3\nmax_parameters = 2\nmax_shape_dims = 3\n",
    )
    .await;
    let post = |body: serde_json::Value| {
        let s = &s;
        async move { s.post("/v2/models/logreg/infer", &body).await }
    };
    let x = |name: &str| json!({"name": name, "shape": [1], "datatype": "FP32", "data": [0]});
    for (body, setting) in [
        (json!({"inputs": [x("a"), x("b")]}), "max_inputs"),
        (
            json!({"inputs": [x("a")], "outputs": [{"name": "p"}, {"name": "q"}, {"name": "r"}]}),
            "max_outputs",
        ),
        (
            json!({"inputs": [{"name": "a", "shape": [101], "datatype": "FP32", "data": [0]}]}),
            "max_elements",
        ),
        (
            json!({"inputs": [{"name": "a", "shape": [4], "datatype": "BYTES", "data": ["", "", "", ""]}]}),
            "max_bytes_elements",
        ),
        (
            json!({"inputs": [x("a")], "parameters": {"a": 1, "b": 2, "c": 3}}),
            "max_parameters",
        ),
        (
            json!({"inputs": [{"name": "a", "shape": [1, 1, 1, 1], "datatype": "FP32", "data": [0]}]}),
            "max_shape_dims",
        ),
    ] {
        let (status, err) = post(body.clone()).await;
        assert_eq!(status, 413, "{body}: {err}");
        let msg = err["error"].as_str().unwrap();
        assert!(
            msg.contains(&format!("[limits] {setting}")),
            "{setting}: {msg}"
        );
    }
    // Under the limits the model answers as before.
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);

    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let req = pb::ModelInferRequest {
        model_name: "logreg".into(),
        inputs: vec![grpc_input("a"), grpc_input("b")],
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("[limits] max_inputs"), "{e:?}");
    let req = pb::ModelInferRequest {
        model_name: "logreg".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            contents: Some(pb::InferTensorContents {
                fp32_contents: vec![0.0; 101],
                ..Default::default()
            }),
            ..grpc_input("a")
        }],
        ..Default::default()
    };
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("[limits] max_elements"), "{e:?}");
    // Not protobuf at all: INVALID_ARGUMENT, not INTERNAL.
    let e = raw_infer(&s.grpc, Bytes::from_static(&[0x2a, 0x05, 0x00]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    s.stop().await;
}

/// Sends already-encoded bytes as a `ModelInfer` call.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_infer(addr: &str, msg: Bytes) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/inference.GRPCInferenceService/ModelInfer",
    );
    grpc.unary(tonic::Request::new(msg), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A JSON body of about `body_size()` bytes: `prefix`, `item` repeated (with
/// `{i}` replaced by the index when `numbered`), then `suffix`.
fn json_body(prefix: &str, item: &str, suffix: &str, numbered: bool) -> Bytes {
    let size = body_size();
    let mut b = Vec::with_capacity(size + 64);
    b.extend_from_slice(prefix.as_bytes());
    let mut i = 0usize;
    while b.len() + item.len() + 16 + suffix.len() < size {
        if i > 0 {
            b.push(b',');
        }
        if numbered {
            b.extend_from_slice(item.replace("{i}", &i.to_string()).as_bytes());
        } else {
            b.extend_from_slice(item.as_bytes());
        }
        i += 1;
    }
    b.extend_from_slice(suffix.as_bytes());
    Bytes::from(b)
}

/// The hostile bodies: each ~60 MB, each decoded by the code before
/// bounded decoding into hundreds of MB to GB.
fn hostile_bodies() -> Vec<(&'static str, Hostile)> {
    let size = body_size();
    let elements = json_body(
        r#"{"inputs":[{"name":"x","shape":[30000000],"datatype":"FP64","data":["#,
        "0",
        "]}]}",
        false,
    );
    let strings = json_body(
        r#"{"inputs":[{"name":"s","shape":[20000000],"datatype":"BYTES","data":["#,
        r#""""#,
        "]}]}",
        false,
    );
    let unshaped = json_body(
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["#,
        "0",
        "]}]}",
        false,
    );
    let item = r#"{"name":"x{i}","shape":[1],"datatype":"FP32","data":[0]}"#;
    let inputs = json_body(r#"{"inputs":["#, item, "]}", true);
    let empty_inputs = Bytes::from([0x2au8, 0x00].repeat(size / 2));
    // Inputs with distinct two-letter names (no duplicate to stop at).
    let mut named = Vec::with_capacity(size);
    for i in 0..size / 6 {
        let (a, b) = (b'@' + (i % 64) as u8, b'@' + (i / 64 % 64) as u8);
        named.extend_from_slice(&[0x2a, 0x04, 0x0a, 0x02, a, b]);
    }
    // One BYTES input whose typed contents are 30M empty strings.
    let contents = [0x42u8, 0x00].repeat(size / 2 - 16);
    let mut input = vec![0x0a, 0x01, b's', 0x12, 0x05];
    input.extend_from_slice(b"BYTES");
    input.push(0x2a);
    varint(&mut input, contents.len());
    input.extend_from_slice(&contents);
    let mut strings_msg = vec![0x2a];
    varint(&mut strings_msg, input.len());
    strings_msg.extend_from_slice(&input);
    vec![
        ("REST: 30M tiny FP64 elements", Hostile::Rest(elements)),
        ("REST: 20M empty strings", Hostile::Rest(strings)),
        (
            "REST: 30M elements for a shape of 1",
            Hostile::Rest(unshaped),
        ),
        ("REST: ~1M inputs", Hostile::Rest(inputs)),
        (
            "gRPC: 30M empty inputs entries",
            Hostile::Grpc(empty_inputs),
        ),
        (
            "gRPC: 10M named inputs entries",
            Hostile::Grpc(Bytes::from(named)),
        ),
        (
            "gRPC: 30M empty bytes_contents",
            Hostile::Grpc(Bytes::from(strings_msg)),
        ),
    ]
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

enum Hostile {
    Rest(Bytes),
    Grpc(Bytes),
}

/// A `/proc/<pid>/status` field in KiB; `None` once the process is gone.
fn vm_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_keep_server_memory_bounded() {
    let env_or = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let concurrency = env_or("GREENBELT_TEST_HOSTILE_CONCURRENCY", CONCURRENCY as u64) as usize;
    let cap_mib = env_or("GREENBELT_TEST_HOSTILE_CAP_MIB", ADDRESS_SPACE_CAP_MIB);
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("sh")
        .args(["-c", r#"ulimit -v "$1" && shift && exec "$@""#, "sh"])
        .arg((cap_mib * 1024).to_string())
        .arg(exe)
        .args([
            "limits::server_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        // glibc otherwise serves multi-MB buffers from arenas it keeps after
        // they are freed; the peak would measure the allocator, not us.
        .env("MALLOC_MMAP_THRESHOLD_", (1024 * 1024).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let (http, grpc) = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before READY"
        );
        if let Some(at) = line.find("READY ") {
            let mut f = line[at + 6..].split_whitespace();
            break (f.next().unwrap().to_string(), f.next().unwrap().to_string());
        }
    };
    let start_kib = vm_kib(pid, "VmHWM:").unwrap_or(0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let mut report = Vec::new();
    for (what, body) in hostile_bodies() {
        let calls = (0..concurrency).map(|_| {
            let (client, http, grpc) = (client.clone(), http.clone(), grpc.clone());
            let body = match &body {
                Hostile::Rest(b) => Hostile::Rest(b.clone()),
                Hostile::Grpc(b) => Hostile::Grpc(b.clone()),
            };
            async move {
                match body {
                    Hostile::Rest(b) => {
                        let r = client
                            .post(format!("{http}/v2/models/m/infer"))
                            .body(b)
                            .send()
                            .await
                            .map_err(|e| format!("{e:?}"))?;
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        let msg: String = text.chars().take(200).collect();
                        if (400..500).contains(&status) {
                            Ok(format!("{status} {msg}"))
                        } else {
                            Err(format!("{status} {msg}"))
                        }
                    }
                    Hostile::Grpc(b) => match raw_infer(&grpc, b).await {
                        Ok(_) => Err("OK".to_string()),
                        Err(e)
                            if matches!(
                                e.code(),
                                Code::ResourceExhausted | Code::InvalidArgument
                            ) =>
                        {
                            Ok(format!("{:?} {}", e.code(), e.message()))
                        }
                        Err(e) => Err(format!("{:?} {}", e.code(), e.message())),
                    },
                }
            }
        });
        let results = futures::future::join_all(calls).await;
        let peak = vm_kib(pid, "VmHWM:").unwrap_or(0);
        let alive = child.try_wait().unwrap().is_none() && peak > 0;
        eprintln!(
            "HOSTILE {what}: {concurrency} concurrent, peak_rss_mib={} alive={alive} first={:?}",
            peak / 1024,
            results.first()
        );
        report.push((what, peak, results));
        if !alive {
            break;
        }
    }
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let peak_kib = report.iter().map(|r| r.1).max().unwrap_or(0);
    eprintln!(
        "MEMORY start_rss_mib={} peak_rss_mib={} bound_mib={PEAK_BOUND_MIB} child={status}",
        start_kib / 1024,
        peak_kib / 1024
    );
    for (what, peak, results) in &report {
        assert!(
            *peak > 0,
            "the server died during \"{what}\": {status}\n{rest}"
        );
        for r in results {
            assert!(r.is_ok(), "{what}: wanted a 4xx, got {r:?}");
        }
    }
    assert_eq!(report.len(), KINDS, "{status}\n{rest}");
    assert!(
        peak_kib < PEAK_BOUND_MIB * MIB / 1024,
        "peak RSS {} MiB is over the {PEAK_BOUND_MIB} MiB bound",
        peak_kib / 1024
    );
}

/// The server of `hostile_bodies_keep_server_memory_bounded`, in a child
/// process: prints its addresses, serves until stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by hostile_bodies_keep_server_memory_bounded"]
async fn server_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let mut s = start(|_| {}, "max_request_bytes = 67108864\n").await;
    println!("READY {} {}", s.http, s.grpc);
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await
    .unwrap();
    s.stop().await;
}
