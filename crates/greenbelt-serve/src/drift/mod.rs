//! Live drift and model-quality monitoring (see `docs/drift.md`).
//!
//! - [`monitor`]: one version's reference profile resolved onto its tensors
//!   and the sharded, mergeable window the request path counts into.
//! - [`labels`]: recorded predictions joined with delayed labels, and the
//!   rolling accuracy / AUC / RMSE of each version.
//! - [`config`]: `[drift]` and `[deployments.drift_routing]`.
//!
//! [`DriftHub`] ties them to the server: the request path calls
//! [`DriftHub::answered`] (it never waits), a background task calls
//! [`DriftHub::tick`] to close due windows and publish their statistics on
//! `/metrics` and `/admin/drift`.

pub mod config;
pub mod labels;
pub mod monitor;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use greenbelt_core::Tensor;
use serde::Serialize;
use tokio::time::Instant;

pub use config::{DriftAction, DriftConfig, DriftRoutingSpec, DriftSettings};
use labels::{Label, LabelStore, Quality};
pub use monitor::{DriftMonitor, OodBounds, WindowReport};

use crate::metrics::{FeatureGauge, Metrics, VersionGauge};
use crate::repository::{Repository, ServedVersion};

/// The server's drift state: label stores per model, the last closed
/// window per version.
pub struct DriftHub {
    settings: DriftSettings,
    epoch: Instant,
    labels: RwLock<HashMap<String, Arc<LabelStore>>>,
    reports: Mutex<BTreeMap<(String, u64), WindowReport>>,
}

/// One version's view on `/admin/drift/{model}`.
#[derive(Debug, Serialize)]
pub struct VersionView {
    pub version: u64,
    pub monitored: bool,
    /// Requests in the open window so far.
    pub open_window_requests: u64,
    pub last_window: Option<WindowReport>,
    pub quality: Option<Quality>,
}

