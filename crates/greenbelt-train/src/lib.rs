//! Model training for Greenbelt: binary classifiers and regressors trained
//! in-process from a dense `f64` matrix, evaluated with scikit-learn-compatible metrics, and
//! exported as ONNX files that the serving runtimes load.
//!
//! This crate owns:
//! - [`metrics`]: ROC AUC, average precision, log-loss, accuracy, precision,
//!   recall, F1, RMSE, MAE, matching scikit-learn to 1e-9 (golden-tested);
//! - [`logreg`]: deterministic L2 logistic regression (Newton's method);
//! - [`linreg`]: deterministic ridge (L2) linear regression (Cholesky);
//! - [`gbdt`]: seeded, deterministic histogram gradient-boosted trees, for
//!   log-loss (classification) or squared error (regression);
//! - [`onnx`]: byte-deterministic ONNX export of all of them, with the
//!   repository's classifier signature (`input` -> `label`, `probabilities`)
//!   or the regressor one (`input` -> `prediction` `[N, 1]`);
//! - [`distill`]: students (boosted trees, a linear model) fitted to a
//!   binary teacher's logits, exported as classifiers;
//! - [`quantize`]: post-training compression of ONNX models by graph
//!   rewrite (int8 dynamic quantization of MatMul/Gemm weights, float16
//!   storage of initializers), bytes in, bytes and a report out;
//! - [`synthetic`]: reproducible data sets for tests and demos.
//!
//! It must not read files or tables (callers pass a [`DenseMatrix`]), load
//! or serve models (that is `greenbelt-runtime` and `greenbelt-serve`), or
//! depend on them. It uses `tract-onnx` only for its ONNX protobuf types.

pub mod data;
pub mod distill;
pub mod error;
pub mod gbdt;
pub mod linreg;
pub mod logreg;
pub mod metrics;
pub mod onnx;
pub mod quantize;
pub mod rng;
pub mod synthetic;

pub use data::DenseMatrix;
pub use error::TrainError;
pub use gbdt::{GbdtModel, GbdtParams, Objective};
pub use linreg::{LinRegModel, LinRegParams};
pub use logreg::{LogRegModel, LogRegParams};
pub use onnx::{export_gbdt, export_linreg, export_logreg};
pub use quantize::{CompressReport, quantize_int8, to_fp16};
