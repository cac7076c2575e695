//! The native engine against ONNX Runtime's outputs, recorded by Python
//! onnxruntime in the golden files of `fixtures/golden` (the serving
//! fixtures) and `fixtures/tabular/golden` (scikit-learn, XGBoost and
//! LightGBM exports with NaN and edge-value inputs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod garbage;
mod golden;
