//! In-process integration tests of the server: real listeners on ephemeral
//! ports, real fixture models, REST and gRPC clients.

mod support;

mod errors;
mod grpc;
mod lifecycle;
mod repository;
