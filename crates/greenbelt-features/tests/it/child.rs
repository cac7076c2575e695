//! Running one test of this binary in a child process: with an environment
//! of its own (the AWS settings the S3 client reads) and a peak-memory count
//! of its own (VmHWM is per process, and `cargo test` runs tests as threads
//! of one process).

use std::process::Command;

const CHILD: &str = "GREENBELT_TEST_CHILD";

/// Whether this process is a child started by [`run`].
pub fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Run the ignored test `name` (its full path, e.g. `s3::child`) of this
/// binary in a child process with `env` added and every other `AWS_*`
/// variable removed; panics with its output unless it passes. Returns the
/// child's output.
pub fn run(name: &str, env: &[(&str, String)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, "1");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child test {name} failed:\n{text}");
    assert!(text.contains("1 passed"), "child ran no test:\n{text}");
    text
}

/// The process's peak resident set (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
