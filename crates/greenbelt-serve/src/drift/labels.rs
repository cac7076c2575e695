//! Delayed labels: the predictions a model answered, kept by request id in
//! a bounded store, joined with true labels when they arrive
//! (`POST /v2/models/{m}/labels`), and the rolling quality metrics of each
//! version over its last labelled predictions.
//!
//! Bounds: at most `capacity` predictions per model (the oldest is evicted
//! first, and any older than `retention`), at most `max_rows` rows of one
//! request, at most `window` labelled rows per version in the metrics.
//! Recording never waits: a store busy with a label batch drops the
//! prediction and counts it.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use greenbelt_core::{Signature, Tensor, TensorData};
use greenbelt_drift::model::{Task, argmax};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Which output holds the prediction, and what kind it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionSpec {
    pub output: String,
    pub task: Task,
}

impl PredictionSpec {
    /// From the profile when there is one; else an output named
    /// `probabilities` is a classifier's, and a model with one numeric
    /// output is a regressor. None: labels cannot be joined for it.
    pub fn of(
        signature: &Signature,
        profile: Option<&greenbelt_drift::model::ModelProfile>,
    ) -> Option<PredictionSpec> {
        if let Some(p) = profile {
            return Some(PredictionSpec {
                output: p.prediction.clone(),
                task: p.task,
            });
        }
        if signature.output("probabilities").is_some() {
            return Some(PredictionSpec {
                output: "probabilities".into(),
                task: Task::Classification,
            });
        }
        match signature.outputs.as_slice() {
            [only]
                if matches!(
                    only.datatype,
                    greenbelt_core::DataType::Fp32 | greenbelt_core::DataType::Fp64
                ) =>
            {
                Some(PredictionSpec {
                    output: only.name.clone(),
                    task: Task::Regression,
                })
            }
            _ => None,
        }
    }

    /// Per row: the positive-class score (binary), the predicted class
    /// (more classes; stored as its index) or the value (regression).
    pub fn rows(&self, outputs: &[Tensor], max_rows: usize) -> Option<Vec<Prediction>> {
        let mut out = Vec::new();
        self.rows_into(outputs, max_rows, &mut out).then_some(out)
    }

    /// [`PredictionSpec::rows`] appended to `out`; false when the outputs
    /// hold no float tensor of that name.
    pub fn rows_into(
        &self,
        outputs: &[Tensor],
        max_rows: usize,
        out: &mut Vec<Prediction>,
    ) -> bool {
        let Some(t) = outputs.iter().find(|t| t.name == self.output) else {
            return false;
        };
        let per_row = match (self.task, t.shape.as_slice()) {
            (Task::Classification, [_, k, ..]) if *k > 0 => *k as usize,
            _ => 1,
        };
        // Only the rows that are kept are read, straight from the tensor.
        match &t.data {
            TensorData::Fp32(v) => self.each_row(v, per_row, max_rows, out),
            TensorData::Fp64(v) => self.each_row(v, per_row, max_rows, out),
            _ => return false,
        }
        true
    }

    fn each_row<T: Copy + Into<f64>>(
        &self,
        values: &[T],
        per_row: usize,
        max_rows: usize,
        out: &mut Vec<Prediction>,
    ) {
        out.extend(values.chunks(per_row).take(max_rows).map(|row| {
            let at = |i: usize| row.get(i).map_or(f64::NAN, |x| (*x).into());
            match (self.task, per_row) {
                (Task::Regression, _) | (Task::Classification, 1) => Prediction {
                    class: None,
                    score: at(0),
                },
                (Task::Classification, 2) => Prediction {
                    class: Some(argmax(row) as u32),
                    score: at(1),
                },
                (Task::Classification, _) => Prediction {
                    class: Some(argmax(row) as u32),
                    score: row.iter().map(|x| (*x).into()).fold(f64::NAN, f64::max),
                },
            }
        }));
    }
}

