//! The JSONL sink: one OS thread writes structured-mode events to
//! size-rotated files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime};

use super::event::jsonl_lines;
use super::{Payload, PayloadCounters};

/// How long the JSONL writer waits for work before checking again.
const IDLE: Duration = Duration::from_secs(1);
/// Requests formatted between two flushes of a JSONL file at most.
const BURST: usize = 256;

/// The rotating files of the JSONL sink.
pub(super) struct Files {
    dir: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
    current: Option<(std::io::BufWriter<std::fs::File>, u64)>,
    seq: u64,
}

impl Files {
    pub(super) fn new(dir: &Path, max_file_bytes: u64, max_files: usize) -> Files {
        Files {
            dir: dir.to_path_buf(),
            max_file_bytes,
            max_files,
            current: None,
            seq: 0,
        }
    }

    /// Append one request's lines, beginning a new file first when they
    /// would take the current one past the limit.
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let len = lines.len() as u64;
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, size)| *size > 0 && size + len > self.max_file_bytes);
        if full || self.current.is_none() {
            self.begin()?;
        }
        match &mut self.current {
            Some((file, size)) => {
                file.write_all(lines)?;
                *size += len;
                Ok(())
            }
            None => Err(std::io::Error::other("no payload file open")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.current {
            Some((file, _)) => file.flush(),
            None => Ok(()),
        }
    }

    /// Close the current file, open the next, remove the oldest.
    fn begin(&mut self) -> std::io::Result<()> {
        if let Some((mut old, _)) = self.current.take() {
            old.flush()?;
        }
        std::fs::create_dir_all(&self.dir)?;
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.seq += 1;
        let path = self
            .dir
            .join(format!("payloads-{ms:013}-{:06}.jsonl", self.seq));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        self.current = Some((std::io::BufWriter::with_capacity(256 * 1024, file), 0));
        self.prune();
        Ok(())
    }

    /// Remove the oldest files past `max_files` (the names sort by age).
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("payloads-") && n.ends_with(".jsonl"))
            })
            .collect();
        names.sort();
        let extra = names.len().saturating_sub(self.max_files);
        for old in names.into_iter().take(extra) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(file = %old.display(), error = %e, "cannot remove an old payload-log file");
            }
        }
    }
}

/// Files listed in the order written (tests and readers).
pub fn jsonl_files(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub(super) fn write_loop(
    rx: Receiver<Payload>,
    mut files: Files,
    source: &str,
    counters: &PayloadCounters,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    loop {
        let first = match rx.recv_timeout(IDLE) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(p) = next {
            buf.clear();
            jsonl_lines(&p, source, &mut buf);
            let result = files.write(&buf);
            report(result, 2, counters, &mut failing, &files.dir);
            taken += 1;
            next = if taken < BURST {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        report(files.flush(), 0, counters, &mut failing, &files.dir);
        if buf.capacity() > 4 * 1024 * 1024 {
            buf = Vec::with_capacity(64 * 1024);
        }
    }
    let _ = files.flush();
}

/// Count a write's events; say once when writing starts failing.
fn report(
    result: std::io::Result<()>,
    events: u64,
    counters: &PayloadCounters,
    failing: &mut bool,
    dir: &Path,
) {
    match result {
        Ok(()) => {
            counters.events.inc_by(events);
            *failing = false;
        }
        Err(e) => {
            counters.failed.inc_by(events);
            if !*failing {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write the payload log; events are counted in greenbelt_payload_log_failed_total");
            }
            *failing = true;
        }
    }
}
