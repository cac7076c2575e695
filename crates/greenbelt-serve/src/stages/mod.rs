//! The stages of the request path, each a small function over its own
//! input and output types. [`crate::infer::infer`] runs them in order:
//!
//! ```text
//! decode (transport) ─▶ admit ─▶ route ─▶ enrich ─▶ validate ─▶ execute ─▶ observe
//!                       └──────── under admission and the request timeout ──────┘
//! ```
//!
//! - [`admit`]: the in-flight bound and the byte budget, taken *before* the
//!   body is decoded, so a burst of large bodies sheds (503 + Retry-After)
//!   instead of growing memory.
//! - route: the repository picks the version (pinned, stable, canary,
//!   preview); forcing a track needs a token (see `crate::auth`).
//! - enrich: entity keys become the feature tensor (`crate::features`); the
//!   feature lookup runs under admission and the timeout like the rest.
//! - [`validate`]: the request against the version's signature; inputs in
//!   signature order; requested outputs unique.
//! - [`execute`]: the batcher or the compute pool ([`execute::Executor`], the
//!   small handle shadows get too).
//! - [`observe`]: metrics, the log line and the shadow offer, after the
//!   answer and never waited for.

pub mod admit;
pub mod execute;
pub mod limit;
pub mod observe;
pub mod validate;