/// One row's prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The predicted class (classifiers with class probabilities).
    pub class: Option<u32>,
    /// Binary: the positive-class probability; a one-column classifier:
    /// its score (class = score >= 0.5); regression: the value.
    pub score: f64,
}

/// One recorded prediction, in the store's ring. A slot's `id` and `rows`
/// keep their buffers when it is reused, so recording allocates nothing
/// once the ring has gone round.
struct Slot {
    /// The id's keyed hash (the index's key).
    key: u64,
    /// False once joined, expired, or recorded again under the same id.
    live: bool,
    id: String,
    version: u64,
    task: Task,
    rows: Vec<Prediction>,
    at: Instant,
}

#[derive(Default)]
struct Ring {
    task: Option<Task>,
    /// (prediction, label), oldest first.
    pairs: VecDeque<(Prediction, f64)>,
}

/// The predictions in the order they were recorded, in a ring of at most
/// `capacity` slots (grown as needed, then reused oldest first), and an
/// index from each id's keyed hash to the sequence number of its slot.
/// Recording costs one hash of the id and two index probes, where a map
/// keyed by the id string cost an allocation per id, a rehash of the
/// evicted id and frees of memory long out of cache.
struct Inner {
    slots: Vec<Slot>,
    /// The sequence number the next prediction gets; slot `seq % capacity`.
    next: u64,
    /// Slots in use, counted back from `next` (live or not).
    held: usize,
    /// Live predictions.
    live: usize,
    /// The keys are SipHash outputs under this process's random key, so a
    /// client cannot aim ids at one bucket: the index hashes them no further.
    index: HashMap<u64, u64, BuildHasherDefault<Prehashed>>,
    ids: RandomState,
    versions: BTreeMap<u64, Ring>,
}

/// The identity hash, for keys that are already keyed hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Inner {
    fn new() -> Inner {
        Inner {
            slots: Vec::new(),
            next: 0,
            held: 0,
            live: 0,
            index: HashMap::default(),
            ids: RandomState::new(),
            versions: BTreeMap::new(),
        }
    }

    fn pos(&self, seq: u64, capacity: usize) -> usize {
        (seq % capacity as u64) as usize
    }

    /// The live slot recorded under `id`, if any.
    fn find(&self, id: &str, capacity: usize) -> Option<(u64, usize)> {
        let key = self.ids.hash_one(id);
        let seq = *self.index.get(&key)?;
        let pos = self.pos(seq, capacity);
        let slot = self.slots.get(pos)?;
        // A different id under the same 64-bit hash is not a match.
        (slot.live && slot.id == id).then_some((key, pos))
    }

    /// Retire the slot at `pos`: out of the index (if the index still
    /// points at it) and no longer live.
    fn retire(&mut self, pos: usize, seq: u64) {
        let Some(slot) = self.slots.get_mut(pos) else {
            return;
        };
        if !slot.live {
            return;
        }
        slot.live = false;
        self.live -= 1;
        if self.index.get(&slot.key) == Some(&seq) {
            self.index.remove(&slot.key);
        }
    }

    /// Free the oldest slot.
    fn pop_oldest(&mut self, capacity: usize) {
        if self.held == 0 {
            return;
        }
        let seq = self.next - self.held as u64;
        self.retire(self.pos(seq, capacity), seq);
        self.held -= 1;
    }

    fn oldest_at(&self, capacity: usize) -> Option<Instant> {
        if self.held == 0 {
            return None;
        }
        let seq = self.next - self.held as u64;
        self.slots.get(self.pos(seq, capacity)).map(|s| s.at)
    }
}

/// The rolling quality metrics of one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quality {
    pub version: u64,
    pub labelled: u64,
    pub accuracy: Option<f64>,
    pub auc: Option<f64>,
    pub rmse: Option<f64>,
    pub mae: Option<f64>,
}

