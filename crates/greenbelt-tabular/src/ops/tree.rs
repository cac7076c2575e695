//! Tree ensembles: `TreeEnsembleClassifier`, `TreeEnsembleRegressor` (ai.onnx.ml
//! 1–3) and `TreeEnsemble` (ai.onnx.ml 5), with ONNX Runtime's semantics:
//! - scores are accumulated per row in tree order, in the threshold type
//!   (f64 for double inputs, f32 otherwise), then cast to f32;
//! - a NaN goes to the true branch where `nodes_missing_value_tracks_true`
//!   says so, otherwise wherever the comparison with NaN sends it (false);
//! - a single-target ensemble uses each leaf's first weight;
//! - the binary classifier cases (one class carrying every weight, one or two
//!   base values) give the labels and score columns ONNX Runtime gives.
//!
//! Layout: every tree's branches in one flat array of 16-byte (f32) nodes,
//! laid out depth-first from each root with the true child right after its
//! parent; leaves in an array of their own (a child link with the top bit set
//! names a leaf), carrying their first weight inline, so the walk touches
//! only branches. Rows are scored in blocks: trees outer, rows inner, so a
//! tree's branches stay in cache while a block of rows walks it; within a
//! block, [`LANES`] rows walk a tree in lockstep, so the loads of their next
//! nodes are in flight together instead of one row's miss after another's.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use greenbelt_core::TensorData;

use crate::attrs::NodeCtx;
use crate::error::EngineError;
use crate::num::{Num, Post, logistic, probit, transform_row};
use crate::ops::{Kernel, input};
use crate::value::{Value, ValueRef};

const LEAF: u8 = 0;
const LEQ: u8 = 1;
const LT: u8 = 2;
const GTE: u8 = 3;
const GT: u8 = 4;
const EQ: u8 = 5;
const NEQ: u8 = 6;
const MEMBER: u8 = 7;
const MODE: u8 = 7;
const MISSING_TRUE: u8 = 8;

/// Rows scored together per pass over the trees.
const BLOCK: usize = 128;
/// Rows that walk one tree in lockstep.
const LANES: usize = 8;

/// A node as the operator's attributes describe it, before the layout.
#[derive(Debug, Clone, Copy)]
struct Node<T> {
    /// Threshold of a branch; first weight of a leaf; set index of MEMBER.
    value: T,
    feature: u32,
    /// Branch: the true child. Leaf: index of its first weight.
    a: u32,
    /// Branch: the false child. Leaf: number of weights.
    b: u32,
    flags: u8,
}

/// A child link with this bit set names a leaf (the rest is its index).
const LEAF_BIT: u32 = 1 << 31;
/// `Branch::key`: the feature in the low bits, then the mode, then the
/// missing-value track.
const FEATURE_MASK: u32 = (1 << 27) - 1;
const MODE_SHIFT: u32 = 27;
const MISSING_KEY: u32 = 1 << 30;

/// A branch as the walk reads it: 16 bytes in f32.
#[derive(Debug, Clone, Copy)]
struct Branch<T> {
    /// The threshold; the set index of a MEMBER branch.
    value: T,
    key: u32,
    yes: u32,
    no: u32,
}

impl<T: Num> Branch<T> {
    #[inline(always)]
    fn feature(&self) -> usize {
        (self.key & FEATURE_MASK) as usize
    }

    #[inline(always)]
    fn mode(&self) -> u8 {
        ((self.key >> MODE_SHIFT) & u32::from(MODE)) as u8
    }

    #[inline(always)]
    fn missing_true(&self) -> bool {
        self.key & MISSING_KEY != 0
    }
}