impl DriftHub {
    pub fn new(settings: DriftSettings) -> DriftHub {
        DriftHub {
            settings,
            epoch: Instant::now(),
            labels: RwLock::new(HashMap::new()),
            reports: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn settings(&self) -> &DriftSettings {
        &self.settings
    }

    /// Milliseconds on the hub's clock (tokio's, so tests can pause it).
    pub fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Run `f` on the label store of `model` (created on first use; only
    /// served models get one, so their number is bounded by the
    /// repository). The store is borrowed under the map's read lock, not
    /// cloned out: a shared reference count would bounce between the cores
    /// on every request.
    pub fn with_label_store<R>(&self, model: &str, f: impl FnOnce(&LabelStore) -> R) -> R {
        if let Ok(m) = self.labels.read()
            && let Some(s) = m.get(model)
        {
            return f(s);
        }
        let store = match self.labels.write() {
            Ok(mut m) => m
                .entry(model.to_string())
                .or_insert_with(|| Arc::new(self.new_store()))
                .clone(),
            Err(_) => Arc::new(self.new_store()),
        };
        f(&store)
    }

    fn new_store(&self) -> LabelStore {
        LabelStore::new(
            self.settings.label_capacity,
            self.settings.label_retention,
            self.settings.label_window,
        )
    }

    /// The request path, once inputs are validated: count them into the
    /// version's window (never waits).
    pub fn inputs(&self, served: &ServedVersion, inputs: &[Tensor], statuses: Option<&Tensor>) {
        if let Some(m) = served.drift.as_ref().filter(|_| self.settings.enabled) {
            m.observe_inputs(inputs, statuses);
        }
    }

    /// The request path, once the model answered: count the outputs into
    /// the window and record the predictions for delayed labels under `id`.
    pub fn outputs(&self, metrics: &Metrics, served: &ServedVersion, id: &str, outputs: &[Tensor]) {
        if !self.settings.enabled {
            return;
        }
        if let Some(m) = &served.drift {
            m.observe_outputs(outputs);
        }
        let Some(spec) = &served.prediction else {
            return;
        };
        let max_rows = self.settings.label_max_rows;
        let recorded = self.with_label_store(&served.model_name, |store| {
            store.record_with(id, served.version, spec.task, Instant::now(), |rows| {
                spec.rows_into(outputs, max_rows, rows)
            })
        });
        if !recorded {
            metrics.drift.labels(&served.model_name, "dropped", 1);
        }
    }

    /// Join labels for `model` and publish the touched versions' metrics.
    pub fn ingest(&self, metrics: &Metrics, model: &str, labels: &[Label]) -> labels::Ingested {
        let got = self.with_label_store(model, |s| s.ingest(labels, Instant::now()));
        for (outcome, n) in [
            ("joined", got.joined),
            ("unknown", got.unknown),
            ("mismatched", got.mismatched),
        ] {
            if n > 0 {
                metrics.drift.labels(model, outcome, n);
            }
        }
        for q in &got.quality {
            publish_quality(metrics, model, q);
        }
        got
    }

    /// Close every window that is due (by time, or by request count) and
    /// publish what it showed. Called by the app's drift task every
    /// `[drift] tick`.
    pub fn tick(&self, repository: &Repository, metrics: &Metrics, now: Instant) {
        if !self.settings.enabled {
            return;
        }
        let now_ms = self.now_ms(now);
        let window_ms = self.settings.window.as_millis() as u64;
        let mut live = Vec::new();
        for entry in repository.loaded() {
            for served in entry.versions.values() {
                live.push((entry.name.clone(), served.version));
                let Some(m) = &served.drift else { continue };
                let by_time = now_ms.saturating_sub(m.opened_ms()) >= window_ms;
                let by_count = self.settings.window_requests > 0
                    && m.window_requests() >= self.settings.window_requests;
                if !(by_time || by_count) {
                    continue;
                }
                let report = m.close(now_ms, self.settings.psi_threshold, self.settings.ks_pvalue);
                self.publish(metrics, &entry.name, served.version, report);
            }
        }
        if let Ok(mut reports) = self.reports.lock() {
            reports.retain(|k, _| live.contains(k));
        }
    }

    fn publish(&self, metrics: &Metrics, model: &str, version: u64, report: WindowReport) {
        let v = version.to_string();
        let previous_dropped = self
            .reports
            .lock()
            .ok()
            .and_then(|r| r.get(&(model.to_string(), version)).map(|p| p.dropped))
            .unwrap_or(0);
        let d = &metrics.drift;
        d.window_closed(model, &v, report.dropped.saturating_sub(previous_dropped));
        d.set_version(
            model,
            &v,
            VersionGauge::WindowRequests,
            Some(report.requests as f64),
        );
        let enough = |rows: u64| rows >= self.settings.min_window_rows.max(1);
        let mut drifted = 0usize;
        for (name, s) in &report.features {
            let ok = enough(s.rows);
            let g = |x: Option<f64>| x.filter(|_| ok);
            d.set_feature(model, &v, name, FeatureGauge::Psi, g(s.psi));
            d.set_feature(
                model,
                &v,
                name,
                FeatureGauge::KsStatistic,
                g(s.ks_statistic),
            );
            d.set_feature(model, &v, name, FeatureGauge::KsPvalue, g(s.ks_pvalue));
            d.set_feature(model, &v, name, FeatureGauge::Chi2Pvalue, g(s.chi2_pvalue));
            d.set_feature(
                model,
                &v,
                name,
                FeatureGauge::JensenShannon,
                g(s.jensenshannon),
            );
            d.set_feature(
                model,
                &v,
                name,
                FeatureGauge::MissingRatio,
                s.missing_ratio(),
            );
            if ok && report.drifted.contains(name) {
                drifted += 1;
            }
        }
        d.set_version(
            model,
            &v,
            VersionGauge::DriftedFeatures,
            Some(drifted as f64),
        );
        let p = &report.prediction.1;
        let ok = enough(p.rows);
        d.set_version(model, &v, VersionGauge::PredictionPsi, p.psi.filter(|_| ok));
        d.set_version(
            model,
            &v,
            VersionGauge::PredictionKs,
            p.ks_statistic.filter(|_| ok),
        );
        d.set_version(
            model,
            &v,
            VersionGauge::ConfidenceMean,
            report.confidence_mean,
        );
        d.set_version(model, &v, VersionGauge::EntropyMean, report.entropy_mean);
        d.set_version(
            model,
            &v,
            VersionGauge::NotPresentRatio,
            report.store_not_present_ratio,
        );
        if let Ok(mut reports) = self.reports.lock() {
            reports.insert((model.to_string(), version), report);
        }
    }

    /// The dashboard's line for one version: drifted features, the worst
    /// feature's PSI, prediction PSI, mean confidence, label metrics (None
    /// when the version is neither monitored nor labelled).
    pub fn summary(&self, model: &str, version: u64) -> Option<serde_json::Value> {
        let report = self
            .reports
            .lock()
            .ok()
            .and_then(|r| r.get(&(model.to_string(), version)).cloned());
        let quality = self
            .labels
            .read()
            .ok()
            .and_then(|m| m.get(model).cloned())
            .and_then(|s| s.quality().into_iter().find(|q| q.version == version));
        if report.is_none() && quality.is_none() {
            return None;
        }
        let worst = report.as_ref().and_then(|r| {
            r.features
                .iter()
                .filter_map(|(n, s)| s.psi.map(|p| (n, p)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
        });
        Some(serde_json::json!({
            "drifted": report.as_ref().map(|r| r.drifted.len()),
            "features": report.as_ref().map(|r| r.features.len()),
            "worst_feature": worst.map(|w| w.0),
            "worst_psi": worst.map(|w| w.1),
            "prediction_psi": report.as_ref().and_then(|r| r.prediction.1.psi),
            "confidence": report.as_ref().and_then(|r| r.confidence_mean),
            "accuracy": quality.as_ref().and_then(|q| q.accuracy),
            "auc": quality.as_ref().and_then(|q| q.auc),
            "rmse": quality.as_ref().and_then(|q| q.rmse),
        }))
    }

    /// What `/admin/drift/{model}` shows: per loaded version, whether it is
    /// monitored, its open and last closed windows, its label metrics.
    pub fn view(&self, repository: &Repository, model: &str) -> Option<Vec<VersionView>> {
        let entry = repository.get(model)?;
        let reports = self.reports.lock().ok();
        let quality = self
            .labels
            .read()
            .ok()
            .and_then(|m| m.get(model).map(|s| s.quality()))
            .unwrap_or_default();
        Some(
            entry
                .versions
                .values()
                .map(|s| VersionView {
                    version: s.version,
                    monitored: s.drift.is_some(),
                    open_window_requests: s.drift.as_ref().map_or(0, |m| m.window_requests()),
                    last_window: reports
                        .as_ref()
                        .and_then(|r| r.get(&(model.to_string(), s.version)).cloned()),
                    quality: quality.iter().find(|q| q.version == s.version).cloned(),
                })
                .collect(),
        )
    }
}

fn publish_quality(metrics: &Metrics, model: &str, q: &Quality) {
    let v = q.version.to_string();
    let d = &metrics.drift;
    d.set_version(model, &v, VersionGauge::Accuracy, q.accuracy);
    d.set_version(model, &v, VersionGauge::Auc, q.auc);
    d.set_version(model, &v, VersionGauge::Rmse, q.rmse);
    d.set_version(model, &v, VersionGauge::Mae, q.mae);
    d.set_version(model, &v, VersionGauge::Labelled, Some(q.labelled as f64));
}
