//! Greenbelt as an application: [`App::build`] assembles a running server
//! from the project config (feature store first, then the serving state
//! with its feature source and the models, then the registry, rollout and
//! feature APIs and the background tasks it owns), and [`App::run`] serves
//! and shuts it all down. Beside it, the behaviour of the `greenbelt`
//! commands as library functions: the one load generator (bench and
//! drill), the bad-deployment, pipeline-outage and multi-region failover
//! drills and their pure judges, the quickstart's
//! demo project, pipelines with the feature store, registry and
//! feature-store operations, quantization and distillation (`optimize`),
//! batch scoring (`score`), the configuration reference
//! (`config-reference`). The binary parses arguments, calls these and
//! prints.

pub mod app;
pub mod autoscale;
pub mod autoscale_sim;
pub mod bench;
pub mod bench_devices;
pub mod config_check;
pub mod config_reference;
pub mod cost;
pub mod drift;
pub mod drill;
pub mod error;
pub mod failover;
pub mod feature_ops;
pub mod features;
pub mod labels;
pub mod loadgen;
pub mod mlflow_import;
pub mod optimize;
pub mod pipeline;
pub mod pipeline_drill;
pub mod quickstart;
pub mod registry;
pub mod score;
pub mod shadow;
pub mod table;
pub mod tasks;

pub use app::{App, Running};
pub use error::{AppError, Result};
