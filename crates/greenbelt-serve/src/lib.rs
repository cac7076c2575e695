//! The data plane: REST and gRPC (Open Inference Protocol V2), the model
//! repository, dynamic batching, the bounded compute pool, admission and
//! per-version telemetry.
//!
//! Request path: transport admit → decode → [`infer::infer`] (route →
//! enrich → validate → execute, under the request timeout) → observe →
//! transport encode; see [`stages`]. Nothing on this path waits for
//! telemetry.

pub mod alerts;
pub mod autoscale;
pub mod batcher;
pub mod compute;
pub mod config;
pub mod cost;
pub mod dashboard;
pub mod deployment;
pub mod drift;
pub mod error;
pub mod exposition;
pub mod fault;
pub mod features;
pub mod grafana;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod instances;
pub mod limits;
pub mod listen;
pub mod live;
pub mod metrics;
pub mod payloadlog;
pub mod readiness;
pub mod repository;
pub mod reqlog;
pub mod routing;
pub mod schema;
pub mod server;
pub mod shadow;
pub mod slo;
pub mod stages;
pub mod stats;
pub mod telemetry;
pub mod traces;
pub mod triton;

pub use greenbelt_auth as auth;

pub use config::Config;
pub use error::ServeError;
pub use server::Server;
