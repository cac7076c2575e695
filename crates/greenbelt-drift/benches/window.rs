//! The drift hot path: counting a live value into a window, and the
//! statistics read off a window (what a drift evaluator does each tick).
//!
//! `cargo bench -p greenbelt-drift --bench window -- --quick`

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a panic is a failed run

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use greenbelt_drift::ks_2samp;
use greenbelt_drift::profile::{CategoricalProfile, NumericProfile};

/// Deterministic normal-ish values (splitmix64, sum of uniforms).
fn values(n: usize, seed: u64, shift: f64) -> Vec<f64> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| shift + (0..4).map(|_| next()).sum::<f64>() - 2.0)
        .collect()
}

fn numeric(c: &mut Criterion) {
    let profile = NumericProfile::from_values(&values(100_000, 1, 0.0), 100, 10).unwrap();
    let live = values(10_000, 2, 0.1);

    let mut g = c.benchmark_group("numeric_window");
    g.throughput(Throughput::Elements(live.len() as u64));
    g.bench_function("observe_10k", |b| {
        b.iter_batched_ref(
            || profile.window(),
            |w| {
                for x in &live {
                    profile.observe(w, black_box(*x));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut window = profile.window();
    live.iter().for_each(|x| profile.observe(&mut window, *x));
    let mut g = c.benchmark_group("numeric_stats");
    g.bench_function("psi", |b| b.iter(|| profile.psi(black_box(&window))));
    g.bench_function("ks_grid", |b| b.iter(|| profile.ks(black_box(&window))));
    g.finish();
}

fn categorical(c: &mut Criterion) {
    let names: Vec<String> = (0..50).map(|i| format!("category-{i}")).collect();
    let reference = (0..10_000).map(|i| Some(names[(i * 7) % 50].as_str()));
    let profile = CategoricalProfile::from_values(reference);
    let live: Vec<&str> = (0..10_000).map(|i| names[(i * 11) % 50].as_str()).collect();
    let mut g = c.benchmark_group("categorical_window");
    g.throughput(Throughput::Elements(live.len() as u64));
    g.bench_function("observe_10k", |b| {
        b.iter_batched_ref(
            || profile.window(),
            |w| {
                for v in &live {
                    profile.observe(w, Some(black_box(v)));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn ks_raw(c: &mut Criterion) {
    let (a, b) = (values(1_000_000, 3, 0.0), values(1_000_000, 4, 0.01));
    let mut g = c.benchmark_group("ks_2samp");
    g.sample_size(10);
    g.bench_function("1M_vs_1M", |bch| {
        bch.iter(|| ks_2samp(black_box(&a), black_box(&b)))
    });
    g.finish();
}

criterion_group!(benches, numeric, categorical, ks_raw);
criterion_main!(benches);