/// A leaf: its first weight inline, and where all of its weights are.
#[derive(Debug, Clone, Copy)]
struct Leaf<T> {
    value: T,
    start: u32,
    count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// Attributes common to every tree operator, normalised to one form: one
/// entry per node (leaves included), one entry per leaf weight.
struct Spec {
    tree: Vec<i64>,
    id: Vec<i64>,
    feature: Vec<i64>,
    mode: Vec<u8>,
    value: Vec<f64>,
    true_id: Vec<i64>,
    false_id: Vec<i64>,
    missing_true: Vec<bool>,
    /// For MEMBER nodes: the set, by node position.
    members: HashMap<usize, Vec<f64>>,
    w_tree: Vec<i64>,
    w_node: Vec<i64>,
    w_target: Vec<i64>,
    w_value: Vec<f64>,
    base: Vec<f64>,
    targets: usize,
    aggregate: Aggregate,
    post: Post,
}

/// A built ensemble in one float type.
struct Forest<T> {
    branches: Vec<Branch<T>>,
    leaves: Vec<Leaf<T>>,
    /// Child links (a tree can be a single leaf).
    roots: Vec<u32>,
    weights: Vec<(u32, T)>,
    members: Vec<MemberSet<T>>,
    base: Vec<T>,
    /// The one branch mode every branch uses, if they all use one.
    same_mode: Option<u8>,
    has_missing: bool,
    max_feature: usize,
}

fn mode_of(s: &[u8]) -> Option<u8> {
    Some(match s {
        b"BRANCH_LEQ" => LEQ,
        b"BRANCH_LT" => LT,
        b"BRANCH_GTE" => GTE,
        b"BRANCH_GT" => GT,
        b"BRANCH_EQ" => EQ,
        b"BRANCH_NEQ" => NEQ,
        b"LEAF" => LEAF,
        _ => return None,
    })
}

fn aggregate_of(s: &str) -> Option<Aggregate> {
    Some(match s {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        _ => return None,
    })
}

/// A float attribute that may come as `name` (floats) or `name_as_tensor`.
fn floats_or_tensor(ctx: &NodeCtx<'_>, name: &str) -> Result<Vec<f64>, EngineError> {
    let tensor_name = format!("{name}_as_tensor");
    if let Some(t) = ctx.tensor(&tensor_name)? {
        return match t.data {
            TensorData::Fp64(v) => Ok(v),
            TensorData::Fp32(v) => Ok(v.into_iter().map(f64::from).collect()),
            _ => Err(ctx.invalid(format!("{tensor_name} must be a float or double tensor"))),
        };
    }
    Ok(ctx.floats(name).iter().map(|v| f64::from(*v)).collect())
}

impl Spec {
    /// `TreeEnsembleClassifier` / `TreeEnsembleRegressor` (ai.onnx.ml ≤ 3).
    fn from_v3(ctx: &NodeCtx<'_>, classifier: bool) -> Result<Spec, EngineError> {
        let prefix = if classifier { "class" } else { "target" };
        let modes: Vec<u8> = ctx
            .strings("nodes_modes")
            .iter()
            .map(|m| {
                mode_of(m).ok_or_else(|| {
                    ctx.unsupported(format!("node mode \"{}\"", String::from_utf8_lossy(m)))
                })
            })
            .collect::<Result<_, _>>()?;
        let n = modes.len();
        let value = floats_or_tensor(ctx, "nodes_values")?;
        let tree = ctx.ints("nodes_treeids").to_vec();
        let id = ctx.ints("nodes_nodeids").to_vec();
        let feature = ctx.ints("nodes_featureids").to_vec();
        let true_id = ctx.ints("nodes_truenodeids").to_vec();
        let false_id = ctx.ints("nodes_falsenodeids").to_vec();
        for (name, len) in [
            ("nodes_treeids", tree.len()),
            ("nodes_nodeids", id.len()),
            ("nodes_featureids", feature.len()),
            ("nodes_truenodeids", true_id.len()),
            ("nodes_falsenodeids", false_id.len()),
            ("nodes_values", value.len()),
        ] {
            if len != n {
                return Err(ctx.invalid(format!("{name} has {len} entries, nodes_modes has {n}")));
            }
        }
        let mt = ctx.ints("nodes_missing_value_tracks_true");
        let missing_true = (0..n).map(|i| mt.get(i) == Some(&1)).collect();
        let w_tree = ctx.ints(&format!("{prefix}_treeids")).to_vec();
        let w_node = ctx.ints(&format!("{prefix}_nodeids")).to_vec();
        let w_target = ctx.ints(&format!("{prefix}_ids")).to_vec();
        let w_value = floats_or_tensor(ctx, &format!("{prefix}_weights"))?;
        let m = w_tree.len();
        if w_node.len() != m || w_target.len() != m || w_value.len() != m {
            return Err(ctx.invalid(format!(
                "{prefix}_treeids, {prefix}_nodeids, {prefix}_ids and {prefix}_weights differ in length"
            )));
        }
        let post = Post::parse(&ctx.string("post_transform", "NONE"))
            .ok_or_else(|| ctx.unsupported("post_transform"))?;
        let aggregate = if classifier {
            Aggregate::Sum
        } else {
            aggregate_of(&ctx.string("aggregate_function", "SUM"))
                .ok_or_else(|| ctx.unsupported("aggregate_function"))?
        };
        let targets = if classifier {
            0 // set by the classifier from its labels
        } else {
            ctx.index("n_targets", ctx.int("n_targets", 0))?
        };
        Ok(Spec {
            tree,
            id,
            feature,
            mode: modes,
            value,
            true_id,
            false_id,
            missing_true,
            members: HashMap::new(),
            w_tree,
            w_node,
            w_target,
            w_value,
            base: floats_or_tensor(ctx, "base_values")?,
            targets,
            aggregate,
            post,
        })
    }

