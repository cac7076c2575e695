//! The live drift monitor's cost on the request path: counting one
//! request's inputs (20 features, 1 row and 64 rows) and outputs into a
//! version's window, and closing a window (what the drift task does each
//! window).
//!
//! `cargo bench -p greenbelt-serve --bench drift -- --quick`

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a panic is a failed run

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use greenbelt_core::{DataType, Signature, Tensor, TensorData, TensorSpec};
use greenbelt_drift::model::{ModelProfile, Task};
use greenbelt_serve::drift::DriftMonitor;

const FEATURES: usize = 20;

fn uniforms(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

fn monitor() -> DriftMonitor {
    let rows = 10_000;
    let names: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    let profile = ModelProfile::build(
        Task::Classification,
        "input",
        &names,
        &uniforms(rows * FEATURES, 1),
        "probabilities",
        &uniforms(rows, 2),
        1,
    )
    .unwrap();
    let signature = Signature {
        inputs: vec![TensorSpec::new(
            "input",
            DataType::Fp32,
            vec![-1, FEATURES as i64],
        )],
        outputs: vec![TensorSpec::new(
            "probabilities",
            DataType::Fp32,
            vec![-1, 2],
        )],
    };
    DriftMonitor::new(&profile, &signature, 1024, 0).unwrap()
}

fn request(rows: usize) -> (Vec<Tensor>, Vec<Tensor>) {
    let x: Vec<f32> = uniforms(rows * FEATURES, 3)
        .iter()
        .map(|v| *v as f32)
        .collect();
    let p: Vec<f32> = uniforms(rows, 4)
        .iter()
        .flat_map(|v| [1.0 - *v as f32, *v as f32])
        .collect();
    (
        vec![
            Tensor::new(
                "input",
                vec![rows as i64, FEATURES as i64],
                TensorData::Fp32(x),
            )
            .unwrap(),
        ],
        vec![Tensor::new("probabilities", vec![rows as i64, 2], TensorData::Fp32(p)).unwrap()],
    )
}

fn observe(c: &mut Criterion) {
    let m = monitor();
    let mut g = c.benchmark_group("drift_monitor");
    for rows in [1usize, 64] {
        let (inputs, outputs) = request(rows);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("observe_request_{rows}_rows_20_features"), |b| {
            b.iter(|| {
                m.observe_inputs(black_box(&inputs), None);
                m.observe_outputs(black_box(&outputs));
            })
        });
    }
    // Closing a window of 1 000 one-row requests: merge the shards, PSI
    // and KS (with its p-value) for 20 features and the prediction.
    let (inputs, outputs) = request(1);
    g.bench_function("close_window_1000_requests_20_features", |b| {
        b.iter_batched(
            || {
                for _ in 0..1_000 {
                    m.observe_inputs(&inputs, None);
                    m.observe_outputs(&outputs);
                }
            },
            |()| black_box(m.close(1, 0.2, 0.01)),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, observe);
criterion_main!(benches);
