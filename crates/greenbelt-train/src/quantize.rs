//! Post-training compression of ONNX models by graph rewrite: pure functions
//! from model bytes to model bytes and a [`CompressReport`]. Nothing here
//! loads or runs a model; evaluating the result is the caller's business
//! (`greenbelt-control`'s `optimize`).
//!
//! **int8 dynamic quantization** ([`quantize_int8`], ONNX Runtime's
//! `quantize_dynamic` scheme). Every default-domain `MatMul` whose B input
//! is a FLOAT initializer, and every `Gemm` with a FLOAT initializer B
//! (`alpha`, `beta`, `transA`, `transB` respected), becomes
//!
//! ```text
//! DynamicQuantizeLinear(A) -> A_q (uint8), A_scale, A_zp
//! MatMulInteger(A_q, B_q, A_zp) -> int32
//! Cast(to = FLOAT) -> Mul(·, A_scale * B_scale) [-> Add(·, beta * C) for Gemm]
//! ```
//!
//! The output keeps its name, so the rest of the graph is untouched. B is
//! quantized **per output column, symmetric, to int8**: `B_scale[j] =
//! max_i |B[i, j]| / 127`, `B_q = round(B / B_scale)` in [-127, 127], zero
//! point 0 (the optional `b_zero_point` input is left out). A is quantized
//! per tensor by `DynamicQuantizeLinear` at run time (uint8, asymmetric), so
//! its range is that of the whole batch. `alpha` is folded into `B_scale`;
//! `transB` is applied to the stored weights; `transA` becomes a
//! `Transpose`. ONNX Runtime's default for weights is the same int8
//! symmetric form (per tensor unless `per_channel`); on x86 CPUs without
//! VNNI its u8×s8 kernel can saturate on large activations (its docs
//! suggest `reduce_range`); CPUs with AVX-VNNI or AVX512-VNNI do not.
//! Nodes that cannot be quantized (B not a FLOAT initializer, not 2-D,
//! holding NaN/inf, stored externally, or also a graph input) are left as
//! they are and listed in the report with the reason. The default-domain
//! opset is raised to 11 (where `DynamicQuantizeLinear` exists) when it is
//! lower, but only when every operator of the graph means the same at 11.
//!
//! **float16 storage** ([`to_fp16`]): every FLOAT initializer of the main
//! graph is stored as FLOAT16 under a new name and a `Cast(to = FLOAT)` at
//! the top of the graph gives the old name back, so inputs, outputs and
//! every computation stay FP32 and the file is about half the size.
//! Finite values beyond ±65504 are clamped to it (and counted). ONNX
//! Runtime folds the casts at session start, so it computes in FP32 at the
//! same speed; only the artifact (storage, download, registry) shrinks.
//!
//! The protobuf types are `tract_onnx::pb`'s, which do not know every field
//! of newer ONNX files; prost would drop unknown fields on re-encoding, so a
//! model with top-level fields they do not carry (model-local functions,
//! field 25) is refused instead of being written back without them.

use std::collections::{HashMap, HashSet};

use prost::Message;
use serde::Serialize;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

use crate::error::TrainError;

/// The report's `mode` for int8 dynamic quantization (also the lineage's
/// `optimization`).
pub const MODE_INT8: &str = "int8-dynamic";
/// The report's `mode` for float16 storage.
pub const MODE_FP16: &str = "fp16";

/// The opset where `DynamicQuantizeLinear` appears.
const INT8_MIN_OPSET: i64 = 11;
/// The first IR version that goes with opset 11.
const INT8_MIN_IR: i64 = 6;
/// Largest finite float16.
const F16_MAX: f32 = 65504.0;

/// What a rewrite did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompressReport {
    /// [`MODE_INT8`] or [`MODE_FP16`].
    pub mode: &'static str,
    /// int8: the MatMul/Gemm nodes rewritten.
    pub nodes_rewritten: Vec<RewrittenNode>,
    /// fp16: the initializers now stored as float16.
    pub initializers_converted: usize,
    /// fp16: finite values beyond ±65504 clamped to it.
    pub values_clamped: u64,
    /// Nodes (int8) or initializers (fp16) left as they were, and why.
    pub skipped: Vec<Skipped>,
    /// Default-domain opset of the input and of the output.
    pub opset_before: i64,
    pub opset_after: i64,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// One quantized node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewrittenNode {
    pub node: String,
    pub op_type: String,
    /// The FLOAT initializer that was quantized.
    pub weight: String,
    /// `[K, N]` of the weight as multiplied (after `transB`).
    pub shape: [usize; 2],
}

/// A node or initializer left alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// Node name (its first output when unnamed), or initializer name.
    pub name: String,
    /// The node's operator, or "initializer".
    pub kind: String,
    pub reason: String,
}

