//! What readiness (`/v2/health/ready`, gRPC `ServerReady`) waits for: every
//! model that must serve — the models loaded at start-up and every
//! `[[deployments]]` entry — has a ready version. A deployment whose alias
//! has not been loaded yet, or whose only version failed, keeps the server
//! not ready, so Kubernetes sends no traffic to a pod that would answer 404
//! or 503. A model an operator unloads on purpose stops being required.
//!
//! It also carries the first phase of shutdown: after SIGTERM the server
//! keeps serving for `[server] shutdown_delay_ms` with readiness false, so
//! endpoints are removed before it starts refusing requests.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::repository::{ModelState, Repository};

#[derive(Debug, Default)]
pub struct Readiness {
    required: Mutex<BTreeSet<String>>,
    stopping: AtomicBool,
}

impl Readiness {
    /// `names` must have a ready version for the server to be ready.
    pub fn require<I: IntoIterator<Item = String>>(&self, names: I) {
        if let Ok(mut r) = self.required.lock() {
            r.extend(names);
        }
    }

    /// The required models, sorted.
    pub fn required(&self) -> Vec<String> {
        self.required
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Required models with no ready version now (an operator's unload
    /// releases a model).
    pub fn waiting_for(&self, repository: &Repository) -> Vec<String> {
        let Ok(required) = self.required.lock() else {
            return vec!["<readiness lock poisoned>".into()];
        };
        required
            .iter()
            .filter(|name| !repository.unloaded_on_request(name))
            .filter(|name| {
                repository
                    .get(name)
                    .is_none_or(|e| e.state() != ModelState::Ready)
            })
            .cloned()
            .collect()
    }

    /// Shutdown has begun: not ready, though still serving.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}
