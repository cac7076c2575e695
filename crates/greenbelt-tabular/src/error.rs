/// Errors from loading or running a tabular model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The file is not a model this engine can read.
    #[error("{0}")]
    Load(String),
    /// The graph uses an operator (or an operator setting) this engine does
    /// not implement; another backend may run it.
    #[error("operator \"{op}\" (node \"{node}\"): {why}")]
    Unsupported {
        op: String,
        node: String,
        why: String,
    },
    /// The inputs do not fit the graph (names, types, shapes). A client error.
    #[error("{0}")]
    Input(String),
    /// A node failed on valid inputs (e.g. a shape the model cannot take).
    #[error("node \"{node}\" ({op}): {why}")]
    Compute {
        op: String,
        node: String,
        why: String,
    },
}

impl EngineError {
    pub(crate) fn load(msg: impl Into<String>) -> EngineError {
        EngineError::Load(msg.into())
    }
}