/// Quantize the MatMul/Gemm weights of the ONNX model in `bytes` to int8
/// (see the module docs). Errors: not an ONNX model; a malformed MatMul or
/// Gemm (named); an opset that cannot be raised to 11 safely; nothing to
/// quantize.
pub fn quantize_int8(bytes: &[u8]) -> Result<(Vec<u8>, CompressReport), TrainError> {
    let mut model = decode(bytes)?;
    let opset_before = default_opset(&model).unwrap_or(0);
    let Some(graph) = model.graph.as_mut() else {
        return Err(onnx_error("the model has no graph"));
    };
    let mut names = NameSet::of(graph);
    let overridable: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    let initializers: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();

    let mut skipped = Vec::new();
    let mut rewritten = Vec::new();
    let mut targets: Vec<Option<Target>> = Vec::with_capacity(graph.node.len());
    for node in &graph.node {
        let target = if !is_default_domain(&node.domain) {
            None
        } else {
            let lookup = |name: &str| -> Result<&TensorProto, String> {
                let t = initializers
                    .get(name)
                    .and_then(|i| graph.initializer.get(*i))
                    .ok_or_else(|| format!("B input \"{name}\" is not an initializer"))?;
                if overridable.contains(name) {
                    return Err(format!(
                        "weight \"{name}\" is also a graph input (it can be replaced at run time)"
                    ));
                }
                Ok(t)
            };
            match node.op_type.as_str() {
                "MatMul" => analyse_matmul(node, lookup)?,
                "Gemm" => analyse_gemm(node, lookup)?,
                _ => None,
            }
        };
        match target {
            Some(Ok(t)) => {
                rewritten.push(RewrittenNode {
                    node: node_label(node),
                    op_type: node.op_type.clone(),
                    weight: t.weight.clone(),
                    shape: [t.k, t.n],
                });
                targets.push(Some(t));
            }
            Some(Err(reason)) => {
                skipped.push(Skipped {
                    name: node_label(node),
                    kind: node.op_type.clone(),
                    reason,
                });
                targets.push(None);
            }
            None => targets.push(None),
        }
    }
    if rewritten.is_empty() {
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!("; left alone: {}", skipped_text(&skipped))
        };
        return Err(TrainError::NothingToQuantize {
            reason: format!("no MatMul/Gemm with constant float weights{why}"),
        });
    }

    let mut new_nodes = Vec::with_capacity(graph.node.len() + 5 * rewritten.len());
    let mut new_initializers = Vec::new();
    let mut quantized_weights: HashMap<(String, bool), String> = HashMap::new();
    let mut quantized_inputs: HashMap<String, [String; 3]> = HashMap::new();
    let old_nodes = std::mem::take(&mut graph.node);
    for (node, target) in old_nodes.into_iter().zip(targets) {
        match target {
            None => new_nodes.push(node),
            Some(t) => {
                let mut emit = Emit {
                    names: &mut names,
                    nodes: &mut new_nodes,
                    initializers: &mut new_initializers,
                    weights: &mut quantized_weights,
                    inputs: &mut quantized_inputs,
                };
                emit.rewrite(&node, t);
            }
        }
    }
    graph.node = new_nodes;
    graph.initializer.extend(new_initializers);
    // The float weights nothing reads any more.
    let quantized: HashSet<String> = quantized_weights.keys().map(|(w, _)| w.clone()).collect();
    let referenced = referenced_names(graph);
    graph
        .initializer
        .retain(|t| !quantized.contains(&t.name) || referenced.contains(&t.name));

    let opset_after = raise_opset(&mut model, opset_before)?;
    let out = model.encode_to_vec();
    let report = CompressReport {
        mode: MODE_INT8,
        nodes_rewritten: rewritten,
        initializers_converted: 0,
        values_clamped: 0,
        skipped,
        opset_before,
        opset_after,
        bytes_before: bytes.len(),
        bytes_after: out.len(),
    };
    Ok((out, report))
}

/// Store every FLOAT initializer of the ONNX model in `bytes` as float16,
/// with a `Cast` back to FLOAT (see the module docs). Errors: not an ONNX
/// model; no FLOAT initializer to convert.
pub fn to_fp16(bytes: &[u8]) -> Result<(Vec<u8>, CompressReport), TrainError> {
    let mut model = decode(bytes)?;
    let opset_before = default_opset(&model).unwrap_or(0);
    if opset_before != 0 && opset_before < 6 {
        return Err(onnx_error(format!(
            "default-domain opset {opset_before} predates Cast with a numeric `to` (opset 6); convert the model to a newer opset first (onnx.version_converter)"
        )));
    }
    let Some(graph) = model.graph.as_mut() else {
        return Err(onnx_error("the model has no graph"));
    };
    let mut names = NameSet::of(graph);
    let overridable: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    let mut casts = Vec::new();
    let mut skipped = Vec::new();
    let mut clamped = 0u64;
    for t in graph
        .initializer
        .iter_mut()
        .filter(|t| t.data_type == DataType::Float as i32)
    {
        if overridable.contains(&t.name) {
            skipped.push(Skipped {
                name: t.name.clone(),
                kind: "initializer".into(),
                reason: "it is also a graph input (it can be replaced at run time); left FLOAT"
                    .into(),
            });
            continue;
        }
        let values = match float_values(t) {
            Ok(v) => v,
            Err(reason) => {
                skipped.push(Skipped {
                    name: t.name.clone(),
                    kind: "initializer".into(),
                    reason,
                });
                continue;
            }
        };
        let mut raw = Vec::with_capacity(values.len() * 2);
        for v in values {
            let v = if v.is_finite() && v.abs() > F16_MAX {
                clamped += 1;
                F16_MAX.copysign(v)
            } else {
                v
            };
            raw.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        let stored = names.fresh(&format!("{}_fp16", t.name));
        casts.push(NodeProto {
            input: vec![stored.clone()],
            output: vec![t.name.clone()],
            name: names.fresh(&format!("{}_fp16/Cast", t.name)),
            op_type: "Cast".into(),
            attribute: vec![int_attr("to", DataType::Float as i64)],
            ..NodeProto::default()
        });
        *t = TensorProto {
            dims: std::mem::take(&mut t.dims),
            data_type: DataType::Float16 as i32,
            name: stored,
            doc_string: std::mem::take(&mut t.doc_string),
            raw_data: raw,
            ..TensorProto::default()
        };
    }
    if casts.is_empty() {
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!("; left alone: {}", skipped_text(&skipped))
        };
        return Err(TrainError::NothingToQuantize {
            reason: format!("no FLOAT initializers to store as float16{why}"),
        });
    }
    let converted = casts.len();
    casts.append(&mut graph.node);
    graph.node = casts;
    let opset_after = if opset_before == 0 {
        model.opset_import.push(OperatorSetIdProto {
            domain: String::new(),
            version: crate::onnx::OPSET,
        });
        crate::onnx::OPSET
    } else {
        opset_before
    };
    let out = model.encode_to_vec();
    let report = CompressReport {
        mode: MODE_FP16,
        nodes_rewritten: Vec::new(),
        initializers_converted: converted,
        values_clamped: clamped,
        skipped,
        opset_before,
        opset_after,
        bytes_before: bytes.len(),
        bytes_after: out.len(),
    };
    Ok((out, report))
}

