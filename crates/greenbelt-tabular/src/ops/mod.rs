//! Operator kernels and the table that builds them from graph nodes.

use crate::attrs::NodeCtx;
use crate::error::EngineError;
use crate::value::{Value, ValueRef};

pub(crate) mod gemm;
pub mod linear;
pub mod math;
pub mod prep;
pub mod tree;

/// A built node. `run` gets the node's inputs in order (`None` for an omitted
/// optional input) and returns its outputs in order; the error is the reason,
/// which the graph wraps with the node's name.
pub trait Kernel: Send + Sync {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String>;

    /// Whether [`Kernel::run_owned`] can reuse input 0's buffer; the graph
    /// hands input 0 over only to such kernels, and only when no later node
    /// reads it and it is not a graph output.
    fn reuses_input(&self) -> bool {
        false
    }

    /// `run` with input 0 handed over as `x` (`inputs[0]` is `None`), so a
    /// kernel that changes it element by element, or only reshapes it, can
    /// write into its buffer instead of allocating another.
    fn run_owned(&self, x: Value, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let mut all = inputs.to_vec();
        if let Some(first) = all.first_mut() {
            *first = Some(x.as_ref());
        }
        self.run(&all)
    }

    /// Whether the node's single output is always its input 0 unchanged,
    /// given input 0's element type where the graph knows it (Identity; a
    /// Cast to the type it already has). The graph then drops the node and
    /// lets its readers read input 0.
    fn passes_through(&self, _input_elem: Option<i32>) -> bool {
        false
    }
}

/// Input `i`, which must be present.
pub(crate) fn input<'a>(inputs: &[Option<ValueRef<'a>>], i: usize) -> Result<ValueRef<'a>, String> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("input {i} is missing"))
}

/// Every operator this engine runs, `domain:op`.
pub const SUPPORTED: &[&str] = &[
    "ai.onnx.ml:TreeEnsembleClassifier",
    "ai.onnx.ml:TreeEnsembleRegressor",
    "ai.onnx.ml:TreeEnsemble",
    "ai.onnx.ml:LinearClassifier",
    "ai.onnx.ml:LinearRegressor",
    "ai.onnx.ml:Scaler",
    "ai.onnx.ml:Normalizer",
    "ai.onnx.ml:Imputer",
    "ai.onnx.ml:OneHotEncoder",
    "ai.onnx.ml:LabelEncoder",
    "ai.onnx.ml:ZipMap",
    "ai.onnx.ml:ArrayFeatureExtractor",
    ":Gemm",
    ":MatMul",
    ":Add",
    ":Sub",
    ":Mul",
    ":Div",
    ":Sigmoid",
    ":Softmax",
    ":Relu",
    ":ArgMax",
    ":Cast",
    ":Concat",
    ":Gather",
    ":Identity",
    ":Reshape",
    ":Flatten",
];

pub fn build(domain: &str, ctx: &NodeCtx<'_>) -> Result<Box<dyn Kernel>, EngineError> {
    use math::{Binary, BinaryOp};
    Ok(match (domain, ctx.op) {
        ("ai.onnx.ml", "TreeEnsembleClassifier") => Box::new(tree::Classifier::v3(ctx)?),
        ("ai.onnx.ml", "TreeEnsembleRegressor") => Box::new(tree::Regressor::v3(ctx)?),
        ("ai.onnx.ml", "TreeEnsemble") => Box::new(tree::Regressor::v5(ctx)?),
        ("ai.onnx.ml", "LinearClassifier") => Box::new(linear::LinearClassifier::new(ctx)?),
        ("ai.onnx.ml", "LinearRegressor") => Box::new(linear::LinearRegressor::new(ctx)?),
        ("ai.onnx.ml", "Scaler") => Box::new(prep::Scaler::new(ctx)?),
        ("ai.onnx.ml", "Normalizer") => Box::new(prep::Normalizer::new(ctx)?),
        ("ai.onnx.ml", "Imputer") => Box::new(prep::Imputer::new(ctx)?),
        ("ai.onnx.ml", "OneHotEncoder") => Box::new(prep::OneHotEncoder::new(ctx)?),
        ("ai.onnx.ml", "LabelEncoder") => Box::new(prep::LabelEncoder::new(ctx)?),
        ("ai.onnx.ml", "ZipMap") => Box::new(prep::ZipMap::new(ctx)?),
        ("ai.onnx.ml", "ArrayFeatureExtractor") => Box::new(prep::ArrayFeatureExtractor),
        ("", "Gemm") => Box::new(math::Gemm::new(ctx)?),
        ("", "MatMul") => Box::new(math::MatMul),
        ("", "Add") => Box::new(Binary(BinaryOp::Add)),
        ("", "Sub") => Box::new(Binary(BinaryOp::Sub)),
        ("", "Mul") => Box::new(Binary(BinaryOp::Mul)),
        ("", "Div") => Box::new(Binary(BinaryOp::Div)),
        ("", "Sigmoid") => Box::new(math::Unary::Sigmoid),
        ("", "Relu") => Box::new(math::Unary::Relu),
        ("", "Softmax") => Box::new(math::Softmax::new(ctx)),
        ("", "ArgMax") => Box::new(math::ArgMax::new(ctx)),
        ("", "Cast") => Box::new(prep::Cast::new(ctx)?),
        ("", "Concat") => Box::new(prep::Concat::new(ctx)),
        ("", "Gather") => Box::new(prep::Gather::new(ctx)),
        ("", "Identity") => Box::new(prep::Identity),
        ("", "Reshape") => Box::new(prep::Reshape::new(ctx)),
        ("", "Flatten") => Box::new(prep::Flatten::new(ctx)),
        (d, op) => {
            return Err(EngineError::Unsupported {
                op: if d.is_empty() {
                    op.to_string()
                } else {
                    format!("{d}:{op}")
                },
                node: ctx.name.to_string(),
                why: "not an operator the native engine runs".into(),
            });
        }
    })
}