/// One label in a `POST /v2/models/{m}/labels` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// The request id the prediction was answered under (the V2 body's
    /// `id` when the client set one, else the `x-request-id`).
    pub id: String,
    /// The true label: one number for a one-row request, or one per row.
    pub label: LabelValue,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LabelValue {
    One(f64),
    Rows(Vec<f64>),
}

/// What a label batch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ingested {
    pub joined: u64,
    /// Ids with no recorded prediction (never seen, evicted or expired).
    pub unknown: u64,
    /// Labels whose row count did not match the prediction's.
    pub mismatched: u64,
    /// The versions whose metrics changed, with their new values.
    pub quality: Vec<Quality>,
}

/// One model's recorded predictions and labelled pairs.
pub struct LabelStore {
    inner: Mutex<Inner>,
    capacity: usize,
    retention: Duration,
    window: usize,
}

impl LabelStore {
    pub fn new(capacity: usize, retention: Duration, window: usize) -> LabelStore {
        LabelStore {
            inner: Mutex::new(Inner::new()),
            capacity: capacity.max(1),
            retention,
            window: window.max(1),
        }
    }

    /// Record an answered request's predictions. Returns false when the
    /// store was busy and the prediction was dropped.
    pub fn record(
        &self,
        id: &str,
        version: u64,
        task: Task,
        rows: Vec<Prediction>,
        now: Instant,
    ) -> bool {
        self.record_with(id, version, task, now, |out| {
            out.extend(rows);
            true
        })
    }

    /// [`LabelStore::record`] with the rows written by `fill` into the
    /// slot's own buffer (emptied first); `fill` returning false records
    /// nothing. Returns false only when the store was busy.
    pub fn record_with(
        &self,
        id: &str,
        version: u64,
        task: Task,
        now: Instant,
        fill: impl FnOnce(&mut Vec<Prediction>) -> bool,
    ) -> bool {
        let Ok(mut guard) = self.inner.try_lock() else {
            return false;
        };
        let inner = &mut *guard;
        let capacity = self.capacity;
        self.expire(inner, now);
        if inner.held >= capacity {
            inner.pop_oldest(capacity);
        }
        let seq = inner.next;
        let pos = inner.pos(seq, capacity);
        if pos == inner.slots.len() {
            inner.slots.push(Slot {
                key: 0,
                live: false,
                id: String::new(),
                version: 0,
                task,
                rows: Vec::new(),
                at: now,
            });
        }
        let key = inner.ids.hash_one(id);
        let Some(slot) = inner.slots.get_mut(pos) else {
            return true;
        };
        slot.rows.clear();
        if !fill(&mut slot.rows) {
            return true;
        }
        slot.id.clear();
        slot.id.push_str(id);
        slot.key = key;
        slot.live = true;
        slot.version = version;
        slot.task = task;
        slot.at = now;
        inner.next += 1;
        inner.held += 1;
        inner.live += 1;
        // Re-recorded under the same id: the newer one is kept.
        if let Some(older) = inner.index.insert(key, seq) {
            let at = inner.pos(older, capacity);
            if let Some(old) = inner.slots.get_mut(at).filter(|s| s.live) {
                old.live = false;
                inner.live -= 1;
            }
        }
        true
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while inner
            .oldest_at(self.capacity)
            .is_some_and(|at| now.saturating_duration_since(at) > self.retention)
        {
            inner.pop_oldest(self.capacity);
        }
    }

