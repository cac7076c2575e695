//! A bound check on a `ModelInferRequest` before prost decodes it. prost
//! builds every repeated entry it finds (an empty `inputs` entry is two
//! bytes on the wire and a few hundred in memory), so a message within
//! `[server] max_request_bytes` can still decode to gigabytes. The codec
//! here walks the protobuf wire format first, counting inputs, outputs,
//! raw contents, parameters, shape dimensions and typed contents against
//! `[limits]`, and answers RESOURCE_EXHAUSTED (over a limit) or
//! INVALID_ARGUMENT (not protobuf) before anything is allocated. Every other
//! message type decodes exactly as `tonic_prost::ProstCodec` decodes it.
//!
//! The limits reach the codec through a task-local that [`WithLimits`]
//! sets around each call of the service (tonic builds codecs with
//! `Default`); outside such a call the default limits apply.

use std::any::TypeId;
use std::collections::HashSet;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::Buf;
use greenbelt_core::limits::{Budget, DecodeLimits};
use greenbelt_core::{CoreError, DataType};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::server::NamedService;
use tonic_prost::ProstEncoder;

use super::pb;
use crate::error::ServeError;

tokio::task_local! {
    static LIMITS: DecodeLimits;
}

/// A service whose calls decode under `limits`.
#[derive(Debug, Clone)]
pub struct WithLimits<S> {
    inner: S,
    limits: DecodeLimits,
}

impl<S> WithLimits<S> {
    pub fn new(inner: S, limits: DecodeLimits) -> Self {
        WithLimits { inner, limits }
    }
}

impl<S: NamedService> NamedService for WithLimits<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: tower::Service<R>, R> tower::Service<R> for WithLimits<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<DecodeLimits, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        LIMITS.scope(self.limits, self.inner.call(req))
    }
}

/// The service's codec (`codec_path` in build.rs): prost, with the scan in
/// front of `ModelInferRequest`.
#[derive(Debug)]
pub struct ScanCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for ScanCodec<T, U> {
    fn default() -> Self {
        ScanCodec(PhantomData)
    }
}

