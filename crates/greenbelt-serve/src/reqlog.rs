//! The request log, kept off the request path.
//!
//! A request pays for one small [`Record`] (three short strings copied, the
//! rest plain numbers) and a `try_send` into a bounded queue, with no
//! syscall: the writer thread polls (every 5 ms when it has caught up)
//! rather than waiting to be woken. A full queue drops the line and counts
//! it (`greenbelt_request_log_dropped_total`). The writer formats the lines
//! into a reused buffer and writes whatever has queued up with one `write`
//! call, so under load one syscall carries a hundred lines or more. Formatting inside `tracing` on the request
//! thread, and one `write` per line, cost ~40% of throughput at c=64 on a
//! 2-core machine (docs/benchmarks.md).
//!
//! The lines keep the shape of the rest of the log (the `tracing` JSON
//! layout with `target` = `greenbelt::request`), and `GREENBELT_LOG` still
//! filters them: the log is on only when that target is enabled at INFO.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

use crate::config::TelemetryConfig;

/// A writer thread writes once this much is formatted, even if more lines wait.
const FLUSH_AT: usize = 256 * 1024;
/// How long the writer sleeps when it has caught up: lines reach the
/// output within about this long.
const POLL: Duration = Duration::from_millis(5);
/// Longest model name logged (names come from the URL).
const MAX_MODEL_CHARS: usize = 200;

/// Where the server's request log goes and in which layout; the binary
/// sets it once, with its `tracing` subscriber, so the request lines land
/// beside the other log lines (stdout for `serve`, stderr for commands whose
/// stdout is a report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    pub stderr: bool,
    pub text: bool,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Set the process's request-log output (first call wins); unset = JSON on stdout.
pub fn set_output(output: Output) {
    let _ = OUTPUT.set(output);
}

/// The log counters, registered in [`crate::metrics::Metrics`].
#[derive(Clone, Default)]
pub struct LogCounters {
    pub written: Counter,
    pub dropped: Counter,
}

/// One request as the log line will show it.
#[derive(Debug, Clone)]
pub struct Record {
    pub at: SystemTime,
    pub request_id: String,
    /// Formatted (32 hex digits) by the writer, not the request.
    pub trace_id: opentelemetry::trace::TraceId,
    pub protocol: &'static str,
    /// Shared with the served version when there is one (no copy).
    pub model: Arc<str>,
    pub version: Option<Arc<str>>,
    pub track: &'static str,
    pub outcome: &'static str,
    /// The failure, with its HTTP status; `None` for a success.
    pub error: Option<(u16, String)>,
    pub latency: Duration,
    pub queue: Duration,
    pub compute: Duration,
    pub rows: usize,
    pub batch_rows: usize,
    pub request_bytes: usize,
    pub response_bytes: usize,
}

/// The request log: a bounded queue to one writer thread. Dropping it
/// writes what is queued and joins the thread.
pub struct RequestLog {
    tx: Option<SyncSender<Record>>,
    worker: Option<JoinHandle<()>>,
    /// Successful requests whose trace id's low 64 bits are at most this are
    /// logged (`u64::MAX` = all).
    threshold: u64,
    counters: LogCounters,
}

impl RequestLog {
    /// The server's log, to the process's [`Output`]: on when `[telemetry]
    /// log_requests` is set and the `greenbelt::request` target is enabled
    /// at INFO.
    pub fn process(config: &TelemetryConfig, counters: LogCounters) -> RequestLog {
        let enabled = config.log_requests
            && tracing::enabled!(target: "greenbelt::request", tracing::Level::INFO);
        if !enabled {
            return RequestLog::off(counters);
        }
        let output = OUTPUT.get().copied().unwrap_or(Output {
            stderr: false,
            text: false,
        });
        if let Some(path) = &config.log_file {
            match open_log_file(path) {
                Ok(f) => return RequestLog::to_writer(config, counters, Box::new(f), false),
                Err(e) => tracing::error!(
                    file = %path.display(),
                    error = %e,
                    "cannot open [telemetry] log_file; the request log goes to the process log"
                ),
            }
        }
        let out: Box<dyn Write + Send> = if output.stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        RequestLog::to_writer(config, counters, out, output.text)
    }

    /// A log that writes nothing.
    pub fn off(counters: LogCounters) -> RequestLog {
        RequestLog {
            tx: None,
            worker: None,
            threshold: 0,
            counters,
        }
    }

