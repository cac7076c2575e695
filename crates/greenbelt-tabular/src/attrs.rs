//! Typed access to a node's attributes, with errors that name the node.

use bytes::Bytes;

use crate::error::EngineError;
use crate::proto::{AttributeProto, NodeProto};
use crate::value::{Value, from_proto};

/// A node being built: its operator, name, attributes and the opset in force.
pub struct NodeCtx<'a> {
    pub op: &'a str,
    pub name: &'a str,
    pub attrs: &'a [AttributeProto],
    /// The opset version of the node's domain.
    pub opset: i64,
}

impl<'a> NodeCtx<'a> {
    pub fn new(node: &'a NodeProto, opset: i64) -> NodeCtx<'a> {
        NodeCtx {
            op: node.op_type.as_deref().unwrap_or(""),
            name: node.name.as_deref().unwrap_or(""),
            attrs: &node.attribute,
            opset,
        }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.attrs.iter().find(|a| a.name.as_deref() == Some(name))
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// An operator setting this engine does not implement.
    pub fn unsupported(&self, why: impl Into<String>) -> EngineError {
        EngineError::Unsupported {
            op: self.op.to_string(),
            node: self.name.to_string(),
            why: why.into(),
        }
    }

    /// A malformed node (attributes that contradict each other).
    pub fn invalid(&self, why: impl std::fmt::Display) -> EngineError {
        EngineError::load(format!("node \"{}\" ({}): {why}", self.name, self.op))
    }

    // A present attribute whose value field is absent holds the field's
    // default (0, 0.0, ""): proto3-style writers leave zero values out.

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i.unwrap_or(0))
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f.unwrap_or(0.0))
    }

    pub fn ints(&self, name: &str) -> &'a [i64] {
        self.get(name).map_or(&[], |a| a.ints.as_slice())
    }

    pub fn floats(&self, name: &str) -> &'a [f32] {
        self.get(name).map_or(&[], |a| a.floats.as_slice())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).map_or_else(
            || default.to_string(),
            |a| String::from_utf8_lossy(a.s.as_deref().unwrap_or_default()).into_owned(),
        )
    }

    pub fn strings(&self, name: &str) -> Vec<Bytes> {
        self.get(name).map_or_else(Vec::new, |a| {
            a.strings
                .iter()
                .map(|s| Bytes::copy_from_slice(s))
                .collect()
        })
    }

    pub fn tensor(&self, name: &str) -> Result<Option<Value>, EngineError> {
        match self.get(name).and_then(|a| a.t.as_ref()) {
            None => Ok(None),
            Some(t) => from_proto(t)
                .map(Some)
                .map_err(|e| self.invalid(format!("attribute {name}: {e}"))),
        }
    }

    /// A node index (tree, feature, class...) that must fit `usize`.
    pub fn index(&self, what: &str, v: i64) -> Result<usize, EngineError> {
        usize::try_from(v).map_err(|_| self.invalid(format!("{what} {v} is negative")))
    }
}
