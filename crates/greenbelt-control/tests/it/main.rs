//! Control-plane integration tests: a real server serving from registry
//! aliases, under continuous load.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod cuttable;
mod notify;
mod optimize;
mod parquet_data;
mod pipeline;
mod releases;
mod rollback;
