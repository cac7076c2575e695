//! REST encoding of V2 inference: JSON tensors, and the binary tensor data
//! extension (`Inference-Header-Content-Length`, `binary_data_size`,
//! `binary_data` / `binary_data_output`) that tritonclient uses by default.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use greenbelt_core::json::{DataSeed, JsonData};
use greenbelt_core::limits::{Budget, DecodeLimits};
use greenbelt_core::{
    DataType, InferRequest, InferResponse, RequestedOutput, Tensor, TensorData, raw, tensor,
};
use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ServeError;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Decode a REST infer body. `header_len` is the value of
/// `Inference-Header-Content-Length`, when present.
///
/// The JSON is read once into a small header (names, shapes, datatypes,
/// the few parameters the protocol defines) with every list capped by
/// `limits` as it is read. An input's `data` is decoded in the same pass,
/// straight into a typed buffer whose size was charged to the request's
/// budget first, when its name, shape and datatype came before it (as
/// clients send them); otherwise it stays borrowed text until they are
/// known. No `serde_json::Value` is built, so decoding costs at most the
/// body plus `limits.max_decoded_bytes`.
pub fn decode_request(
    body: &Bytes,
    header_len: Option<usize>,
    limits: &DecodeLimits,
) -> Result<InferRequest, ServeError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ServeError::InvalidInput(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => (body.slice(..n), body.slice(n..)),
        None => (body.clone(), Bytes::new()),
    };
    let ctx = Ctx {
        limits,
        error: RefCell::new(None),
        budget: RefCell::new(Budget::new(limits)),
        text_len: json.len(),
    };
    let req = parse_header(&json, &ctx)?;
    let mut budget = ctx.budget.into_inner();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        inputs.push(decode_input(input, &mut binary, &mut budget)?);
    }
    if !binary.is_empty() {
        return Err(ServeError::InvalidInput(format!(
            "{} binary bytes after the JSON header were not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let binary_output = matches!(req.binary_output, Some(Param::Bool(true)));
    let outputs = req
        .outputs
        .into_iter()
        .map(|o| RequestedOutput {
            binary: match o.binary {
                Some(Param::Bool(b)) => b,
                _ => binary_output,
            },
            name: o.name,
        })
        .collect();
    Ok(InferRequest {
        id: req.id,
        inputs,
        outputs,
        binary_output,
    })
}

/// One input: its data from the binary part of the body (`binary_data_size`)
/// or from its JSON text, charged to `budget` before it is allocated.
fn decode_input(
    input: HeaderInput<'_>,
    binary: &mut Bytes,
    budget: &mut Budget<'_>,
) -> Result<Tensor, ServeError> {
    let datatype: DataType = input
        .datatype
        .parse()
        .map_err(|e: greenbelt_core::CoreError| {
            ServeError::InvalidInput(format!("input \"{}\": {e}", input.name))
        })?;
    let count = tensor::element_count(&input.name, &input.shape)?;
    let binary_size = match input.binary_data_size {
        None => None,
        Some(Param::UInt(n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(_) => {
            return Err(ServeError::InvalidInput(format!(
                "input \"{}\": parameters.binary_data_size must be a non-negative integer",
                input.name
            )));
        }
    };
    let data = match (binary_size, input.data) {
        (Some(size), _) => {
            if size > binary.len() {
                return Err(ServeError::InvalidInput(format!(
                    "input \"{}\": binary_data_size is {size} but only {} binary bytes remain in the body",
                    input.name,
                    binary.len()
                )));
            }
            let chunk = binary.split_to(size);
            raw::decode_limited(&input.name, datatype, count, &chunk, budget)?
        }
        (None, Some(Data::Decoded(data))) => data,
        (None, Some(Data::Raw(text))) => {
            greenbelt_core::json::decode_text(&input.name, datatype, count, text.get(), budget)?
        }
        (None, None) => {
            return Err(ServeError::InvalidInput(format!(
                "input \"{}\" has neither \"data\" nor parameters.binary_data_size",
                input.name
            )));
        }
    };
    Ok(Tensor::new(input.name, input.shape, data)?)
}

fn parse_header<'de>(json: &'de [u8], ctx: &Ctx<'_>) -> Result<Header<'de>, ServeError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = RequestSeed(ctx)
        .deserialize(&mut de)
        .and_then(|req| de.end().map(|()| req));
    parsed.map_err(|e| {
        ctx.error.take().unwrap_or_else(|| {
            ServeError::InvalidInput(format!(
                "request body is not a valid V2 inference request: {e}"
            ))
        })
    })
}

/// A REST request's JSON as read: everything but the tensors' data, which
/// stays borrowed text until each input's datatype and shape are known.
struct Header<'de> {
    id: Option<String>,
    binary_output: Option<Param>,
    inputs: Vec<HeaderInput<'de>>,
    outputs: Vec<HeaderOutput>,
}

struct HeaderInput<'de> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    binary_data_size: Option<Param>,
    data: Option<Data<'de>>,
}

/// An input's `data`: decoded while the JSON was read (its name, shape and
/// datatype came first, as clients send them), or its text, kept for
/// once they are known.
enum Data<'de> {
    Decoded(TensorData),
    Raw(&'de RawValue),
}

struct HeaderOutput {
    name: String,
    binary: Option<Param>,
}

/// The value of a parameter the protocol defines; others are skipped.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Param {
    Bool(bool),
    UInt(u64),
    Other,
}

/// What every seed shares: the limits, and the first error in full (serde's
/// error type carries only a string).
struct Ctx<'l> {
    limits: &'l DecodeLimits,
    error: RefCell<Option<ServeError>>,
    /// What the request's tensors may still cost.
    budget: RefCell<Budget<'l>>,
    /// The JSON's length (what an input's data can hold at most).
    text_len: usize,
}