/// A MatMul/Gemm to rewrite, with its weight already in `[K, N]` layout.
struct Target {
    /// The A input.
    a: String,
    /// Gemm `transA = 1`: A goes through a Transpose first.
    transpose_a: bool,
    weight: String,
    /// Gemm `transB = 1` (the stored weights are transposed).
    transposed_b: bool,
    /// Row-major `[K, N]`.
    b: Vec<f32>,
    k: usize,
    n: usize,
    alpha: f32,
    /// Gemm's C and beta.
    bias: Option<(String, f32)>,
    output: String,
}

type Analysis = Option<Result<Target, String>>;

fn analyse_matmul<'a>(
    node: &NodeProto,
    lookup: impl Fn(&str) -> Result<&'a TensorProto, String>,
) -> Result<Analysis, TrainError> {
    let (a, b, output) = match (node.input.as_slice(), node.output.as_slice()) {
        ([a, b], [y]) => (a, b, y),
        _ => {
            return Err(node_error(
                node,
                format!(
                    "MatMul needs 2 inputs and 1 output, it has {} and {}",
                    node.input.len(),
                    node.output.len()
                ),
            ));
        }
    };
    let weight = match lookup(b).and_then(|t| weight_matrix(t, false)) {
        Ok(w) => w,
        Err(reason) => return Ok(Some(Err(reason))),
    };
    Ok(Some(Ok(Target {
        a: a.clone(),
        transpose_a: false,
        weight: b.clone(),
        transposed_b: false,
        b: weight.values,
        k: weight.k,
        n: weight.n,
        alpha: 1.0,
        bias: None,
        output: output.clone(),
    })))
}

fn analyse_gemm<'a>(
    node: &NodeProto,
    lookup: impl Fn(&str) -> Result<&'a TensorProto, String>,
) -> Result<Analysis, TrainError> {
    let (a, b, c) = match node.input.as_slice() {
        [a, b] => (a, b, None),
        [a, b, c] => (a, b, (!c.is_empty()).then_some(c)),
        _ => {
            return Err(node_error(
                node,
                format!("Gemm needs 2 or 3 inputs, it has {}", node.input.len()),
            ));
        }
    };
    let [output] = node.output.as_slice() else {
        return Err(node_error(
            node,
            format!("Gemm has 1 output, this one has {}", node.output.len()),
        ));
    };
    let mut alpha = 1.0f32;
    let mut beta = 1.0f32;
    let mut trans_a = false;
    let mut trans_b = false;
    for attr in &node.attribute {
        match attr.name.as_str() {
            "alpha" => alpha = attr.f,
            "beta" => beta = attr.f,
            "transA" | "transB" => {
                let flag = match attr.i {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(node_error(
                            node,
                            format!("attribute {} is {other}; it must be 0 or 1", attr.name),
                        ));
                    }
                };
                if attr.name == "transA" {
                    trans_a = flag;
                } else {
                    trans_b = flag;
                }
            }
            _ => {}
        }
    }
    if !alpha.is_finite() || !beta.is_finite() {
        return Err(node_error(
            node,
            format!("alpha {alpha} and beta {beta} must be finite"),
        ));
    }
    let weight = match lookup(b).and_then(|t| weight_matrix(t, trans_b)) {
        Ok(w) => w,
        Err(reason) => return Ok(Some(Err(reason))),
    };
    Ok(Some(Ok(Target {
        a: a.clone(),
        transpose_a: trans_a,
        weight: b.clone(),
        transposed_b: trans_b,
        b: weight.values,
        k: weight.k,
        n: weight.n,
        alpha,
        bias: c.map(|c| (c.clone(), beta)),
        output: output.clone(),
    })))
}

/// A 2-D FLOAT weight in `[K, N]` layout.
struct Weight {
    values: Vec<f32>,
    k: usize,
    n: usize,
}

