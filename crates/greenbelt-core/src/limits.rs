//! Bounds on what decoding one request may build, checked while decoding
//! (before the memory is allocated), so a hostile body costs at most a small
//! multiple of its size. The settings live in greenbelt-serve's `[limits]`
//! section; errors name that section so the fix is one line of config.

use crate::datatype::DataType;
use crate::error::CoreError;

/// Per-request decode bounds. Counts are totals over the whole request
/// unless the name says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Input tensors in one request.
    pub max_inputs: usize,
    /// Requested outputs in one request.
    pub max_outputs: usize,
    /// Entries in any one `parameters` map (request, input or output).
    pub max_parameters: usize,
    /// Dimensions in one tensor's shape.
    pub max_shape_dims: usize,
    /// Tensor elements over all inputs.
    pub max_elements: usize,
    /// BYTES (string) elements over all inputs.
    pub max_bytes_elements: usize,
    /// Memory the decoded tensors may take: elements times their in-memory
    /// size, and for BYTES elements a fixed handle overhead plus the payload.
    pub max_decoded_bytes: usize,
    /// Nesting depth of a JSON `data` array.
    pub max_nesting: usize,
}

impl DecodeLimits {
    /// No bound beyond what the body itself holds (for trusted inputs such
    /// as test fixtures).
    pub const UNLIMITED: DecodeLimits = DecodeLimits {
        max_inputs: usize::MAX,
        max_outputs: usize::MAX,
        max_parameters: usize::MAX,
        max_shape_dims: usize::MAX,
        max_elements: usize::MAX,
        max_bytes_elements: usize::MAX,
        max_decoded_bytes: usize::MAX,
        max_nesting: 32,
    };

    /// `n` items of `what` against `max`, the setting `[limits] setting`.
    pub fn check(what: &str, n: usize, max: usize, setting: &str) -> Result<(), CoreError> {
        if n > max {
            return Err(exceeded(setting, max, &format!("{what}: {n}")));
        }
        Ok(())
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_inputs: 1024,
            max_outputs: 1024,
            max_parameters: 64,
            max_shape_dims: 32,
            max_elements: 64 * 1024 * 1024,
            max_bytes_elements: 1024 * 1024,
            max_decoded_bytes: 64 * 1024 * 1024,
            max_nesting: 32,
        }
    }
}

/// Memory charged for one BYTES element besides its payload: the `Bytes`
/// handle (32 bytes) and an allocator's header for a non-empty payload.
pub const BYTES_ELEMENT_OVERHEAD: usize = 48;

/// The error for a request over a limit: what went over, the limit, and the
/// setting to raise.
pub fn exceeded(setting: &str, max: usize, what: &str) -> CoreError {
    CoreError::LimitExceeded(format!(
        "{what}, over the limit of {max}; send a smaller request or raise [limits] {setting}"
    ))
}

/// Running totals for one request, charged as tensors are decoded.
#[derive(Debug)]
pub struct Budget<'l> {
    limits: &'l DecodeLimits,
    elements: usize,
    bytes_elements: usize,
    decoded_bytes: usize,
}

impl<'l> Budget<'l> {
    pub fn new(limits: &'l DecodeLimits) -> Budget<'l> {
        Budget {
            limits,
            elements: 0,
            bytes_elements: 0,
            decoded_bytes: 0,
        }
    }

    pub fn limits(&self) -> &DecodeLimits {
        self.limits
    }

    /// Charge the `count` elements a shape declares for input `name`,
    /// before any is decoded (BYTES payloads are charged one by one with
    /// [`Budget::charge_payload`]).
    pub fn charge_elements(
        &mut self,
        name: &str,
        datatype: DataType,
        count: usize,
    ) -> Result<(), CoreError> {
        let l = self.limits;
        self.elements = self.elements.saturating_add(count);
        if self.elements > l.max_elements {
            return Err(exceeded(
                "max_elements",
                l.max_elements,
                &format!(
                    "input \"{name}\" brings the request to {} tensor elements",
                    self.elements
                ),
            ));
        }
        let each = match datatype.element_size() {
            Some(size) => size,
            None => {
                self.bytes_elements = self.bytes_elements.saturating_add(count);
                if self.bytes_elements > l.max_bytes_elements {
                    return Err(exceeded(
                        "max_bytes_elements",
                        l.max_bytes_elements,
                        &format!(
                            "input \"{name}\" brings the request to {} BYTES elements",
                            self.bytes_elements
                        ),
                    ));
                }
                BYTES_ELEMENT_OVERHEAD
            }
        };
        self.add_decoded(name, count.saturating_mul(each))
    }

    /// Charge `len` payload bytes of one BYTES element of input `name`.
    pub fn charge_payload(&mut self, name: &str, len: usize) -> Result<(), CoreError> {
        self.add_decoded(name, len)
    }

    fn add_decoded(&mut self, name: &str, n: usize) -> Result<(), CoreError> {
        self.decoded_bytes = self.decoded_bytes.saturating_add(n);
        if self.decoded_bytes > self.limits.max_decoded_bytes {
            return Err(exceeded(
                "max_decoded_bytes",
                self.limits.max_decoded_bytes,
                &format!(
                    "input \"{name}\" brings the decoded request to {} bytes",
                    self.decoded_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_each_limit_and_name_the_setting() {
        let limits = DecodeLimits {
            max_elements: 10,
            max_bytes_elements: 3,
            max_decoded_bytes: 1000,
            ..DecodeLimits::default()
        };
        let mut b = Budget::new(&limits);
        b.charge_elements("x", DataType::Fp32, 6).unwrap();
        let e = b.charge_elements("y", DataType::Fp32, 5).unwrap_err();
        assert!(matches!(e, CoreError::LimitExceeded(_)));
        assert!(
            e.to_string().contains("[limits] max_elements") && e.to_string().contains("\"y\""),
            "{e}"
        );

        let mut b = Budget::new(&limits);
        let e = b.charge_elements("s", DataType::Bytes, 4).unwrap_err();
        assert!(e.to_string().contains("max_bytes_elements"), "{e}");

        let mut b = Budget::new(&limits);
        b.charge_elements("s", DataType::Bytes, 2).unwrap();
        b.charge_payload("s", 900).unwrap();
        let e = b.charge_payload("s", 100).unwrap_err();
        assert!(e.to_string().contains("max_decoded_bytes"), "{e}");

        let mut b = Budget::new(&DecodeLimits::UNLIMITED);
        b.charge_elements("x", DataType::Fp64, usize::MAX).unwrap();
        b.charge_elements("x", DataType::Fp64, usize::MAX).unwrap();
    }

    #[test]
    fn check_names_the_count() {
        let e = DecodeLimits::check("inputs", 5, 4, "max_inputs").unwrap_err();
        assert!(
            e.to_string().contains("inputs: 5, over the limit of 4")
                && e.to_string().contains("[limits] max_inputs"),
            "{e}"
        );
        DecodeLimits::check("inputs", 4, 4, "max_inputs").unwrap();
    }
}
