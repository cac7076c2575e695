//! Triton's `config.pbtxt` as a model's configuration, so a Triton model
//! repository serves as it is. The file is protobuf text format
//! (`ModelConfig` of Triton's model_config.proto); this reads the subset
//! of the format such files use (fields, nested messages, lists, strings,
//! numbers, enum names, `#` comments) into a tree and maps the settings
//! Greenbelt has:
//!
//! | Triton | Greenbelt (`config.toml`) |
//! | --- | --- |
//! | `name` | must equal the model's directory, as in Triton |
//! | `platform: "onnxruntime_onnx"` / `backend: "onnxruntime"` | ONNX models (`backend = "auto"`); any other platform is refused |
//! | `default_model_filename` | `filename` |
//! | `max_batch_size` (> 0) | the first dimension of every input and output is the batch (`-1`) |
//! | `dynamic_batching { max_queue_delay_microseconds, preferred_batch_size, default_queue_policy { max_queue_size } }` | `[batching]` with `max_batch_size` |
//! | `instance_group [{ count, kind: KIND_CPU / KIND_GPU, gpus }]` | `instances` (the counts summed), `device` |
//! | `version_policy { latest { num_versions } / all {} / specific { versions } }` | `version_policy` |
//! | `input` / `output` `{ name, data_type, dims }` | signature overrides |
//!
//! Settings that change what a request means (`sequence_batching`,
//! `ensemble_scheduling`, `reshape`) are refused at load; the rest that
//! Greenbelt does not have (`optimization`, `model_warmup`, `parameters`,
//! `response_cache`, ...) are named in a warning at load and ignored.

use greenbelt_core::{DataType, TensorSpec};
use greenbelt_runtime::Device;

use crate::batcher::BatchingConfig;
use crate::repository::{ModelConfig, VersionPolicy};

/// A value in protobuf text format.
#[derive(Debug, Clone, PartialEq)]
pub enum Pb {
    /// A number, enum name or `true`/`false`, as written.
    Scalar(String),
    Str(String),
    Message(Vec<(String, Pb)>),
}