    /// A log writing to `out` (tests use a buffer). Falls back to
    /// [`RequestLog::off`] if the writer thread cannot start.
    pub fn to_writer(
        config: &TelemetryConfig,
        counters: LogCounters,
        out: Box<dyn Write + Send>,
        text: bool,
    ) -> RequestLog {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.log_queue.max(1));
        let written = counters.written.clone();
        let spawned = std::thread::Builder::new()
            .name("greenbelt-reqlog".into())
            .spawn(move || write_loop(rx, out, text, &written));
        match spawned {
            Ok(worker) => RequestLog {
                tx: Some(tx),
                worker: Some(worker),
                threshold: threshold(config.log_sample),
                counters,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the request-log writer; request log off");
                RequestLog::off(counters)
            }
        }
    }

    /// Whether a request would be logged (so the caller can skip building
    /// the record). Failures are always logged.
    /// `trace_low` is the low 64 bits of the trace id
    /// ([`crate::traces::TraceIds::low64`]).
    pub fn wants(&self, trace_low: u64, failed: bool) -> bool {
        self.tx.is_some() && (failed || trace_low <= self.threshold)
    }

    /// Queue one line; never waits.
    pub fn log(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc();
            }
        }
    }
}

/// Open (append, create with its directory) the request log file.
fn open_log_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has written the rest.
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The same rule as OpenTelemetry's `TraceIdRatioBased` (and the trace
/// sampler, `crate::traces`): the low 64 bits of the trace id against the
/// ratio, so the decision follows the trace.
fn threshold(sample: f64) -> u64 {
    crate::traces::threshold(sample).unwrap_or(0)
}

