//! Integration tests of the runtimes against golden outputs computed by
//! Python onnxruntime (fixtures/golden, made by fixtures/generate.py).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod golden;
