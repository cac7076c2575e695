//! A loaded graph: nodes in topological order over numbered slots, the
//! initializers, and the kernels that run each node.

use std::collections::HashMap;

use greenbelt_core::{DataType, Signature, Tensor, TensorData, TensorSpec};
use prost::Message;

use crate::attrs::NodeCtx;
use crate::error::EngineError;
use crate::ops::{self, Kernel};
use crate::proto::{ModelProto, TypeProto, ValueInfoProto, elem};
use crate::value::{Value, ValueRef, elem_of, from_proto};

/// Where a slot's value comes from.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Input(usize),
    Const(usize),
    Node,
}

struct Step {
    kernel: Box<dyn Kernel>,
    op: String,
    name: String,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    /// Input 0 is a node's value that nothing reads after this step: it is
    /// handed to the kernel to reuse (when the kernel can).
    owns_first: bool,
}

struct Io {
    name: String,
    slot: usize,
    elem: i32,
}

/// An executable graph.
pub struct Graph {
    inputs: Vec<Io>,
    outputs: Vec<Io>,
    slots: Vec<Slot>,
    consts: Vec<Value>,
    steps: Vec<Step>,
    signature: Signature,
    ops: Vec<String>,
}

/// The operators of a model, `domain:op` (the default domain is empty).
pub fn operators(bytes: &[u8]) -> Result<Vec<String>, EngineError> {
    let model = decode(bytes)?;
    Ok(model
        .graph
        .map(|g| {
            g.node
                .iter()
                .map(|n| {
                    format!(
                        "{}:{}",
                        n.domain.as_deref().unwrap_or(""),
                        n.op_type.as_deref().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

fn decode(bytes: &[u8]) -> Result<ModelProto, EngineError> {
    ModelProto::decode(bytes)
        .map_err(|e| EngineError::load(format!("not a readable ONNX model: {e}")))
}

fn datatype_of(t: i32) -> Option<DataType> {
    Some(match t {
        elem::FLOAT => DataType::Fp32,
        elem::DOUBLE => DataType::Fp64,
        elem::INT64 => DataType::Int64,
        elem::INT32 => DataType::Int32,
        elem::STRING => DataType::Bytes,
        elem::BOOL => DataType::Bool,
        elem::UINT8 => DataType::Uint8,
        elem::INT8 => DataType::Int8,
        elem::UINT16 => DataType::Uint16,
        elem::INT16 => DataType::Int16,
        elem::UINT32 => DataType::Uint32,
        elem::UINT64 => DataType::Uint64,
        elem::FLOAT16 => DataType::Fp16,
        _ => return None,
    })
}

/// (element type, shape) of a tensor-typed value, or of a ZipMap output
/// (a sequence of maps to float), which is returned as dense FP32 `[N, classes]`.
fn io_type(v: &ValueInfoProto) -> Result<(i32, Vec<i64>), String> {
    let name = v.name.as_deref().unwrap_or("");
    let ty: Option<&TypeProto> = v.r#type.as_ref();
    if let Some(t) = ty.and_then(|t| t.tensor_type.as_ref()) {
        let e = t.elem_type.unwrap_or(0);
        let shape = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| d.dim_value.filter(|v| *v >= 0).unwrap_or(-1))
                    .collect()
            })
            .unwrap_or_default();
        return Ok((e, shape));
    }
    let is_zipmap = ty
        .and_then(|t| t.sequence_type.as_ref())
        .and_then(|s| s.elem_type.as_ref())
        .and_then(|e| e.map_type.as_ref())
        .and_then(|m| m.value_type.as_ref())
        .and_then(|v| v.tensor_type.as_ref())
        .is_some_and(|t| t.elem_type == Some(elem::FLOAT));
    if is_zipmap {
        return Ok((elem::FLOAT, vec![-1, -1]));
    }
    Err(format!(
        "\"{name}\" is not a tensor (nor a ZipMap sequence of maps)"
    ))
}

/// Fold each Add of a constant f32 row (`[n]` or `[1, n]`) into the MatMul
/// before it, when that Add is the product's only reader and the product is
/// not a graph output (see [`ops::math::MatMulBias`]).
fn fuse_matmul_bias(steps: &mut Vec<Step>, slots: &[Slot], consts: &[Value], outputs: &[Io]) {
    let mut i = 0;
    while i < steps.len() {
        if let Some((j, bias)) = bias_add_after(steps, i, slots, consts, outputs)
            && let TensorData::Fp32(b) = &bias.data
        {
            let kernel = ops::math::MatMulBias::new(b.clone(), bias.shape.clone());
            let add = steps.remove(j);
            steps[i].kernel = Box::new(kernel);
            steps[i].outputs = add.outputs;
        }
        i += 1;
    }
}

/// The Add that `steps[i]` (a MatMul) can absorb, and its constant row.
fn bias_add_after<'c>(
    steps: &[Step],
    i: usize,
    slots: &[Slot],
    consts: &'c [Value],
    outputs: &[Io],
) -> Option<(usize, &'c Value)> {
    if steps[i].op != "MatMul" {
        return None;
    }
    let [Some(product)] = steps[i].outputs.as_slice() else {
        return None;
    };
    if outputs.iter().any(|o| o.slot == *product) {
        return None;
    }
    let mut readers = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.inputs.contains(&Some(*product)));
    let (j, add) = readers.next()?;
    if readers.next().is_some() || add.op != "Add" {
        return None;
    }
    let other = match add.inputs.as_slice() {
        [Some(a), Some(b)] if a == product && b != product => *b,
        [Some(a), Some(b)] if b == product && a != product => *a,
        _ => return None,
    };
    let Slot::Const(c) = slots[other] else {
        return None;
    };
    let row = matches!(consts[c].shape.as_slice(), [_] | [1, _]);
    (row && matches!(consts[c].data, TensorData::Fp32(_))).then_some((j, &consts[c]))
}

/// Set `owns_first` on every step whose input 0 is a node's value that no
/// later step reads (nor this step as another input) and that is not a
/// graph output.
fn mark_owned_inputs(steps: &mut [Step], slots: &[Slot], outputs: &[Io]) {
    let mut last_read = vec![None; slots.len()];
    for (k, step) in steps.iter().enumerate() {
        for s in step.inputs.iter().flatten() {
            last_read[*s] = Some(k);
        }
    }
    for (k, step) in steps.iter_mut().enumerate() {
        let Some(Some(s)) = step.inputs.first().copied() else {
            continue;
        };
        step.owns_first = matches!(slots[s], Slot::Node)
            && last_read[s] == Some(k)
            && !step.inputs[1..].contains(&Some(s))
            && !outputs.iter().any(|o| o.slot == s);
    }
}

impl Graph {
    /// Build a graph from an ONNX file's bytes. Fails with
    /// [`EngineError::Unsupported`] naming the first operator (or setting)
    /// this engine does not implement.
    pub fn load(bytes: &[u8]) -> Result<Graph, EngineError> {
        let model = decode(bytes)?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| EngineError::load("the model has no graph"))?;
        let mut opsets: HashMap<String, i64> = HashMap::new();
        for o in &model.opset_import {
            let domain = match o.domain.as_deref().unwrap_or("") {
                "ai.onnx" => "",
                d => d,
            };
            opsets.insert(domain.to_string(), o.version.unwrap_or(1));
        }

        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut slots = Vec::new();
        // The element type of each slot where it is known before running.
        let mut slot_elem: Vec<Option<i32>> = Vec::new();
        let mut consts = Vec::new();
        for t in &graph.initializer {
            let v = from_proto(t).map_err(EngineError::Load)?;
            let name = t.name.clone().unwrap_or_default();
            slot_of.insert(name, slots.len());
            slots.push(Slot::Const(consts.len()));
            slot_elem.push(Some(elem_of(&v.data)));
            consts.push(v);
        }

        let mut signature = Signature::default();
        let mut inputs = Vec::new();
        for v in &graph.input {
            let name = v.name.clone().unwrap_or_default();
            if slot_of.contains_key(&name) {
                // An initializer listed as an input (IR < 4 style): a constant.
                continue;
            }
            let (e, shape) = io_type(v).map_err(|e| EngineError::load(format!("input {e}")))?;
            let dt = datatype_of(e).ok_or_else(|| {
                EngineError::load(format!(
                    "input \"{name}\" has element type {}, which V2 tensors cannot carry",
                    elem::name(e)
                ))
            })?;
            signature
                .inputs
                .push(TensorSpec::new(name.clone(), dt, shape));
            slot_of.insert(name.clone(), slots.len());
            inputs.push(Io {
                name,
                slot: slots.len(),
                elem: e,
            });
            slots.push(Slot::Input(inputs.len() - 1));
            slot_elem.push(Some(e));
        }

        let mut steps = Vec::new();
        let mut op_names = Vec::new();
        for node in &graph.node {
            let domain = match node.domain.as_deref().unwrap_or("") {
                "ai.onnx" => "",
                d => d,
            };
            let opset = opsets.get(domain).copied().unwrap_or(1);
            let ctx = NodeCtx::new(node, opset);
            op_names.push(format!("{domain}:{}", ctx.op));
            let kernel = ops::build(domain, &ctx)?;
            let mut ins = Vec::new();
            for i in &node.input {
                if i.is_empty() {
                    ins.push(None);
                    continue;
                }
                let s = slot_of.get(i).copied().ok_or_else(|| {
                    EngineError::load(format!(
                        "node \"{}\" ({}) reads \"{i}\" before any node writes it (the graph is not in topological order)",
                        ctx.name, ctx.op
                    ))
                })?;
                ins.push(Some(s));
            }
            if let ([Some(src)], [out]) = (ins.as_slice(), node.output.as_slice())
                && !out.is_empty()
                && kernel.passes_through(slot_elem[*src])
            {
                slot_of.insert(out.clone(), *src);
                continue;
            }
            let mut outs = Vec::new();
            for o in &node.output {
                if o.is_empty() {
                    outs.push(None);
                    continue;
                }
                slot_of.insert(o.clone(), slots.len());
                outs.push(Some(slots.len()));
                slots.push(Slot::Node);
                slot_elem.push(None);
            }
            steps.push(Step {
                kernel,
                op: ctx.op.to_string(),
                name: ctx.name.to_string(),
                inputs: ins,
                outputs: outs,
                owns_first: false,
            });
        }

        let mut outputs = Vec::new();
        for v in &graph.output {
            let name = v.name.clone().unwrap_or_default();
            let (e, shape) = io_type(v).map_err(|e| EngineError::load(format!("output {e}")))?;
            let dt = datatype_of(e).ok_or_else(|| {
                EngineError::load(format!(
                    "output \"{name}\" has element type {}, which V2 tensors cannot carry",
                    elem::name(e)
                ))
            })?;
            let slot = slot_of.get(&name).copied().ok_or_else(|| {
                EngineError::load(format!("output \"{name}\" is not produced by any node"))
            })?;
            signature
                .outputs
                .push(TensorSpec::new(name.clone(), dt, shape));
            outputs.push(Io {
                name,
                slot,
                elem: e,
            });
        }
        fuse_matmul_bias(&mut steps, &slots, &consts, &outputs);
        mark_owned_inputs(&mut steps, &slots, &outputs);
        Ok(Graph {
            inputs,
            outputs,
            slots,
            consts,
            steps,
            signature,
            ops: op_names,
        })
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// `domain:op` of every node, in graph order.
    pub fn operators(&self) -> &[String] {
        &self.ops
    }

    /// Run the graph. `inputs` are matched by name; every graph input must be
    /// present with the element type the graph declares.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let mut fed: Vec<(&TensorData, Vec<usize>)> = Vec::with_capacity(self.inputs.len());
        for io in &self.inputs {
            let t = inputs
                .iter()
                .find(|t| t.name == io.name)
                .ok_or_else(|| EngineError::Input(format!("input \"{}\" is missing", io.name)))?;
            if elem_of(&t.data) != io.elem {
                return Err(EngineError::Input(format!(
                    "input \"{}\": the model takes {} values, got {}",
                    io.name,
                    elem::name(io.elem),
                    elem::name(elem_of(&t.data))
                )));
            }
            let shape = t
                .shape
                .iter()
                .map(|d| usize::try_from(*d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    EngineError::Input(format!("input \"{}\": negative dimension", io.name))
                })?;
            fed.push((&t.data, shape));
        }
        let mut values: Vec<Option<Value>> = vec![None; self.slots.len()];
        for step in &self.steps {
            let missing = || EngineError::Compute {
                op: step.op.clone(),
                node: step.name.clone(),
                why: "an input was not computed".into(),
            };
            let owned = match step.inputs.first() {
                Some(Some(s)) if step.owns_first && step.kernel.reuses_input() => {
                    Some(values[*s].take().ok_or_else(missing)?)
                }
                _ => None,
            };
            let produced = {
                let mut args: Vec<Option<ValueRef<'_>>> = Vec::with_capacity(step.inputs.len());
                for (k, i) in step.inputs.iter().enumerate() {
                    args.push(match i {
                        Some(_) if k == 0 && owned.is_some() => None,
                        None => None,
                        Some(s) => Some(self.read(*s, &fed, &values).ok_or_else(missing)?),
                    });
                }
                match owned {
                    Some(x) => step.kernel.run_owned(x, &args),
                    None => step.kernel.run(&args),
                }
                .map_err(|why| EngineError::Compute {
                    op: step.op.clone(),
                    node: step.name.clone(),
                    why,
                })?
            };
            for (slot, v) in step.outputs.iter().zip(produced) {
                if let Some(s) = slot {
                    values[*s] = Some(v);
                }
            }
        }
        let mut out = Vec::with_capacity(self.outputs.len());
        for (k, io) in self.outputs.iter().enumerate() {
            let reused_later = self.outputs[k + 1..].iter().any(|o| o.slot == io.slot);
            let v = match self.slots[io.slot] {
                Slot::Node if !reused_later => values[io.slot].take(),
                _ => self.read(io.slot, &fed, &values).map(|r| r.to_owned()),
            }
            .ok_or_else(|| {
                EngineError::Input(format!("output \"{}\" was not computed", io.name))
            })?;
            let shape = v.shape.iter().map(|d| *d as i64).collect();
            out.push(Tensor {
                name: io.name.clone(),
                shape,
                data: v.data,
            });
        }
        Ok(out)
    }

    fn read<'a>(
        &'a self,
        slot: usize,
        fed: &'a [(&'a TensorData, Vec<usize>)],
        values: &'a [Option<Value>],
    ) -> Option<ValueRef<'a>> {
        match self.slots[slot] {
            Slot::Input(i) => fed.get(i).map(|(d, s)| ValueRef { shape: s, data: d }),
            Slot::Const(i) => self.consts.get(i).map(Value::as_ref),
            Slot::Node => values[slot].as_ref().map(Value::as_ref),
        }
    }
}