/// The `[K, N]` matrix an initializer holds (transposed from `[N, K]` when
/// `transposed`), or why it cannot be quantized.
fn weight_matrix(t: &TensorProto, transposed: bool) -> Result<Weight, String> {
    let name = &t.name;
    if t.data_type != DataType::Float as i32 {
        return Err(format!(
            "weight \"{name}\" is {}; only FLOAT weights are quantized",
            type_name(t.data_type)
        ));
    }
    let [rows, cols] = t.dims.as_slice() else {
        return Err(format!(
            "weight \"{name}\" has {} dimensions; only 2-D weights are quantized",
            t.dims.len()
        ));
    };
    let (rows, cols) = match (usize::try_from(*rows), usize::try_from(*cols)) {
        (Ok(r), Ok(c)) if r > 0 && c > 0 => (r, c),
        _ => return Err(format!("weight \"{name}\" has dims {:?}", t.dims)),
    };
    let values = float_values(t)?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format!("weight \"{name}\" holds NaN or infinite values"));
    }
    if !transposed {
        return Ok(Weight {
            values,
            k: rows,
            n: cols,
        });
    }
    // Stored [N, K]: row j of the stored matrix is column j of B.
    let mut out = vec![0.0f32; values.len()];
    for (j, row) in values.chunks_exact(cols).enumerate() {
        for (i, v) in row.iter().enumerate() {
            out[i * rows + j] = *v;
        }
    }
    Ok(Weight {
        values: out,
        k: cols,
        n: rows,
    })
}

/// The values of a FLOAT tensor held in the file, or why they cannot be read.
fn float_values(t: &TensorProto) -> Result<Vec<f32>, String> {
    let name = &t.name;
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err(format!(
            "\"{name}\" is stored in an external data file; load the model with its external data inlined (onnx.load + onnx.save without save_as_external_data)"
        ));
    }
    if t.segment.is_some() {
        return Err(format!("\"{name}\" is a segment of a larger tensor"));
    }
    let count = t
        .dims
        .iter()
        .try_fold(1usize, |acc, d| {
            usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| format!("\"{name}\" has invalid dims {:?}", t.dims))?;
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else if t.raw_data.len().is_multiple_of(4) {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        return Err(format!(
            "\"{name}\" has {} bytes of raw data, not a whole number of FLOAT values",
            t.raw_data.len()
        ));
    };
    if values.len() != count {
        return Err(format!(
            "\"{name}\" holds {} values but its dims {:?} need {count}",
            values.len(),
            t.dims
        ));
    }
    Ok(values)
}

/// Per-column symmetric int8: `(q, scales)` with `q` row-major `[K, N]`.
fn quantize_columns(b: &[f32], n: usize) -> (Vec<i8>, Vec<f32>) {
    let mut scales = vec![0.0f32; n];
    for row in b.chunks_exact(n) {
        for (s, v) in scales.iter_mut().zip(row) {
            *s = s.max(v.abs());
        }
    }
    for s in &mut scales {
        // An all-zero column quantizes to zeros whatever the scale.
        *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
    }
    let q = b
        .chunks_exact(n)
        .flat_map(|row| {
            row.iter()
                .zip(&scales)
                .map(|(v, s)| (v / s).round().clamp(-127.0, 127.0) as i8)
        })
        .collect();
    (q, scales)
}

/// Writes the replacement of one node.
struct Emit<'a> {
    names: &'a mut NameSet,
    nodes: &'a mut Vec<NodeProto>,
    initializers: &'a mut Vec<TensorProto>,
    /// (float weight, transposed) -> its int8 initializer.
    weights: &'a mut HashMap<(String, bool), String>,
    /// A input -> its DynamicQuantizeLinear outputs (shared between the
    /// nodes that read the same A).
    inputs: &'a mut HashMap<String, [String; 3]>,
}

impl Emit<'_> {
    fn rewrite(&mut self, node: &NodeProto, t: Target) {
        let base = format!("{}_quant", node_label(node));
        let a = if t.transpose_a {
            let at = self.names.fresh(&format!("{base}_a_t"));
            let mut tr = self.node(&base, "Transpose", vec![t.a.clone()], vec![at.clone()]);
            tr.attribute.push(ints_attr("perm", vec![1, 0]));
            self.nodes.push(tr);
            at
        } else {
            t.a.clone()
        };
        let [a_q, a_scale, a_zp] = match self.inputs.get(&a) {
            Some(q) => q.clone(),
            None => {
                let q = [
                    self.names.fresh(&format!("{a}_quantized")),
                    self.names.fresh(&format!("{a}_scale")),
                    self.names.fresh(&format!("{a}_zero_point")),
                ];
                let dql = self.node(&base, "DynamicQuantizeLinear", vec![a.clone()], q.to_vec());
                self.nodes.push(dql);
                self.inputs.insert(a.clone(), q.clone());
                q
            }
        };
        let (q, scales) = quantize_columns(&t.b, t.n);
        let key = (t.weight.clone(), t.transposed_b);
        let b_q = match self.weights.get(&key) {
            Some(name) => name.clone(),
            None => {
                let name = self.names.fresh(&format!("{}_quantized", t.weight));
                self.initializers.push(TensorProto {
                    dims: vec![t.k as i64, t.n as i64],
                    data_type: DataType::Int8 as i32,
                    name: name.clone(),
                    raw_data: q.iter().map(|v| v.to_le_bytes()[0]).collect(),
                    ..TensorProto::default()
                });
                self.weights.insert(key, name.clone());
                name
            }
        };
        let b_scale = self.names.fresh(&format!("{base}_b_scale"));
        self.initializers.push(TensorProto {
            dims: vec![t.n as i64],
            data_type: DataType::Float as i32,
            name: b_scale.clone(),
            raw_data: scales
                .iter()
                .flat_map(|s| (s * t.alpha).to_le_bytes())
                .collect(),
            ..TensorProto::default()
        });
        let y_int = self.names.fresh(&format!("{base}_int32"));
        let y_float = self.names.fresh(&format!("{base}_float"));
        let scale = self.names.fresh(&format!("{base}_scale"));
        let mm = self.node(
            &base,
            "MatMulInteger",
            vec![a_q, b_q, a_zp],
            vec![y_int.clone()],
        );
        self.nodes.push(mm);
        let mut cast = self.node(&base, "Cast", vec![y_int], vec![y_float.clone()]);
        cast.attribute.push(int_attr("to", DataType::Float as i64));
        self.nodes.push(cast);
        let mul = self.node(&base, "Mul", vec![a_scale, b_scale], vec![scale.clone()]);
        self.nodes.push(mul);
        let Some((c, beta)) = t.bias else {
            let out = self.node(&base, "Mul", vec![y_float, scale], vec![t.output]);
            self.nodes.push(out);
            return;
        };
        let product = self.names.fresh(&format!("{base}_product"));
        let mul = self.node(&base, "Mul", vec![y_float, scale], vec![product.clone()]);
        self.nodes.push(mul);
        let c = if beta == 1.0 {
            c
        } else {
            let beta_name = self.names.fresh(&format!("{base}_beta"));
            self.initializers.push(TensorProto {
                dims: vec![],
                data_type: DataType::Float as i32,
                name: beta_name.clone(),
                raw_data: beta.to_le_bytes().to_vec(),
                ..TensorProto::default()
            });
            let scaled = self.names.fresh(&format!("{base}_bias"));
            let mul = self.node(&base, "Mul", vec![c, beta_name], vec![scaled.clone()]);
            self.nodes.push(mul);
            scaled
        };
        let add = self.node(&base, "Add", vec![product, c], vec![t.output]);
        self.nodes.push(add);
    }

    fn node(&mut self, base: &str, op: &str, input: Vec<String>, output: Vec<String>) -> NodeProto {
        NodeProto {
            input,
            output,
            name: self.names.fresh(&format!("{base}/{op}")),
            op_type: op.into(),
            ..NodeProto::default()
        }
    }
}

