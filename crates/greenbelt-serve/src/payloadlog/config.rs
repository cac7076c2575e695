//! `[telemetry.payload_log]`: the settings and their checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where sampled payloads go.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// No payload log.
    #[default]
    Off,
    /// Rotated JSON Lines files under `path`.
    Jsonl,
    /// A NATS JetStream stream.
    Nats,
}

/// `[telemetry.payload_log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PayloadLogConfig {
    /// `off` (default), `jsonl` or `nats`.
    pub sink: Sink,
    /// Share of answered requests logged, 0..=1, chosen by trace id.
    pub fraction: f64,
    /// Requests waiting for the sink at most; past it they are dropped and
    /// counted.
    pub queue: usize,
    /// JSONL: the directory of the files (created when missing).
    pub path: PathBuf,
    /// JSONL: a file is closed and a new one begun past this size.
    pub max_file_bytes: u64,
    /// JSONL: files kept; the oldest are removed.
    pub max_files: usize,
    /// NATS: the server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: Option<String>,
    /// NATS: subjects are `<subject>.<model>.request|response`.
    pub subject: String,
    /// NATS: the JetStream stream (created over `<subject>.>` when missing).
    pub stream: String,
    /// NATS: the most a stream created here keeps, in bytes (oldest
    /// messages are discarded first).
    pub stream_max_bytes: i64,
    /// NATS: the longest a connect, a publish or its ack may take.
    /// (Old key `timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "timeout",
        alias = "timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub timeout_ms: u64,
    /// The events' `source` is `<source>/<model>`; unset:
    /// `http://<host name>/greenbelt`.
    pub source: Option<String>,
}

impl Default for PayloadLogConfig {
    fn default() -> Self {
        PayloadLogConfig {
            sink: Sink::Off,
            fraction: 0.01,
            queue: 1024,
            path: PathBuf::from(".greenbelt/payloads"),
            max_file_bytes: 64 * 1024 * 1024,
            max_files: 16,
            nats_url: None,
            subject: "greenbelt.payloads".into(),
            stream: "GREENBELT_PAYLOADS".into(),
            stream_max_bytes: 1 << 30,
            timeout_ms: 5_000,
            source: None,
        }
    }
}

impl PayloadLogConfig {
    /// Check the settings; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let at = "[telemetry.payload_log]";
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(format!(
                "{at} fraction must be in [0, 1], got {}",
                self.fraction
            ));
        }
        for (name, value) in [
            ("queue", self.queue as u64),
            ("max_file_bytes", self.max_file_bytes),
            ("max_files", self.max_files as u64),
            ("timeout", self.timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("{at} {name} must be > 0"));
            }
        }
        if self.stream_max_bytes <= 0 {
            return Err(format!("{at} stream_max_bytes must be > 0"));
        }
        if self.sink == Sink::Nats {
            match self.nats_url.as_deref() {
                None | Some("") => {
                    return Err(format!(
                        "{at} nats_url is required with sink = \"nats\", e.g. nats://127.0.0.1:4222"
                    ));
                }
                Some(url) if !url.contains("://") && !url.contains(':') => {
                    return Err(format!(
                        "{at} nats_url = \"{url}\" is not a server address like nats://127.0.0.1:4222"
                    ));
                }
                Some(_) => {}
            }
            let token_ok = |t: &str| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            };
            if !self.subject.split('.').all(token_ok) {
                return Err(format!(
                    "{at} subject = \"{}\" must be dot-separated tokens of letters, digits, _ and - (no wildcards)",
                    self.subject
                ));
            }
            if !token_ok(&self.stream) {
                return Err(format!(
                    "{at} stream = \"{}\" must be letters, digits, _ and -",
                    self.stream
                ));
            }
        }
        Ok(())
    }
}
