//! The control plane: deployments served from registry aliases with safe
//! releases (canary, blue/green, shadow analysis), and the promotion
//! pipeline (train → validate → gate → register → promote).
//!
//! It drives the data plane (`greenbelt-serve`) and the registry; it must not
//! sit on the request path.

pub mod demo;
pub mod pipeline;
pub mod rollout;