    /// `TreeEnsemble` (ai.onnx.ml 5): interior nodes and leaves in separate
    /// arrays; converted to the one-entry-per-node form, leaves numbered after
    /// the interior nodes.
    fn from_v5(ctx: &NodeCtx<'_>) -> Result<Spec, EngineError> {
        let tensor_f64 = |name: &str| -> Result<Vec<f64>, EngineError> {
            match ctx.tensor(name)? {
                None => Ok(Vec::new()),
                Some(t) => match t.data {
                    TensorData::Fp64(v) => Ok(v),
                    TensorData::Fp32(v) => Ok(v.into_iter().map(f64::from).collect()),
                    TensorData::Fp16(v) => Ok(v.into_iter().map(|x| x.to_f64()).collect()),
                    _ => Err(ctx.invalid(format!("{name} must be a float tensor"))),
                },
            }
        };
        let modes: Vec<u8> = match ctx.tensor("nodes_modes")? {
            Some(Value {
                data: TensorData::Uint8(v),
                ..
            }) => v,
            _ => return Err(ctx.invalid("nodes_modes must be a uint8 tensor")),
        };
        let splits = tensor_f64("nodes_splits")?;
        let feature = ctx.ints("nodes_featureids");
        let true_ids = ctx.ints("nodes_truenodeids");
        let false_ids = ctx.ints("nodes_falsenodeids");
        let true_leaf = ctx.ints("nodes_trueleafs");
        let false_leaf = ctx.ints("nodes_falseleafs");
        let mt = ctx.ints("nodes_missing_value_tracks_true");
        let roots = ctx.ints("tree_roots");
        let leaf_targets = ctx.ints("leaf_targetids");
        let leaf_weights = tensor_f64("leaf_weights")?;
        let membership = tensor_f64("membership_values")?;
        let n = modes.len();
        for (name, len) in [
            ("nodes_splits", splits.len()),
            ("nodes_featureids", feature.len()),
            ("nodes_truenodeids", true_ids.len()),
            ("nodes_falsenodeids", false_ids.len()),
            ("nodes_trueleafs", true_leaf.len()),
            ("nodes_falseleafs", false_leaf.len()),
        ] {
            if len != n {
                return Err(ctx.invalid(format!("{name} has {len} entries, nodes_modes has {n}")));
            }
        }
        if leaf_targets.len() != leaf_weights.len() {
            return Err(ctx.invalid("leaf_targetids and leaf_weights differ in length"));
        }
        let n_leaves = leaf_weights.len();
        // Membership sets, in the order of the MEMBER nodes, separated by NaN.
        let mut sets = membership.split(|v| v.is_nan()).map(<[f64]>::to_vec);
        let mut spec = Spec {
            tree: Vec::new(),
            id: Vec::new(),
            feature: Vec::new(),
            mode: Vec::new(),
            value: Vec::new(),
            true_id: Vec::new(),
            false_id: Vec::new(),
            missing_true: Vec::new(),
            members: HashMap::new(),
            w_tree: Vec::new(),
            w_node: Vec::new(),
            w_target: Vec::new(),
            w_value: Vec::new(),
            base: Vec::new(),
            targets: ctx.index("n_targets", ctx.int("n_targets", 0))?,
            aggregate: match ctx.int("aggregate_function", 1) {
                0 => Aggregate::Average,
                1 => Aggregate::Sum,
                2 => Aggregate::Min,
                3 => Aggregate::Max,
                _ => return Err(ctx.unsupported("aggregate_function")),
            },
            // ONNX Runtime 1.32 reads codes 1-3 with its own numbering (1 as
            // LOGISTIC, 2 as SOFTMAX; the spec says the reverse): a model
            // using them is left to ONNX Runtime rather than guessed at.
            post: match ctx.int("post_transform", 0) {
                0 => Post::None,
                4 => Post::Probit,
                other => {
                    return Err(ctx.unsupported(format!(
                        "post_transform {other} (ONNX Runtime and the ONNX spec number it differently)"
                    )));
                }
            },
        };
        // Walk each tree from its root so that nodes get tree ids; interior
        // node i keeps id i, leaf j gets id n + j.
        let mut tree_of_node = vec![-1i64; n];
        let mut tree_of_leaf = vec![-1i64; n_leaves];
        for (t, root) in roots.iter().enumerate() {
            let t = t as i64;
            let r = ctx.index("tree_roots", *root)?;
            let mut stack = vec![(r, false)];
            // A single-leaf tree has a root that is a leaf: not expressible in
            // v5 (roots index interior nodes), so every root is interior.
            while let Some((i, is_leaf)) = stack.pop() {
                if is_leaf {
                    let slot = tree_of_leaf
                        .get_mut(i)
                        .ok_or_else(|| ctx.invalid(format!("leaf {i} out of range")))?;
                    *slot = t;
                    continue;
                }
                let slot = tree_of_node
                    .get_mut(i)
                    .ok_or_else(|| ctx.invalid(format!("node {i} out of range")))?;
                if *slot != -1 {
                    return Err(ctx.invalid(format!("node {i} is reached twice")));
                }
                *slot = t;
                stack.push((
                    ctx.index("nodes_truenodeids", true_ids[i])?,
                    true_leaf[i] == 1,
                ));
                stack.push((
                    ctx.index("nodes_falsenodeids", false_ids[i])?,
                    false_leaf[i] == 1,
                ));
            }
        }
        for i in 0..n {
            let mode = match modes[i] {
                0 => LEQ,
                1 => LT,
                2 => GTE,
                3 => GT,
                4 => EQ,
                5 => NEQ,
                6 => MEMBER,
                m => return Err(ctx.unsupported(format!("node mode {m}"))),
            };
            if mode == MEMBER {
                let set = sets.next().ok_or_else(|| {
                    ctx.invalid("membership_values has fewer sets than MEMBER nodes")
                })?;
                spec.members.insert(spec.mode.len(), set);
            }
            let child = |id: i64, leaf: bool| if leaf { id + n as i64 } else { id };
            spec.tree.push(tree_of_node[i]);
            spec.id.push(i as i64);
            spec.feature.push(feature[i]);
            spec.mode.push(mode);
            spec.value.push(splits[i]);
            spec.true_id.push(child(true_ids[i], true_leaf[i] == 1));
            spec.false_id.push(child(false_ids[i], false_leaf[i] == 1));
            spec.missing_true.push(mt.get(i) == Some(&1));
        }
        for j in 0..n_leaves {
            let id = (n + j) as i64;
            spec.tree.push(tree_of_leaf[j]);
            spec.id.push(id);
            spec.feature.push(0);
            spec.mode.push(LEAF);
            spec.value.push(0.0);
            spec.true_id.push(0);
            spec.false_id.push(0);
            spec.missing_true.push(false);
            spec.w_tree.push(tree_of_leaf[j]);
            spec.w_node.push(id);
            spec.w_target.push(leaf_targets[j]);
            spec.w_value.push(leaf_weights[j]);
        }
        // Trees must be contiguous for root detection: order nodes by tree,
        // stably (ids keep their meaning; positions do not matter).
        // Each tree's root first in its group; nodes no root reaches dropped.
        let root_ids: Vec<i64> = roots.to_vec();
        let mut order: Vec<usize> = (0..spec.mode.len())
            .filter(|i| spec.tree[*i] >= 0)
            .collect();
        order.sort_by_key(|i| {
            let t = spec.tree[*i];
            let is_root = *i < n && root_ids.get(t as usize) == Some(&spec.id[*i]);
            (t, !is_root, *i)
        });
        let pick = |v: &Vec<i64>| order.iter().map(|i| v[*i]).collect::<Vec<_>>();
        let members = spec
            .members
            .drain()
            .map(|(pos, set)| (order.iter().position(|o| *o == pos).unwrap_or(0), set))
            .collect();
        Ok(Spec {
            tree: pick(&spec.tree),
            id: pick(&spec.id),
            feature: pick(&spec.feature),
            mode: order.iter().map(|i| spec.mode[*i]).collect(),
            value: order.iter().map(|i| spec.value[*i]).collect(),
            true_id: pick(&spec.true_id),
            false_id: pick(&spec.false_id),
            missing_true: order.iter().map(|i| spec.missing_true[*i]).collect(),
            members,
            ..spec
        })
    }

