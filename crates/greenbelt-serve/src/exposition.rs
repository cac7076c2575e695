//! `/metrics`: the registry plus what is read at scrape time (process
//! metrics, build info, batch queue depths), in the format the scraper asks
//! for. `prometheus-client` writes OpenMetrics 1.0; a scraper that does not
//! send `Accept: application/openmetrics-text` (curl, older agents) gets the
//! Prometheus text format 0.0.4, converted line by line.

use std::fmt::Write;

use crate::infer::AppState;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (any q > 0).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut it = part.split(';');
            let media = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        })
    })
}

/// The whole exposition, OpenMetrics (ends with `# EOF`).
pub fn openmetrics(state: &AppState) -> String {
    // Limits of models no longer served go, with their gauge.
    state
        .limiters
        .retain(|model| state.repository.get(model).is_some());
    let mut out = state.metrics.encode();
    let eof = out.ends_with("# EOF\n");
    if eof {
        out.truncate(out.len() - "# EOF\n".len());
    }
    scrape_time(state, &mut out);
    out.push_str(&state.breakers.prometheus_text());
    out.push_str("# EOF\n");
    out
}

fn scrape_time(state: &AppState, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP greenbelt_build_info Greenbelt build: version\n# TYPE greenbelt_build_info gauge\ngreenbelt_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP greenbelt_inflight_limit [server] max_inflight: requests admitted at once\n# TYPE greenbelt_inflight_limit gauge\ngreenbelt_inflight_limit {}\n# HELP greenbelt_cpu_cores CPUs this process may use\n# TYPE greenbelt_cpu_cores gauge\ngreenbelt_cpu_cores {}",
        state.config.server.max_inflight,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let depths: Vec<(String, String, usize, usize)> = state
        .repository
        .loaded()
        .iter()
        .flat_map(|e| {
            e.versions
                .values()
                .filter_map(|v| {
                    v.batcher.as_ref().map(|b| {
                        (
                            v.model_name.to_string(),
                            v.version_label.to_string(),
                            b.queue_depth(),
                            b.queue_limit(),
                        )
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if !depths.is_empty() {
        out.push_str("# HELP greenbelt_batch_queue_depth Requests waiting in a version's batch queue\n# TYPE greenbelt_batch_queue_depth gauge\n");
        for (m, v, d, _) in &depths {
            let _ = writeln!(
                out,
                "greenbelt_batch_queue_depth{{model=\"{}\",version=\"{}\"}} {d}",
                escape(m),
                escape(v)
            );
        }
        out.push_str("# HELP greenbelt_batch_queue_limit A version's batch queue bound (max_queue_size)\n# TYPE greenbelt_batch_queue_limit gauge\n");
        for (m, v, _, l) in &depths {
            let _ = writeln!(
                out,
                "greenbelt_batch_queue_limit{{model=\"{}\",version=\"{}\"}} {l}",
                escape(m),
                escape(v)
            );
        }
    }
    if let Some(p) = process_stats() {
        let _ = write!(
            out,
            "# HELP process_cpu_seconds Total user and system CPU time spent in seconds\n# TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\nprocess_cpu_seconds_total {}\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes\n# TYPE process_resident_memory_bytes gauge\n# UNIT process_resident_memory_bytes bytes\nprocess_resident_memory_bytes {}\n\
             # HELP process_virtual_memory_bytes Virtual memory size in bytes\n# TYPE process_virtual_memory_bytes gauge\n# UNIT process_virtual_memory_bytes bytes\nprocess_virtual_memory_bytes {}\n\
             # HELP process_start_time_seconds Start time of the process since unix epoch in seconds\n# TYPE process_start_time_seconds gauge\n# UNIT process_start_time_seconds seconds\nprocess_start_time_seconds {}\n\
             # HELP process_threads Number of OS threads in the process\n# TYPE process_threads gauge\nprocess_threads {}\n",
            p.cpu_seconds, p.rss_bytes, p.vsize_bytes, p.start_time_seconds, p.threads
        );
        if let Some(fds) = p.open_fds {
            let _ = writeln!(
                out,
                "# HELP process_open_fds Number of open file descriptors\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}"
            );
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    vsize_bytes: u64,
    start_time_seconds: f64,
    threads: u64,
    open_fds: Option<usize>,
}

/// The standard `process_*` metrics from `/proc` (Linux; `None` elsewhere or
/// when `/proc` cannot be read).
fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is f[N - 3].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    // USER_HZ is 100 on every Linux ABI Greenbelt builds for.
    let ticks = 100.0;
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let rss_pages = field(24)?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("btime ")
                .and_then(|v| v.trim().parse::<u64>().ok())
        })?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        rss_bytes: rss_pages * 4096,
        vsize_bytes: vsize,
        start_time_seconds: boot as f64 + start_ticks as f64 / ticks,
        threads,
        open_fds,
    })
}

/// OpenMetrics text → Prometheus text 0.0.4: counters' `# HELP`/`# TYPE`
/// name the `_total` sample, `info` becomes a gauge named `_info`, `unknown`
/// becomes `untyped`; `# UNIT`, `# EOF` and exemplars are dropped.
pub fn to_prometheus_text(om: &str) -> String {
    use std::collections::HashMap;
    let mut renamed: HashMap<&str, (String, &str)> = HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.splitn(2, ' ');
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    renamed.insert(name, (format!("{name}_total"), "counter"));
                }
                "info" => {
                    renamed.insert(name, (format!("{name}_info"), "gauge"));
                }
                "unknown" => {
                    renamed.insert(name, (name.to_string(), "untyped"));
                }
                _ => {}
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = renamed.get(name).map_or(name, |(n, _)| n.as_str());
            let _ = writeln!(out, "# HELP {name} {help}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            match renamed.get(name) {
                Some((n, k)) => {
                    let _ = writeln!(out, "# TYPE {n} {k}");
                }
                None => {
                    let _ = writeln!(out, "# TYPE {name} {kind}");
                }
            }
            continue;
        }
        // An exemplar follows " # " after the value. Label values may hold
        // " # " too, so look only after the sample's label set.
        let after = labels_end(line);
        match line[after..].find(" # ") {
            Some(i) => out.push_str(&line[..after + i]),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The byte offset just past a sample's `{...}` label set (0 without one),
/// skipping braces inside quoted label values.
fn labels_end(line: &str) -> usize {
    let Some(open) = line.find('{') else {
        return 0;
    };
    if line[..open].contains(' ') {
        return 0; // the first '{' is past the value: an exemplar
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return open + i + 1,
            _ => {}
        }
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0"
        )));
    }

    #[test]
    fn openmetrics_to_prometheus_text() {
        let om = "# HELP greenbelt_requests Inference requests.\n# TYPE greenbelt_requests counter\ngreenbelt_requests_total{model=\"a # b\"} 3 # {trace_id=\"abc\"} 1.0\n# HELP x_seconds Latency.\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\nx_seconds_bucket{le=\"0.1\"} 1 # {trace_id=\"t\"} 0.05\nx_seconds_sum 0.05\nplain 2 # {trace_id=\"u\"} 2\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP greenbelt_requests_total Inference requests.\n# TYPE greenbelt_requests_total counter\ngreenbelt_requests_total{model=\"a # b\"} 3\n# HELP x_seconds Latency.\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"0.1\"} 1\nx_seconds_sum 0.05\nplain 2\n"
        );
    }

    #[test]
    fn process_metrics_read_from_proc() {
        let p = process_stats().expect("/proc is readable on Linux");
        assert!(p.rss_bytes > 0 && p.threads >= 1);
        assert!(p.start_time_seconds > 1.0e9);
    }
}
