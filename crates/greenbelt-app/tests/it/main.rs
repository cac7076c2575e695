//! Integration tests for greenbelt-app (one test binary).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod app;
mod autoscale;
#[path = "../../../greenbelt-control/tests/it/cuttable.rs"]
mod cuttable;
mod drift;
mod lifecycle;
mod outage;
mod registry_down;
// One copy of the test Redis process, shared with greenbelt-features' tests
// (this crate uses only part of it).
#[allow(dead_code)]
#[path = "../../../greenbelt-features/tests/it/redis_proc.rs"]
mod redis_proc;
