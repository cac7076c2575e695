//! `greenbelt autoscale simulate` on a short trace: text, JSON and the SVG,
//! and a bad trace refused naming the line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::Command;

fn simulate(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_greenbelt"))
        .current_dir(dir)
        .env("GREENBELT_LOG", "warn")
        .args(["autoscale", "simulate", "--trace", "load.csv"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn simulate_reports_the_spike_and_writes_the_plot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 100 rps for 2 minutes, then a step to 1000 rps for 2 minutes.
    std::fs::write(
        d.join("load.csv"),
        "time_s,rps\n0,100\n120,100\n120,1000\n240,1000\n",
    )
    .unwrap();
    let out = simulate(d, &["--utilization", "1", "--out", "plot.svg"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // Panic mode reaches the 10 replicas needed at the third evaluation.
    assert!(text.contains("time to react             6 s"), "{text}");
    assert!(text.contains("peak desired replicas     10"), "{text}");
    let svg = std::fs::read_to_string(d.join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("around the spike"));

    let out = simulate(d, &["--json", "--algorithm", "hpa", "--utilization", "1"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["algorithm"], "hpa");
    assert_eq!(report["spike_at_s"], 120.0);
    assert_eq!(report["points"].as_array().unwrap().len(), 121);

    std::fs::write(d.join("load.csv"), "time_s,rps\n0,100\n10,lots\n").unwrap();
    let out = simulate(d, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 3"), "{err}");
}
