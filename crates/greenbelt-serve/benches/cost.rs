//! What cost metering adds to the request path: reading the thread CPU
//! clock (twice per model call), the per-request sampling decision and an
//! unsampled request's measure (a counter and a branch), a sampled
//! request's measure (two clock reads, amortised over 1 in 16), and the
//! meter's atomic adds for one answered request; then a snapshot (what a
//! `/metrics` scrape or `/admin/cost` costs, off the request path).
//!
//! `cargo bench -p greenbelt-serve --bench cost -- --quick`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use greenbelt_serve::cost::meter::{RequestCpu, thread_cpu};
use greenbelt_serve::cost::{Ledger, VersionMeter};

fn metering(c: &mut Criterion) {
    c.bench_function("thread_cpu clock read", |b| {
        b.iter(|| black_box(thread_cpu()))
    });
    c.bench_function("request cpu: sample + measure (1 in 16 measured)", |b| {
        b.iter(|| {
            let mut cpu = RequestCpu::sample();
            cpu.measure(|| black_box(1u64));
            black_box(cpu.estimate_ns())
        })
    });
    let meter = VersionMeter::default();
    c.bench_function("meter: one answered request (wall, rows, wire, cpu)", |b| {
        b.iter(|| {
            meter.wall(black_box(Duration::from_micros(40)));
            meter.answered(black_box(1), false);
            meter.wire(black_box(200), black_box(120));
            meter.compute_call(
                black_box(Duration::from_micros(5)),
                Duration::from_micros(3),
            );
            meter.request_cpu(black_box(0));
        })
    });
    let ledger = Ledger::default();
    for m in 0..10 {
        let _ = ledger.meter(&format!("model{m}"), "1");
    }
    c.bench_function("ledger snapshot, 10 versions", |b| {
        b.iter(|| black_box(ledger.snapshot()))
    });
}

criterion_group!(benches, metering);
criterion_main!(benches);