impl Pb {
    /// The fields named `key` of a message (a repeated field gives several).
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Pb> + 'a {
        let fields: &[(String, Pb)] = match self {
            Pb::Message(f) => f,
            _ => &[],
        };
        fields.iter().filter(move |(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get(&self, key: &str) -> Option<&Pb> {
        match self {
            Pb::Message(f) => f.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Pb::Scalar(s) | Pb::Str(s) => Some(s),
            Pb::Message(_) => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Pb::Message(f) => f.iter().map(|(k, _)| k.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Longest nesting accepted (Triton's configs nest four or five deep).
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn line(&self) -> usize {
        1 + self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    fn err(&self, what: &str) -> String {
        format!("line {}: {what}", self.line())
    }

    fn skip(&mut self) {
        while self.i < self.s.len() {
            match self.s[self.i] {
                b' ' | b'\t' | b'\r' | b'\n' => self.i += 1,
                b'#' => {
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        self.skip();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b'.'))
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err("expected a field name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn message(&mut self, close: Option<u8>, depth: usize) -> Result<Pb, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested more than 32 deep"));
        }
        let mut fields = Vec::new();
        loop {
            match (self.peek(), close) {
                (None, None) => return Ok(Pb::Message(fields)),
                (None, Some(c)) => return Err(self.err(&format!("missing '{}'", c as char))),
                (Some(c), Some(want)) if c == want => {
                    self.i += 1;
                    return Ok(Pb::Message(fields));
                }
                _ => {}
            }
            let key = self.ident()?;
            let colon = self.eat(b':');
            if self.eat(b'[') {
                loop {
                    if self.eat(b']') {
                        break;
                    }
                    let v = self.value(depth)?;
                    fields.push((key.clone(), v));
                    if !self.eat(b',') {
                        if self.eat(b']') {
                            break;
                        }
                        return Err(
                            self.err(&format!("in the list of \"{key}\": expected ',' or ']'"))
                        );
                    }
                }
            } else if !colon && !matches!(self.peek(), Some(b'{') | Some(b'<')) {
                return Err(self.err(&format!("expected ':' or '{{' after \"{key}\"")));
            } else {
                let v = self.value(depth)?;
                fields.push((key, v));
            }
            // Fields may be separated by ',' or ';'.
            if !self.eat(b',') {
                self.eat(b';');
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Pb, String> {
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                self.message(Some(b'}'), depth + 1)
            }
            Some(b'<') => {
                self.i += 1;
                self.message(Some(b'>'), depth + 1)
            }
            Some(q @ (b'"' | b'\'')) => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    let Some(&c) = self.s.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    match c {
                        c if c == q => break,
                        b'\\' => {
                            let Some(&e) = self.s.get(self.i) else {
                                return Err(self.err("unterminated string"));
                            };
                            self.i += 1;
                            out.push(match e {
                                b'n' => b'\n',
                                b't' => b'\t',
                                other => other,
                            });
                        }
                        b'\n' => return Err(self.err("a string runs past the end of its line")),
                        c => out.push(c),
                    }
                }
                // Adjacent strings concatenate.
                let mut s = String::from_utf8_lossy(&out).into_owned();
                if matches!(self.peek(), Some(b'"' | b'\''))
                    && let Pb::Str(more) = self.value(depth)?
                {
                    s.push_str(&more);
                }
                Ok(Pb::Str(s))
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric()
                        || matches!(self.s[self.i], b'_' | b'.' | b'-' | b'+'))
                {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(self.err("expected a value"));
                }
                Ok(Pb::Scalar(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            None => Err(self.err("expected a value, found the end of the file")),
        }
    }
}

/// Parse protobuf text format into a message.
pub fn parse(text: &str) -> Result<Pb, String> {
    Parser {
        s: text.as_bytes(),
        i: 0,
    }
    .message(None, 0)
}

fn int(v: &Pb, what: &str) -> Result<i64, String> {
    v.text()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| format!("{what} must be a whole number, got {v:?}"))
}

fn datatype(v: &Pb, what: &str) -> Result<DataType, String> {
    let t = v.text().unwrap_or_default();
    Ok(match t {
        "TYPE_BOOL" => DataType::Bool,
        "TYPE_UINT8" => DataType::Uint8,
        "TYPE_UINT16" => DataType::Uint16,
        "TYPE_UINT32" => DataType::Uint32,
        "TYPE_UINT64" => DataType::Uint64,
        "TYPE_INT8" => DataType::Int8,
        "TYPE_INT16" => DataType::Int16,
        "TYPE_INT32" => DataType::Int32,
        "TYPE_INT64" => DataType::Int64,
        "TYPE_FP16" => DataType::Fp16,
        "TYPE_FP32" => DataType::Fp32,
        "TYPE_FP64" => DataType::Fp64,
        "TYPE_STRING" => DataType::Bytes,
        other => {
            return Err(format!(
                "{what}: data_type {other} is not supported (TYPE_BOOL, TYPE_[U]INT8..64, TYPE_FP16/32/64, TYPE_STRING)"
            ));
        }
    })
}

/// Settings that change what a request means: refused.
const REFUSED: &[&str] = &["sequence_batching", "ensemble_scheduling"];
/// What this module maps.
const KNOWN: &[&str] = &[
    "name",
    "platform",
    "backend",
    "default_model_filename",
    "max_batch_size",
    "dynamic_batching",
    "instance_group",
    "version_policy",
    "input",
    "output",
];

/// A Triton `config.pbtxt` as a [`ModelConfig`] for the model in directory
/// `dir_name`, and the settings it ignores (named, for the load's
/// warning). Errors name the setting and what to write instead.
pub fn model_config(text: &str, dir_name: &str) -> Result<(ModelConfig, Vec<String>), String> {
    let pb = parse(text)?;
    let mut ignored = Vec::new();
    for key in pb.keys() {
        if REFUSED.contains(&key) {
            return Err(format!(
                "{key} is not supported: Greenbelt serves stateless single models (remove it, or serve this model with Triton)"
            ));
        }
        if !KNOWN.contains(&key) && !ignored.iter().any(|k| k == key) {
            ignored.push(key.to_string());
        }
    }
    let mut c = ModelConfig::default();
    if let Some(name) = pb.get("name").and_then(Pb::text)
        && name != dir_name
    {
        return Err(format!(
            "name \"{name}\" differs from the model's directory \"{dir_name}\" (Triton requires them equal)"
        ));
    }
    for key in ["platform", "backend"] {
        if let Some(p) = pb.get(key).and_then(Pb::text)
            && !matches!(p, "onnxruntime_onnx" | "onnxruntime")
        {
            return Err(format!(
                "{key} \"{p}\" is not supported: Greenbelt serves ONNX models (platform: \"onnxruntime_onnx\")"
            ));
        }
    }
    if let Some(f) = pb.get("default_model_filename").and_then(Pb::text) {
        c.filename = f.to_string();
    }
    let max_batch = match pb.get("max_batch_size") {
        Some(v) => int(v, "max_batch_size")?,
        None => 0,
    };
    if max_batch < 0 {
        return Err(format!("max_batch_size must be >= 0, got {max_batch}"));
    }
    if let Some(db) = pb.get("dynamic_batching") {
        if max_batch == 0 {
            return Err(
                "dynamic_batching needs max_batch_size > 0 (the most rows one call takes)".into(),
            );
        }
        let mut b = BatchingConfig {
            max_batch_size: max_batch as usize,
            // Triton's default: dispatch what is queued at once.
            max_queue_delay_us: 0,
            ..BatchingConfig::default()
        };
        if let Some(d) = db.get("max_queue_delay_microseconds") {
            b.max_queue_delay_us = int(d, "dynamic_batching.max_queue_delay_microseconds")?
                .try_into()
                .map_err(|_| "dynamic_batching.max_queue_delay_microseconds must be >= 0")?;
        }
        for p in db.all("preferred_batch_size") {
            let n = int(p, "dynamic_batching.preferred_batch_size")?;
            b.preferred_batch_sizes.push(
                n.try_into()
                    .map_err(|_| "dynamic_batching.preferred_batch_size must be >= 1")?,
            );
        }
        if let Some(q) = db
            .get("default_queue_policy")
            .and_then(|p| p.get("max_queue_size"))
        {
            let n = int(q, "dynamic_batching.default_queue_policy.max_queue_size")?;
            // Triton: 0 = unbounded; Greenbelt keeps its bound.
            if n > 0 {
                b.max_queue_size = n as usize;
            }
        }
        for key in db.keys() {
            if !matches!(
                key,
                "max_queue_delay_microseconds" | "preferred_batch_size" | "default_queue_policy"
            ) {
                ignored.push(format!("dynamic_batching.{key}"));
            }
        }
        b.validate()?;
        c.batching = Some(b);
    }
    let mut instances = 0i64;
    for g in pb.all("instance_group") {
        instances += match g.get("count") {
            Some(n) => int(n, "instance_group.count")?,
            None => 1,
        };
        match g.get("kind").and_then(Pb::text) {
            None | Some("KIND_CPU") | Some("KIND_AUTO") => {}
            Some("KIND_GPU") => {
                let gpu = match g.get("gpus") {
                    Some(n) => int(n, "instance_group.gpus")?,
                    None => 0,
                };
                c.device = Device::Cuda(
                    gpu.try_into()
                        .map_err(|_| "instance_group.gpus must be a device ordinal")?,
                );
            }
            Some(other) => {
                return Err(format!(
                    "instance_group.kind {other} is not supported (KIND_CPU or KIND_GPU)"
                ));
            }
        }
    }
    if instances > 0 {
        c.instances = instances as usize;
    }
    if let Some(vp) = pb.get("version_policy") {
        c.version_policy = if let Some(l) = vp.get("latest") {
            let n = match l.get("num_versions") {
                Some(n) => int(n, "version_policy.latest.num_versions")?,
                None => 1,
            };
            VersionPolicy::Latest(n.max(0) as usize)
        } else if vp.get("all").is_some() {
            VersionPolicy::All
        } else if let Some(s) = vp.get("specific") {
            let mut versions = Vec::new();
            for v in s.all("versions") {
                let n = int(v, "version_policy.specific.versions")?;
                versions.push(
                    n.try_into()
                        .map_err(|_| "version_policy.specific.versions must be >= 1")?,
                );
            }
            VersionPolicy::Specific(versions)
        } else {
            return Err("version_policy: write latest { num_versions: N }, all {} or specific { versions: [...] }".into());
        };
    }
    for (key, out) in [("input", &mut c.inputs), ("output", &mut c.outputs)] {
        for t in pb.all(key) {
            let name = t
                .get("name")
                .and_then(Pb::text)
                .ok_or_else(|| format!("an {key} has no name"))?;
            let what = format!("{key} \"{name}\"");
            if t.get("reshape").is_some() {
                return Err(format!(
                    "{what}: reshape is not supported (export the model with the shape clients send)"
                ));
            }
            let dt = t
                .get("data_type")
                .ok_or_else(|| format!("{what} has no data_type"))?;
            let mut shape: Vec<i64> = Vec::new();
            if max_batch > 0 {
                shape.push(-1);
            }
            for d in t.all("dims") {
                shape.push(int(d, &format!("{what}: dims"))?);
            }
            out.push(TensorSpec::new(name, datatype(dt, &what)?, shape));
        }
    }
    Ok((c, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENSENET_LIKE: &str = r#"
# A config as Triton's docs write them.
name: "fraud"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 20 ]
  }
]
output [
  { name: "probabilities", data_type: TYPE_FP32, dims: [ 2 ] },
  { name: "label" data_type: TYPE_INT64 dims: [ 1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 200
  default_queue_policy { max_queue_size: 512 }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
version_policy: { latest: { num_versions: 2 } }
model_warmup [ { name: "w" batch_size: 1 } ]
optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
"#;

    #[test]
    fn a_triton_config_maps_to_a_model_config() {
        let (c, ignored) = model_config(DENSENET_LIKE, "fraud").unwrap();
        let b = c.batching.as_ref().unwrap();
        assert_eq!(b.max_batch_size, 64);
        assert_eq!(b.max_queue_delay_us, 200);
        assert_eq!(b.preferred_batch_sizes, vec![8, 16]);
        assert_eq!(b.max_queue_size, 512);
        assert_eq!(c.instances, 2);
        assert_eq!(c.version_policy, VersionPolicy::Latest(2));
        assert_eq!(c.inputs[0].shape, vec![-1, 20]);
        assert_eq!(c.inputs[0].datatype, DataType::Fp32);
        assert_eq!(c.outputs[1].name, "label");
        assert_eq!(c.outputs[1].datatype, DataType::Int64);
        assert_eq!(ignored, vec!["model_warmup", "optimization"]);
    }

    #[test]
    fn gpu_groups_specific_versions_and_no_batching() {
        let (c, _) = model_config(
            "instance_group [{ kind: KIND_GPU, gpus: [1] count: 3 }]\nversion_policy { specific { versions: [1, 3] } }\ninput { name: 'x' data_type: TYPE_STRING dims: [-1] }",
            "m",
        )
        .unwrap();
        assert_eq!(c.device, Device::Cuda(1));
        assert_eq!(c.instances, 3);
        assert_eq!(c.version_policy, VersionPolicy::Specific(vec![1, 3]));
        assert!(c.batching.is_none());
        assert_eq!(c.inputs[0].shape, vec![-1], "no batch dimension added");
        assert_eq!(c.inputs[0].datatype, DataType::Bytes);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_it() {
        for (text, needle) in [
            ("name: \"other\"", "differs from the model's directory"),
            (
                "platform: \"tensorflow_savedmodel\"",
                "Greenbelt serves ONNX",
            ),
            (
                "sequence_batching { }",
                "sequence_batching is not supported",
            ),
            ("dynamic_batching { }", "needs max_batch_size > 0"),
            (
                "input { name: \"x\" data_type: TYPE_FP32 dims: [4] reshape { shape: [2, 2] } }",
                "reshape is not supported",
            ),
            (
                "input { name: \"x\" data_type: TYPE_BF16 dims: [4] }",
                "TYPE_BF16",
            ),
            ("max_batch_size: \"lots\"", "whole number"),
            ("input [ { name: \"x\" }", "line 1"),
            ("input { name: \"x", "unterminated string"),
            ("max_batch_size 4", "expected ':'"),
        ] {
            let e = model_config(text, "m").unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        // Deep nesting is an error, not a stack overflow.
        let deep = "a { ".repeat(100_000);
        assert!(parse(&deep).unwrap_err().contains("nested"));
    }
}
