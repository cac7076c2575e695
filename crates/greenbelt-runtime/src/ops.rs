//! Operator inspection of an ONNX file, used by `backend = "auto"` to decide
//! whether tract may run a model when ONNX Runtime is not available.
//!
//! Measured (tract-onnx 0.23.9 against onnxruntime): exact on linear models and
//! MLPs; fails to load ZipMap, Scaler, TreeEnsembleRegressor and SVM; wrong
//! labels for binary TreeEnsembleClassifier. So in the `ai.onnx.ml` domain only
//! the linear operators are trusted; the standard domain is left to tract's own
//! loader, which names any operator it lacks.

use std::path::Path;

use crate::error::RuntimeError;

/// `ai.onnx.ml` operators tract was measured to run exactly.
const TRACT_TRUSTED_ML_OPS: &[&str] = &["LinearClassifier", "LinearRegressor", "Normalizer"];

/// The operators of a graph, by domain.
#[derive(Debug, Default, Clone)]
pub struct OpReport {
    /// (domain, op_type) of every node of the main graph, in graph order.
    pub ops: Vec<(String, String)>,
}

impl OpReport {
    /// The first operator tract must not be trusted with, if any.
    pub fn first_unsafe_for_tract(&self) -> Option<&str> {
        self.ops
            .iter()
            .find(|(domain, op)| {
                domain == "ai.onnx.ml" && !TRACT_TRUSTED_ML_OPS.contains(&op.as_str())
            })
            .map(|(_, op)| op.as_str())
    }
}

/// Read the operators of the ONNX model at `path`.
#[cfg(feature = "tract")]
pub fn inspect(path: &Path) -> Result<OpReport, RuntimeError> {
    use tract_onnx::prelude::Framework;
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| RuntimeError::Load {
            path: path.to_path_buf(),
            reason: format!("not a readable ONNX model: {e}"),
        })?;
    let ops = proto
        .graph
        .map(|g| g.node.into_iter().map(|n| (n.domain, n.op_type)).collect())
        .unwrap_or_default();
    Ok(OpReport { ops })
}

#[cfg(not(feature = "tract"))]
pub fn inspect(_path: &Path) -> Result<OpReport, RuntimeError> {
    Ok(OpReport::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_and_zipmap_are_unsafe_linear_is_not() {
        let r = OpReport {
            ops: vec![
                ("ai.onnx.ml".into(), "LinearClassifier".into()),
                ("".into(), "Cast".into()),
            ],
        };
        assert_eq!(r.first_unsafe_for_tract(), None);
        let r = OpReport {
            ops: vec![
                ("".into(), "Cast".into()),
                ("ai.onnx.ml".into(), "TreeEnsembleClassifier".into()),
                ("ai.onnx.ml".into(), "ZipMap".into()),
            ],
        };
        assert_eq!(r.first_unsafe_for_tract(), Some("TreeEnsembleClassifier"));
    }
}
