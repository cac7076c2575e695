//! In-process integration tests of the server: real listeners on ephemeral
//! ports, real fixture models, REST and gRPC clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod support;

mod alerts;
mod cost;
mod dashboard;
mod errors;
mod grpc;
mod lifecycle;
mod limits;
mod overload;
mod payloads;
mod repository;
mod security;
mod stages;
mod traces;