    fn build<T: Num>(&self, ctx_name: &str) -> Result<Forest<T>, String> {
        let n = self.mode.len();
        if n >= LEAF_BIT as usize {
            return Err(format!("{ctx_name}: {n} nodes, more than the engine holds"));
        }
        let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
        for i in 0..n {
            if index.insert((self.tree[i], self.id[i]), i as u32).is_some() {
                return Err(format!(
                    "{ctx_name}: node {} of tree {} appears twice",
                    self.id[i], self.tree[i]
                ));
            }
        }
        let mut members = Vec::new();
        let mut nodes = Vec::with_capacity(n);
        let mut max_feature = 0usize;
        for i in 0..n {
            let mode = self.mode[i];
            let mut node = Node {
                value: T::from_f64(self.value[i]),
                feature: 0,
                a: 0,
                b: 0,
                flags: mode
                    | if self.missing_true[i] {
                        MISSING_TRUE
                    } else {
                        0
                    },
            };
            if mode != LEAF {
                let f = usize::try_from(self.feature[i])
                    .map_err(|_| format!("{ctx_name}: negative feature id"))?;
                if f > FEATURE_MASK as usize {
                    return Err(format!(
                        "{ctx_name}: feature id {f} too large (at most {FEATURE_MASK})"
                    ));
                }
                max_feature = max_feature.max(f);
                node.feature = f as u32;
                let find = |id: i64, which: &str| {
                    index.get(&(self.tree[i], id)).copied().ok_or_else(|| {
                        format!(
                            "{ctx_name}: {which} node {id} of tree {} does not exist",
                            self.tree[i]
                        )
                    })
                };
                node.a = find(self.true_id[i], "true")?;
                node.b = find(self.false_id[i], "false")?;
                if node.a as usize == i || node.b as usize == i {
                    return Err(format!("{ctx_name}: node {} points to itself", self.id[i]));
                }
                if mode == MEMBER {
                    let set = self.members.get(&i).cloned().unwrap_or_default();
                    node.value = T::from_usize(members.len());
                    members.push(MemberSet::new(&set));
                }
            }
            nodes.push(node);
        }
        // Leaf weights, ordered by (tree, node, position) as ONNX Runtime does.
        let mut w: Vec<usize> = (0..self.w_tree.len()).collect();
        w.sort_by_key(|k| (self.w_tree[*k], self.w_node[*k], *k));
        let mut weights = Vec::with_capacity(w.len());
        let mut seen = vec![false; n];
        for k in w {
            let Some(&i) = index.get(&(self.w_tree[k], self.w_node[k])) else {
                return Err(format!(
                    "{ctx_name}: a weight names node {} of tree {}, which does not exist",
                    self.w_node[k], self.w_tree[k]
                ));
            };
            let node = &mut nodes[i as usize];
            if node.flags & MODE != LEAF {
                continue; // ONNX Runtime ignores weights on branches too
            }
            let target = u32::try_from(self.w_target[k])
                .map_err(|_| format!("{ctx_name}: negative target id"))?;
            let value = T::from_f64(self.w_value[k]);
            if !seen[i as usize] {
                seen[i as usize] = true;
                node.a = weights.len() as u32;
                node.value = value;
            }
            node.b += 1;
            weights.push((target, value));
        }
        let mut roots = Vec::new();
        for (i, has_weight) in seen.iter().enumerate() {
            if i == 0 || self.tree[i] != self.tree[i - 1] {
                roots.push(i as u32);
            }
            if self.mode[i] == LEAF && !has_weight {
                return Err(format!(
                    "{ctx_name}: leaf {} of tree {} has no weight",
                    self.id[i], self.tree[i]
                ));
            }
        }
        // Reject cycles (a walk would never end on some input): a depth-first
        // search with on-stack marks, linear in the nodes even when branches
        // share children.
        let mut state = vec![0u8; n]; // 0 new, 1 on the stack, 2 done
        for r in &roots {
            let mut stack = vec![(*r, false)];
            while let Some((i, leaving)) = stack.pop() {
                let i = i as usize;
                if leaving {
                    state[i] = 2;
                    continue;
                }
                match state[i] {
                    1 => return Err(format!("{ctx_name}: a tree has a cycle")),
                    2 => continue,
                    _ => {}
                }
                state[i] = 1;
                stack.push((i as u32, true));
                let node = nodes[i];
                if node.flags & MODE != LEAF {
                    for c in [node.a, node.b] {
                        match state[c as usize] {
                            1 => return Err(format!("{ctx_name}: a tree has a cycle")),
                            0 => stack.push((c, false)),
                            _ => {}
                        }
                    }
                }
            }
        }
        for (t, _) in &weights {
            if *t as usize >= self.targets.max(1) {
                return Err(format!(
                    "{ctx_name}: a weight goes to target/class {t}, the model has {}",
                    self.targets
                ));
            }
        }
        let branch_modes: Vec<u8> = self.mode.iter().copied().filter(|m| *m != LEAF).collect();
        let same_mode = match branch_modes.first() {
            Some(m) if branch_modes.iter().all(|x| x == m) && *m != MEMBER => Some(*m),
            _ => None,
        };
        let (branches, leaves, roots) = layout(&nodes, &roots);
        Ok(Forest {
            branches,
            leaves,
            roots,
            weights,
            members,
            base: self.base.iter().map(|v| T::from_f64(*v)).collect(),
            same_mode,
            has_missing: self.missing_true.iter().any(|m| *m),
            max_feature,
        })
    }
}

/// The walk's layout of checked, acyclic trees: per tree, depth-first from
/// the root with the true child first, so a branch's true child is the next
/// branch; leaves apart. A node shared by several parents is laid out once;
/// nodes no root reaches are left out.
fn layout<T: Num>(nodes: &[Node<T>], roots: &[u32]) -> (Vec<Branch<T>>, Vec<Leaf<T>>, Vec<u32>) {
    const UNSET: u32 = u32::MAX;
    let mut id = vec![UNSET; nodes.len()];
    let mut branches = Vec::new();
    let mut leaves = Vec::new();
    let mut stack = Vec::new();
    for r in roots {
        stack.push(*r);
        while let Some(i) = stack.pop() {
            let i = i as usize;
            if id[i] != UNSET {
                continue;
            }
            let node = nodes[i];
            if node.flags & MODE == LEAF {
                id[i] = LEAF_BIT | leaves.len() as u32;
                leaves.push(Leaf {
                    value: node.value,
                    start: node.a,
                    count: node.b,
                });
            } else {
                id[i] = branches.len() as u32;
                branches.push(Branch {
                    value: node.value,
                    key: node.feature
                        | u32::from(node.flags & MODE) << MODE_SHIFT
                        | if node.flags & MISSING_TRUE != 0 {
                            MISSING_KEY
                        } else {
                            0
                        },
                    // the original children until every node has its place
                    yes: node.a,
                    no: node.b,
                });
                stack.push(node.b);
                stack.push(node.a);
            }
        }
    }
    for b in &mut branches {
        b.yes = id[b.yes as usize];
        b.no = id[b.no as usize];
    }
    let roots = roots.iter().map(|r| id[*r as usize]).collect();
    (branches, leaves, roots)
}

/// A BRANCH_MEMBER set. ONNX Runtime tests categories as integers: when
/// every member is a whole number it truncates the input to an integer
/// before looking it up (so 0.3 is "in" a set holding 0), and a NaN is never
/// in a set (only its missing-value track can send it true).
#[derive(Debug, Clone)]
enum MemberSet<T> {
    Ints(Vec<i64>),
    Exact(Vec<T>),
}

impl<T: Num> MemberSet<T> {
    fn new(values: &[f64]) -> MemberSet<T> {
        let ints = values
            .iter()
            .all(|v| v.fract() == 0.0 && *v >= f64::from(i32::MIN) && *v <= f64::from(i32::MAX));
        if ints {
            MemberSet::Ints(values.iter().map(|v| *v as i64).collect())
        } else {
            MemberSet::Exact(values.iter().map(|v| T::from_f64(*v)).collect())
        }
    }

