//! The autoscaler's evaluation loop, one of the app's background tasks:
//! every `[autoscale] interval` it asks the serving state's
//! [`greenbelt_serve::autoscale::Autoscaler`] to evaluate every served
//! model (live counters → recommender → `/metrics` and
//! `/admin/autoscaler`). It stops with the app's other tasks. The replay of
//! a request-rate trace through the same recommender is in
//! [`crate::autoscale_sim`].

use std::sync::Arc;

use greenbelt_serve::infer::AppState;
use tokio::time::{Instant, MissedTickBehavior};

use crate::tasks::Tasks;

/// Start the loop (nothing when `[autoscale] enabled = false`).
pub fn spawn(state: Arc<AppState>, tasks: &mut Tasks) {
    if !state.autoscaler.enabled() {
        return;
    }
    let every = state.autoscaler.interval();
    tasks.spawn(move |mut stop| async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.stopped() => return,
                _ = tick.tick() => {
                    state
                        .autoscaler
                        .evaluate(&state.repository, &state.metrics, Instant::now());
                }
            }
        }
    });
}
