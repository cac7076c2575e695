//! The native tabular engine ([`greenbelt_tabular`]) behind the [`Model`] trait.

use std::path::Path;

use greenbelt_core::{Signature, Tensor};
use greenbelt_tabular::EngineError;

use crate::{Backend, Model, RuntimeError};

pub struct NativeModel(greenbelt_tabular::NativeModel);

impl NativeModel {
    pub fn load(path: &Path) -> Result<NativeModel, RuntimeError> {
        greenbelt_tabular::NativeModel::load(path)
            .map(NativeModel)
            .map_err(|e| match e {
                EngineError::Unsupported { op, why, .. } => RuntimeError::UnsupportedOperator {
                    path: path.to_path_buf(),
                    operator: op,
                    remedy: format!("{why}; use backend = \"onnxruntime\" or \"auto\""),
                },
                other => RuntimeError::Load {
                    path: path.to_path_buf(),
                    reason: other.to_string(),
                },
            })
    }

    /// `domain:op` of every node.
    pub fn operators(&self) -> &[String] {
        self.0.operators()
    }
}

impl Model for NativeModel {
    fn signature(&self) -> &Signature {
        self.0.signature()
    }

    fn backend(&self) -> Backend {
        Backend::Native
    }

    fn inline_safe(&self) -> bool {
        true
    }

    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.0.infer(inputs).map_err(|e| match e {
            EngineError::Input(m) => RuntimeError::Input(m),
            other => RuntimeError::Inference(other.to_string()),
        })
    }
}