    fn contains(&self, v: T) -> bool {
        if v.is_nan() {
            return false;
        }
        match self {
            MemberSet::Ints(set) => {
                let w = v.to_f64().trunc();
                w >= f64::from(i32::MIN) && w <= f64::from(i32::MAX) && set.contains(&(w as i64))
            }
            MemberSet::Exact(set) => set.contains(&v),
        }
    }
}

#[inline(always)]
fn goes_true<T: Num>(mode: u8, v: T, th: T) -> bool {
    match mode {
        LEQ => v <= th,
        LT => v < th,
        GTE => v >= th,
        GT => v > th,
        EQ => v == th,
        NEQ => v != th,
        _ => false,
    }
}

impl<T: Num> Forest<T> {
    /// The child a branch sends row `x` to, for one branch mode everywhere.
    #[inline(always)]
    fn step_same<const M: u8, const MISSING: bool>(b: &Branch<T>, x: &[T]) -> u32 {
        let v = x[b.feature()];
        // `|` and `&`, not `||` and `&&`: no branch to mispredict, so the
        // child is picked with a select.
        let t = goes_true(M, v, b.value) | (MISSING & b.missing_true() & v.is_nan());
        if t { b.yes } else { b.no }
    }

    #[inline(always)]
    fn leaf(&self, link: u32) -> &Leaf<T> {
        &self.leaves[(link & !LEAF_BIT) as usize]
    }

    /// The leaf row `x` reaches from `root`, for one branch mode everywhere.
    #[inline(always)]
    fn walk_same<const M: u8, const MISSING: bool>(&self, root: u32, x: &[T]) -> &Leaf<T> {
        let mut i = root;
        while i & LEAF_BIT == 0 {
            i = Self::step_same::<M, MISSING>(&self.branches[i as usize], x);
        }
        self.leaf(i)
    }

    /// The leaves [`LANES`] rows starting at `row` reach from `root`, walked
    /// in lockstep: every step advances each row still on a branch, so the
    /// rows' node loads overlap. Branch-free per lane: a row already at its
    /// leaf re-reads branch 0 and keeps its link.
    #[inline(always)]
    fn walk_lanes<const M: u8, const MISSING: bool>(
        &self,
        root: u32,
        x: &[T],
        cols: usize,
        row: usize,
    ) -> [u32; LANES] {
        let mut at = [root; LANES];
        if root & LEAF_BIT != 0 {
            return at;
        }
        let xs: [&[T]; LANES] = std::array::from_fn(|l| &x[(row + l) * cols..(row + l + 1) * cols]);
        loop {
            let mut done = LEAF_BIT;
            for (link, xr) in at.iter_mut().zip(xs) {
                let i = *link;
                let on_branch = i & LEAF_BIT == 0;
                let b = &self.branches[if on_branch { i } else { 0 } as usize];
                let next = Self::step_same::<M, MISSING>(b, xr);
                *link = if on_branch { next } else { i };
                done &= *link;
            }
            if done != 0 {
                return at;
            }
        }
    }

    /// The leaf row `x` reaches from `root`, any mix of modes.
    fn walk_mixed(&self, root: u32, x: &[T]) -> &Leaf<T> {
        let mut i = root;
        while i & LEAF_BIT == 0 {
            let b = &self.branches[i as usize];
            let v = x[b.feature()];
            let mode = b.mode();
            let hit = if mode == MEMBER {
                self.members[b.value.to_usize()].contains(v)
            } else {
                goes_true(mode, v, b.value)
            };
            let t = hit | (b.missing_true() & v.is_nan());
            i = if t { b.yes } else { b.no };
        }
        self.leaf(i)
    }

    /// Visit the leaf each row of a block reaches in each tree: trees outer,
    /// rows inner. `f(row, leaf)`.
    fn for_each_leaf(
        &self,
        x: &[T],
        cols: usize,
        rows: std::ops::Range<usize>,
        mut f: impl FnMut(usize, &Leaf<T>),
    ) {
        macro_rules! run {
            ($m:expr, $miss:expr) => {
                for r in &self.roots {
                    let mut row = rows.start;
                    while row + LANES <= rows.end {
                        let at = self.walk_lanes::<{ $m }, { $miss }>(*r, x, cols, row);
                        for (l, link) in at.iter().enumerate() {
                            f(row + l, self.leaf(*link));
                        }
                        row += LANES;
                    }
                    for row in row..rows.end {
                        let xr = &x[row * cols..(row + 1) * cols];
                        f(row, self.walk_same::<{ $m }, { $miss }>(*r, xr));
                    }
                }
            };
        }
        // A block without NaN never takes a missing-value track: the walk
        // without that test gives the same leaves with less work per step.
        let missing = self.has_missing
            && x[rows.start * cols..rows.end * cols]
                .iter()
                .any(|v| v.is_nan());
        match (self.same_mode, missing) {
            (Some(LEQ), false) => run!(LEQ, false),
            (Some(LEQ), true) => run!(LEQ, true),
            (Some(LT), false) => run!(LT, false),
            (Some(LT), true) => run!(LT, true),
            _ => {
                for r in &self.roots {
                    for row in rows.clone() {
                        let xr = &x[row * cols..(row + 1) * cols];
                        f(row, self.walk_mixed(*r, xr));
                    }
                }
            }
        }
    }