impl Ctx<'_> {
    fn fail<E: de::Error>(&self, e: impl Into<ServeError>) -> E {
        let e = e.into();
        let msg = e.to_string();
        *self.error.borrow_mut() = Some(e);
        E::custom(msg)
    }

    /// Fails when one input's declared elements are over a limit on their
    /// own. Anything else (a bad datatype or shape) is reported later, in
    /// order, by the full decode.
    fn precheck<E: de::Error>(&self, name: &str, shape: &[i64], datatype: &str) -> Result<(), E> {
        let (Ok(datatype), Ok(count)) = (
            datatype.parse::<DataType>(),
            tensor::element_count(name, shape),
        ) else {
            return Ok(());
        };
        Budget::new(self.limits)
            .charge_elements(name, datatype, count)
            .map_err(|e| self.fail(e))
    }
}

/// A JSON object key, matched against `names` without allocating.
struct Key<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// `null` or the value `S` reads.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a value")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// A JSON array of at most `max` items, each read by `item`; named items
/// (inputs, outputs) must have distinct names, checked as they are read.
struct List<'c, 'l, S> {
    ctx: &'c Ctx<'l>,
    item: S,
    max: usize,
    what: &'static str,
    setting: &'static str,
}

/// An item's name, when its list wants names to be distinct, and what the
/// item is called in errors.
trait Named {
    fn name(&self) -> Option<(&'static str, &str)>;
}

impl Named for i64 {
    fn name(&self) -> Option<(&'static str, &str)> {
        None
    }
}

impl Named for HeaderInput<'_> {
    fn name(&self) -> Option<(&'static str, &str)> {
        Some(("input", &self.name))
    }
}

impl Named for HeaderOutput {
    fn name(&self) -> Option<(&'static str, &str)> {
        Some(("requested output", &self.name))
    }
}

impl<'de, S> DeserializeSeed<'de> for List<'_, '_, S>
where
    S: DeserializeSeed<'de> + Copy,
    S::Value: Named,
{
    type Value = Vec<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S> Visitor<'de> for List<'_, '_, S>
where
    S: DeserializeSeed<'de> + Copy,
    S::Value: Named,
{
    type Value = Vec<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {}", self.what)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Names are compared with those before them while the list is
        // short (no allocation for the usual one or two), then through a set.
        const SCAN: usize = 16;
        let mut out: Vec<S::Value> = Vec::new();
        let mut seen: Option<HashSet<String>> = None;
        while let Some(x) = seq.next_element_seed(self.item)? {
            if out.len() == self.max {
                return Err(self.ctx.fail(greenbelt_core::limits::exceeded(
                    self.setting,
                    self.max,
                    &format!("\"{}\" has more entries", self.what),
                )));
            }
            if let Some((what, name)) = x.name() {
                let name_of = |o: &S::Value| o.name().map(|(_, n)| n.to_owned());
                let duplicate = if out.len() < SCAN {
                    out.iter().any(|o| o.name().is_some_and(|(_, n)| n == name))
                } else {
                    let set = seen.get_or_insert_with(|| out.iter().filter_map(name_of).collect());
                    !set.insert(name.to_owned())
                };
                if duplicate {
                    return Err(self.ctx.fail(greenbelt_core::infer::duplicate(what, name)));
                }
            }
            out.push(x);
        }
        Ok(out)
    }
}

