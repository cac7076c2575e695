//! The autoscaler's evaluation loop, one of the app's background tasks:
//! every `[autoscale] interval` it asks the serving state's
//! [`greenbelt_serve::autoscale::Autoscaler`] to evaluate every served
//! model (live counters → recommender → `/metrics` and
//! `/admin/autoscaler`) and to scale, in this process, the instances and
//! batch concurrency of deployments with `[deployments.instances]`
//! (`greenbelt_serve::instances`; loads run on blocking threads, never in
//! this loop). It stops with the app's other tasks. The replay of
//! a request-rate trace through the same recommender is in
//! [`crate::autoscale_sim`].

use std::sync::Arc;

use greenbelt_serve::infer::AppState;

use crate::tasks::Tasks;

/// Start the loop (nothing when `[autoscale] enabled = false`).
pub fn spawn(state: Arc<AppState>, tasks: &mut Tasks) {
    if !state.autoscaler.enabled() {
        return;
    }
    let every = state.autoscaler.interval();
    tasks.spawn_ticker(every, move |now| {
        state
            .autoscaler
            .evaluate(&state.repository, &state.metrics, now)
    });
}