    /// Raw per-target scores with their has-score flags, before the
    /// aggregate's finalisation, for rows `rows` into `acc` (len = rows × k).
    fn accumulate(
        &self,
        agg: Aggregate,
        k: usize,
        x: &[T],
        cols: usize,
        rows: std::ops::Range<usize>,
        acc: &mut [(T, bool)],
    ) {
        let start = rows.start;
        if k == 1 {
            self.for_each_leaf(x, cols, rows, |row, leaf| {
                let s = &mut acc[row - start];
                let w = leaf.value;
                match agg {
                    Aggregate::Sum | Aggregate::Average => s.0 += w,
                    Aggregate::Min => {
                        if !s.1 || w < s.0 {
                            s.0 = w;
                        }
                    }
                    Aggregate::Max => {
                        if !s.1 || w > s.0 {
                            s.0 = w;
                        }
                    }
                }
                s.1 = true;
            });
            return;
        }
        self.for_each_leaf(x, cols, rows, |row, leaf| {
            let base = (row - start) * k;
            let ws = &self.weights[leaf.start as usize..(leaf.start + leaf.count) as usize];
            for (t, w) in ws {
                let s = &mut acc[base + *t as usize];
                match agg {
                    Aggregate::Sum | Aggregate::Average => s.0 += *w,
                    Aggregate::Min => {
                        if !s.1 || *w < s.0 {
                            s.0 = *w;
                        }
                    }
                    Aggregate::Max => {
                        if !s.1 || *w > s.0 {
                            s.0 = *w;
                        }
                    }
                }
                s.1 = true;
            }
        });
    }
}

/// Row-major inputs in the forest's float type, converted as C++ converts.
fn features<T: Num>(x: ValueRef<'_>) -> Result<std::borrow::Cow<'_, [T]>, String> {
    use std::any::Any;
    use std::borrow::Cow;
    match x.data {
        TensorData::Fp32(v) => {
            if let Some(same) = (v as &dyn Any).downcast_ref::<Vec<T>>() {
                return Ok(Cow::Borrowed(same.as_slice()));
            }
            Ok(Cow::Owned(v.iter().map(|f| T::from_f32(*f)).collect()))
        }
        TensorData::Fp64(v) => {
            if let Some(same) = (v as &dyn Any).downcast_ref::<Vec<T>>() {
                return Ok(Cow::Borrowed(same.as_slice()));
            }
            Ok(Cow::Owned(v.iter().map(|f| T::from_f64(*f)).collect()))
        }
        TensorData::Int64(v) => Ok(Cow::Owned(
            v.iter().map(|f| T::from_f32(*f as f32)).collect(),
        )),
        TensorData::Int32(v) => Ok(Cow::Owned(
            v.iter().map(|f| T::from_f32(*f as f32)).collect(),
        )),
        other => Err(format!(
            "takes float, double, int64 or int32 inputs, got {}",
            other.datatype()
        )),
    }
}

/// The ensemble, built in f32 at load and in f64 the first time a double
/// input arrives.
struct Ensemble {
    spec: Spec,
    name: String,
    f32: Forest<f32>,
    f64: OnceLock<Result<Forest<f64>, String>>,
}

impl Ensemble {
    fn new(spec: Spec, ctx: &NodeCtx<'_>) -> Result<Ensemble, EngineError> {
        let name = format!("node \"{}\" ({})", ctx.name, ctx.op);
        let f32 = spec.build::<f32>(&name).map_err(EngineError::Load)?;
        Ok(Ensemble {
            spec,
            name,
            f32,
            f64: OnceLock::new(),
        })
    }

    fn f64(&self) -> Result<&Forest<f64>, String> {
        self.f64
            .get_or_init(|| self.spec.build::<f64>(&self.name))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Scores for every row: `(rows × k)` raw aggregates with has-score flags.
fn raw_scores<T: Num>(
    forest: &Forest<T>,
    agg: Aggregate,
    k: usize,
    x: ValueRef<'_>,
) -> Result<(usize, Vec<(T, bool)>), String> {
    let (n, cols) = x.rows_cols()?;
    if n > 0 && forest.max_feature >= cols {
        return Err(format!(
            "a tree reads feature {}, the input has {cols} features",
            forest.max_feature
        ));
    }
    let xs = features::<T>(x)?;
    let mut acc = vec![(T::ZERO, false); n * k];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        forest.accumulate(agg, k, &xs, cols, start..end, &mut acc[start * k..end * k]);
        start = end;
    }
    Ok((n, acc))
}

/// `TreeEnsembleRegressor` and opset-5 `TreeEnsemble`.
pub struct Regressor {
    ens: Ensemble,
    /// opset-5 `TreeEnsemble` returns the input's float type.
    output_like_input: bool,
}

impl Regressor {
    pub fn v3(ctx: &NodeCtx<'_>) -> Result<Regressor, EngineError> {
        let spec = Spec::from_v3(ctx, false)?;
        Ok(Regressor {
            ens: Ensemble::new(spec, ctx)?,
            output_like_input: false,
        })
    }

    pub fn v5(ctx: &NodeCtx<'_>) -> Result<Regressor, EngineError> {
        let spec = Spec::from_v5(ctx)?;
        Ok(Regressor {
            ens: Ensemble::new(spec, ctx)?,
            output_like_input: true,
        })
    }

    fn finish<T: Num>(&self, forest: &Forest<T>, n: usize, acc: Vec<(T, bool)>) -> Vec<f32> {
        let spec = &self.ens.spec;
        let k = spec.targets;
        let n_trees = T::from_usize(forest.roots.len());
        let mut out = Vec::with_capacity(n * k);
        if k == 1 {
            let origin = if forest.base.len() == 1 {
                forest.base[0]
            } else {
                T::ZERO
            };
            for (s, has) in acc {
                let v = match spec.aggregate {
                    Aggregate::Sum => s + origin,
                    Aggregate::Average => s / n_trees + origin,
                    Aggregate::Min | Aggregate::Max => {
                        if has {
                            s + origin
                        } else {
                            origin
                        }
                    }
                };
                out.push(if spec.post == Post::Probit {
                    probit(v.to_f32())
                } else {
                    v.to_f32()
                });
            }
            return out;
        }
        let use_base = forest.base.len() == k;
        for row in acc.chunks(k) {
            let start = out.len();
            for (j, (s, has)) in row.iter().enumerate() {
                let b = if use_base { forest.base[j] } else { T::ZERO };
                let v = match spec.aggregate {
                    Aggregate::Sum => *s + b,
                    Aggregate::Average => *s / n_trees + b,
                    Aggregate::Min | Aggregate::Max => b + if *has { *s } else { T::ZERO },
                };
                out.push(v.to_f32());
            }
            transform_row(spec.post, &mut out[start..]);
        }
        out
    }
}

impl Kernel for Regressor {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let k = self.ens.spec.targets;
        let agg = self.ens.spec.aggregate;
        let (n, scores) = if matches!(x.data, TensorData::Fp64(_)) {
            let f = self.ens.f64()?;
            let (n, acc) = raw_scores(f, agg, k, x)?;
            (n, self.finish(f, n, acc))
        } else {
            let f = &self.ens.f32;
            let (n, acc) = raw_scores(f, agg, k, x)?;
            (n, self.finish(f, n, acc))
        };
        let data = if self.output_like_input && matches!(x.data, TensorData::Fp64(_)) {
            TensorData::Fp64(scores.into_iter().map(f64::from).collect())
        } else {
            TensorData::Fp32(scores)
        };
        Ok(vec![Value::new(vec![n, k], data)])
    }
}

/// Class labels of a classifier.
#[derive(Debug, Clone)]
pub enum Labels {
    Int(Vec<i64>),
    Str(Vec<Bytes>),
}

impl Labels {
    pub fn from_ctx(ctx: &NodeCtx<'_>, ints_attr: &str) -> Result<Labels, EngineError> {
        let strings = ctx.strings("classlabels_strings");
        if !strings.is_empty() {
            return Ok(Labels::Str(strings));
        }
        let ints = ctx.ints(ints_attr);
        if ints.is_empty() {
            return Err(ctx.invalid(format!("needs classlabels_strings or {ints_attr}")));
        }
        Ok(Labels::Int(ints.to_vec()))
    }

    pub fn len(&self) -> usize {
        match self {
            Labels::Int(v) => v.len(),
            Labels::Str(v) => v.len(),
        }
    }

    /// Labels by class index; an index outside the labels (ONNX Runtime's
    /// literal 0/1 for some binary models) is written as the index itself
    /// for integer labels.
    pub fn tensor(&self, picks: &[i64]) -> TensorData {
        match self {
            Labels::Int(_) => TensorData::Int64(picks.to_vec()),
            Labels::Str(v) => TensorData::Bytes(
                picks
                    .iter()
                    .map(|i| {
                        usize::try_from(*i)
                            .ok()
                            .and_then(|i| v.get(i))
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect(),
            ),
        }
    }
}

/// `TreeEnsembleClassifier`.
pub struct Classifier {
    ens: Ensemble,
    labels: Labels,
    /// Two classes and every weight on one class.
    binary_case: bool,
    weights_all_positive: bool,
}

impl Classifier {
    pub fn v3(ctx: &NodeCtx<'_>) -> Result<Classifier, EngineError> {
        let mut spec = Spec::from_v3(ctx, true)?;
        let labels = Labels::from_ctx(ctx, "classlabels_int64s")?;
        spec.targets = labels.len();
        let mut classes: Vec<i64> = spec.w_target.clone();
        classes.sort_unstable();
        classes.dedup();
        let binary_case = labels.len() == 2 && classes.len() == 1;
        let weights_all_positive = spec.w_value.iter().all(|w| *w >= 0.0);
        Ok(Classifier {
            ens: Ensemble::new(spec, ctx)?,
            labels,
            binary_case,
            weights_all_positive,
        })
    }

    /// The label index of a row, by ONNX Runtime's rules, and the scores.
    fn finish<T: Num>(
        &self,
        forest: &Forest<T>,
        n: usize,
        acc: Vec<(T, bool)>,
    ) -> (Vec<i64>, Vec<f32>) {
        let k = self.labels.len();
        let post = self.ens.spec.post;
        let int_label = |class: usize| -> i64 {
            match &self.labels {
                Labels::Int(v) => v[class],
                Labels::Str(_) => class as i64,
            }
        };
        let mut labels = Vec::with_capacity(n);
        let mut out = vec![0f32; n * k];
        if k == 1 {
            // One class: ONNX Runtime's single-score path.
            for (row, (s, _)) in acc.into_iter().enumerate() {
                let (label, z) = self.binary_one(forest, s);
                labels.push(label);
                out[row] = z[0];
            }
            return (labels, out);
        }
        let mut p: Vec<(T, bool)> = Vec::with_capacity(k);
        for (row, scores) in acc.chunks(k).enumerate() {
            p.clear();
            p.extend_from_slice(scores);
            let z = &mut out[row * k..(row + 1) * k];
            if k > 2 {
                for (j, b) in forest.base.iter().enumerate().take(k) {
                    if p[j].1 {
                        p[j].0 += *b;
                    } else {
                        p[j] = (*b, true);
                    }
                }
                let mut best: Option<usize> = None;
                for (j, (s, has)) in p.iter().enumerate() {
                    if *has && best.is_none_or(|b| *s > p[b].0) {
                        best = Some(j);
                    }
                }
                labels.push(int_label(best.unwrap_or(0)));
                for (zj, (s, has)) in z.iter_mut().zip(&p) {
                    *zj = if *has { s.to_f32() } else { 0.0 };
                }
                transform_row(post, z);
                continue;
            }
            // Two classes.
            let mut extra: i32 = -1;
            let mut two = true;
            match forest.base.len() {
                2 => {
                    if p[1].1 {
                        p[1].0 = forest.base[1] + p[0].0;
                        p[0].0 = -p[1].0;
                    } else {
                        p[1].0 += forest.base[1];
                        p[0].0 += forest.base[0];
                    }
                }
                1 => {
                    p[0].0 += forest.base[0];
                    two = p[1].1;
                }
                0 => {
                    extra = 3;
                    two = p[1].1;
                }
                _ => {}
            }
            let (s0, h0) = p[0];
            let (s1, h1) = if two && p[1].1 {
                p[1]
            } else {
                (T::ZERO, false)
            };
            let pos = if h1 {
                s1
            } else if h0 {
                s0
            } else {
                T::ZERO
            };
            let label = if self.binary_case {
                if self.weights_all_positive {
                    if pos > T::HALF {
                        extra = 0;
                        int_label(1)
                    } else {
                        extra = 1;
                        int_label(0)
                    }
                } else if pos > T::ZERO {
                    extra = 2;
                    int_label(1)
                } else {
                    extra = 3;
                    int_label(0)
                }
            } else if pos > T::ZERO {
                1
            } else {
                0
            };
            labels.push(label);
            if two {
                z[0] = if p[0].1 { p[0].0.to_f32() } else { 0.0 };
                z[1] = if p[1].1 { p[1].0.to_f32() } else { 0.0 };
                transform_row(post, z);
            } else {
                let s = s0.to_f32();
                match (post, extra) {
                    (Post::Probit, _) => z[0] = probit(s),
                    (_, 0 | 1) => {
                        z[0] = 1.0 - s;
                        z[1] = s;
                    }
                    (Post::Logistic, 2 | 3) => {
                        z[0] = logistic(-s);
                        z[1] = logistic(s);
                    }
                    (_, 2 | 3) => {
                        z[0] = -s;
                        z[1] = s;
                    }
                    _ => z[0] = s,
                }
            }
        }
        (labels, out)
    }

    fn binary_one<T: Num>(&self, forest: &Forest<T>, s: T) -> (i64, [f32; 1]) {
        let v = match forest.base.len() {
            1 => s + forest.base[0],
            _ => s,
        };
        let label = if v > T::ZERO { 1 } else { 0 };
        (label, [v.to_f32()])
    }
}

impl Kernel for Classifier {
    fn run(&self, inputs: &[Option<ValueRef<'_>>]) -> Result<Vec<Value>, String> {
        let x = input(inputs, 0)?;
        let k = self.labels.len();
        let (n, (picks, scores)) = if matches!(x.data, TensorData::Fp64(_)) {
            let f = self.ens.f64()?;
            let (n, acc) = raw_scores(f, Aggregate::Sum, k, x)?;
            (n, self.finish(f, n, acc))
        } else {
            let f = &self.ens.f32;
            let (n, acc) = raw_scores(f, Aggregate::Sum, k, x)?;
            (n, self.finish(f, n, acc))
        };
        Ok(vec![
            Value::new(vec![n], self.labels.tensor(&picks)),
            Value::new(vec![n, k], TensorData::Fp32(scores)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree 0: `x0 <= 0.5 ? (x1 <= 0.5 ? L1 : L10) : (x1 <= 0.5 ? L10 : L100)`
    /// where both branches share the leaf worth 10 (a DAG, as ONNX allows);
    /// tree 1 is a single leaf worth 1000.
    fn shared_leaf(feature0: i64) -> Spec {
        Spec {
            tree: vec![0, 0, 0, 0, 0, 0, 1],
            id: vec![0, 1, 2, 3, 4, 5, 0],
            feature: vec![feature0, 1, 1, 0, 0, 0, 0],
            mode: vec![LEQ, LEQ, LEQ, LEAF, LEAF, LEAF, LEAF],
            value: vec![0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
            true_id: vec![1, 3, 4, 0, 0, 0, 0],
            false_id: vec![2, 4, 5, 0, 0, 0, 0],
            missing_true: vec![false; 7],
            members: HashMap::new(),
            w_tree: vec![0, 0, 0, 1],
            w_node: vec![3, 4, 5, 0],
            w_target: vec![0; 4],
            w_value: vec![1.0, 10.0, 100.0, 1000.0],
            base: Vec::new(),
            targets: 1,
            aggregate: Aggregate::Sum,
            post: Post::None,
        }
    }

    #[test]
    fn a_shared_leaf_and_a_one_leaf_tree_score_the_same_in_lanes_and_alone() {
        let forest = shared_leaf(0).build::<f32>("test").unwrap();
        assert_eq!(forest.branches.len(), 3, "three branches");
        assert_eq!(forest.leaves.len(), 4, "the shared leaf is laid out once");
        // 21 rows: two groups of LANES and a tail of 5 walk alone.
        let rows = 2 * LANES + 5;
        let x: Vec<f32> = (0..rows)
            .flat_map(|r| [(r % 2) as f32, ((r / 2) % 2) as f32])
            .collect();
        let mut acc = vec![(0.0f32, false); rows];
        forest.accumulate(Aggregate::Sum, 1, &x, 2, 0..rows, &mut acc);
        for (r, (score, has)) in acc.iter().enumerate() {
            let (x0, x1) = (x[2 * r], x[2 * r + 1]);
            let tree0 = match (x0 <= 0.5, x1 <= 0.5) {
                (true, true) => 1.0,
                (false, false) => 100.0,
                _ => 10.0,
            };
            assert!(*has);
            assert_eq!(*score, tree0 + 1000.0, "row {r}: x = ({x0}, {x1})");
        }
    }

    #[test]
    fn a_feature_id_past_what_a_branch_packs_is_a_load_error() {
        let Err(e) = shared_leaf(1 << 27).build::<f32>("node \"t\"") else {
            panic!("a feature id of 2^27 was accepted");
        };
        assert!(e.contains("feature id 134217728 too large"), "{e}");
        assert!(shared_leaf((1 << 27) - 1).build::<f32>("t").is_ok());
    }
}
