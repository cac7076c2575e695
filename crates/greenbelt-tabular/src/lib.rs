//! A native engine for tabular ONNX models.
//!
//! Runs the ONNX-ML operators that scikit-learn, XGBoost and LightGBM exports
//! use — tree ensembles, linear models, scalers, imputers, encoders — plus the
//! few standard operators around them, with ONNX Runtime's exact semantics
//! (post-transforms, base values, missing-value tracks, binary-classifier
//! label rules, class labels of every type). It reads the model with its own
//! protobuf messages and needs no native library.
//!
//! A graph with any other operator fails to load with
//! [`EngineError::Unsupported`], naming the operator, so a caller can fall
//! back to a general runtime.

use std::path::Path;

use greenbelt_core::{DataType, Signature, Tensor, TensorData};

mod attrs;
pub mod error;
mod graph;
mod num;
mod ops;
mod proto;
mod value;

pub use error::EngineError;
pub use graph::operators;
pub use ops::SUPPORTED;

/// A loaded model.
pub struct NativeModel {
    graph: graph::Graph,
}

impl NativeModel {
    /// Load the ONNX model at `path`.
    pub fn load(path: &Path) -> Result<NativeModel, EngineError> {
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::load(format!("cannot read {}: {e}", path.display())))?;
        NativeModel::from_bytes(&bytes)
    }

    /// Load a model from its serialized bytes. Besides building every node,
    /// this runs the graph once on a one-row probe input (zeros, empty
    /// strings), so that a graph whose types or shapes the engine cannot
    /// follow is refused at load, not on the first request.
    pub fn from_bytes(bytes: &[u8]) -> Result<NativeModel, EngineError> {
        let graph = graph::Graph::load(bytes)?;
        let model = NativeModel { graph };
        let probe = model.probe_inputs();
        if let Err(e) = model.graph.run(&probe) {
            return Err(EngineError::Unsupported {
                op: "graph".into(),
                node: String::new(),
                why: format!("does not run on a one-row probe input: {e}"),
            });
        }
        Ok(model)
    }

    pub fn signature(&self) -> &Signature {
        self.graph.signature()
    }

    /// `domain:op` of every node, in graph order.
    pub fn operators(&self) -> &[String] {
        self.graph.operators()
    }

    /// Run the model on `inputs` (matched by name). Outputs come in the
    /// signature's order; a ZipMap output comes dense, `[N, classes]` FP32,
    /// with the classes in sorted order.
    pub fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        self.graph.run(inputs)
    }

    fn probe_inputs(&self) -> Vec<Tensor> {
        self.signature()
            .inputs
            .iter()
            .map(|s| {
                let shape: Vec<i64> = s
                    .shape
                    .iter()
                    .map(|d| if *d < 0 { 1 } else { *d })
                    .collect();
                let n: usize = shape.iter().map(|d| *d as usize).product();
                let data = match s.datatype {
                    DataType::Bytes => TensorData::Bytes(vec![bytes::Bytes::new(); n]),
                    dt => zeros(dt, n),
                };
                Tensor {
                    name: s.name.clone(),
                    shape,
                    data,
                }
            })
            .collect()
    }
}

fn zeros(dt: DataType, n: usize) -> TensorData {
    match dt {
        DataType::Bool => TensorData::Bool(vec![false; n]),
        DataType::Uint8 => TensorData::Uint8(vec![0; n]),
        DataType::Uint16 => TensorData::Uint16(vec![0; n]),
        DataType::Uint32 => TensorData::Uint32(vec![0; n]),
        DataType::Uint64 => TensorData::Uint64(vec![0; n]),
        DataType::Int8 => TensorData::Int8(vec![0; n]),
        DataType::Int16 => TensorData::Int16(vec![0; n]),
        DataType::Int32 => TensorData::Int32(vec![0; n]),
        DataType::Int64 => TensorData::Int64(vec![0; n]),
        DataType::Fp16 => TensorData::Fp16(vec![half::f16::ZERO; n]),
        DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
        DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
        DataType::Bytes => TensorData::Bytes(vec![bytes::Bytes::new(); n]),
    }
}
