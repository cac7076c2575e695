//! Integration tests for greenbelt-features (one test binary).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod child;
mod common;
mod contracts;
mod defs;
mod drift;
mod http;
mod memory;
mod offline;
mod online;
mod outage;
mod pit;
mod pit_props;
mod redis_proc;
mod s3;
