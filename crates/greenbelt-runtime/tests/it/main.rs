//! Integration tests of the runtimes against golden outputs computed by
//! Python onnxruntime (fixtures/golden, made by fixtures/generate.py).

mod golden;
