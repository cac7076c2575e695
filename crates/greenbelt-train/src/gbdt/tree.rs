//! One regression tree: its representation, prediction, and depth-wise growth
//! on binned features with second-order (Newton) leaf values.

use serde::{Deserialize, Serialize};

use super::bins::Binned;

/// A node of a [`Tree`]. Children always have larger indices than their
/// parent; the root is node 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Node {
    /// Rows with `x[feature] as f32 <= threshold` go to `left`, others `right`.
    Split {
        feature: usize,
        threshold: f32,
        left: usize,
        right: usize,
    },
    /// Adds `value` (already scaled by the learning rate; an `f32` value held
    /// as `f64`) to the raw score.
    Leaf { value: f64 },
}

/// A binary tree in one array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The leaf value for one row. The tree must be sound: see
    /// [`GbdtModel::check`](crate::gbdt::GbdtModel::check).
    pub fn predict_row(&self, row: &[f64]) -> f64 {
        let mut i = 0;
        loop {
            match &self.nodes[i] {
                Node::Leaf { value } => return *value,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if (row[*feature] as f32) <= *threshold {
                        *left
                    } else {
                        *right
                    };
                }
            }
        }
    }

    /// Whether the structure is sound for `n_features` inputs: children in
    /// range and after their parent (so every walk ends), finite values.
    pub(crate) fn check(&self, n_features: usize) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a tree has no nodes".into());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            match node {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    if *feature >= n_features {
                        return Err(format!(
                            "node {i} splits on feature {feature} of {n_features}"
                        ));
                    }
                    if !threshold.is_finite() {
                        return Err(format!("node {i} has threshold {threshold}"));
                    }
                    for child in [left, right] {
                        if *child <= i || *child >= self.nodes.len() {
                            return Err(format!("node {i} has child {child}"));
                        }
                    }
                }
                Node::Leaf { value } => {
                    if !value.is_finite() {
                        return Err(format!("leaf {i} has value {value}"));
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) struct GrowParams {
    pub max_depth: usize,
    pub min_samples_leaf: usize,
    pub min_child_weight: f64,
    pub l2: f64,
    pub learning_rate: f64,
}

/// A grown tree plus, per node, the bin of its split (unused for leaves), so
/// training can route rows by bin code instead of by value.
pub(crate) struct Grown {
    pub tree: Tree,
    split_bins: Vec<u8>,
}

impl Grown {
    /// The leaf value for training row `i`.
    pub(crate) fn predict_binned(&self, binned: &Binned, i: usize) -> f64 {
        let mut n = 0;
        loop {
            match &self.tree.nodes[n] {
                Node::Leaf { value } => return *value,
                Node::Split {
                    feature,
                    left,
                    right,
                    ..
                } => {
                    n = if binned.column(*feature)[i] <= self.split_bins[n] {
                        *left
                    } else {
                        *right
                    };
                }
            }
        }
    }
}

struct Split {
    feature: usize,
    bin: u8,
    gain: f64,
}

/// Grow one tree on `rows` (ascending) using only `features` (ascending).
pub(crate) fn grow(
    binned: &Binned,
    grad: &[f64],
    hess: &[f64],
    rows: Vec<usize>,
    features: &[usize],
    p: &GrowParams,
) -> Grown {
    let mut nodes = vec![Node::Leaf { value: 0.0 }];
    let mut split_bins = vec![0u8];
    let mut hist = Histogram::default();
    // (node index, its rows, depth); children are numbered when created, so
    // the work order does not change the result.
    let mut work = vec![(0usize, rows, 0usize)];
    while let Some((index, rows, depth)) = work.pop() {
        let (g, h) = rows
            .iter()
            .fold((0.0, 0.0), |(g, h), &i| (g + grad[i], h + hess[i]));
        let split = if depth < p.max_depth && rows.len() >= 2 * p.min_samples_leaf {
            best_split(binned, grad, hess, &rows, features, (g, h), p, &mut hist)
        } else {
            None
        };
        let Some(split) = split else {
            let denom = h + p.l2;
            let value = if denom > 0.0 {
                -p.learning_rate * g / denom
            } else {
                0.0
            };
            // Stored as the f32 the exported model will hold.
            nodes[index] = Node::Leaf {
                value: f64::from(value as f32),
            };
            continue;
        };
        let codes = binned.column(split.feature);
        let (left_rows, right_rows): (Vec<usize>, Vec<usize>) =
            rows.into_iter().partition(|&i| codes[i] <= split.bin);
        let left = nodes.len();
        nodes.push(Node::Leaf { value: 0.0 });
        nodes.push(Node::Leaf { value: 0.0 });
        split_bins.extend([0, 0]);
        nodes[index] = Node::Split {
            feature: split.feature,
            threshold: binned.threshold(split.feature, split.bin),
            left,
            right: left + 1,
        };
        split_bins[index] = split.bin;
        work.push((left + 1, right_rows, depth + 1));
        work.push((left, left_rows, depth + 1));
    }
    Grown {
        tree: Tree { nodes },
        split_bins,
    }
}

/// Per-bin sums of gradient, hessian and count for one feature.
#[derive(Default)]
struct Histogram {
    g: Vec<f64>,
    h: Vec<f64>,
    count: Vec<usize>,
}

impl Histogram {
    fn fill(&mut self, codes: &[u8], n_bins: usize, rows: &[usize], grad: &[f64], hess: &[f64]) {
        for v in [&mut self.g, &mut self.h] {
            v.clear();
            v.resize(n_bins, 0.0);
        }
        self.count.clear();
        self.count.resize(n_bins, 0);
        for &i in rows {
            let b = usize::from(codes[i]);
            self.g[b] += grad[i];
            self.h[b] += hess[i];
            self.count[b] += 1;
        }
    }
}

/// The split with the largest positive gain that leaves `min_samples_leaf`
/// rows and `min_child_weight` hessian on each side; ties go to the lowest
/// feature, then the lowest bin.
#[allow(clippy::too_many_arguments)] // one call site, all inputs distinct
fn best_split(
    binned: &Binned,
    grad: &[f64],
    hess: &[f64],
    rows: &[usize],
    features: &[usize],
    (g, h): (f64, f64),
    p: &GrowParams,
    hist: &mut Histogram,
) -> Option<Split> {
    let score = |g: f64, h: f64| g * g / (h + p.l2);
    let parent = score(g, h);
    let n = rows.len();
    let mut best: Option<Split> = None;
    for &feature in features {
        let n_bins = binned.n_bins(feature);
        if n_bins < 2 {
            continue;
        }
        hist.fill(binned.column(feature), n_bins, rows, grad, hess);
        let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0usize);
        for b in 0..n_bins - 1 {
            gl += hist.g[b];
            hl += hist.h[b];
            nl += hist.count[b];
            let (gr, hr, nr) = (g - gl, h - hl, n - nl);
            if nl < p.min_samples_leaf || hl < p.min_child_weight {
                continue;
            }
            if nr < p.min_samples_leaf || hr < p.min_child_weight {
                break;
            }
            if hl + p.l2 <= 0.0 || hr + p.l2 <= 0.0 {
                continue;
            }
            let gain = score(gl, hl) + score(gr, hr) - parent;
            if gain > best.as_ref().map_or(0.0, |s| s.gain) {
                best = Some(Split {
                    feature,
                    // n_bins <= 256, so b < 255.
                    bin: b as u8,
                    gain,
                });
            }
        }
    }
    best
}
