//! The fuzz targets under a counting allocator: every call is held to
//! `alloc_bound(input length)` (an allocation past it fails and aborts the
//! run, naming its size), and a panic is reported with the input saved.
//!
//! - `corpus_replays_clean`: every committed corpus file, every target.
//! - `explore`: a mutational explorer over the corpus, per target for
//!   `GREENBELT_FUZZ_SECS` seconds (default 3), keeping inputs that reach a
//!   new outcome; `GREENBELT_FUZZ_SEED` repeats a run, `GREENBELT_FUZZ_SAVE=n`
//!   writes the first n kept inputs into the corpus, `GREENBELT_FUZZ_SHOW=1` prints
//!   each new outcome class.
//! - `structured`: proptest-generated requests that get past the parser.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic is a failed test

mod structured;

use std::alloc::System;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cap::Cap;
use greenbelt_fuzz::{Rng, TARGETS, alloc_bound, corpus, corpus_dir, mutate, run};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Tests of this binary run one at a time: the allocation count is global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Largest input the explorer builds.
const MAX_LEN: usize = 64 * 1024;

/// Run `target` on `data` with the heap held to the bound; `Err` with the
/// panic message when it panicked.
pub fn bounded(target: &str, data: &[u8]) -> Result<Vec<String>, String> {
    let base = ALLOC.allocated();
    ALLOC
        .set_limit(base.saturating_add(alloc_bound(data.len())))
        .unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| run(target, data)));
    ALLOC.set_limit(usize::MAX).unwrap();
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn save_crash(target: &str, data: &[u8], tag: &str) -> String {
    let dir = corpus_dir(target).join("../../artifacts").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("crash-{tag}"));
    std::fs::write(&path, data).unwrap();
    path.display().to_string()
}

#[test]
fn corpus_replays_clean() {
    let _g = lock();
    // Quiet the default hook: failures are reported below with their file.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for &target in TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "no corpus for {target}");
        for (path, data) in files {
            if let Err(msg) = bounded(target, &data) {
                failures.push(format!("{target} {}: {msg}", path.display()));
            }
        }
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
// A wall-clock budget in a test without a runtime: tokio's Instant has nothing to pause here.
#[allow(clippy::disallowed_methods)]
fn explore() {
    let _g = lock();
    let secs: f64 = std::env::var("GREENBELT_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let only = std::env::var("GREENBELT_FUZZ_TARGET").ok();
    let seed: u64 = std::env::var("GREENBELT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let save: usize = std::env::var("GREENBELT_FUZZ_SAVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let show = std::env::var_os("GREENBELT_FUZZ_SHOW").is_some();
    std::panic::set_hook(Box::new(|_| {}));
    for &target in TARGETS {
        if only.as_deref().is_some_and(|t| t != target) {
            continue;
        }
        let mut pool: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, d)| d).collect();
        let mut seen: HashSet<String> = HashSet::new();
        for d in &pool {
            seen.extend(bounded(target, d).unwrap_or_default());
        }
        let seeds = pool.len();
        let mut rng = Rng::new(seed ^ target.len() as u64);
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < Duration::from_secs_f64(secs) {
            let mut input = pool[rng.below(pool.len())].clone();
            mutate(&mut rng, &mut input, &pool, MAX_LEN);
            runs += 1;
            match bounded(target, &input) {
                Ok(classes) => {
                    let mut new = false;
                    for c in classes {
                        if show && !seen.contains(&c) {
                            eprintln!("NEW {target}: {c}");
                        }
                        new |= seen.insert(c);
                    }
                    if new {
                        pool.push(input);
                    }
                }
                Err(msg) => {
                    let _ = std::panic::take_hook();
                    let path = save_crash(target, &input, &format!("{seed}-{runs}"));
                    panic!("{target}: panicked on {path} (seed {seed}): {msg}");
                }
            }
        }
        let _ = std::panic::take_hook();
        eprintln!(
            "FUZZ {target}: {runs} runs in {:.0}s, seed {seed}, {} outcome classes, {} new inputs kept, no panics, no allocation over the bound",
            started.elapsed().as_secs_f64(),
            seen.len(),
            pool.len() - seeds
        );
        std::panic::set_hook(Box::new(|_| {}));
        if save > 0 {
            for (i, d) in pool[seeds..].iter().take(save).enumerate() {
                let name = format!("explored-{seed}-{i}");
                std::fs::write(corpus_dir(target).join(name), d).unwrap();
            }
        }
    }
    let _ = std::panic::take_hook();
}