/// Every name a graph (and its subgraphs) uses, to make new ones unique.
struct NameSet(HashSet<String>);

impl NameSet {
    fn of(graph: &GraphProto) -> NameSet {
        let mut set = HashSet::new();
        collect_names(graph, &mut set);
        NameSet(set)
    }

    /// `base`, or `base_1`, `base_2`, ... when taken; reserved.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 0u64;
        while self.0.contains(&name) {
            i += 1;
            name = format!("{base}_{i}");
        }
        self.0.insert(name.clone());
        name
    }
}

fn collect_names(graph: &GraphProto, set: &mut HashSet<String>) {
    for node in &graph.node {
        set.insert(node.name.clone());
        set.extend(node.input.iter().cloned());
        set.extend(node.output.iter().cloned());
        for g in subgraphs(node) {
            collect_names(g, set);
        }
    }
    set.extend(graph.initializer.iter().map(|t| t.name.clone()));
    set.extend(graph.input.iter().map(|v| v.name.clone()));
    set.extend(graph.output.iter().map(|v| v.name.clone()));
    set.extend(graph.value_info.iter().map(|v| v.name.clone()));
}

/// Names read by a node of the graph or of a subgraph, or output by the graph.
fn referenced_names(graph: &GraphProto) -> HashSet<String> {
    fn walk(graph: &GraphProto, set: &mut HashSet<String>) {
        for node in &graph.node {
            set.extend(node.input.iter().cloned());
            for g in subgraphs(node) {
                walk(g, set);
            }
        }
        set.extend(graph.output.iter().map(|v| v.name.clone()));
    }
    let mut set = HashSet::new();
    walk(graph, &mut set);
    set
}

fn subgraphs(node: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    node.attribute
        .iter()
        .flat_map(|a| a.g.iter().chain(a.graphs.iter()))
}

/// The default-domain opset, when the model imports it.
fn default_opset(model: &ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| is_default_domain(&o.domain))
        .map(|o| o.version)
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// Default-domain operators whose meaning does not change between opset 7
/// and opset 11 for a model valid at the older opset (what changed is new
/// types, negative axes, or new optional inputs). Any other operator stops
/// an opset raise: Clip, Pad, Slice, TopK, Resize, Upsample,
/// BatchNormalization and the like did change.
const SAME_AT_OPSET_11: &[&str] = &[
    "Abs",
    "Acos",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Atan",
    "Cast",
    "Ceil",
    "Concat",
    "Constant",
    "Cos",
    "Div",
    "Elu",
    "Equal",
    "Exp",
    "Flatten",
    "Floor",
    "Gather",
    "Gemm",
    "Greater",
    "HardSigmoid",
    "Hardmax",
    "Identity",
    "LeakyRelu",
    "Less",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sin",
    "Size",
    "Softmax",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Xor",
];