/// A shape: at most `max_shape_dims` integers.
#[derive(Clone, Copy)]
struct Dim;

impl<'de> DeserializeSeed<'de> for Dim {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        de::Deserialize::deserialize(d)
    }
}

/// A `parameters` object of at most `max_parameters` entries, of which only
/// `wanted` is read.
struct Params<'c, 'l> {
    ctx: &'c Ctx<'l>,
    wanted: &'static str,
}

impl<'de> DeserializeSeed<'de> for Params<'_, '_> {
    type Value = Option<Param>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Params<'_, '_> {
    type Value = Option<Param>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a parameters object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let max = self.ctx.limits.max_parameters;
        let wanted = [self.wanted];
        let mut found = None;
        let mut n = 0usize;
        while let Some(key) = map.next_key_seed(Key(&wanted))? {
            n += 1;
            if n > max {
                return Err(self.ctx.fail(greenbelt_core::limits::exceeded(
                    "max_parameters",
                    max,
                    "a \"parameters\" object has more entries",
                )));
            }
            if key.is_some() {
                found = Some(map.next_value_seed(ParamValue)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}
/// One parameter's value, read without building anything for arrays,
/// objects or strings.
struct ParamValue;

impl<'de> DeserializeSeed<'de> for ParamValue {
    type Value = Param;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Param, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamValue {
    type Value = Param;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a parameter value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Param, E> {
        Ok(Param::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Param, E> {
        Ok(Param::UInt(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Param, E> {
        Ok(u64::try_from(v).map_or(Param::Other, Param::UInt))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Param, E> {
        Ok(Param::Other)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Param, E> {
        Ok(Param::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Param, E> {
        Ok(Param::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Param, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Param::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Param, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Param::Other)
    }
}

/// Sets `slot` once; a second value for the same field is an error, as
/// serde's derive makes it.
fn once<T, E: de::Error>(slot: &mut Option<T>, field: &'static str, v: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(v);
    Ok(())
}

/// The request object.
struct RequestSeed<'c, 'l>(&'c Ctx<'l>);

impl<'de> DeserializeSeed<'de> for RequestSeed<'_, '_> {
    type Value = Header<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_, '_> {
    type Value = Header<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a V2 inference request object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const FIELDS: &[&str] = &["id", "parameters", "inputs", "outputs"];
        let ctx = self.0;
        let (mut id, mut params, mut inputs, mut outputs) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(Key(FIELDS))? {
            match key {
                Some(0) => once(&mut id, "id", map.next_value::<Option<String>>()?)?,
                Some(1) => {
                    let p = map.next_value_seed(Nullable(Params {
                        ctx,
                        wanted: "binary_data_output",
                    }))?;
                    once(&mut params, "parameters", p.flatten())?
                }
                Some(2) => {
                    let list = map.next_value_seed(List {
                        ctx,
                        item: InputSeed(ctx),
                        max: ctx.limits.max_inputs,
                        what: "inputs",
                        setting: "max_inputs",
                    })?;
                    once(&mut inputs, "inputs", list)?
                }
                Some(3) => {
                    let list = map.next_value_seed(Nullable(List {
                        ctx,
                        item: OutputSeed(ctx),
                        max: ctx.limits.max_outputs,
                        what: "outputs",
                        setting: "max_outputs",
                    }))?;
                    once(&mut outputs, "outputs", list.unwrap_or_default())?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Header {
            id: id.flatten(),
            binary_output: params.flatten(),
            inputs: inputs.ok_or_else(|| de::Error::missing_field("inputs"))?,
            outputs: outputs.unwrap_or_default(),
        })
    }
}

/// One entry of `inputs`.
#[derive(Clone, Copy)]
struct InputSeed<'c, 'l>(&'c Ctx<'l>);

impl<'de> DeserializeSeed<'de> for InputSeed<'_, '_> {
    type Value = HeaderInput<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InputSeed<'_, '_> {
    type Value = HeaderInput<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an input tensor object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];
        let ctx = self.0;
        let (mut name, mut shape, mut datatype, mut params, mut data) =
            (None, None, None, None, None);
        while let Some(key) = map.next_key_seed(Key(FIELDS))? {
            match key {
                Some(0) => once(&mut name, "name", map.next_value::<String>()?)?,
                Some(1) => {
                    let dims = map.next_value_seed(List {
                        ctx,
                        item: Dim,
                        max: ctx.limits.max_shape_dims,
                        what: "shape",
                        setting: "max_shape_dims",
                    })?;
                    once(&mut shape, "shape", dims)?
                }
                Some(2) => once(&mut datatype, "datatype", map.next_value::<String>()?)?,
                Some(3) => {
                    let p = map.next_value_seed(Nullable(Params {
                        ctx,
                        wanted: "binary_data_size",
                    }))?;
                    once(&mut params, "parameters", p.flatten())?
                }
                Some(4) => {
                    // With the shape already read (the usual order), a
                    // tensor over a limit by itself stops here, before its
                    // data is even scanned.
                    if let (Some(name), Some(shape), Some(datatype)) = (&name, &shape, &datatype) {
                        ctx.precheck(name, shape, datatype)?;
                    }
                    // Decoded in place when its name, shape and datatype
                    // are known and valid and no binary_data_size was given
                    // (else its text is kept, and the full decode reports).
                    let known = match (&name, &shape, &datatype) {
                        (Some(n), Some(sh), Some(dt)) if !matches!(params, Some(Some(_))) => {
                            match (dt.parse::<DataType>(), tensor::element_count(n, sh)) {
                                (Ok(dt), Ok(count)) => Some((n.as_str(), dt, count)),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    let value = match known {
                        Some((n, datatype, count)) => {
                            let mut error = None;
                            let mut budget = ctx.budget.borrow_mut();
                            let seed = DataSeed {
                                name: n,
                                datatype,
                                count,
                                text_len: ctx.text_len,
                                budget: &mut budget,
                                error: &mut error,
                            };
                            match map.next_value_seed(Nullable(seed)) {
                                Ok(v) => v.map(Data::Decoded),
                                Err(e) => return Err(error.map_or(e, |e| ctx.fail(e))),
                            }
                        }
                        None => {
                            let raw = map.next_value::<&'de RawValue>()?;
                            (raw.get() != "null").then_some(Data::Raw(raw))
                        }
                    };
                    once(&mut data, "data", value)?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(HeaderInput {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            binary_data_size: params.flatten(),
            data: data.flatten(),
        })
    }
}

/// One entry of `outputs`.
#[derive(Clone, Copy)]
struct OutputSeed<'c, 'l>(&'c Ctx<'l>);

impl<'de> DeserializeSeed<'de> for OutputSeed<'_, '_> {
    type Value = HeaderOutput;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OutputSeed<'_, '_> {
    type Value = HeaderOutput;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a requested output object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const FIELDS: &[&str] = &["name", "parameters"];
        let (mut name, mut params) = (None, None);
        while let Some(key) = map.next_key_seed(Key(FIELDS))? {
            match key {
                Some(0) => once(&mut name, "name", map.next_value::<String>()?)?,
                Some(1) => {
                    let p = map.next_value_seed(Nullable(Params {
                        ctx: self.0,
                        wanted: "binary_data",
                    }))?;
                    once(&mut params, "parameters", p.flatten())?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(HeaderOutput {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            binary: params.flatten(),
        })
    }
}

#[derive(Serialize)]
struct RestResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<RestOutputTensor<'a>>,
}

#[derive(Serialize)]
struct RestOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

/// An encoded REST response body; `header_len` is set when binary tensors follow the JSON.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Encode a response; outputs go binary when the request asked for it.
pub fn encode_response(
    resp: &InferResponse,
    requested: &[RequestedOutput],
    binary_output: bool,
) -> Result<EncodedResponse, ServeError> {
    // One lookup per output, not a scan of the requested list each time.
    let binary_by_name: std::collections::HashMap<&str, bool> = requested
        .iter()
        .map(|r| (r.name.as_str(), r.binary))
        .collect();
    let wants_binary = |name: &str| binary_by_name.get(name).copied().unwrap_or(binary_output);
    let mut binary: Vec<u8> = Vec::new();
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    for t in &resp.outputs {
        if wants_binary(&t.name) {
            let before = binary.len();
            raw::encode_into(&t.data, &mut binary);
            outputs.push(RestOutputTensor {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters: Some(BinaryParams {
                    binary_data_size: binary.len() - before,
                }),
                data: None,
            });
        } else {
            outputs.push(RestOutputTensor {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters: None,
                data: Some(JsonData(&t.data)),
            });
        }
    }
    // Room for a small answer's JSON up front: no regrowth and copy.
    let mut body = Vec::with_capacity(256);
    serde_json::to_writer(
        &mut body,
        &RestResponse {
            model_name: &resp.model_name,
            model_version: &resp.model_version,
            id: resp.id.as_deref(),
            outputs,
        },
    )
    .map_err(|e| ServeError::Internal(format!("encoding response: {e}")))?;
    if binary.is_empty() && !resp.outputs.iter().any(|t| wants_binary(&t.name)) {
        return Ok(EncodedResponse {
            body,
            header_len: None,
        });
    }
    let header_len = body.len();
    body.extend_from_slice(&binary);
    Ok(EncodedResponse {
        body,
        header_len: Some(header_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::TensorData;
    use serde_json::Value;

    #[test]
    fn json_request_decodes() {
        let body = Bytes::from(
            r#"{"id":"7","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1,2]]}],
                "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#,
        );
        let r = decode_request(&body, None, &DecodeLimits::default()).unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0]));
        assert_eq!(
            r.outputs,
            vec![RequestedOutput {
                name: "y".into(),
                binary: true
            }]
        );
    }

    #[test]
    fn binary_request_decodes() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1i32.to_le_bytes());
        body.extend_from_slice(&(-2i32).to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"hi");
        let r = decode_request(
            &Bytes::from(body),
            Some(header.len()),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(r.inputs[0].data, TensorData::Int32(vec![1, -2]));
        assert_eq!(r.inputs[1].data, TensorData::Bytes(vec![Bytes::from("hi")]));
        assert!(r.binary_output);
    }

    #[test]
    fn garbage_gets_named_errors() {
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("not json", None, "not a valid V2 inference request"),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
                None,
                "unknown datatype \"FLOAT\"",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
                None,
                "holds 2 elements but 1",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                None,
                "neither \"data\"",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[-3],"datatype":"FP32","data":[]}]}"#,
                None,
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                Some(1000),
                "Inference-Header-Content-Length is 1000",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-1}}]}"#,
                None,
                "binary_data_size must be",
            ),
        ];
        for (body, hl, want) in cases {
            let e = decode_request(
                &Bytes::from(body.to_string()),
                *hl,
                &DecodeLimits::default(),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(e.contains(want), "{body}: got {e:?}, want {want:?}");
        }
        // binary size larger than what follows the header
        let header = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let e = decode_request(
            &Bytes::from(header.to_vec()),
            Some(header.len()),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("only 0 binary bytes remain"), "{e}");
        // extra unclaimed bytes
        let mut body = header.to_vec();
        body.extend_from_slice(&[0u8; 9]);
        let e = decode_request(
            &Bytes::from(body),
            Some(header.len()),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not claimed"), "{e}");
    }

    #[test]
    fn response_mixes_binary_and_json() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: vec![
                Tensor::new("a", vec![1], TensorData::Fp32(vec![1.5])).unwrap(),
                Tensor::new("b", vec![1], TensorData::Int64(vec![3])).unwrap(),
            ],
        };
        let requested = vec![
            RequestedOutput {
                name: "a".into(),
                binary: true,
            },
            RequestedOutput {
                name: "b".into(),
                binary: false,
            },
        ];
        let enc = encode_response(&resp, &requested, false).unwrap();
        let n = enc.header_len.unwrap();
        let json: Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 4);
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([3]));
        assert_eq!(&enc.body[n..], &1.5f32.to_le_bytes());
        let enc = encode_response(&resp, &[], false).unwrap();
        assert!(enc.header_len.is_none());
    }
}
