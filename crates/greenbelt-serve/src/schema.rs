//! The payload schema each model version sees on the wire: tensor names,
//! datatypes and shapes with the range each dimension took. The first
//! answered request sets the baseline; afterwards a request that departs
//! from it (a new or missing tensor, another datatype or rank, a non-batch
//! dimension outside what was seen) is a schema-change event: a WARN log
//! line, `greenbelt_schema_changes_total`, and an entry in
//! `GET /admin/schema/{model}`. The batch dimension (the first) widens its
//! range silently: batch sizes vary by design.
//!
//! The request path pays a read lock and a few integer comparisons when the
//! request matches what was seen, which is almost always.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use greenbelt_core::Tensor;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// Schema-change events kept per version for `/admin/schema`.
const KEEP_CHANGES: usize = 32;
/// Tensors tracked per side at most (a request cannot grow the state).
const MAX_TENSORS: usize = 64;

/// One tensor as seen so far.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TensorSeen {
    pub name: String,
    pub datatype: &'static str,
    /// Per dimension, the smallest and largest size seen.
    pub dims: Vec<(i64, i64)>,
}

/// One departure from the schema seen before.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaChange {
    pub at: String,
    pub side: &'static str,
    pub change: String,
}

/// The schema tracker of one version: inputs and outputs apart.
pub struct SchemaTracker {
    inputs: RwLock<Option<Vec<TensorSeen>>>,
    outputs: RwLock<Option<Vec<TensorSeen>>>,
    changes: Mutex<VecDeque<SchemaChange>>,
    counter: Counter,
    last_log_s: AtomicU64,
    model: std::sync::Arc<str>,
    version: std::sync::Arc<str>,
}

fn matches(seen: &[TensorSeen], tensors: &[Tensor]) -> bool {
    seen.len() == tensors.len()
        && seen.iter().zip(tensors).all(|(s, t)| {
            s.name == t.name
                && s.datatype == t.datatype().as_str()
                && s.dims.len() == t.shape.len()
                && s.dims
                    .iter()
                    .zip(&t.shape)
                    .all(|((lo, hi), d)| lo <= d && d <= hi)
        })
}

/// Fold `tensors` into `seen`, returning what departed from it.
fn merge(seen: &mut Vec<TensorSeen>, tensors: &[Tensor], baseline: bool) -> Vec<String> {
    let mut changes = Vec::new();
    for t in tensors.iter().take(MAX_TENSORS) {
        let dtype = t.datatype().as_str();
        match seen.iter_mut().find(|s| s.name == t.name) {
            None => {
                if !baseline {
                    changes.push(format!(
                        "new tensor \"{}\" ({dtype}, shape {:?})",
                        t.name, t.shape
                    ));
                }
                if seen.len() < MAX_TENSORS {
                    seen.push(TensorSeen {
                        name: t.name.clone(),
                        datatype: dtype,
                        dims: t.shape.iter().map(|d| (*d, *d)).collect(),
                    });
                }
            }
            Some(s) => {
                if s.datatype != dtype {
                    changes.push(format!(
                        "tensor \"{}\": datatype {} -> {dtype}",
                        t.name, s.datatype
                    ));
                    s.datatype = dtype;
                }
                if s.dims.len() != t.shape.len() {
                    changes.push(format!(
                        "tensor \"{}\": rank {} -> {} (shape {:?})",
                        t.name,
                        s.dims.len(),
                        t.shape.len(),
                        t.shape
                    ));
                    s.dims = t.shape.iter().map(|d| (*d, *d)).collect();
                    continue;
                }
                for (i, ((lo, hi), d)) in s.dims.iter_mut().zip(&t.shape).enumerate() {
                    if *d < *lo || *d > *hi {
                        if i > 0 {
                            changes.push(format!(
                                "tensor \"{}\": dimension {i} is {d}, seen {lo}..={hi} before",
                                t.name
                            ));
                        }
                        *lo = (*lo).min(*d);
                        *hi = (*hi).max(*d);
                    }
                }
            }
        }
    }
    // A tensor that stopped coming leaves the schema (it tracks the latest),
    // so it is reported once, not on every request after.
    seen.retain(|s| {
        let present = tensors.iter().any(|t| t.name == s.name);
        if !present {
            changes.push(format!("tensor \"{}\" is missing", s.name));
        }
        present
    });
    changes
}