/// Raise the default-domain opset to 11 when it is lower (and the IR
/// version to 6), when every operator means the same there; the opset after.
fn raise_opset(model: &mut ModelProto, before: i64) -> Result<i64, TrainError> {
    if before >= INT8_MIN_OPSET {
        return Ok(before);
    }
    if before > 0 {
        let mut ops = HashSet::new();
        if let Some(g) = &model.graph {
            collect_default_ops(g, &mut ops);
        }
        let mut changed: Vec<&str> = ops
            .iter()
            .map(String::as_str)
            .filter(|op| {
                !SAME_AT_OPSET_11.contains(op)
                    && !matches!(*op, "DynamicQuantizeLinear" | "MatMulInteger")
            })
            .collect();
        changed.sort_unstable();
        if !changed.is_empty() {
            return Err(onnx_error(format!(
                "the model uses default-domain opset {before}; int8 quantization needs opset {INT8_MIN_OPSET}, and raising it would change the meaning of {}; convert the model to opset >= {INT8_MIN_OPSET} first (onnx.version_converter)",
                changed
                    .iter()
                    .map(|op| format!("\"{op}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    match model
        .opset_import
        .iter_mut()
        .find(|o| is_default_domain(&o.domain))
    {
        Some(o) => o.version = INT8_MIN_OPSET,
        None => model.opset_import.push(OperatorSetIdProto {
            domain: String::new(),
            version: INT8_MIN_OPSET,
        }),
    }
    model.ir_version = model.ir_version.max(INT8_MIN_IR);
    Ok(INT8_MIN_OPSET)
}

fn collect_default_ops(graph: &GraphProto, ops: &mut HashSet<String>) {
    for node in &graph.node {
        if is_default_domain(&node.domain) {
            ops.insert(node.op_type.clone());
        }
        for g in subgraphs(node) {
            collect_default_ops(g, ops);
        }
    }
}

/// Decode an ONNX model, refusing files whose top-level fields the
/// protobuf types would drop on re-encoding.
fn decode(bytes: &[u8]) -> Result<ModelProto, TrainError> {
    if bytes.is_empty() {
        return Err(onnx_error("the file is empty"));
    }
    let model = ModelProto::decode(bytes)
        .map_err(|e| onnx_error(format!("the bytes are not an ONNX ModelProto ({e})")))?;
    let unknown = top_level_fields(bytes)
        .map_err(|e| onnx_error(format!("the bytes are not an ONNX ModelProto ({e})")))?
        .into_iter()
        .filter(|f| !KNOWN_MODEL_FIELDS.contains(f))
        .collect::<Vec<_>>();
    if let Some(field) = unknown.first() {
        let what = match field {
            25 => "model-local functions (ModelProto.functions, field 25)".to_string(),
            f => format!("ModelProto field {f}"),
        };
        return Err(onnx_error(format!(
            "the model carries {what}, which this rewrite would drop; export it without them"
        )));
    }
    if model.graph.is_none() {
        return Err(onnx_error("the model has no graph"));
    }
    Ok(model)
}

/// The ModelProto fields `tract_onnx::pb` carries.
const KNOWN_MODEL_FIELDS: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 14, 20];

/// Field numbers of a protobuf message's top-level fields.
fn top_level_fields(mut bytes: &[u8]) -> Result<Vec<u32>, String> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let field = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        match key & 7 {
            0 => {
                varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..).ok_or("truncated fixed64")?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|_| "length too large")?;
                bytes = bytes.get(len..).ok_or("truncated length-delimited field")?;
            }
            5 => bytes = bytes.get(4..).ok_or("truncated fixed32")?,
            w => return Err(format!("unsupported wire type {w}")),
        }
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    Ok(fields)
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or("truncated varint")?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn node_label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        node.output
            .first()
            .cloned()
            .unwrap_or_else(|| node.op_type.clone())
    }
}

fn node_error(node: &NodeProto, reason: String) -> TrainError {
    TrainError::Node {
        node: node_label(node),
        op_type: node.op_type.clone(),
        reason,
    }
}

fn onnx_error(reason: impl Into<String>) -> TrainError {
    TrainError::Onnx {
        reason: reason.into(),
    }
}

fn skipped_text(skipped: &[Skipped]) -> String {
    skipped
        .iter()
        .map(|s| format!("{} \"{}\": {}", s.kind, s.name, s.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

fn type_name(data_type: i32) -> String {
    DataType::try_from(data_type)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("data type {data_type}"))
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..AttributeProto::default()
    }
}

fn ints_attr(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints,
        ..AttributeProto::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use tract_onnx::pb::type_proto::{self, Tensor as TensorTypeProto};
    use tract_onnx::pb::{TensorShapeProto, TypeProto, ValueInfoProto};

    fn fixture(name: &str) -> Vec<u8> {
        let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models")
            .join(name)
            .join("1/model.onnx");
        std::fs::read(path).unwrap()
    }

    fn ops(bytes: &[u8]) -> Vec<String> {
        ModelProto::decode(bytes)
            .unwrap()
            .graph
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.clone())
            .collect()
    }

    fn info(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(TensorTypeProto {
                    elem_type: DataType::Float as i32,
                    shape: Some(TensorShapeProto { dim: vec![] }),
                })),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        }
    }

    fn floats(name: &str, dims: Vec<i64>, values: Vec<f32>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims,
            data_type: DataType::Float as i32,
            float_data: values,
            ..TensorProto::default()
        }
    }

    fn model(
        opset: i64,
        nodes: Vec<NodeProto>,
        init: Vec<TensorProto>,
        inputs: &[&str],
    ) -> Vec<u8> {
        ModelProto {
            ir_version: 5,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(GraphProto {
                node: nodes,
                initializer: init,
                input: inputs.iter().map(|i| info(i)).collect(),
                output: vec![info("y")],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
        .encode_to_vec()
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            op_type: op.into(),
            ..NodeProto::default()
        }
    }

    #[test]
    fn the_mlp_fixture_gets_both_matmuls_quantized() {
        let bytes = fixture("mlp");
        let (out, report) = quantize_int8(&bytes).unwrap();
        assert_eq!(report.mode, MODE_INT8);
        let weights: Vec<(&str, [usize; 2])> = report
            .nodes_rewritten
            .iter()
            .map(|n| (n.weight.as_str(), n.shape))
            .collect();
        assert_eq!(
            weights,
            [("coefficient", [30, 16]), ("coefficient1", [16, 3])]
        );
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        assert_eq!((report.opset_before, report.opset_after), (13, 13));
        assert_eq!(report.bytes_after, out.len());
        assert!(report.bytes_after < report.bytes_before, "{report:?}");
        let ops = ops(&out);
        assert!(!ops.iter().any(|o| o == "MatMul"), "{ops:?}");
        assert_eq!(ops.iter().filter(|o| *o == "MatMulInteger").count(), 2);
        assert_eq!(
            ops.iter().filter(|o| *o == "DynamicQuantizeLinear").count(),
            2
        );
        let graph = ModelProto::decode(out.as_slice()).unwrap().graph.unwrap();
        let names: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        assert!(!names.contains(&"coefficient"), "{names:?}");
        let q = graph
            .initializer
            .iter()
            .find(|t| t.name == "coefficient_quantized")
            .unwrap();
        assert_eq!(q.data_type, DataType::Int8 as i32);
        assert_eq!(q.dims, [30, 16]);
        // Every column uses the full int8 range: its largest weight is ±127.
        let q: Vec<i8> = q.raw_data.iter().map(|b| *b as i8).collect();
        for j in 0..16 {
            let max = (0..30).map(|i| q[i * 16 + j].unsigned_abs()).max().unwrap();
            assert_eq!(max, 127, "column {j}");
        }
    }

    #[test]
    fn per_column_quantization_round_trips_within_half_a_step() {
        let b = [0.5f32, -2.0, 0.0, -0.25, 1.0, 0.0, 0.125, 0.3, 0.0];
        let (q, s) = quantize_columns(&b, 3);
        assert_eq!(s, [0.5 / 127.0, 2.0 / 127.0, 1.0]);
        for (i, (v, q)) in b.iter().zip(&q).enumerate() {
            let back = f32::from(*q) * s[i % 3];
            assert!(
                (back - v).abs() <= s[i % 3] / 2.0 + 1e-7,
                "{i}: {v} vs {back}"
            );
        }
        assert_eq!(q[2], 0, "an all-zero column stays zero");
    }

    #[test]
    fn gemm_with_trans_b_stores_the_transposed_weight_and_folds_alpha() {
        let mut gemm = node("Gemm", &["x", "w", "c"], "y");
        gemm.attribute = vec![
            AttributeProto {
                name: "alpha".into(),
                r#type: AttributeType::Float as i32,
                f: 2.0,
                ..AttributeProto::default()
            },
            int_attr("transB", 1),
        ];
        // w is [N=2, K=3]: column j of B is row j of w.
        let w = floats("w", vec![2, 3], vec![1.0, 2.0, 3.0, -4.0, 5.0, 6.0]);
        let c = floats("c", vec![2], vec![0.5, -0.5]);
        let bytes = model(13, vec![gemm], vec![w, c], &["x"]);
        let (out, report) = quantize_int8(&bytes).unwrap();
        assert_eq!(report.nodes_rewritten[0].shape, [3, 2]);
        let graph = ModelProto::decode(out.as_slice()).unwrap().graph.unwrap();
        let q = graph
            .initializer
            .iter()
            .find(|t| t.name == "w_quantized")
            .unwrap();
        assert_eq!(q.dims, [3, 2]);
        let q: Vec<i8> = q.raw_data.iter().map(|b| *b as i8).collect();
        // Column 0 = (1, 2, 3), scale 3/127; column 1 = (-4, 5, 6), scale 6/127.
        assert_eq!(q, [42, -85, 85, 106, 127, 127]);
        let scale = graph
            .initializer
            .iter()
            .find(|t| t.name.ends_with("_b_scale"))
            .unwrap();
        let scale: Vec<f32> = scale
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(scale, [2.0 * 3.0 / 127.0, 2.0 * 6.0 / 127.0]);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "DynamicQuantizeLinear",
                "MatMulInteger",
                "Cast",
                "Mul",
                "Mul",
                "Add"
            ]
        );
        assert_eq!(graph.node.last().unwrap().output, ["y"]);
        assert_eq!(
            graph.node.last().unwrap().input[1],
            "c",
            "beta = 1: C as is"
        );
    }

    #[test]
    fn a_shared_input_is_quantized_once() {
        let w1 = floats("w1", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let w2 = floats("w2", vec![2, 2], vec![-1.0, 2.0, 3.0, 4.0]);
        let nodes = vec![
            node("MatMul", &["x", "w1"], "a"),
            node("MatMul", &["x", "w2"], "b"),
            node("Add", &["a", "b"], "y"),
        ];
        let (out, report) = quantize_int8(&model(13, nodes, vec![w1, w2], &["x"])).unwrap();
        assert_eq!(report.nodes_rewritten.len(), 2);
        let ops = ops(&out);
        assert_eq!(
            ops.iter().filter(|o| *o == "DynamicQuantizeLinear").count(),
            1,
            "{ops:?}"
        );
    }

    #[test]
    fn an_old_opset_is_raised_to_11_only_when_nothing_changes_meaning() {
        let w = floats("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let nodes = vec![node("MatMul", &["x", "w"], "h"), node("Relu", &["h"], "y")];
        let (out, report) = quantize_int8(&model(9, nodes, vec![w.clone()], &["x"])).unwrap();
        assert_eq!((report.opset_before, report.opset_after), (9, 11));
        let m = ModelProto::decode(out.as_slice()).unwrap();
        assert_eq!(m.ir_version, 6);
        assert_eq!(default_opset(&m), Some(11));

        let nodes = vec![node("MatMul", &["x", "w"], "h"), node("Clip", &["h"], "y")];
        let err = quantize_int8(&model(9, nodes, vec![w], &["x"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"Clip\"") && err.contains("opset 9"), "{err}");
    }

    #[test]
    fn weights_that_cannot_be_quantized_are_left_alone_and_named() {
        let w = floats("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let bad = floats("bad", vec![2, 2], vec![1.0, f32::NAN, 3.0, 4.0]);
        let nodes = vec![
            node("MatMul", &["x", "w"], "a"),
            node("MatMul", &["x", "z"], "b"),
            node("MatMul", &["a", "bad"], "c"),
            node("Add", &["b", "c"], "y"),
        ];
        let (_, report) = quantize_int8(&model(13, nodes, vec![w, bad], &["x", "z"])).unwrap();
        assert_eq!(report.nodes_rewritten.len(), 1);
        let reasons: Vec<(&str, &str)> = report
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("b", "B input \"z\" is not an initializer"),
                ("c", "weight \"bad\" holds NaN or infinite values"),
            ]
        );
    }

    #[test]
    fn a_tree_model_has_nothing_to_quantize() {
        for mode in [quantize_int8, to_fp16] {
            let err = mode(&fixture("forest")).unwrap_err();
            assert!(matches!(err, TrainError::NothingToQuantize { .. }), "{err}");
        }
        let err = quantize_int8(&fixture("forest")).unwrap_err().to_string();
        assert_eq!(
            err,
            "nothing to quantize: no MatMul/Gemm with constant float weights"
        );
        let nodes = vec![node("MatMul", &["x", "z"], "y")];
        let err = quantize_int8(&model(13, nodes, vec![], &["x", "z"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no MatMul/Gemm with constant float weights")
                && err.contains("MatMul \"y\": B input \"z\" is not an initializer"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_files_are_refused_without_panicking() {
        let good = fixture("mlp");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("text", b"this is not a model".to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
            (
                "garbage",
                (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            ),
        ];
        for (what, bytes) in cases {
            for mode in [quantize_int8, to_fp16] {
                let err = mode(&bytes).unwrap_err();
                assert!(matches!(err, TrainError::Onnx { .. }), "{what}: {err}");
            }
        }
        // A node with the wrong arity is named.
        let w = floats("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let err = quantize_int8(&model(
            13,
            vec![node("MatMul", &["x"], "y")],
            vec![w],
            &["x"],
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("node \"y\" (MatMul): MatMul needs 2 inputs"),
            "{err}"
        );
    }

    #[test]
    fn model_local_functions_are_refused_rather_than_dropped() {
        let mut bytes = fixture("mlp");
        // ModelProto.functions (field 25, length-delimited), an empty message.
        bytes.extend_from_slice(&[0xca, 0x01, 0x00]);
        let err = quantize_int8(&bytes).unwrap_err().to_string();
        assert!(err.contains("model-local functions"), "{err}");
    }

    #[test]
    fn fp16_stores_every_float_initializer_as_half_with_a_cast() {
        let bytes = fixture("mlp");
        let (out, report) = to_fp16(&bytes).unwrap();
        assert_eq!(report.mode, MODE_FP16);
        assert_eq!(report.initializers_converted, 4);
        assert_eq!(report.values_clamped, 0);
        // 547 weights: 2188 bytes as FLOAT, 1094 as FLOAT16; each Cast node
        // costs under 100 bytes. (A larger model halves; see docs/efficiency.md.)
        assert!(
            report.bytes_before - report.bytes_after >= 1094 - 4 * 100,
            "{report:?}"
        );
        let graph = ModelProto::decode(out.as_slice()).unwrap().graph.unwrap();
        let halves: Vec<&str> = graph
            .initializer
            .iter()
            .filter(|t| t.data_type == DataType::Float16 as i32)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(
            halves,
            [
                "coefficient_fp16",
                "intercepts_fp16",
                "coefficient1_fp16",
                "intercepts1_fp16"
            ]
        );
        let casts: Vec<(&str, &str)> = graph.node[..4]
            .iter()
            .map(|n| (n.input[0].as_str(), n.output[0].as_str()))
            .collect();
        assert_eq!(casts[0], ("coefficient_fp16", "coefficient"));
        // Values: each within half a float16 step of the original.
        let original = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let w = float_values(&original.initializer[0]).unwrap();
        let h = &graph.initializer[0].raw_data;
        for (v, b) in w.iter().zip(h.chunks_exact(2)) {
            let back = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            assert!((back - v).abs() <= v.abs() * 4.9e-4 + 6e-8, "{v} vs {back}");
        }
    }

    #[test]
    fn fp16_clamps_values_beyond_the_half_range_and_counts_them() {
        let w = floats("w", vec![3], vec![1e6, -7e4, 1.0]);
        let bytes = model(13, vec![node("Add", &["x", "w"], "y")], vec![w], &["x"]);
        let (out, report) = to_fp16(&bytes).unwrap();
        assert_eq!(report.values_clamped, 2);
        let graph = ModelProto::decode(out.as_slice()).unwrap().graph.unwrap();
        let back: Vec<f32> = graph.initializer[0]
            .raw_data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(back, [65504.0, -65504.0, 1.0]);
    }
}