impl<T, U> Codec for ScanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ScanDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ScanDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct ScanDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default + 'static> Decoder for ScanDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() != TypeId::of::<pb::ModelInferRequest>() {
            return U::decode(buf)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()));
        }
        let limits = LIMITS.try_with(|l| *l).unwrap_or_default();
        // Zero-copy: the message is one contiguous buffer in tonic.
        let msg = buf.copy_to_bytes(buf.remaining());
        scan_model_infer_request(&msg, &limits)
            .map_err(|e| Status::new(e.grpc_code(), e.to_string()))?;
        U::decode(msg).map(Some).map_err(|e| {
            Status::invalid_argument(format!("ModelInferRequest is not valid protobuf: {e}"))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// What the service's codec does with a `ModelInferRequest`: scan, then
/// decode with prost (for tests and fuzzing).
pub fn decode_model_infer_request(
    msg: bytes::Bytes,
    limits: &DecodeLimits,
) -> Result<pb::ModelInferRequest, ServeError> {
    scan_model_infer_request(&msg, limits)?;
    pb::ModelInferRequest::decode(msg).map_err(|e| {
        ServeError::InvalidInput(format!("ModelInferRequest is not valid protobuf: {e}"))
    })
}

/// Check an encoded `ModelInferRequest` against `limits` without decoding
/// it: linear in its length; allocates only the names it compares.
pub fn scan_model_infer_request(msg: &[u8], limits: &DecodeLimits) -> Result<(), ServeError> {
    let mut scan = Scan {
        limits,
        budget: Budget::new(limits),
        inputs: 0,
        outputs: 0,
        raw: 0,
        input_names: HashSet::new(),
        output_names: HashSet::new(),
    };
    scan.request(msg).map_err(|e| match e {
        Fail::Core(e) => ServeError::from(e),
        Fail::Malformed(why) => {
            ServeError::InvalidInput(format!("ModelInferRequest is not valid protobuf: {why}"))
        }
    })
}

enum Fail {
    /// Over a limit, or a name given twice.
    Core(CoreError),
    Malformed(&'static str),
}

impl From<CoreError> for Fail {
    fn from(e: CoreError) -> Self {
        Fail::Core(e)
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;
/// prost's own bound on nesting.
const MAX_GROUP_DEPTH: usize = 100;

/// A cursor over protobuf wire data.
struct Wire<'a> {
    buf: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, Fail> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(Fail::Malformed("truncated varint"));
            };
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Fail::Malformed("varint longer than 10 bytes"))
    }

    /// The next field's number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, Fail> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(Fail::Malformed("invalid field number"));
        }
        Ok(Some((field, (k & 7) as u8)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        if n > self.buf.len() {
            return Err(Fail::Malformed("field runs past the end of the message"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], Fail> {
        let n = self.varint()?;
        self.take(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Skip one value of wire type `wt` (a group up to its end).
    fn skip(&mut self, wt: u8) -> Result<(), Fail> {
        match wt {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP => {
                let mut depth = 1usize;
                while depth > 0 {
                    let Some((_, wt)) = self.key()? else {
                        return Err(Fail::Malformed("unterminated group"));
                    };
                    match wt {
                        START_GROUP => {
                            depth += 1;
                            if depth > MAX_GROUP_DEPTH {
                                return Err(Fail::Malformed("groups nested too deep"));
                            }
                        }
                        END_GROUP => depth -= 1,
                        other => self.skip(other)?,
                    }
                }
                Ok(())
            }
            END_GROUP => Err(Fail::Malformed("unexpected end of group")),
            _ => Err(Fail::Malformed("invalid wire type")),
        }
    }
}

/// Values of a repeated scalar field of wire type `wt` (packed when `LEN`).
fn scalars(w: &mut Wire<'_>, wt: u8, fixed: Option<usize>) -> Result<usize, Fail> {
    match (wt, fixed) {
        (LEN, None) => Ok(w.len_delimited()?.iter().filter(|b| **b < 0x80).count()),
        (LEN, Some(size)) => Ok(w.len_delimited()?.len() / size),
        (other, _) => {
            w.skip(other)?;
            Ok(1)
        }
    }
}

struct Scan<'l, 'a> {
    limits: &'l DecodeLimits,
    budget: Budget<'l>,
    inputs: usize,
    outputs: usize,
    raw: usize,
    /// Names seen so far, borrowed from the message: a name given twice
    /// stops the scan there.
    input_names: HashSet<&'a [u8]>,
    output_names: HashSet<&'a [u8]>,
}

fn unique<'a>(seen: &mut HashSet<&'a [u8]>, what: &str, name: &'a [u8]) -> Result<(), Fail> {
    if seen.insert(name) {
        return Ok(());
    }
    Err(Fail::Core(greenbelt_core::infer::duplicate(
        what,
        &String::from_utf8_lossy(name),
    )))
}

impl<'a> Scan<'_, 'a> {
    fn request(&mut self, msg: &'a [u8]) -> Result<(), Fail> {
        let l = self.limits;
        let mut w = Wire { buf: msg };
        let mut params = 0;
        while let Some((field, wt)) = w.key()? {
            match (field, wt) {
                (4, LEN) => {
                    w.len_delimited()?;
                    params += 1;
                    DecodeLimits::check(
                        "request parameters",
                        params,
                        l.max_parameters,
                        "max_parameters",
                    )?;
                }
                (5, LEN) => {
                    self.inputs += 1;
                    DecodeLimits::check("inputs", self.inputs, l.max_inputs, "max_inputs")?;
                    let input = w.len_delimited()?;
                    let name = self.input(input)?;
                    unique(&mut self.input_names, "input", name)?;
                }
                (6, LEN) => {
                    self.outputs += 1;
                    DecodeLimits::check("outputs", self.outputs, l.max_outputs, "max_outputs")?;
                    let output = w.len_delimited()?;
                    let name = self.output(output)?;
                    unique(&mut self.output_names, "requested output", name)?;
                }
                (7, LEN) => {
                    w.len_delimited()?;
                    self.raw += 1;
                    DecodeLimits::check(
                        "raw_input_contents entries",
                        self.raw,
                        l.max_inputs,
                        "max_inputs",
                    )?;
                }
                (_, wt) => w.skip(wt)?,
            }
        }
        Ok(())
    }

    /// One `inputs` entry; returns its name.
    fn input(&mut self, msg: &'a [u8]) -> Result<&'a [u8], Fail> {
        let l = self.limits;
        let mut w = Wire { buf: msg };
        let mut raw_name: &[u8] = &[];
        let mut name = format!("#{}", self.inputs - 1);
        let (mut dims, mut params) = (0, 0);
        while let Some((field, wt)) = w.key()? {
            match (field, wt) {
                (1, LEN) => {
                    raw_name = w.len_delimited()?;
                    name = String::from_utf8_lossy(raw_name)
                        .chars()
                        .take(200)
                        .collect();
                }
                (3, wt) => {
                    dims += scalars(&mut w, wt, None)?;
                    DecodeLimits::check(
                        &format!("input \"{name}\" shape dimensions"),
                        dims,
                        l.max_shape_dims,
                        "max_shape_dims",
                    )?;
                }
                (4, LEN) => {
                    w.len_delimited()?;
                    params += 1;
                    DecodeLimits::check(
                        &format!("input \"{name}\" parameters"),
                        params,
                        l.max_parameters,
                        "max_parameters",
                    )?;
                }
                (5, LEN) => {
                    let contents = w.len_delimited()?;
                    self.contents(&name, contents)?;
                }
                (_, wt) => w.skip(wt)?,
            }
        }
        Ok(raw_name)
    }

    /// `InferTensorContents`: every element is charged to the budget as
    /// prost would store it.
    fn contents(&mut self, name: &str, msg: &[u8]) -> Result<(), Fail> {
        let mut w = Wire { buf: msg };
        while let Some((field, wt)) = w.key()? {
            let (datatype, fixed) = match field {
                1 => (DataType::Bool, None),
                2 => (DataType::Int32, None),
                3 => (DataType::Int64, None),
                4 => (DataType::Uint32, None),
                5 => (DataType::Uint64, None),
                6 => (DataType::Fp32, Some(4)),
                7 => (DataType::Fp64, Some(8)),
                8 if wt == LEN => {
                    let item = w.len_delimited()?;
                    self.budget.charge_elements(name, DataType::Bytes, 1)?;
                    self.budget.charge_payload(name, item.len())?;
                    continue;
                }
                _ => {
                    w.skip(wt)?;
                    continue;
                }
            };
            let n = scalars(&mut w, wt, fixed)?;
            self.budget.charge_elements(name, datatype, n)?;
        }
        Ok(())
    }

    /// One `outputs` entry; returns its name.
    fn output(&mut self, msg: &'a [u8]) -> Result<&'a [u8], Fail> {
        let mut w = Wire { buf: msg };
        let mut name: &[u8] = &[];
        let mut params = 0;
        while let Some((field, wt)) = w.key()? {
            if (field, wt) == (1, LEN) {
                name = w.len_delimited()?;
            } else if (field, wt) == (2, LEN) {
                w.len_delimited()?;
                params += 1;
                DecodeLimits::check(
                    "requested output parameters",
                    params,
                    self.limits.max_parameters,
                    "max_parameters",
                )?;
            } else {
                w.skip(wt)?;
            }
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn input(
        name: &str,
        contents: Option<pb::InferTensorContents>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            parameters: Default::default(),
            contents,
        }
    }

    fn scan(req: &pb::ModelInferRequest, limits: &DecodeLimits) -> Result<(), ServeError> {
        scan_model_infer_request(&req.encode_to_vec(), limits)
    }

    #[test]
    fn counts_every_repeated_field() {
        let small = DecodeLimits {
            max_inputs: 2,
            max_outputs: 1,
            max_parameters: 1,
            max_shape_dims: 2,
            max_elements: 4,
            max_bytes_elements: 1,
            ..DecodeLimits::default()
        };
        let ok = pb::ModelInferRequest {
            inputs: vec![input("a", None), input("b", None)],
            outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: "y".into(),
                parameters: Default::default(),
            }],
            raw_input_contents: vec![Bytes::new(), Bytes::new()],
            ..Default::default()
        };
        scan(&ok, &small).unwrap();
        let too_many = |f: &dyn Fn(&mut pb::ModelInferRequest), want: &str| {
            let mut r = ok.clone();
            f(&mut r);
            let e = scan(&r, &small).unwrap_err();
            assert!(matches!(e, ServeError::LimitExceeded(_)), "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        };
        too_many(&|r| r.inputs.push(input("c", None)), "[limits] max_inputs");
        too_many(
            &|r| {
                let mut o = r.outputs[0].clone();
                o.name = "z".into();
                r.outputs.push(o)
            },
            "max_outputs",
        );
        too_many(
            &|r| r.raw_input_contents.push(Bytes::new()),
            "raw_input_contents",
        );
        too_many(&|r| r.inputs[0].shape.push(3), "input \"a\" shape");
        too_many(
            &|r| {
                r.parameters.insert("p".into(), Default::default());
                r.parameters.insert("q".into(), Default::default());
            },
            "max_parameters",
        );
        too_many(
            &|r| {
                r.inputs[1].contents = Some(pb::InferTensorContents {
                    fp32_contents: vec![0.0; 5],
                    ..Default::default()
                })
            },
            "input \"b\" brings the request to 5 tensor elements",
        );
        too_many(
            &|r| {
                r.inputs[1].contents = Some(pb::InferTensorContents {
                    int64_contents: vec![1, 300, 70000],
                    uint_contents: vec![1, 2],
                    ..Default::default()
                })
            },
            "max_elements",
        );
        too_many(
            &|r| {
                r.inputs[1].contents = Some(pb::InferTensorContents {
                    bytes_contents: vec![Bytes::new(), Bytes::new()],
                    ..Default::default()
                })
            },
            "max_bytes_elements",
        );
    }

    #[test]
    fn duplicate_names_stop_the_scan() {
        let out = |n: &str| pb::model_infer_request::InferRequestedOutputTensor {
            name: n.into(),
            parameters: Default::default(),
        };
        let r = pb::ModelInferRequest {
            outputs: vec![out("y"); 200_000],
            ..Default::default()
        };
        let e = scan(&r, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, ServeError::InvalidInput(_)), "{e}");
        assert!(
            e.to_string()
                .contains("requested output \"y\" is given more than once"),
            "{e}"
        );
        let r = pb::ModelInferRequest {
            inputs: vec![input("a", None), input("b", None), input("a", None)],
            ..Default::default()
        };
        let e = scan(&r, &DecodeLimits::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("input \"a\" is given more than once"),
            "{e}"
        );
    }

    #[test]
    fn malformed_wire_data_is_invalid_argument() {
        let l = DecodeLimits::default();
        for bad in [
            &[0x2a, 0x05, 0x00][..], // inputs entry longer than the message
            &[0x80][..],             // truncated key
            &[0x2b][..],             // field 5 as a group that never ends
            &[0x0c][..],             // end group with no start
            &[0x00, 0x00][..],       // field 0
            &[0x0f][..],             // wire type 7
        ] {
            let e = scan_model_infer_request(bad, &l).unwrap_err();
            assert!(matches!(e, ServeError::InvalidInput(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("not valid protobuf"), "{e}");
        }
        // unknown fields of every wire type, and groups, are skipped
        let ok = [
            0x48, 0x01, 0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0x5d, 0, 0, 0, 0, 0x63, 0x68, 0x01, 0x64,
        ];
        scan_model_infer_request(&ok, &l).unwrap();
    }

    #[test]
    fn sixty_megabytes_of_empty_inputs_stop_at_the_limit() {
        // Empty entries share the name "": the second is a duplicate.
        let msg = [0x2a, 0x00].repeat(30 * 1024 * 1024);
        let t = tokio::time::Instant::now();
        let e = scan_model_infer_request(&msg, &DecodeLimits::default()).unwrap_err();
        assert!(
            e.to_string().contains("input \"\" is given more than once"),
            "{e}"
        );
        // Entries with distinct names stop at the limit.
        let mut msg = Vec::with_capacity(60_000_000);
        for i in 0..10_000_000u32 {
            let (a, b) = (0x40 + (i % 64) as u8, 0x40 + (i / 64 % 64) as u8);
            msg.extend_from_slice(&[0x2a, 0x04, 0x0a, 0x02, a, b]);
        }
        let e = scan_model_infer_request(&msg, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("inputs: 1025"), "{e}");
        assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
    }
}
