//! Fuzz targets for what a client or an operator hands Greenbelt: the REST
//! request decoder (JSON and the binary extension), the raw and JSON tensor
//! codecs, the gRPC `ModelInferRequest` path (wire scan, prost, conversion),
//! `greenbelt.toml`, and the feature push payload.
//!
//! Each target takes arbitrary bytes, must never panic, and checks what a
//! successful decode promises (element counts match shapes, limits hold,
//! the wire scan rejects only what prost rejects). The test binary
//! (`tests/it`) replays the committed corpus (`corpus/<target>/`) and runs a
//! time-boxed mutational explorer over it with every call held to an
//! allocation bound; see README.md.

// A failed check here is a bug found, reported by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use greenbelt_core::limits::DecodeLimits;
use greenbelt_core::{DataType, json, raw, tensor};
use prost::Message;

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[&str] = &[
    "rest_request",
    "tensor_codecs",
    "grpc_request",
    "config_toml",
    #[cfg(feature = "push")]
    "push_payload",
];

/// Limits small enough that fuzzed inputs reach every limit path.
pub const SMALL: DecodeLimits = DecodeLimits {
    max_inputs: 4,
    max_outputs: 4,
    max_parameters: 3,
    max_shape_dims: 4,
    max_elements: 64,
    max_bytes_elements: 8,
    max_decoded_bytes: 1024,
    max_nesting: 6,
};

/// Run `target` on `data`, returning the classes of outcome it reached (the
/// explorer keeps inputs that reach a new one). A panic here is a bug in
/// the code under test.
pub fn run(target: &str, data: &[u8]) -> Vec<String> {
    match target {
        "rest_request" => rest_request(data),
        "tensor_codecs" => tensor_codecs(data),
        "grpc_request" => grpc_request(data),
        "config_toml" => config_toml(data),
        #[cfg(feature = "push")]
        "push_payload" => push_payload(data),
        other => panic!("no fuzz target \"{other}\""),
    }
}

/// An outcome with the request's own content left out: the first words of
/// its message outside quotes and parentheses.
pub fn class<E: std::fmt::Display>(r: &Result<(), E>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => {
            // Leave out quoted names and shown values: they come from the input.
            let mut text = String::new();
            let (mut quoted, mut shown) = (false, 0usize);
            // Source excerpts (TOML errors quote the line with `|`) too.
            let msg = e.to_string();
            let msg: Vec<&str> = msg.lines().filter(|l| !l.contains('|')).collect();
            for c in msg.join("\n").chars() {
                match c {
                    '"' | '`' => quoted = !quoted,
                    '(' => shown += 1,
                    ')' => shown = shown.saturating_sub(1),
                    c if !quoted && shown == 0 => text.push(c),
                    _ => {}
                }
            }
            let mut words: Vec<&str> = text
                .split(|c: char| !c.is_ascii_alphabetic() && c != '_')
                .filter(|w| w.len() > 2)
                .collect();
            words.truncate(8);
            words.join(" ")
        }
    }
}

/// The allocation bound for one call on `len` input bytes: decoding may
/// cost a small multiple of its input, never more.
pub fn alloc_bound(len: usize) -> usize {
    64 * len + 4 * 1024 * 1024
}

fn check_request(req: &greenbelt_core::InferRequest, limits: &DecodeLimits) {
    assert!(req.inputs.len() <= limits.max_inputs);
    assert!(req.outputs.len() <= limits.max_outputs);
    let mut elements = 0usize;
    for t in &req.inputs {
        let want = tensor::element_count(&t.name, &t.shape).expect("a decoded shape is valid");
        assert_eq!(want, t.data.len(), "input {}", t.name);
        assert!(t.shape.len() <= limits.max_shape_dims);
        elements += want;
    }
    assert!(elements <= limits.max_elements);
    req.check_unique_names()
        .expect("decoded names are distinct");
}

/// A REST body. When the first byte is `B`, the next two are the
/// `Inference-Header-Content-Length` (little-endian) and the body follows.
pub fn rest_request(data: &[u8]) -> Vec<String> {
    let (body, header_len) = match data {
        [b'B', a, b, rest @ ..] => (rest, Some(usize::from(u16::from_le_bytes([*a, *b])))),
        _ => (data, None),
    };
    let body = Bytes::copy_from_slice(body);
    let mut out = Vec::new();
    for limits in [SMALL, DecodeLimits::default()] {
        let r = greenbelt_serve::http::codec::decode_request(&body, header_len, &limits);
        if let Ok(req) = &r {
            check_request(req, &limits);
        }
        out.push(class(&r.map(drop)));
    }
    out
}

/// The tensor codecs alone: byte 0 picks the datatype, bytes 1..3 the
/// element count; the rest is decoded as raw data and, when it is UTF-8,
/// as JSON `data` text.
pub fn tensor_codecs(data: &[u8]) -> Vec<String> {
    let [dt, a, b, rest @ ..] = data else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let datatype = DataType::ALL[usize::from(*dt) % DataType::ALL.len()];
    let count = usize::from(u16::from_le_bytes([*a, *b]));
    for limits in [SMALL, DecodeLimits::default()] {
        let mut budget = greenbelt_core::Budget::new(&limits);
        let r = raw::decode_limited("x", datatype, count, rest, &mut budget);
        if let Ok(t) = &r {
            assert_eq!(t.len(), count);
            if datatype != DataType::Bool {
                assert_eq!(raw::encode(t), rest, "raw round trip");
            }
        }
        out.push(format!("raw {}", class(&r.map(drop))));
        if let Ok(text) = std::str::from_utf8(rest) {
            let mut budget = greenbelt_core::Budget::new(&limits);
            let r = json::decode_text("x", datatype, count, text, &mut budget);
            if let Ok(t) = &r {
                assert!(t.len() <= count);
                assert_eq!(t.datatype(), datatype);
            }
            out.push(format!("json {}", class(&r.map(drop))));
        }
    }
    out
}