    /// Predictions held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.live).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Join labels with recorded predictions (each prediction is joined
    /// once: it leaves the store) and recompute the touched versions'
    /// metrics.
    pub fn ingest(&self, labels: &[Label], now: Instant) -> Ingested {
        let mut out = Ingested::default();
        let Ok(mut inner) = self.inner.lock() else {
            return out;
        };
        self.expire(&mut inner, now);
        let mut touched = Vec::new();
        let inner = &mut *inner;
        for l in labels {
            let Some((key, pos)) = inner.find(&l.id, self.capacity) else {
                out.unknown += 1;
                continue;
            };
            let Some(rec) = inner.slots.get_mut(pos) else {
                out.unknown += 1;
                continue;
            };
            // Joined once: the prediction leaves the store.
            rec.live = false;
            inner.live -= 1;
            inner.index.remove(&key);
            let truth: &[f64] = match &l.label {
                LabelValue::One(x) => std::slice::from_ref(x),
                LabelValue::Rows(v) => v,
            };
            if truth.len() != rec.rows.len() {
                out.mismatched += 1;
                continue;
            }
            let ring = inner.versions.entry(rec.version).or_default();
            ring.task = Some(rec.task);
            for (p, y) in rec.rows.iter().copied().zip(truth.iter().copied()) {
                if ring.pairs.len() >= self.window {
                    ring.pairs.pop_front();
                }
                ring.pairs.push_back((p, y));
            }
            out.joined += 1;
            if !touched.contains(&rec.version) {
                touched.push(rec.version);
            }
        }
        out.quality = touched
            .into_iter()
            .filter_map(|v| inner.versions.get(&v).map(|r| quality(v, r)))
            .collect();
        out
    }

    /// The metrics of every version with labels.
    pub fn quality(&self) -> Vec<Quality> {
        self.inner
            .lock()
            .map(|i| i.versions.iter().map(|(v, r)| quality(*v, r)).collect())
            .unwrap_or_default()
    }
}

fn quality(version: u64, ring: &Ring) -> Quality {
    let n = ring.pairs.len();
    let mut q = Quality {
        version,
        labelled: n as u64,
        ..Default::default()
    };
    if n == 0 {
        return q;
    }
    match ring.task {
        Some(Task::Regression) => {
            let (mut se, mut ae) = (0.0, 0.0);
            for (p, y) in &ring.pairs {
                let e = p.score - y;
                se += e * e;
                ae += e.abs();
            }
            q.rmse = Some((se / n as f64).sqrt());
            q.mae = Some(ae / n as f64);
        }
        _ => {
            let correct = ring
                .pairs
                .iter()
                .filter(|(p, y)| {
                    let class = p.class.map_or(u32::from(p.score >= 0.5), |c| c);
                    f64::from(class) == *y
                })
                .count();
            q.accuracy = Some(correct as f64 / n as f64);
            let binary = ring.pairs.iter().all(|(_, y)| *y == 0.0 || *y == 1.0);
            if binary {
                q.auc = auc(ring.pairs.iter().map(|(p, y)| (p.score, *y == 1.0)));
            }
        }
    }
    q
}

