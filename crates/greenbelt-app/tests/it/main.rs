//! Integration tests for greenbelt-app (one test binary).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod app;
mod autoscale;
// Runs one test in a child process (its own peak RSS), shared with
// greenbelt-features' tests.
#[path = "../../../greenbelt-features/tests/it/child.rs"]
mod child;
#[path = "../../../greenbelt-control/tests/it/cuttable.rs"]
mod cuttable;
mod drift;
mod instances;
mod lifecycle;
mod outage;
mod registry_down;
mod score;
// One copy of the test Redis process, shared with greenbelt-features' tests
// (this crate uses only part of it).
#[allow(dead_code)]
#[path = "../../../greenbelt-features/tests/it/redis_proc.rs"]
mod redis_proc;
