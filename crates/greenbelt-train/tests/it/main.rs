//! Integration tests of greenbelt-train: metrics and models against
//! scikit-learn golden values (tests/golden/golden.json, made by
//! tests/golden/make_golden.py), and exported models run by the project's
//! runtimes (tract always; ONNX Runtime when `ORT_DYLIB_PATH` or another
//! usual place provides it, else a SKIP line), and compressed (int8, fp16)
//! models against the FP32 ones they came from.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod export;
mod golden;
mod models;
mod quantize;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn golden_json() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/golden.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Where tests leave files for `make_golden.py --check-onnx`.
pub fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("greenbelt-train");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
