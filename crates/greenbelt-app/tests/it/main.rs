//! Integration tests for greenbelt-app (one test binary).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod app;
mod lifecycle;
mod outage;
mod redis_proc;