fn write_loop(rx: Receiver<Record>, mut out: Box<dyn Write + Send>, text: bool, written: &Counter) {
    let mut buf = Vec::with_capacity(FLUSH_AT + 4096);
    // The writer polls instead of blocking in `recv`: a sender then never
    // has to wake it, so a request pays no futex call for its line.
    loop {
        let mut lines = 0u64;
        let mut closed = false;
        while buf.len() < FLUSH_AT {
            match rx.try_recv() {
                Ok(r) => {
                    format(&r, text, &mut buf);
                    lines += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let full = buf.len() >= FLUSH_AT;
        if lines > 0 {
            // A failed write loses these lines; there is nowhere better to say so.
            let _ = out.write_all(&buf).and_then(|()| out.flush());
            written.inc_by(lines);
            buf.clear();
        }
        if closed {
            return;
        }
        if buf.capacity() > 4 * FLUSH_AT {
            buf.shrink_to(FLUSH_AT + 4096);
        }
        // After a full buffer more may be waiting: go again at once;
        // otherwise let lines gather.
        if !full {
            // This is the log's own OS thread, not an executor thread.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(POLL);
        }
    }
}

/// Append one line (JSON, or `tracing`'s text layout) to `buf`.
pub fn format(r: &Record, text: bool, buf: &mut Vec<u8>) {
    let at = humantime::format_rfc3339_micros(r.at);
    let model: &str = match r.model.char_indices().nth(MAX_MODEL_CHARS) {
        Some((i, _)) => &r.model[..i],
        None => &r.model,
    };
    let ms = Millis;
    if text {
        let _ = write!(
            buf,
            "{at}  INFO greenbelt::request: infer request_id={} trace_id={} protocol={} model={:?} version={:?} track={:?} outcome={:?}",
            r.request_id,
            r.trace_id,
            r.protocol,
            model,
            r.version.as_deref().unwrap_or(""),
            r.track,
            r.outcome
        );
        match &r.error {
            None => {
                let _ = write!(
                    buf,
                    " latency_ms={} queue_ms={} compute_ms={} rows={} batch_rows={} request_bytes={} response_bytes={}",
                    ms(r.latency),
                    ms(r.queue),
                    ms(r.compute),
                    r.rows,
                    r.batch_rows,
                    r.request_bytes,
                    r.response_bytes
                );
            }
            Some((status, error)) => {
                let _ = write!(
                    buf,
                    " status={status} latency_ms={} error={error}",
                    ms(r.latency)
                );
            }
        }
        buf.push(b'\n');
        return;
    }
    // The JSON line is built from parts (integers by `itoa`), not through
    // `fmt`: this thread formats every request the server answers.
    let _ = write!(buf, "{{\"timestamp\":\"{at}\"");
    buf.extend_from_slice(b",\"level\":\"INFO\",\"message\":\"infer\",\"request_id\":");
    json_str(buf, &r.request_id);
    buf.extend_from_slice(b",\"trace_id\":\"");
    for b in r.trace_id.to_bytes() {
        buf.extend_from_slice(&crate::telemetry::hex_byte(b));
    }
    buf.extend_from_slice(b"\",\"protocol\":\"");
    buf.extend_from_slice(r.protocol.as_bytes());
    buf.extend_from_slice(b"\",\"model\":");
    json_str(buf, model);
    buf.extend_from_slice(b",\"version\":");
    json_str(buf, r.version.as_deref().unwrap_or(""));
    buf.extend_from_slice(b",\"track\":\"");
    buf.extend_from_slice(r.track.as_bytes());
    buf.extend_from_slice(b"\",\"outcome\":\"");
    buf.extend_from_slice(r.outcome.as_bytes());
    buf.push(b'"');
    let mut n = itoa::Buffer::new();
    let mut field = |buf: &mut Vec<u8>, name: &[u8], value: usize| {
        buf.extend_from_slice(name);
        buf.extend_from_slice(n.format(value).as_bytes());
    };
    match &r.error {
        None => {
            millis_field(buf, b",\"latency_ms\":", r.latency);
            millis_field(buf, b",\"queue_ms\":", r.queue);
            millis_field(buf, b",\"compute_ms\":", r.compute);
            field(buf, b",\"rows\":", r.rows);
            field(buf, b",\"batch_rows\":", r.batch_rows);
            field(buf, b",\"request_bytes\":", r.request_bytes);
            field(buf, b",\"response_bytes\":", r.response_bytes);
        }
        Some((status, error)) => {
            field(buf, b",\"status\":", usize::from(*status));
            millis_field(buf, b",\"latency_ms\":", r.latency);
            buf.extend_from_slice(b",\"error\":");
            json_str(buf, error);
        }
    }
    buf.extend_from_slice(b",\"target\":\"greenbelt::request\"}\n");
}

/// `name` then the duration as [`Millis`] writes it, without `fmt`.
fn millis_field(buf: &mut Vec<u8>, name: &[u8], d: Duration) {
    let us = d.as_micros();
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(name);
    buf.extend_from_slice(n.format(us / 1000).as_bytes());
    let frac = (us % 1000) as u16;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A duration in milliseconds with microsecond precision (`1.5 ms` is
/// `1.500`): integer formatting, cheaper than a float's shortest form, and
/// never a tail like `0.49848799999999993`.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = self.0.as_micros();
        write!(f, "{}.{:03}", us / 1000, us % 1000)
    }
}

/// A JSON string literal (serde_json's escaping).
fn json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(trace_id: &str, error: Option<(u16, String)>) -> Record {
        Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_780_000_000_123_456),
            request_id: "req-\"1\"".into(),
            trace_id: opentelemetry::trace::TraceId::from_hex(trace_id).unwrap(),
            protocol: "rest",
            model: "logreg".into(),
            version: Some(Arc::from("2")),
            track: "stable",
            outcome: if error.is_some() {
                "client_error"
            } else {
                "success"
            },
            error,
            latency: Duration::from_micros(1500),
            queue: Duration::from_micros(250),
            compute: Duration::from_micros(1000),
            rows: 3,
            batch_rows: 8,
            request_bytes: 240,
            response_bytes: 24,
        }
    }

    #[test]
    fn durations_are_milliseconds_to_the_microsecond() {
        let show = |d: Duration| Millis(d).to_string();
        assert_eq!(show(Duration::from_nanos(498_488)), "0.498");
        assert_eq!(show(Duration::from_micros(1500)), "1.500");
        assert_eq!(show(Duration::from_secs(61)), "61000.000");
        assert_eq!(show(Duration::ZERO), "0.000");
        // The JSON layout's writer prints the same.
        for d in [
            498_488,
            1_500_000,
            61_000_000_000,
            0,
            7_007_000,
            12_345_678_901,
        ] {
            let d = Duration::from_nanos(d);
            let mut buf = Vec::new();
            millis_field(&mut buf, b"x=", d);
            assert_eq!(String::from_utf8(buf).unwrap(), format!("x={}", show(d)));
        }
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut buf = Vec::new();
        format(&record("ab", None), false, &mut buf);
        format(
            &record("cd", Some((400, "input \"x\"\nbad".into()))),
            false,
            &mut buf,
        );
        let lines: Vec<serde_json::Value> = buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let ok = &lines[0];
        assert_eq!(ok["timestamp"], "2026-05-28T20:26:40.123456Z");
        assert_eq!(ok["target"], "greenbelt::request");
        assert_eq!(ok["request_id"], "req-\"1\"");
        assert_eq!(ok["trace_id"], format!("{:032x}", 0xab));
        assert_eq!(ok["version"], "2");
        assert_eq!(ok["latency_ms"], 1.5);
        assert_eq!(ok["queue_ms"], 0.25);
        assert_eq!(ok["rows"], 3);
        assert_eq!(ok["batch_rows"], 8);
        assert_eq!(ok["response_bytes"], 24);
        let bad = &lines[1];
        assert_eq!(bad["status"], 400);
        assert_eq!(bad["outcome"], "client_error");
        assert_eq!(bad["error"], "input \"x\"\nbad");
        assert!(bad.get("rows").is_none());
    }

    #[test]
    fn long_model_names_are_cut_on_a_char_boundary() {
        let mut r = record("ab", None);
        r.model = "é".repeat(500).into();
        let mut buf = Vec::new();
        format(&r, false, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(buf.trim_ascii_end()).unwrap();
        assert_eq!(
            v["model"].as_str().unwrap().chars().count(),
            MAX_MODEL_CHARS
        );
    }

    #[test]
    fn writer_writes_every_line_and_flushes_on_drop() {
        let out = Shared::default();
        let counters = LogCounters::default();
        let log = RequestLog::to_writer(
            &TelemetryConfig::default(),
            counters.clone(),
            Box::new(out.clone()),
            false,
        );
        for i in 0..1000 {
            log.log(record(&format!("{i:032x}"), None));
        }
        drop(log);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!(counters.written.get(), 1000);
        assert_eq!(counters.dropped.get(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A writer that blocks until released: the queue (2 lines) fills.
        struct Gate(Arc<Mutex<()>>);
        impl Write for Gate {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                drop(self.0.lock().unwrap());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let counters = LogCounters::default();
        let config = TelemetryConfig {
            log_queue: 2,
            ..TelemetryConfig::default()
        };
        let log = RequestLog::to_writer(
            &config,
            counters.clone(),
            Box::new(Gate(gate.clone())),
            false,
        );
        for i in 0..100 {
            log.log(record(&format!("{i:032x}"), None));
        }
        // The queue holds 2 and the writer is stuck: almost all are dropped
        // at once instead of making the sender wait.
        assert!(counters.dropped.get() >= 90, "{}", counters.dropped.get());
        drop(held);
        drop(log);
        assert_eq!(counters.written.get() + counters.dropped.get(), 100);
    }

    #[test]
    fn sampling_follows_the_trace_id_and_keeps_failures() {
        let config = TelemetryConfig {
            log_sample: 0.25,
            ..TelemetryConfig::default()
        };
        let log = RequestLog::to_writer(
            &config,
            LogCounters::default(),
            Box::new(Shared::default()),
            false,
        );
        let kept = (0..4000u64)
            .filter(|i| {
                // spread over the whole u64 range, as random trace ids are
                log.wants(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), false)
            })
            .count();
        assert!((900..1100).contains(&kept), "kept {kept} of 4000 at 0.25");
        assert!(log.wants(u64::MAX, true));
        assert!(!log.wants(u64::MAX, false));
        let off = RequestLog::off(LogCounters::default());
        assert!(!off.wants(0, true));
    }

    #[test]
    fn text_layout_names_the_fields() {
        let mut buf = Vec::new();
        format(&record("ab", None), true, &mut buf);
        let line = String::from_utf8(buf).unwrap();
        assert!(line.starts_with("2026-05-28T20:26:40.123456Z  INFO greenbelt::request: infer "));
        assert!(line.contains(" model=\"logreg\" "));
        assert!(line.contains(" latency_ms=1.500 "));
        assert!(line.ends_with("response_bytes=24\n"));
    }
}
