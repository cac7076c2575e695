//! `[limits]` in greenbelt.toml: how much one inference request may make the
//! server build while decoding it. Decoding checks these as it goes (REST
//! JSON is decoded straight into typed tensors; a gRPC `ModelInferRequest`
//! is scanned on the wire before prost allocates), so a hostile body costs
//! at most a small multiple of its size. Going over a limit is a 413 /
//! `RESOURCE_EXHAUSTED` that names the setting.
//!
//! This module owns the settings and their validation; the checks live in
//! `greenbelt_core::limits` (REST and raw codecs) and `grpc::wire`.

use serde::{Deserialize, Serialize};

pub use greenbelt_core::limits::DecodeLimits;

/// The `[limits]` section. Defaults accept any request the default
/// `[server] max_request_bytes` (64 MiB) admits in a sensible encoding; a
/// request decodes to at most `max_decoded_bytes` of tensors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "LimitsFile")]
// The file's keys are these fields (`LimitsFile` only defers validation).
#[schemars(!try_from, default, deny_unknown_fields)]
pub struct Limits {
    /// Input tensors in one request (default 1024: far above any model's
    /// signature; each costs a few hundred bytes before its data).
    pub max_inputs: usize,
    /// Requested outputs in one request (default 1024).
    pub max_outputs: usize,
    /// Entries in any one `parameters` map (default 64; the protocol's
    /// parameters are a handful).
    pub max_parameters: usize,
    /// Dimensions of one tensor's shape (default 32).
    pub max_shape_dims: usize,
    /// Tensor elements over all inputs (default 64 Mi: a 64 MiB body of
    /// UINT8 in binary form).
    pub max_elements: usize,
    /// BYTES elements over all inputs (default 1 Mi). Each costs a 48-byte
    /// handle besides its payload, so they are bounded apart.
    pub max_bytes_elements: usize,
    /// Bytes of decoded tensors in one request (default 64 MiB, the default
    /// body limit): elements times their size, BYTES elements 48 bytes plus
    /// their payload. Raise it with `[server] max_request_bytes`.
    pub max_decoded_bytes: usize,
    /// Nesting depth of a JSON `data` array (default 32).
    pub max_nesting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_decode(DecodeLimits::default())
    }
}

impl Limits {
    fn from_decode(d: DecodeLimits) -> Self {
        Limits {
            max_inputs: d.max_inputs,
            max_outputs: d.max_outputs,
            max_parameters: d.max_parameters,
            max_shape_dims: d.max_shape_dims,
            max_elements: d.max_elements,
            max_bytes_elements: d.max_bytes_elements,
            max_decoded_bytes: d.max_decoded_bytes,
            max_nesting: d.max_nesting,
        }
    }

    /// The bounds the codecs check.
    pub fn decode(&self) -> DecodeLimits {
        DecodeLimits {
            max_inputs: self.max_inputs,
            max_outputs: self.max_outputs,
            max_parameters: self.max_parameters,
            max_shape_dims: self.max_shape_dims,
            max_elements: self.max_elements,
            max_bytes_elements: self.max_bytes_elements,
            max_decoded_bytes: self.max_decoded_bytes,
            max_nesting: self.max_nesting,
        }
    }

    /// Every limit at least 1; `max_nesting` at most 128 (the JSON
    /// parser's own recursion bound).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("max_inputs", self.max_inputs),
            ("max_outputs", self.max_outputs),
            ("max_parameters", self.max_parameters),
            ("max_shape_dims", self.max_shape_dims),
            ("max_elements", self.max_elements),
            ("max_bytes_elements", self.max_bytes_elements),
            ("max_decoded_bytes", self.max_decoded_bytes),
            ("max_nesting", self.max_nesting),
        ] {
            if v == 0 {
                return Err(format!("[limits] {name} must be > 0"));
            }
        }
        if self.max_nesting > 128 {
            return Err(format!(
                "[limits] max_nesting = {} is over 128, the JSON parser's own bound",
                self.max_nesting
            ));
        }
        Ok(())
    }
}

/// `[limits]` as written, before [`Limits::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsFile {
    max_inputs: usize,
    max_outputs: usize,
    max_parameters: usize,
    max_shape_dims: usize,
    max_elements: usize,
    max_bytes_elements: usize,
    max_decoded_bytes: usize,
    max_nesting: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        let d = Limits::default();
        LimitsFile {
            max_inputs: d.max_inputs,
            max_outputs: d.max_outputs,
            max_parameters: d.max_parameters,
            max_shape_dims: d.max_shape_dims,
            max_elements: d.max_elements,
            max_bytes_elements: d.max_bytes_elements,
            max_decoded_bytes: d.max_decoded_bytes,
            max_nesting: d.max_nesting,
        }
    }
}

impl TryFrom<LimitsFile> for Limits {
    type Error = String;

    fn try_from(f: LimitsFile) -> Result<Self, String> {
        let l = Limits {
            max_inputs: f.max_inputs,
            max_outputs: f.max_outputs,
            max_parameters: f.max_parameters,
            max_shape_dims: f.max_shape_dims,
            max_elements: f.max_elements,
            max_bytes_elements: f.max_bytes_elements,
            max_decoded_bytes: f.max_decoded_bytes,
            max_nesting: f.max_nesting,
        };
        l.validate()?;
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_str(text, Path::new("greenbelt.toml"), std::iter::empty())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse("").unwrap();
        assert_eq!(c.limits.decode(), super::DecodeLimits::default());
        let c = parse("[limits]\nmax_inputs = 3\n").unwrap();
        assert_eq!(c.limits.decode().max_inputs, 3);
        assert_eq!(c.limits.max_outputs, 1024);
        let c = Config::from_toml_str(
            "",
            Path::new("greenbelt.toml"),
            [("GREENBELT__LIMITS__MAX_OUTPUTS".into(), "9".into())],
        )
        .unwrap();
        assert_eq!(c.limits.max_outputs, 9);
    }

    #[test]
    fn typos_and_zeros_name_the_setting() {
        let e = parse("[limits]\nmax_input = 3\n").unwrap_err();
        assert!(e.contains("max_input") && e.contains("line 2"), "{e}");
        let e = parse("[limits]\nmax_elements = 0\n").unwrap_err();
        assert!(e.contains("[limits] max_elements must be > 0"), "{e}");
        let e = parse("[limits]\nmax_nesting = 1000\n").unwrap_err();
        assert!(e.contains("max_nesting = 1000"), "{e}");
    }
}