/// ROC AUC by the rank-sum (Mann–Whitney) with average ranks for ties;
/// None when one class is absent.
pub fn auc(pairs: impl Iterator<Item = (f64, bool)>) -> Option<f64> {
    let mut v: Vec<(f64, bool)> = pairs.filter(|(s, _)| !s.is_nan()).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|(_, y)| *y).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * v[i..=j].iter().filter(|(_, y)| *y).count() as f64;
        i = j + 1;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(score: f64) -> Prediction {
        Prediction {
            class: Some(u32::from(score >= 0.5)),
            score,
        }
    }

    #[test]
    fn predictions_are_read_straight_from_each_output_type() {
        let spec = |output: &str, task| PredictionSpec {
            output: output.into(),
            task,
        };
        let t = |name: &str, shape: Vec<i64>, data| Tensor::new(name, shape, data).unwrap();
        // Binary: the positive column is the score, the larger the class.
        let binary = [t(
            "probabilities",
            vec![3, 2],
            TensorData::Fp32(vec![0.9, 0.1, 0.25, 0.75, f32::NAN, 0.5]),
        )];
        let got = spec("probabilities", Task::Classification)
            .rows(&binary, 10)
            .unwrap();
        assert_eq!(
            got[0],
            Prediction {
                class: Some(0),
                score: 0.1f32.into()
            }
        );
        assert_eq!(
            got[1],
            Prediction {
                class: Some(1),
                score: 0.75
            }
        );
        // A NaN first column: argmax keeps index 0 (as greenbelt_drift's does).
        assert_eq!(got[2].class, Some(0));
        assert_eq!(got[2].score, 0.5);
        // Bounded by max_rows: only the kept rows are read.
        assert_eq!(
            spec("probabilities", Task::Classification)
                .rows(&binary, 1)
                .unwrap()
                .len(),
            1
        );
        // More classes: the predicted class and its probability; fp64.
        let multi = [t(
            "p",
            vec![2, 3],
            TensorData::Fp64(vec![0.2, 0.5, 0.3, 0.6, 0.1, 0.3]),
        )];
        let got = spec("p", Task::Classification).rows(&multi, 10).unwrap();
        assert_eq!(
            got,
            vec![
                Prediction {
                    class: Some(1),
                    score: 0.5
                },
                Prediction {
                    class: Some(0),
                    score: 0.6
                },
            ]
        );
        // Regression: one value per row, no class.
        let reg = [t("y", vec![2], TensorData::Fp32(vec![1.5, -2.0]))];
        let got = spec("y", Task::Regression).rows(&reg, 10).unwrap();
        assert_eq!(
            got,
            vec![
                Prediction {
                    class: None,
                    score: 1.5
                },
                Prediction {
                    class: None,
                    score: -2.0
                },
            ]
        );
        // Not a float output, or no such output: nothing to join.
        let ints = [t("y", vec![1], TensorData::Int64(vec![1]))];
        assert!(spec("y", Task::Regression).rows(&ints, 10).is_none());
        assert!(spec("z", Task::Regression).rows(&reg, 10).is_none());
    }

    #[test]
    fn auc_matches_hand_computed_values_with_ties() {
        // 2 positives (0.8, 0.4), 2 negatives (0.4, 0.1): pairs won 1 + 0.5 + 1 + 1 = 3.5 of 4.
        let got = auc([(0.8, true), (0.4, true), (0.4, false), (0.1, false)].into_iter());
        assert_eq!(got, Some(3.5 / 4.0));
        assert_eq!(auc([(0.3, true)].into_iter()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn labels_join_recorded_predictions_and_metrics_follow() {
        let store = LabelStore::new(10, Duration::from_secs(60), 100);
        let now = Instant::now();
        store.record("a", 3, Task::Classification, vec![p(0.9)], now);
        store.record("b", 3, Task::Classification, vec![p(0.2)], now);
        store.record("c", 3, Task::Classification, vec![p(0.7), p(0.1)], now);
        let got = store.ingest(
            &[
                Label {
                    id: "a".into(),
                    label: LabelValue::One(1.0),
                },
                Label {
                    id: "b".into(),
                    label: LabelValue::One(1.0),
                },
                Label {
                    id: "c".into(),
                    label: LabelValue::Rows(vec![0.0, 0.0]),
                },
                Label {
                    id: "zzz".into(),
                    label: LabelValue::One(0.0),
                },
            ],
            now,
        );
        assert_eq!((got.joined, got.unknown, got.mismatched), (3, 1, 0));
        let q = &got.quality[0];
        assert_eq!(q.labelled, 4);
        // Right: a (0.9→1), c row 2 (0.1→0); wrong: b, c row 1.
        assert_eq!(q.accuracy, Some(0.5));
        // Positives 0.9, 0.2; negatives 0.7, 0.1: won 2 + 1 of 4 pairs.
        assert_eq!(q.auc, Some(0.75));
        // Joined predictions leave the store.
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_store_is_bounded_by_capacity_and_retention() {
        let store = LabelStore::new(2, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        for id in ["a", "b", "c"] {
            store.record(id, 1, Task::Regression, vec![p(1.0)], t0);
        }
        assert_eq!(store.len(), 2, "the oldest is evicted at capacity");
        let got = store.ingest(
            &[Label {
                id: "a".into(),
                label: LabelValue::One(1.0),
            }],
            t0,
        );
        assert_eq!(got.unknown, 1);
        let later = t0 + Duration::from_secs(11);
        let got = store.ingest(
            &[Label {
                id: "b".into(),
                label: LabelValue::One(1.0),
            }],
            later,
        );
        assert_eq!(got.unknown, 1, "expired after the retention");
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_ring_goes_round_and_a_re_recorded_id_keeps_its_newer_prediction() {
        let store = LabelStore::new(3, Duration::from_secs(60), 100);
        let now = Instant::now();
        let label = |id: &str, y: f64| Label {
            id: id.into(),
            label: LabelValue::One(y),
        };
        // "a" twice: the newer (0.9) is the one joined, and it counts once.
        store.record("a", 1, Task::Classification, vec![p(0.1)], now);
        store.record("a", 1, Task::Classification, vec![p(0.9)], now);
        assert_eq!(store.len(), 1);
        // Round the ring several times: only the last three survive, and
        // evicting the stale first "a" slot does not drop the newer "a".
        for i in 0..10 {
            store.record(&format!("r{i}"), 1, Task::Classification, vec![p(0.2)], now);
            if i == 0 {
                assert_eq!(store.len(), 2, "the newer a is still held");
            }
        }
        assert_eq!(store.len(), 3);
        let got = store.ingest(
            &[
                label("a", 1.0),
                label("r6", 0.0),
                label("r7", 0.0),
                label("r9", 0.0),
            ],
            now,
        );
        assert_eq!(
            (got.joined, got.unknown),
            (2, 2),
            "r7, r8 and r9 are kept; a and r6 were evicted"
        );
        // A joined id is gone; the other stays.
        let got = store.ingest(&[label("r9", 0.0), label("r8", 0.0)], now);
        assert_eq!((got.joined, got.unknown), (1, 1));
        assert!(store.is_empty());
        // A slot's buffers are reused: a longer id and more rows after a
        // shorter one are stored whole.
        let long = "x".repeat(40);
        store.record(&long, 2, Task::Classification, vec![p(0.3), p(0.6)], now);
        let got = store.ingest(
            &[Label {
                id: long.clone(),
                label: LabelValue::Rows(vec![0.0, 1.0]),
            }],
            now,
        );
        assert_eq!((got.joined, got.mismatched), (1, 0));
        assert_eq!(got.quality[0].version, 2);
        assert_eq!(got.quality[0].accuracy, Some(1.0));
    }

    #[test]
    fn recording_nothing_keeps_the_store_consistent() {
        let store = LabelStore::new(2, Duration::from_secs(60), 100);
        let now = Instant::now();
        store.record("a", 1, Task::Regression, vec![p(1.0)], now);
        assert!(store.record_with("b", 1, Task::Regression, now, |_| false));
        store.record("c", 1, Task::Regression, vec![p(2.0)], now);
        assert_eq!(store.len(), 2);
        let got = store.ingest(
            &[
                Label {
                    id: "b".into(),
                    label: LabelValue::One(1.0),
                },
                Label {
                    id: "c".into(),
                    label: LabelValue::One(2.0),
                },
            ],
            now,
        );
        assert_eq!((got.joined, got.unknown), (1, 1));
    }

    #[test]
    fn regression_metrics() {
        let store = LabelStore::new(10, Duration::from_secs(60), 100);
        let now = Instant::now();
        let v = |s| Prediction {
            class: None,
            score: s,
        };
        store.record("a", 1, Task::Regression, vec![v(3.0), v(5.0)], now);
        let got = store.ingest(
            &[Label {
                id: "a".into(),
                label: LabelValue::Rows(vec![1.0, 5.0]),
            }],
            now,
        );
        let q = &got.quality[0];
        assert_eq!(q.rmse, Some((4.0f64 / 2.0).sqrt()));
        assert_eq!(q.mae, Some(1.0));
        assert_eq!(q.accuracy, None);
    }
}