/// An encoded `ModelInferRequest`, through what the gRPC service does with
/// it: the wire scan, prost, then the conversion. The scan may reject only
/// what prost rejects, and what it lets through must be within the limits.
pub fn grpc_request(data: &[u8]) -> Vec<String> {
    use greenbelt_serve::grpc::{self, pb, wire};
    let msg = Bytes::copy_from_slice(data);
    let mut out = Vec::new();
    for limits in [SMALL, DecodeLimits::default()] {
        match wire::decode_model_infer_request(msg.clone(), &limits) {
            Ok(req) => {
                assert!(req.inputs.len() <= limits.max_inputs);
                assert!(req.outputs.len() <= limits.max_outputs);
                assert!(req.raw_input_contents.len() <= limits.max_inputs);
                assert!(req.parameters.len() <= limits.max_parameters);
                let r = grpc::decode_request(req, &limits);
                if let Ok(r) = &r {
                    check_request(r, &limits);
                }
                out.push(format!("decoded {}", class(&r.map(drop))));
            }
            Err(e) => {
                if e.to_string().contains("not valid protobuf") {
                    assert!(
                        pb::ModelInferRequest::decode(msg.clone()).is_err(),
                        "the scan rejected a message prost accepts: {e}"
                    );
                }
                out.push(format!("wire {}", class::<_>(&Err(e))));
            }
        }
    }
    out
}

/// `greenbelt.toml` text.
pub fn config_toml(data: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Vec::new();
    };
    let r =
        greenbelt_serve::Config::from_toml_str(text, Path::new("fuzz.toml"), std::iter::empty());
    vec![class(&r.map(drop))]
}

/// The `POST /features/push` body.
#[cfg(feature = "push")]
pub fn push_payload(data: &[u8]) -> Vec<String> {
    let r = serde_json::from_slice::<greenbelt_features::online::service::PushRequest>(data);
    vec![class(&r.map(drop))]
}

/// `corpus/<target>` in this crate.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The corpus of `target`, sorted by file name.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|d| (p, d)))
        .collect()
}

/// xorshift64*: fast, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Tokens worth inserting: JSON and TOML syntax, the protocol's names,
/// datatypes, extreme numbers and protobuf keys of `ModelInferRequest`.
pub const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"true",
    b"false",
    b"-",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"0.5",
    b"\"inputs\"",
    b"\"outputs\"",
    b"\"name\"",
    b"\"shape\"",
    b"\"datatype\"",
    b"\"data\"",
    b"\"parameters\"",
    b"\"binary_data_size\"",
    b"\"binary_data\"",
    b"\"binary_data_output\"",
    b"\"id\"",
    b"\"BYTES\"",
    b"\"FP16\"",
    b"\"FP32\"",
    b"\"UINT8\"",
    b"\"BOOL\"",
    b"\"INT64\"",
    b"\\u0000",
    b"\\ud800",
    b"[[[[[[[[",
    b"]]]]]]]]",
    b"=",
    b"\n[server]\n",
    b"\n[limits]\n",
    b"\n[[deployments]]\n",
    b"max_inputs = ",
    b"0x",
    b"'''",
    b"\"feature_view\"",
    b"\"df\"",
    b"\x2a\x00",
    b"\x32\x00",
    b"\x3a\x00",
    b"\x22\x00",
    b"\x2a\x02\x1a\x00",
    b"\xff\xff\xff\xff\x0f",
    b"\x2a\x04\x2a\x02\x42\x00",
    b"\x0b",
    b"\x0c",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
];

/// Mutate `input` in place: bit flips, random bytes, deletions,
/// repetitions (what amplification bugs need), splices from `others` and
/// dictionary tokens. The result stays under `max_len` bytes.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, others: &[Vec<u8>], max_len: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    input.insert(i, rng.next_u64() as u8);
                }
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                // Repeat a slice many times.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                let piece = input[i..i + n].to_vec();
                let times = 1 + rng.below(512);
                let at = i + n;
                let tail = input.split_off(at);
                for _ in 0..times {
                    input.extend_from_slice(&piece);
                }
                input.extend_from_slice(&tail);
            }
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a) + 1;
                    let at = rng.below(len + 1);
                    let tail = input.split_off(at);
                    input.extend_from_slice(&other[a..b]);
                    input.extend_from_slice(&tail);
                }
            }
            6 | 7 => {
                let tok = DICTIONARY[rng.below(DICTIONARY.len())];
                let at = rng.below(len + 1);
                let tail = input.split_off(at);
                input.extend_from_slice(tok);
                input.extend_from_slice(&tail);
            }
            _ if len > 0 => {
                // Replace a run of digits with an extreme number.
                let i = rng.below(len);
                if input[i].is_ascii_digit() {
                    let j = input[i..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(len, |p| i + p);
                    let n: &[u8] = match rng.below(4) {
                        0 => b"0",
                        1 => b"4294967296",
                        2 => b"99999999999999999999",
                        _ => b"65536",
                    };
                    input.splice(i..j, n.iter().copied());
                }
            }
            _ => {}
        }
    }
    input.truncate(max_len);
}
