//! Model signatures: the named, typed, shaped inputs and outputs of a model.

use serde::{Deserialize, Serialize};

use crate::datatype::DataType;
use crate::error::CoreError;
use crate::tensor::Tensor;

/// One input or output of a model. A dimension of `-1` is dynamic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The input's or output's name in the graph.
    pub name: String,
    /// The V2 datatype: `BOOL`, `UINT8`..`UINT64`, `INT8`..`INT64`, `FP16`,
    /// `FP32`, `FP64` or `BYTES`.
    pub datatype: DataType,
    /// Dimensions; `-1` is dynamic.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>) -> Self {
        TensorSpec {
            name: name.into(),
            datatype,
            shape,
        }
    }

    /// Whether the first dimension is dynamic, so requests can be batched along it.
    pub fn batchable(&self) -> bool {
        self.shape.first().is_some_and(|d| *d < 0)
    }

    /// Check a tensor against this spec: datatype, rank and every fixed dim.
    pub fn check(&self, tensor: &Tensor) -> Result<(), CoreError> {
        if tensor.datatype() != self.datatype {
            return Err(CoreError::invalid(format!(
                "input \"{}\": datatype is {}, model expects {}",
                self.name,
                tensor.datatype(),
                self.datatype
            )));
        }
        let shape_ok = tensor.shape.len() == self.shape.len()
            && tensor
                .shape
                .iter()
                .zip(&self.shape)
                .all(|(got, want)| *want < 0 || got == want);
        if !shape_ok {
            return Err(CoreError::invalid(format!(
                "input \"{}\": shape is {:?}, model expects {:?} (-1 = any size)",
                self.name, tensor.shape, self.shape
            )));
        }
        Ok(())
    }
}

/// A model's inputs and outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    /// Validate a request's inputs: every model input present exactly once,
    /// no unknown input, each matching its spec.
    pub fn check_inputs(&self, inputs: &[Tensor]) -> Result<(), CoreError> {
        for t in inputs {
            let Some(spec) = self.input(&t.name) else {
                let known: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(CoreError::invalid(format!(
                    "unknown input \"{}\": model inputs are {known:?}",
                    t.name
                )));
            };
            spec.check(t)?;
        }
        for spec in &self.inputs {
            match inputs.iter().filter(|t| t.name == spec.name).count() {
                0 => {
                    return Err(CoreError::invalid(format!(
                        "missing input \"{}\" ({} {:?})",
                        spec.name, spec.datatype, spec.shape
                    )));
                }
                1 => {}
                _ => {
                    return Err(CoreError::invalid(format!(
                        "input \"{}\" is given more than once",
                        spec.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Validate requested output names.
    pub fn check_outputs<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), CoreError> {
        for name in names {
            if self.output(name).is_none() {
                let known: Vec<&str> = self.outputs.iter().map(|s| s.name.as_str()).collect();
                return Err(CoreError::invalid(format!(
                    "unknown output \"{name}\": model outputs are {known:?}"
                )));
            }
        }
        Ok(())
    }

    /// Whether every input and output has a dynamic first dimension, which is
    /// what the batcher needs to merge requests.
    pub fn batchable(&self) -> bool {
        self.inputs.iter().all(TensorSpec::batchable)
            && self.outputs.iter().all(TensorSpec::batchable)
            && !self.inputs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn sig() -> Signature {
        Signature {
            inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, 3])],
            outputs: vec![TensorSpec::new("y", DataType::Fp32, vec![-1])],
        }
    }

    fn t(name: &str, shape: Vec<i64>, n: usize) -> Tensor {
        Tensor::new(name, shape, TensorData::Fp32(vec![0.0; n])).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn accepts_matching_inputs() {
        assert!(sig().check_inputs(&[t("x", vec![2, 3], 6)]).is_ok());
    }

    #[test]
    fn rejects_with_named_messages() {
        let s = sig();
        let e = s.check_inputs(&[t("x", vec![2, 2], 4)]).unwrap_err();
        assert!(
            e.to_string().contains("input \"x\": shape is [2, 2]"),
            "{e}"
        );
        let e = s.check_inputs(&[t("z", vec![1, 3], 3)]).unwrap_err();
        assert!(e.to_string().contains("unknown input \"z\""), "{e}");
        let e = s.check_inputs(&[]).unwrap_err();
        assert!(e.to_string().contains("missing input \"x\""), "{e}");
        let e = s
            .check_inputs(&[t("x", vec![1, 3], 3), t("x", vec![1, 3], 3)])
            .unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        let bad = Tensor::new("x", vec![1, 3], TensorData::Int64(vec![1, 2, 3])).unwrap();
        let e = s.check_inputs(&[bad]).unwrap_err();
        assert!(
            e.to_string()
                .contains("datatype is INT64, model expects FP32"),
            "{e}"
        );
        let e = s.check_outputs(["nope"]).unwrap_err();
        assert!(e.to_string().contains("unknown output \"nope\""), "{e}");
    }
}
