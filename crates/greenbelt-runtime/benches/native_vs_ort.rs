//! The native tabular engine against ONNX Runtime on the same models, at
//! batch 1, 64 and 1024 (one thread each: ONNX Runtime with one intra-op
//! thread, as Greenbelt configures it).
//!
//! `ORT_DYLIB_PATH=... cargo bench -p greenbelt-runtime --bench native_vs_ort -- --quick`
//!
//! Models: the serving fixtures (`fixtures/models`: logreg, forest, mlp) and
//! the tabular test set (`fixtures/tabular/models`). Without ONNX Runtime
//! only the native side runs (and says so).

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a panic is a failed run

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use greenbelt_core::{DataType, Tensor, TensorData};
use greenbelt_runtime::{Backend, LoadOptions, Model, Runtimes};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// (label, path) of every model benchmarked.
fn models() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = ["logreg/1", "forest/1", "mlp/1"]
        .iter()
        .map(|m| {
            (
                m.replace("/1", ""),
                fixtures().join(format!("models/{m}/model.onnx")),
            )
        })
        .collect();
    for name in [
        "sk_rf_binary",
        "sk_gb_multi",
        "sk_hgb_reg",
        "xgb_binary",
        "xgb_multi",
        "lgbm_binary",
        "lgbm_reg",
        "sk_pipe_impute_scale_logreg",
    ] {
        let p = fixtures().join(format!("tabular/models/{name}.onnx"));
        if p.is_file() {
            out.push((name.to_string(), p));
        }
    }
    out
}

/// Deterministic uniform values in [-2, 2) (splitmix64).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// A batch of `rows` rows for every input of the model.
fn batch(model: &dyn Model, rows: usize) -> Vec<Tensor> {
    model
        .signature()
        .inputs
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            let cols: usize = spec
                .shape
                .iter()
                .skip(1)
                .map(|d| (*d).max(1) as usize)
                .product();
            let v = values(rows * cols, 7 + k as u64);
            let data = match spec.datatype {
                DataType::Fp32 => TensorData::Fp32(v),
                DataType::Fp64 => TensorData::Fp64(v.iter().map(|x| f64::from(*x)).collect()),
                DataType::Int64 => TensorData::Int64(v.iter().map(|x| (*x * 2.0) as i64).collect()),
                other => panic!("bench inputs of type {other} are not generated"),
            };
            let mut shape = vec![rows as i64];
            shape.extend(spec.shape.iter().skip(1).map(|d| (*d).max(1)));
            Tensor::new(spec.name.clone(), shape, data).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = Runtimes::probe(None);
    if rt.onnxruntime.is_none() {
        eprintln!(
            "ONNX Runtime not found ({}): only the native side runs; set ORT_DYLIB_PATH",
            rt.onnxruntime_missing.as_deref().unwrap_or("?")
        );
    }
    let opts = |backend| LoadOptions {
        backend,
        intra_op_threads: 1,
        instances: 1,
        ..LoadOptions::default()
    };
    for (name, path) in models() {
        let native: Arc<dyn Model> = match rt.load(&path, &opts(Backend::Native)) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{name}: native engine refuses it: {e}");
                continue;
            }
        };
        let ort = rt.load(&path, &opts(Backend::Onnxruntime)).ok();
        let mut g = c.benchmark_group(format!("infer/{name}"));
        for rows in [1usize, 64, 1024] {
            let inputs = batch(native.as_ref(), rows);
            g.throughput(Throughput::Elements(rows as u64));
            g.bench_function(format!("native/{rows}"), |b| {
                b.iter(|| native.infer(black_box(&inputs)).unwrap())
            });
            if let Some(ort) = &ort {
                g.bench_function(format!("onnxruntime/{rows}"), |b| {
                    b.iter(|| ort.infer(black_box(&inputs)).unwrap())
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
