/// Errors from training, prediction, evaluation and export. Every message
/// names the input at fault and what a valid one looks like.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// An input that must hold at least one value holds none.
    #[error("{what}: input is empty; at least one row is needed")]
    Empty { what: &'static str },

    /// Two inputs that must be parallel have different lengths.
    #[error("{what}: {left_name} has {left} values but {right_name} has {right}; they must match")]
    LengthMismatch {
        what: &'static str,
        left_name: &'static str,
        left: usize,
        right_name: &'static str,
        right: usize,
    },

    /// A value is NaN or infinite.
    #[error("{what}: value at index {index} is {value}; only finite numbers are accepted")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },

    /// A binary label is neither 0 nor 1.
    #[error("{what}: label at index {index} is {value}; binary labels must be 0 or 1")]
    InvalidLabel {
        what: &'static str,
        index: usize,
        value: f64,
    },

    /// A probability lies outside [0, 1].
    #[error("{what}: probability at index {index} is {value}; probabilities must lie in [0, 1]")]
    ProbabilityOutOfRange {
        what: &'static str,
        index: usize,
        value: f64,
    },

    /// The labels hold one class only, where both are needed.
    #[error(
        "{what}: every label is {class}; {what} is undefined unless both classes 0 and 1 are present"
    )]
    SingleClass { what: &'static str, class: u8 },

    /// A matrix's buffer does not hold rows x cols values.
    #[error("matrix of {rows} rows x {cols} columns needs {} values, got {len}", rows.saturating_mul(*cols))]
    Shape {
        rows: usize,
        cols: usize,
        len: usize,
    },

    /// Data with a different number of features than the model was trained on.
    #[error("{what}: the model was trained on {expected} features, got {got}")]
    FeatureCount {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    /// A training or export parameter is out of its valid range.
    #[error("parameter {name} = {value}: {reason}")]
    InvalidParam {
        name: &'static str,
        value: String,
        reason: &'static str,
    },

    /// Bytes that are not an ONNX model, or one a rewrite cannot keep whole.
    #[error("not a usable ONNX model: {reason}")]
    Onnx { reason: String },

    /// A node a rewrite cannot handle as it stands.
    #[error("node \"{node}\" ({op_type}): {reason}")]
    Node {
        node: String,
        op_type: String,
        reason: String,
    },

    /// A compression found nothing it applies to.
    #[error("nothing to quantize: {reason}")]
    NothingToQuantize { reason: String },
}
