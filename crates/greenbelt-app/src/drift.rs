//! The drift monitor's window loop, one of the app's background tasks:
//! every `[drift] tick` it asks the serving state's
//! [`greenbelt_serve::drift::DriftHub`] to close the windows that are due
//! (by time or request count) and publish their statistics on `/metrics`
//! and `/admin/drift`. It stops with the app's other tasks.

use std::sync::Arc;

use greenbelt_serve::infer::AppState;

use crate::tasks::Tasks;

/// Start the loop (nothing when `[drift] enabled = false`).
pub fn spawn(state: Arc<AppState>, tasks: &mut Tasks) {
    if !state.drift.settings().enabled {
        return;
    }
    let every = state.drift.settings().tick;
    tasks.spawn_ticker(every, move |now| {
        state.drift.tick(&state.repository, &state.metrics, now)
    });
}
