//! Safe releases: the rollout state machine (canary and blue/green), the
//! analysis that judges a release on live metrics, the controller that
//! applies it to a serving process, and the operations people run
//! (`greenbelt rollout start|status [--watch]|promote|abort|pause|resume`, also the
//! `/admin/rollouts` API). State lives in the registry database, so a
//! restart resumes and replicas sharing PostgreSQL agree.

pub mod analysis;
pub mod controller;
pub mod http;
pub mod machine;
pub mod watch;

use greenbelt_registry::{Registry, RegistryError, RolloutEvent};
use greenbelt_serve::deployment::{DeploymentConfig, RolloutSpec, Strategy};
use serde::Serialize;

pub use controller::{CachedPlan, Controller, Switch, serve_from_cache};
pub use machine::{Command, Phase, Rollout};

/// A rollout as people see it: the state and its recent log.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub rev: i64,
    pub rollout: Rollout,
    pub events: Vec<RolloutEvent>,
}

fn bad(msg: String) -> RegistryError {
    RegistryError::Invalid(msg)
}

/// Start releasing `candidate` on `dep`. The stable version is where the
/// deployment's alias points now. Refused while another rollout is active.
pub async fn start(
    registry: &Registry,
    dep: &DeploymentConfig,
    candidate: i64,
    strategy: Option<Strategy>,
    actor: &str,
    now_ms: i64,
) -> Result<Rollout, RegistryError> {
    let mut spec: RolloutSpec = dep.rollout.clone();
    if let Some(s) = strategy {
        spec.strategy = s;
    }
    spec.validate()
        .map_err(|e| bad(format!("[[deployments]] \"{}\": rollout.{e}", dep.name)))?;
    let conditions = analysis::conditions(&spec.analysis).map_err(|e| {
        bad(format!(
            "[[deployments]] \"{}\": rollout.analysis: {e}",
            dep.name
        ))
    })?;
    if spec.analysis.shadow_fraction <= 0.0
        && let Some(c) = conditions.iter().find(|c| c.needs_shadow())
    {
        return Err(bad(format!(
            "[[deployments]] \"{}\": condition \"{}\" needs a shadow: set rollout.analysis.shadow_fraction > 0",
            dep.name, c.text
        )));
    }
    let model = dep.model();
    registry.version(model, candidate).await?;
    let stable = registry.alias(model, &dep.alias).await?.ok_or_else(|| {
        bad(format!(
            "model \"{model}\" has no alias \"{}\" yet: promote a first version with `greenbelt registry alias set {model} {} <version>`",
            dep.alias, dep.alias
        ))
    })?;
    if stable == candidate {
        return Err(bad(format!(
            "version {candidate} is already {model}@{}; nothing to roll out",
            dep.alias
        )));
    }
    let existing = registry.rollout(&dep.name).await?;
    if let Some(s) = &existing
        && let Ok(r) = serde_json::from_value::<Rollout>(s.state.clone())
        && r.is_active()
    {
        return Err(RegistryError::Conflict(format!(
            "rollout {} of \"{}\" is still {:?}; promote or abort it first",
            r.id, dep.name, r.phase
        )));
    }
    let mut r = Rollout::start(&dep.name, model, stable, candidate, spec, now_ms);
    r.pending.insert(
        0,
        (
            "command".into(),
            serde_json::json!({"command": "start", "actor": actor}),
        ),
    );
    let events = std::mem::take(&mut r.pending);
    let state = serde_json::to_value(&r).map_err(|e| bad(e.to_string()))?;
    registry
        .put_rollout(&dep.name, existing.map(|s| s.rev), &state, &r.id, &events)
        .await?;
    Ok(r)
}

/// The deployment's current (or last) rollout, with its recent events.
pub async fn status(registry: &Registry, deployment: &str) -> Result<Status, RegistryError> {
    let stored = registry.rollout(deployment).await?.ok_or_else(|| {
        RegistryError::NotFound(format!(
            "deployment \"{deployment}\" has no rollout; start one with `greenbelt rollout start {deployment} --version N`"
        ))
    })?;
    let rollout: Rollout = serde_json::from_value(stored.state)
        .map_err(|e| RegistryError::Db(format!("stored rollout is unreadable: {e}")))?;
    let events = registry.rollout_events(deployment, 50).await?;
    Ok(Status {
        rev: stored.rev,
        rollout,
        events,
    })
}

/// Apply a person's command; retried a few times when a controller wrote
/// between our read and our write.
pub async fn command(
    registry: &Registry,
    deployment: &str,
    cmd: Command,
    actor: &str,
    now_ms: i64,
) -> Result<Rollout, RegistryError> {
    let mut last = None;
    for _ in 0..5 {
        let Status {
            rev, mut rollout, ..
        } = status(registry, deployment).await?;
        rollout.command(cmd, now_ms, actor).map_err(bad)?;
        let events = std::mem::take(&mut rollout.pending);
        let state = serde_json::to_value(&rollout).map_err(|e| bad(e.to_string()))?;
        match registry
            .put_rollout(deployment, Some(rev), &state, &rollout.id, &events)
            .await
        {
            Ok(_) => return Ok(rollout),
            Err(e @ RegistryError::Conflict(_)) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| RegistryError::Conflict("rollout kept changing".into())))
}
