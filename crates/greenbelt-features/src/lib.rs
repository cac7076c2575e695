//! Greenbelt's feature store: definitions (entities, sources, feature views,
//! feature services), data contracts, point-in-time-correct historical
//! retrieval and materialization on DataFusion, the Parquet offline store,
//! the online store (embedded redb or Redis) with an in-process cache, and
//! the `/features` HTTP API.
//!
//! All timestamps are UTC; naive timestamps in sources and requests are read
//! as UTC.

pub(crate) mod asof;
pub mod canary;
pub mod contracts;
pub mod defs;
pub mod drift;
pub mod error;
pub mod feast_import;
pub mod freshness;
pub mod http;
pub mod offline;
pub mod online;
pub mod pit;
pub mod plan;
pub mod source;
pub mod time;
pub mod validate;

pub use defs::{Definitions, FeatureRef, FeatureView, ValueType};
pub use error::{FeatureError, Result};
