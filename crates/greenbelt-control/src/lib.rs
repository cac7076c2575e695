//! The control plane: deployments served from registry aliases with safe
//! releases (canary, blue/green, shadow analysis), the promotion pipeline
//! (train → validate → gate → register → promote), and `optimize`
//! (quantized and distilled versions, judged by the same gates).
//!
//! It drives the data plane (`greenbelt-serve`) and the registry; it must not
//! sit on the request path.

pub mod demo;
pub mod expr;
pub mod optimize;
pub mod pipeline;
pub mod rollout;