impl SchemaTracker {
    pub fn new(
        model: std::sync::Arc<str>,
        version: std::sync::Arc<str>,
        counter: Counter,
    ) -> SchemaTracker {
        SchemaTracker {
            inputs: RwLock::new(None),
            outputs: RwLock::new(None),
            changes: Mutex::new(VecDeque::new()),
            counter,
            last_log_s: AtomicU64::new(0),
            model,
            version,
        }
    }

    /// Fold one validated request's inputs into the schema.
    pub fn observe_inputs(&self, tensors: &[Tensor]) {
        self.observe(&self.inputs, "input", tensors);
    }

    /// Fold one answer's outputs (as sent) into the schema.
    pub fn observe_outputs(&self, tensors: &[Tensor]) {
        self.observe(&self.outputs, "output", tensors);
    }

    fn observe(
        &self,
        side: &RwLock<Option<Vec<TensorSeen>>>,
        name: &'static str,
        tensors: &[Tensor],
    ) {
        if let Ok(seen) = side.read()
            && seen.as_ref().is_some_and(|s| matches(s, tensors))
        {
            return;
        }
        let Ok(mut guard) = side.write() else {
            return;
        };
        let baseline = guard.is_none();
        let found = merge(guard.get_or_insert_with(Vec::new), tensors, baseline);
        drop(guard);
        if found.is_empty() {
            return;
        }
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        // Log at most one line a second per version; the counter and the
        // admin view keep every event.
        let now_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let log = self.last_log_s.swap(now_s, Ordering::Relaxed) != now_s;
        for change in found {
            self.counter.inc();
            if log {
                tracing::warn!(model = %self.model, version = %self.version, side = name, change = %change, "payload schema changed");
            }
            if let Ok(mut c) = self.changes.lock() {
                if c.len() == KEEP_CHANGES {
                    c.pop_front();
                }
                c.push_back(SchemaChange {
                    at: at.clone(),
                    side: name,
                    change,
                });
            }
        }
    }

    /// The schema seen and the recent changes, for `/admin/schema`.
    pub fn report(&self) -> serde_json::Value {
        let side = |s: &RwLock<Option<Vec<TensorSeen>>>| {
            s.read().ok().and_then(|g| g.clone()).unwrap_or_default()
        };
        let changes: Vec<SchemaChange> = self
            .changes
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        serde_json::json!({
            "inputs": side(&self.inputs),
            "outputs": side(&self.outputs),
            "changes_total": self.counter.get(),
            "recent_changes": changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::TensorData;

    fn t(name: &str, shape: &[i64], f32: bool) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        Tensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: if f32 {
                TensorData::Fp32(vec![0.0; n])
            } else {
                TensorData::Int64(vec![0; n])
            },
        }
    }

    #[test]
    fn baseline_then_changes_but_batch_size_is_free() {
        let s = SchemaTracker::new("m".into(), "1".into(), Counter::default());
        let out = [t("p", &[1, 2], true)];
        s.observe_inputs(&[t("x", &[1, 20], true)]);
        s.observe_outputs(&out);
        // batch dimension varies: no change
        s.observe_inputs(&[t("x", &[64, 20], true)]);
        s.observe_outputs(&[t("p", &[64, 2], true)]);
        assert_eq!(s.counter.get(), 0);
        // a feature dimension and a datatype change
        s.observe_inputs(&[t("x", &[1, 21], true)]);
        s.observe_inputs(&[t("x", &[1, 21], false)]);
        s.observe_outputs(&out);
        // a new tensor: one event for it
        s.observe_inputs(&[t("x", &[1, 21], false), t("y", &[1], true)]);
        let r = s.report();
        assert_eq!(r["changes_total"], 3, "{r}");
        let changes: Vec<String> = r["recent_changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["change"].as_str().unwrap().to_string())
            .collect();
        assert!(
            changes[0].contains("dimension 1 is 21, seen 20..=20"),
            "{changes:?}"
        );
        assert!(changes[1].contains("datatype FP32 -> INT64"), "{changes:?}");
        assert!(changes[2].contains("new tensor \"y\""), "{changes:?}");
        assert_eq!(r["inputs"][0]["dims"][0], serde_json::json!([1, 64]));
        // the same request again changes nothing; a missing tensor is a change
        s.observe_inputs(&[t("x", &[1, 21], false), t("y", &[1], true)]);
        assert_eq!(s.counter.get(), 3);
        s.observe_inputs(&[t("x", &[1, 21], false)]);
        assert_eq!(s.counter.get(), 4);
    }
}
