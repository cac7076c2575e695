//! The data-pipeline outage drill against a running server with a feature
//! store, under generated load. The drill plays the batch pipeline of one
//! feature view: every `cadence` it appends fresh rows to the view's source
//! (a local CSV) and materializes them (offline and online), then it stops
//! materializing while the source keeps growing (the job is down, the
//! upstream is not), and measures what the server does: when its freshness
//! check sees the breach, when the batch canary fails, when responses turn
//! flagged (`x-greenbelt-degraded`, `feature_status` STALE / DEFAULT), and
//! whether any response was served from data past the SLA without a flag.
//! Then it backfills (materializes the missed range) and measures the time
//! until the server serves fresh, unflagged answers again.
//!
//! [`pipeline_outage`] does the I/O; [`judge`] turns what was measured into
//! a verdict and is a pure function.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenbelt_features::Definitions;
use greenbelt_features::defs::{Location, SourceFormat, ValueType};
use greenbelt_features::source::EngineOptions;
use greenbelt_features::time::{format_ts, now_us};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::error::{AppError, Result};
use crate::feature_ops::{Range, materialize_views};

/// What to drill.
#[derive(Debug, Clone)]
pub struct PipelineOutageOptions {
    /// The server's REST base URL.
    pub server: String,
    /// The feature definitions the server serves (`features.toml`).
    pub definitions: PathBuf,
    /// The model that reads the view's feature service.
    pub model: String,
    /// The view to drill (default: the first online view with a
    /// `freshness_sla` that the drill can feed).
    pub view: Option<String>,
    /// The server's `[features] freshness_interval`.
    pub check_interval: Duration,
    /// How often the simulated pipeline appends and materializes.
    pub cadence: Duration,
    /// Entity keys the pipeline writes and the load reads.
    pub entities: usize,
    /// Concurrent load clients (each sends a request every 50 ms).
    pub clients: usize,
    /// Longest wait for each phase (healthy, detection, recovery).
    pub timeout: Duration,
}

/// One request the load sent, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Wall time it was sent (ms since the epoch).
    pub sent_ms: i64,
    /// A 2xx answer.
    pub ok: bool,
    /// The answer said it was degraded (header or STALE/DEFAULT cells).
    pub flagged: bool,
}

/// The backfill the drill ran.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Backfill {
    pub started_ms: i64,
    pub done_ms: i64,
    /// Rows the backfill materialized.
    pub rows: u64,
    /// Rows the source gained while materialization was stopped.
    pub missed_rows: u64,
}

/// What the drill measured (the input of [`judge`]); times are wall ms.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    /// The view's freshness SLA.
    pub sla_ms: i64,
    /// The server's freshness check interval.
    pub check_interval_ms: i64,
    /// When materialization stopped.
    pub stopped_ms: Option<i64>,
    /// The newest event the pipeline had delivered when it stopped.
    pub newest_delivered_ms: Option<i64>,
    /// First `/metrics` with `greenbelt_feature_view_freshness_breach` = 1.
    pub breach_seen_ms: Option<i64>,
    /// First `/metrics` with `greenbelt_feature_batch_canary_success` = 0.
    pub canary_failed_ms: Option<i64>,
    /// First `/features/online/status` listing the view as stale.
    pub stale_listed_ms: Option<i64>,
    pub backfill: Option<Backfill>,
    /// First time after the backfill that the server reported the view
    /// fresh (breach 0, not listed stale).
    pub fresh_again_ms: Option<i64>,
    /// First time after that the batch canary succeeded.
    pub canary_ok_again_ms: Option<i64>,
    /// Increase of `greenbelt_feature_degraded_reads_total` of the service.
    pub degraded_reads_counted: f64,
    pub probes: Vec<Probe>,
    /// Pipeline runs that failed before the outage.
    pub pipeline_errors: Vec<String>,
}

/// The targets a drill is judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Detection may lag the moment data passed its SLA by this many check
    /// intervals ...
    pub detection_intervals: i64,
    /// ... plus this much (the check's own run time, the poll).
    pub detection_slack_ms: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            detection_intervals: 2,
            detection_slack_ms: 3000,
        }
    }
}

/// What the drill concludes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// From the stop to the freshness breach on /metrics.
    pub time_to_detect_ms: Option<i64>,
    /// From the stop to the batch canary failing.
    pub time_to_canary_ms: Option<i64>,
    /// From the stop to the first flagged response.
    pub time_to_flag_ms: Option<i64>,
    /// From the backfill's start to the server reporting the view fresh.
    pub time_to_recover_ms: Option<i64>,
    /// When data passed its SLA, ms after the stop.
    pub stale_after_ms: Option<i64>,
    /// The detection target, ms after data passed its SLA.
    pub detection_allowance_ms: i64,
    pub requests: u64,
    pub failed: u64,
    /// Responses flagged degraded.
    pub served_degraded: u64,
    /// Unflagged responses from data past its SLA, past the detection
    /// allowance or after the server listed the view stale.
    pub silently_stale: u64,
    /// Unflagged responses from data past its SLA before the server's
    /// check could know (within the allowance; reported, not failed).
    pub stale_before_detection: u64,
    /// Flagged responses after the server reported the view fresh again.
    pub flagged_after_recovery: u64,
    pub rows_backfilled: u64,
    pub rows_missed: u64,
    pub passed: bool,
    pub notes: Vec<String>,
}

fn count(probes: &[Probe], f: impl Fn(&Probe) -> bool) -> u64 {
    probes.iter().filter(|p| f(p)).count() as u64
}

/// Judge a drill: did every step happen (detection, canary, flagged
/// responses, backfill, recovery), was nothing served silently stale, and
/// did no prediction fail?
pub fn judge(m: &Measurements, t: &Thresholds) -> Verdict {
    let mut notes = Vec::new();
    let since_stop = |x: Option<i64>| match (m.stopped_ms, x) {
        (Some(s), Some(x)) => Some((x - s).max(0)),
        _ => None,
    };
    let stale_from = m.newest_delivered_ms.map(|n| n + m.sla_ms);
    let allowance = t.detection_intervals * m.check_interval_ms + t.detection_slack_ms;
    let backfilled = m.backfill.map(|b| b.done_ms);
    let first_flagged = m
        .probes
        .iter()
        .filter(|p| p.flagged && m.stopped_ms.is_some_and(|s| p.sent_ms >= s))
        .map(|p| p.sent_ms)
        .min();
    // Unflagged answers served while the data was past its SLA.
    let stale_window = |p: &Probe| {
        p.ok && !p.flagged
            && stale_from.is_some_and(|s| p.sent_ms > s)
            && backfilled.is_none_or(|b| p.sent_ms < b)
    };
    let known = |p: &Probe| {
        stale_from.is_some_and(|s| p.sent_ms > s + allowance)
            || m.stale_listed_ms.is_some_and(|l| p.sent_ms > l)
    };
    let silently_stale = count(&m.probes, |p| stale_window(p) && known(p));
    let stale_before_detection = count(&m.probes, |p| stale_window(p) && !known(p));
    let flagged_after_recovery = count(&m.probes, |p| {
        p.flagged && m.fresh_again_ms.is_some_and(|f| p.sent_ms > f)
    });
    let failed = count(&m.probes, |p| !p.ok);
    let served_degraded = count(&m.probes, |p| p.flagged);
    fn need(notes: &mut Vec<String>, ok: bool, why: String) {
        if !ok {
            notes.push(why);
        }
    }
    need(
        &mut notes,
        m.stopped_ms.is_some() && m.newest_delivered_ms.is_some(),
        format!(
            "the pipeline never delivered data before the outage{}",
            m.pipeline_errors
                .first()
                .map_or(String::new(), |e| format!(": {e}"))
        ),
    );
    need(
        &mut notes,
        m.breach_seen_ms.is_some(),
        "the freshness breach never showed on /metrics (greenbelt_feature_view_freshness_breach)"
            .into(),
    );
    if let (Some(b), Some(s)) = (m.breach_seen_ms, stale_from)
        && b > s + allowance
    {
        notes.push(format!(
            "the breach showed {} ms after the data passed its SLA (target {allowance} ms)",
            b - s
        ));
    }
    need(
        &mut notes,
        m.canary_failed_ms.is_some(),
        "the batch canary never failed (greenbelt_feature_batch_canary_success)".into(),
    );
    need(
        &mut notes,
        m.stale_listed_ms.is_some(),
        "/features/online/status never listed the view as stale".into(),
    );
    need(
        &mut notes,
        first_flagged.is_some(),
        "no response was flagged degraded during the outage".into(),
    );
    need(
        &mut notes,
        silently_stale == 0,
        format!("{silently_stale} responses were served from data past its SLA without a flag"),
    );
    need(
        &mut notes,
        failed == 0,
        format!("{failed} predictions failed during the drill"),
    );
    need(
        &mut notes,
        m.degraded_reads_counted > 0.0,
        "greenbelt_feature_degraded_reads_total did not increase".into(),
    );
    match m.backfill {
        None => notes.push("the backfill did not run".into()),
        Some(b) if b.rows == 0 || b.rows < b.missed_rows => notes.push(format!(
            "the backfill materialized {} rows; the source gained {} while the pipeline was down",
            b.rows, b.missed_rows
        )),
        Some(_) => {}
    }
    need(
        &mut notes,
        m.fresh_again_ms.is_some(),
        "the server never reported the view fresh after the backfill".into(),
    );
    need(
        &mut notes,
        m.canary_ok_again_ms.is_some(),
        "the batch canary never succeeded after the backfill".into(),
    );
    need(
        &mut notes,
        flagged_after_recovery == 0,
        format!(
            "{flagged_after_recovery} responses were still flagged after the server reported the view fresh"
        ),
    );
    Verdict {
        time_to_detect_ms: since_stop(m.breach_seen_ms),
        time_to_canary_ms: since_stop(m.canary_failed_ms),
        time_to_flag_ms: since_stop(first_flagged),
        time_to_recover_ms: match (m.backfill, m.fresh_again_ms) {
            (Some(b), Some(f)) => Some((f - b.started_ms).max(0)),
            _ => None,
        },
        stale_after_ms: since_stop(stale_from),
        detection_allowance_ms: allowance,
        requests: m.probes.len() as u64,
        failed,
        served_degraded,
        silently_stale,
        stale_before_detection,
        flagged_after_recovery,
        rows_backfilled: m.backfill.map_or(0, |b| b.rows),
        rows_missed: m.backfill.map_or(0, |b| b.missed_rows),
        passed: notes.is_empty(),
        notes,
    }
}

/// The drill's report: what was drilled and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub view: String,
    pub service: String,
    pub model: String,
    pub fallback: String,
    pub sla_ms: i64,
    pub check_interval_ms: i64,
    pub cadence_ms: i64,
    pub backfill: Option<Backfill>,
    pub degraded_reads_counted: f64,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Report {
    /// The report as text for people.
    pub fn text(&self) -> String {
        let v = &self.verdict;
        let ms = |x: Option<i64>| x.map_or("-".to_string(), |v| format!("{v} ms"));
        let mut out = format!(
            "pipeline-outage drill on {} (service {}, model {}): {}\n",
            self.view,
            self.service,
            self.model,
            if v.passed { "recovered" } else { "FAILED" }
        );
        let mut line = |k: &str, val: String| out.push_str(&format!("  {k:<22} {val}\n"));
        line(
            "setup",
            format!(
                "freshness SLA {} ms, server check every {} ms, pipeline every {} ms, fallback {}",
                self.sla_ms, self.check_interval_ms, self.cadence_ms, self.fallback
            ),
        );
        line(
            "data past its SLA",
            format!("{} after the stop", ms(v.stale_after_ms)),
        );
        line(
            "time to detect",
            format!(
                "{} after the stop (freshness breach on /metrics; target ≤ {} ms after the data passed its SLA)",
                ms(v.time_to_detect_ms),
                v.detection_allowance_ms
            ),
        );
        line(
            "batch canary failed",
            format!("{} after the stop", ms(v.time_to_canary_ms)),
        );
        line(
            "first flagged answer",
            format!("{} after the stop", ms(v.time_to_flag_ms)),
        );
        line(
            "requests",
            format!(
                "{} total, {} failed, {} served degraded (server counted {} degraded reads)",
                v.requests, v.failed, v.served_degraded, self.degraded_reads_counted
            ),
        );
        line(
            "silently stale",
            format!(
                "{} (and {} inside the detection allowance)",
                v.silently_stale, v.stale_before_detection
            ),
        );
        line(
            "rows backfilled",
            format!(
                "{} (the source gained {} while down)",
                v.rows_backfilled, v.rows_missed
            ),
        );
        line(
            "time to recover",
            format!(
                "{} from the backfill's start to fresh, unflagged answers",
                ms(v.time_to_recover_ms)
            ),
        );
        line(
            "flagged after recovery",
            v.flagged_after_recovery.to_string(),
        );
        for n in &v.notes {
            line("note", n.clone());
        }
        line("result", if v.passed { "PASS" } else { "FAIL" }.into());
        out
    }

    /// Why the drill failed, for an error message (`None` when it passed).
    pub fn failure(&self) -> Option<String> {
        (!self.verdict.passed).then(|| self.verdict.notes.join("; "))
    }
}

/// The view the drill feeds, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub view: String,
    pub service: String,
    pub fallback: String,
    pub source_path: PathBuf,
    /// Source columns in order: join keys, the event time, features.
    pub header: Vec<String>,
    pub key_types: Vec<ValueType>,
    pub features: usize,
    pub sla_ms: i64,
}

/// Work out which view to drill and check the drill can feed it: an online
/// view with a `freshness_sla`, no transformation, a local CSV source, and
/// a feature service that reads only it.
pub fn plan(defs: &Definitions, view: Option<&str>) -> Result<Plan> {
    let candidates: Vec<&str> = match view {
        Some(v) => vec![v],
        None => defs
            .views
            .values()
            .filter(|v| v.online && v.freshness_sla_us.is_some())
            .map(|v| v.name.as_str())
            .collect(),
    };
    let Some(name) = candidates.first().copied() else {
        return Err(AppError::Invalid(
            "no online feature view has a freshness_sla; the drill needs one (or name it with --view)".into(),
        ));
    };
    let v = defs.view(name)?;
    let bad = |why: &str| {
        AppError::Invalid(format!(
            "pipeline-outage drill on feature view \"{}\": {why}",
            v.name
        ))
    };
    let sla = v
        .freshness_sla_us
        .ok_or_else(|| bad("it has no freshness_sla to breach"))?;
    if v.transformation.is_some() {
        return Err(bad(
            "it has a transformation; the drill writes source rows in the view's own columns",
        ));
    }
    let src = defs
        .sources
        .get(&v.source)
        .ok_or_else(|| bad("its source is not defined"))?;
    let path = match (&src.location, &src.format) {
        (Location::Local(p), SourceFormat::Csv) => p.clone(),
        _ => return Err(bad("its source must be a local CSV file")),
    };
    if v.join_keys.iter().any(|k| k.dtype == ValueType::Bool)
        || v.features.iter().any(|f| f.dtype == ValueType::String)
    {
        return Err(bad(
            "the drill feeds string or int64 keys and numeric features",
        ));
    }
    let service = defs
        .services
        .values()
        .find(|s| !s.features.is_empty() && s.features.iter().all(|r| r.view == v.name))
        .ok_or_else(|| bad("no feature service reads only this view"))?;
    let mut header: Vec<String> = v.join_keys.iter().map(|k| k.name.clone()).collect();
    header.push(src.event_timestamp.clone());
    header.extend(v.features.iter().map(|f| f.name.clone()));
    Ok(Plan {
        view: v.name.clone(),
        service: service.name.clone(),
        fallback: service.fallback.as_str().to_string(),
        source_path: path,
        header,
        key_types: v.join_keys.iter().map(|k| k.dtype).collect(),
        features: v.features.len(),
        sla_ms: sla / 1000,
    })
}

impl Plan {
    /// Entity `i`'s key values (JSON) for each join key.
    fn key(&self, i: usize) -> Vec<Value> {
        self.key_types
            .iter()
            .map(|t| match t {
                ValueType::Int64 => json!(i as i64 + 1),
                _ => json!(format!("d{i:05}")),
            })
            .collect()
    }

    /// One source line per entity at `event_us` (tick `tick`).
    fn rows(&self, entities: usize, tick: u64, event_us: i64) -> String {
        let ts = format_ts(event_us);
        let mut out = String::new();
        for i in 0..entities {
            let mut cells: Vec<String> = self
                .key(i)
                .iter()
                .map(|k| match k {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            cells.push(ts.clone());
            for f in 0..self.features {
                let x = ((tick as usize * 7 + i * 13 + f * 3) % 41) as f64 / 10.0 - 2.0;
                cells.push(format!("{x}"));
            }
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// Append `rows` to the source, creating it with its header; a source
    /// that exists with other columns is refused (not the drill's).
    fn append(&self, rows: &str) -> Result<()> {
        let header = self.header.join(",");
        let what = format!("appending to the source {}", self.source_path.display());
        match std::fs::read_to_string(&self.source_path) {
            Ok(text) => {
                if text.lines().next() != Some(header.as_str()) {
                    return Err(AppError::Invalid(format!(
                        "the source {} has other columns than the drill writes ({header}); drill a view whose source the drill owns",
                        self.source_path.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = self.source_path.parent() {
                    std::fs::create_dir_all(dir).map_err(AppError::io(what.clone()))?;
                }
                std::fs::write(&self.source_path, format!("{header}\n"))
                    .map_err(AppError::io(what.clone()))?;
            }
            Err(e) => return Err(AppError::io(what)(e)),
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.source_path)
            .map_err(AppError::io(what.clone()))?;
        f.write_all(rows.as_bytes()).map_err(AppError::io(what))
    }
}

fn wall_ms() -> i64 {
    now_us() / 1000
}

/// The value of `name{label="value"}` in Prometheus text.
pub fn metric(text: &str, name: &str, label: &str, value: &str) -> Option<f64> {
    let want = format!("{name}{{{label}=\"{value}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// What the simulated pipeline has done so far.
#[derive(Debug, Clone, Default)]
struct PipelineState {
    stopped_ms: Option<i64>,
    newest_delivered_ms: Option<i64>,
    missed_rows: u64,
    errors: Vec<String>,
}

enum Command {
    /// Stop materializing; keep appending source rows.
    Stop,
    /// Materialize the missed range, then run healthy again.
    Backfill(oneshot::Sender<Result<Backfill>>),
}

fn lock(s: &Mutex<PipelineState>) -> std::sync::MutexGuard<'_, PipelineState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The simulated pipeline: one task, so appends and the backfill never race.
async fn pipeline_task(
    defs: Arc<Definitions>,
    plan: Plan,
    opts: PipelineOutageOptions,
    state: Arc<Mutex<PipelineState>>,
    mut commands: mpsc::Receiver<Command>,
) {
    let views = [plan.view.clone()];
    let mut tick: u64 = 0;
    let mut down = false;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Stop) => {
                    down = true;
                    lock(&state).stopped_ms = Some(wall_ms());
                }
                Some(Command::Backfill(reply)) => {
                    let started_ms = wall_ms();
                    let missed_rows = lock(&state).missed_rows;
                    let r = materialize_views(&defs, &views, Range::Since(now_us()), EngineOptions::default(), true, &mut |_: &str| {}, &mut |_: &crate::feature_ops::Materialized| {}).await;
                    let r = r.map(|done| Backfill {
                        started_ms,
                        done_ms: wall_ms(),
                        rows: done.iter().map(|m| m.report.rows).sum(),
                        missed_rows,
                    });
                    down = r.is_err();
                    let _ = reply.send(r);
                }
            },
            _ = tokio::time::sleep_until(next) => {
                next += opts.cadence;
                tick += 1;
                let event_us = now_us();
                if let Err(e) = plan.append(&plan.rows(opts.entities, tick, event_us)) {
                    lock(&state).errors.push(e.to_string());
                    continue;
                }
                if down {
                    lock(&state).missed_rows += opts.entities as u64;
                    continue;
                }
                let r = materialize_views(&defs, &views, Range::Since(now_us()), EngineOptions::default(), true, &mut |_: &str| {}, &mut |_: &crate::feature_ops::Materialized| {}).await;
                match r {
                    Ok(_) => lock(&state).newest_delivered_ms = Some(event_us / 1000),
                    Err(e) => lock(&state).errors.push(e.to_string()),
                }
                if next < tokio::time::Instant::now() {
                    next = tokio::time::Instant::now();
                }
            }
        }
    }
}

/// The request the load sends for entity `i`.
fn infer_body(plan: &Plan, defs: &Definitions, i: usize) -> Result<Value> {
    let view = defs.view(&plan.view)?;
    let inputs: Vec<Value> = view
        .join_keys
        .iter()
        .zip(plan.key(i))
        .map(|(k, v)| {
            let dt = if k.dtype == ValueType::Int64 {
                "INT64"
            } else {
                "BYTES"
            };
            json!({"name": k.name, "datatype": dt, "shape": [1], "data": [v]})
        })
        .collect();
    Ok(json!({ "inputs": inputs }))
}

/// Whether an answer says it was degraded: the header, or STALE/DEFAULT
/// cells in `feature_status`.
fn flagged(header: bool, body: &Value) -> bool {
    let cells = body["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "feature_status"))
        .and_then(|t| t["data"].as_array())
        .is_some_and(|d| d.iter().any(|s| s == "STALE" || s == "DEFAULT"));
    header || cells
}

/// Load switches: `go` once the pipeline has delivered and the server
/// agrees (before that every key is NOT_FOUND), `stop` at the end.
#[derive(Default)]
struct Switches {
    go: AtomicBool,
    stop: AtomicBool,
}

/// One load client: a request every 50 ms from `go` until `stop`.
async fn client_task(
    client: reqwest::Client,
    url: String,
    bodies: Arc<Vec<Value>>,
    offset: usize,
    switches: Arc<Switches>,
) -> Vec<Probe> {
    let mut out = Vec::new();
    let mut i = offset;
    while !switches.go.load(Ordering::Relaxed) && !switches.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while !switches.stop.load(Ordering::Relaxed) {
        let sent_ms = wall_ms();
        let body = &bodies[i % bodies.len().max(1)];
        i += 1;
        let probe = match client.post(&url).json(body).send().await {
            Ok(r) => {
                let ok = r.status().is_success();
                let header = r
                    .headers()
                    .contains_key(greenbelt_serve::features::DEGRADED_HEADER);
                let body: Value = r.json().await.unwrap_or(Value::Null);
                Probe {
                    sent_ms,
                    ok,
                    flagged: flagged(header, &body),
                }
            }
            Err(_) => Probe {
                sent_ms,
                ok: false,
                flagged: false,
            },
        };
        out.push(probe);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out
}

/// What the server says about the view.
#[derive(Debug, Clone, Copy, Default)]
struct ServerView {
    breach: Option<bool>,
    canary_ok: Option<bool>,
    listed_stale: bool,
    degraded_reads: f64,
}

async fn server_view(client: &reqwest::Client, base: &str, plan: &Plan) -> ServerView {
    let mut out = ServerView::default();
    if let Ok(r) = client.get(format!("{base}/metrics")).send().await {
        let text = r.text().await.unwrap_or_default();
        out.breach = metric(
            &text,
            "greenbelt_feature_view_freshness_breach",
            "view",
            &plan.view,
        )
        .map(|x| x > 0.0);
        out.canary_ok = metric(
            &text,
            "greenbelt_feature_batch_canary_success",
            "view",
            &plan.view,
        )
        .map(|x| x > 0.0);
        out.degraded_reads = metric(
            &text,
            "greenbelt_feature_degraded_reads_total",
            "service",
            &plan.service,
        )
        .unwrap_or(0.0);
    }
    if let Ok(r) = client
        .get(format!("{base}/features/online/status"))
        .send()
        .await
    {
        let status: Value = r.json().await.unwrap_or(Value::Null);
        out.listed_stale = status["stale_views"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v["view"] == plan.view.as_str()));
    }
    out
}

/// Poll the server every 100 ms until `done` says so or `timeout` passes;
/// `seen` hears every reading. Returns whether `done` was reached.
async fn watch(
    client: &reqwest::Client,
    base: &str,
    plan: &Plan,
    timeout: Duration,
    seen: &mut dyn FnMut(i64, &ServerView),
    done: &dyn Fn() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let v = server_view(client, base, plan).await;
        seen(wall_ms(), &v);
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Run the pipeline-outage drill; `progress` hears what it is doing.
pub async fn pipeline_outage(
    opts: &PipelineOutageOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Report> {
    let defs = Arc::new(Definitions::load(&opts.definitions).map_err(|e| {
        AppError::Invalid(format!(
            "loading feature definitions {}: {e}",
            opts.definitions.display()
        ))
    })?);
    let plan = plan(&defs, opts.view.as_deref())?;
    let base = opts.server.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let bodies = Arc::new(
        (0..opts.entities.max(1))
            .map(|i| infer_body(&plan, &defs, i))
            .collect::<Result<Vec<_>>>()?,
    );
    let degraded_before = server_view(&client, &base, &plan).await.degraded_reads;
    progress(&format!(
        "drill: feeding view {} (source {}) every {} ms; SLA {} ms",
        plan.view,
        plan.source_path.display(),
        opts.cadence.as_millis(),
        plan.sla_ms
    ));

    let state = Arc::new(Mutex::new(PipelineState::default()));
    let (tx, rx) = mpsc::channel(4);
    // Not spawned: materialization's progress callbacks are not Send.
    let pipeline = pipeline_task(defs.clone(), plan.clone(), opts.clone(), state.clone(), rx);
    let switches = Arc::new(Switches::default());
    let url = format!("{base}/v2/models/{}/infer", opts.model);
    let clients: Vec<_> = (0..opts.clients.max(1))
        .map(|c| {
            tokio::spawn(client_task(
                client.clone(),
                url.clone(),
                bodies.clone(),
                c * 7,
                switches.clone(),
            ))
        })
        .collect();
    let mut m = Measurements {
        sla_ms: plan.sla_ms,
        check_interval_ms: i64::try_from(opts.check_interval.as_millis()).unwrap_or(i64::MAX),
        ..Measurements::default()
    };
    let phases = async {
        let tx = tx;
        let r = run_phases(
            &client, &base, &plan, opts, &tx, &state, &switches, &mut m, progress,
        )
        .await;
        switches.stop.store(true, Ordering::Relaxed);
        drop(tx);
        r
    };
    let ((), result) = tokio::join!(pipeline, phases);
    for c in clients {
        m.probes.extend(c.await?);
    }
    m.probes.sort_by_key(|p| p.sent_ms);
    result?;
    let st = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    m.stopped_ms = st.stopped_ms;
    m.pipeline_errors = st.errors;
    m.degraded_reads_counted =
        server_view(&client, &base, &plan).await.degraded_reads - degraded_before;
    let verdict = judge(&m, &Thresholds::default());
    Ok(Report {
        view: plan.view.clone(),
        service: plan.service.clone(),
        model: opts.model.clone(),
        fallback: plan.fallback.clone(),
        sla_ms: plan.sla_ms,
        check_interval_ms: m.check_interval_ms,
        cadence_ms: i64::try_from(opts.cadence.as_millis()).unwrap_or(i64::MAX),
        backfill: m.backfill,
        degraded_reads_counted: m.degraded_reads_counted,
        verdict,
    })
}

/// Healthy, outage, backfill, recovery. A phase that times out is left to
/// the judge (its measurement stays unset); only I/O errors end the drill.
#[allow(clippy::too_many_arguments)]
async fn run_phases(
    client: &reqwest::Client,
    base: &str,
    plan: &Plan,
    opts: &PipelineOutageOptions,
    tx: &mpsc::Sender<Command>,
    state: &Arc<Mutex<PipelineState>>,
    switches: &Switches,
    m: &mut Measurements,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<()> {
    let delivered = || {
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .newest_delivered_ms
    };
    // Healthy: the pipeline delivers and the server agrees the view is fresh.
    let fresh = Arc::new(Mutex::new(ServerView::default()));
    let last = fresh.clone();
    let healthy = watch(
        client,
        base,
        plan,
        opts.timeout,
        &mut |_: i64, v: &ServerView| {
            *last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = *v
        },
        &|| {
            let v = *fresh
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            delivered().is_some()
                && v.breach == Some(false)
                && v.canary_ok == Some(true)
                && !v.listed_stale
        },
    )
    .await;
    if !healthy {
        progress("drill: the view never turned fresh before the outage (see the report)");
    }
    switches.go.store(true, Ordering::Relaxed);
    tokio::time::sleep(opts.cadence * 2).await;

    // Outage: stop materializing; the source keeps growing.
    tx.send(Command::Stop)
        .await
        .map_err(|_| AppError::Task("the simulated pipeline ended".into()))?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    m.newest_delivered_ms = delivered();
    progress("drill: materialization stopped; waiting for the server to notice");
    let seen = Arc::new(Mutex::new(Measurements::default()));
    let s2 = seen.clone();
    watch(
        client,
        base,
        plan,
        opts.timeout + Duration::from_millis(plan.sla_ms.max(0) as u64),
        &mut |at: i64, v: &ServerView| {
            let mut s = s2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if v.breach == Some(true) {
                s.breach_seen_ms.get_or_insert(at);
            }
            if v.canary_ok == Some(false) {
                s.canary_failed_ms.get_or_insert(at);
            }
            if v.listed_stale {
                s.stale_listed_ms.get_or_insert(at);
            }
        },
        &|| {
            let s = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.breach_seen_ms.is_some()
                && s.canary_failed_ms.is_some()
                && s.stale_listed_ms.is_some()
        },
    )
    .await;
    {
        let s = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.breach_seen_ms = s.breach_seen_ms;
        m.canary_failed_ms = s.canary_failed_ms;
        m.stale_listed_ms = s.stale_listed_ms;
    }
    // Serve degraded for a while, as an outage would.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Backfill: materialize the missed range; the pipeline then runs again.
    progress("drill: backfilling the missed range");
    let (reply, answer) = oneshot::channel();
    tx.send(Command::Backfill(reply))
        .await
        .map_err(|_| AppError::Task("the simulated pipeline ended".into()))?;
    let backfill = tokio::time::timeout(opts.timeout, answer)
        .await
        .map_err(|_| AppError::Task("the backfill did not finish in time".into()))?
        .map_err(|_| AppError::Task("the simulated pipeline ended".into()))??;
    m.backfill = Some(backfill);
    progress(&format!(
        "drill: backfilled {} rows; waiting for fresh answers",
        backfill.rows
    ));
    let rec = Arc::new(Mutex::new((None::<i64>, None::<i64>)));
    let r2 = rec.clone();
    watch(
        client,
        base,
        plan,
        opts.timeout,
        &mut |at: i64, v: &ServerView| {
            let mut r = r2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if v.breach == Some(false) && !v.listed_stale {
                r.0.get_or_insert(at);
            }
            if r.0.is_some() && v.canary_ok == Some(true) {
                r.1.get_or_insert(at);
            }
        },
        &|| {
            let r = rec
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            r.0.is_some() && r.1.is_some()
        },
    )
    .await;
    {
        let r = rec
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.fresh_again_ms = r.0;
        m.canary_ok_again_ms = r.1;
    }
    // Keep the load on to see answers stay unflagged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Where a server's config puts the feature definitions, for the drill's
/// default `--features`.
pub fn definitions_of(config: &greenbelt_serve::Config) -> Option<PathBuf> {
    crate::features::definitions_path(config)
}

/// The server's freshness check interval from its config (default 30 s).
pub fn check_interval_of(config: &greenbelt_serve::Config) -> Result<Duration> {
    Ok(crate::features::interval(
        "freshness_interval",
        config.features.freshness_interval.as_deref(),
        Some(Duration::from_secs(30)),
    )?
    .unwrap_or(Duration::from_secs(30)))
}

/// A path relative to `base`'s directory, unless absolute.
pub fn beside(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const STOP: i64 = 1_000_000;
    const SLA: i64 = 5000;

    /// A drill that went by the book: data delivered until the stop, the
    /// breach seen 1.5 s after the data passed its SLA, a backfill at +9 s,
    /// fresh again at +10 s; a request every 100 ms from -3 s to +14 s,
    /// flagged between `flag_from` and `flag_to` (ms after the stop).
    fn drill(flag_from: i64, flag_to: i64) -> Measurements {
        let probes = (-30..140)
            .map(|i| {
                let at = i * 100;
                Probe {
                    sent_ms: STOP + at,
                    ok: true,
                    flagged: (flag_from..flag_to).contains(&at),
                }
            })
            .collect();
        Measurements {
            sla_ms: SLA,
            check_interval_ms: 500,
            stopped_ms: Some(STOP),
            newest_delivered_ms: Some(STOP - 200),
            breach_seen_ms: Some(STOP + 6300),
            canary_failed_ms: Some(STOP + 6000),
            stale_listed_ms: Some(STOP + 6300),
            backfill: Some(Backfill {
                started_ms: STOP + 9000,
                done_ms: STOP + 9500,
                rows: 160,
                missed_rows: 160,
            }),
            fresh_again_ms: Some(STOP + 10_000),
            canary_ok_again_ms: Some(STOP + 10_200),
            degraded_reads_counted: 40.0,
            probes,
            pipeline_errors: Vec::new(),
        }
    }

    #[test]
    fn a_drill_by_the_book_passes_and_measures_each_step() {
        let v = judge(&drill(6300, 10_000), &Thresholds::default());
        assert!(v.passed, "{v:?}");
        assert_eq!(v.time_to_detect_ms, Some(6300));
        assert_eq!(v.time_to_canary_ms, Some(6000));
        assert_eq!(v.time_to_flag_ms, Some(6300));
        assert_eq!(v.time_to_recover_ms, Some(1000));
        assert_eq!(v.stale_after_ms, Some(4800));
        assert_eq!(v.served_degraded, 37);
        assert_eq!(v.requests, 170);
        assert_eq!(v.rows_backfilled, 160);
        // 4.9 s .. 6.2 s: stale, but before the server could know.
        assert_eq!(v.stale_before_detection, 14);
        assert_eq!(v.silently_stale, 0);
    }

    #[test]
    fn an_unflagged_answer_after_the_server_knew_is_silently_stale() {
        let mut m = drill(6300, 10_000);
        m.probes[100].flagged = false; // sent at +7 s
        let v = judge(&m, &Thresholds::default());
        assert!(!v.passed);
        assert_eq!(v.silently_stale, 1);
        assert!(
            v.notes[0].contains("1 responses were served"),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn a_late_or_missing_detection_fails() {
        let mut m = drill(6300, 10_000);
        m.breach_seen_ms = Some(STOP + 9000);
        m.stale_listed_ms = Some(STOP + 9000);
        let v = judge(&m, &Thresholds::default());
        assert!(!v.passed);
        // allowance: 2 x 500 ms + 3 s after the data passed its SLA (+4.8 s)
        assert_eq!(v.detection_allowance_ms, 4000);
        assert!(
            v.notes
                .iter()
                .any(|n| n.contains("4200 ms after the data passed its SLA")),
            "{:?}",
            v.notes
        );
        // Answers left unflagged after the server listed the view stale
        // (+6.3 s) until the flags at +9 s are silently stale.
        let v = judge(&drill(9000, 10_000), &Thresholds::default());
        assert_eq!(v.silently_stale, 26, "{v:?}");

        let mut m = drill(0, 0);
        m.breach_seen_ms = None;
        m.canary_failed_ms = None;
        m.stale_listed_ms = None;
        m.degraded_reads_counted = 0.0;
        let v = judge(&m, &Thresholds::default());
        assert!(!v.passed);
        for want in [
            "freshness breach never showed",
            "batch canary never failed",
            "never listed the view",
            "no response was flagged",
            "did not increase",
        ] {
            assert!(
                v.notes.iter().any(|n| n.contains(want)),
                "{want}: {:?}",
                v.notes
            );
        }
    }

    #[test]
    fn recovery_backfill_and_failures_are_judged() {
        let mut m = drill(6300, 10_500);
        m.probes[120].ok = false;
        let v = judge(&m, &Thresholds::default());
        assert_eq!(v.failed, 1);
        assert_eq!(v.flagged_after_recovery, 4);
        assert!(!v.passed);

        let mut m = drill(6300, 10_000);
        m.backfill = Some(Backfill {
            started_ms: STOP + 9000,
            done_ms: STOP + 9500,
            rows: 100,
            missed_rows: 160,
        });
        m.fresh_again_ms = None;
        let v = judge(&m, &Thresholds::default());
        assert_eq!(v.time_to_recover_ms, None);
        assert!(
            v.notes.iter().any(|n| n.contains("materialized 100 rows")),
            "{:?}",
            v.notes
        );
        assert!(
            v.notes
                .iter()
                .any(|n| n.contains("never reported the view fresh"))
        );

        let mut m = drill(6300, 10_000);
        m.newest_delivered_ms = None;
        m.pipeline_errors = vec!["source unreadable".into()];
        let v = judge(&m, &Thresholds::default());
        assert!(v.notes[0].contains("never delivered data before the outage: source unreadable"));
    }

    #[test]
    fn the_report_reads_as_text_and_names_the_failure() {
        let r = Report {
            view: "activity".into(),
            service: "scoring".into(),
            model: "scorer".into(),
            fallback: "last_value".into(),
            sla_ms: SLA,
            check_interval_ms: 500,
            cadence_ms: 1000,
            backfill: None,
            degraded_reads_counted: 40.0,
            verdict: judge(&drill(6300, 10_000), &Thresholds::default()),
        };
        let text = r.text();
        assert!(text.contains("pipeline-outage drill on activity"), "{text}");
        assert!(text.contains("time to detect         6300 ms"), "{text}");
        assert!(text.contains("result                 PASS"), "{text}");
        assert_eq!(r.failure(), None);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["rows_backfilled"], 160);
        assert_eq!(j["passed"], true);
    }

    const DEFS: &str = r#"
[store]
offline = "offline"
online = "online.redb"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]
[[source]]
name = "activity"
path = "activity.csv"
event_timestamp = "event_ts"
[[feature_view]]
name = "activity"
entities = ["user"]
source = "activity"
ttl = "1h"
freshness_sla = "5s"
features = [{ name = "a", type = "float64" }, { name = "b", type = "int64" }]
[[feature_view]]
name = "shaped"
entities = ["user"]
source = "activity"
freshness_sla = "5s"
transformation = "SELECT user_id, event_ts, a FROM source"
features = [{ name = "a", type = "float64" }]
[[feature_service]]
name = "scoring"
features = ["activity:*"]
fallback = "last_value"
"#;

    #[test]
    fn the_plan_feeds_a_view_it_can_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let defs = Definitions::parse(DEFS, dir.path()).unwrap();
        let p = plan(&defs, None).unwrap();
        assert_eq!(p.view, "activity");
        assert_eq!(p.service, "scoring");
        assert_eq!(p.fallback, "last_value");
        assert_eq!(p.sla_ms, 5000);
        assert_eq!(p.header, ["user_id", "event_ts", "a", "b"]);
        let rows = p.rows(2, 1, 0);
        assert_eq!(rows.lines().count(), 2);
        assert!(rows.starts_with("d00000,1970-01-01T00:00:00"), "{rows}");
        p.append(&rows).unwrap();
        p.append(&rows).unwrap();
        let text = std::fs::read_to_string(&p.source_path).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert!(text.starts_with("user_id,event_ts,a,b\n"));
        let e = plan(&defs, Some("shaped")).unwrap_err().to_string();
        assert!(e.contains("transformation"), "{e}");
        // A source with other columns is not the drill's to append to.
        std::fs::write(&p.source_path, "x,y\n").unwrap();
        assert!(
            p.append(&rows)
                .unwrap_err()
                .to_string()
                .contains("other columns")
        );
    }

    #[test]
    fn the_example_project_parses_and_can_be_drilled() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipeline-outage");
        let defs = Definitions::load(&dir.join("features.toml")).unwrap();
        let p = plan(&defs, None).unwrap();
        assert_eq!(
            (p.view.as_str(), p.features, p.sla_ms),
            ("user_activity", 20, 5000)
        );
        assert_eq!(p.service, "activity_scoring");
        let c = greenbelt_serve::Config::load(Some(&dir.join("greenbelt.toml"))).unwrap();
        assert_eq!(check_interval_of(&c).unwrap(), Duration::from_millis(500));
        let model = std::fs::read_to_string(dir.join("models/scorer/config.toml")).unwrap();
        assert!(model.contains("service = \"activity_scoring\""));
    }

    #[test]
    fn metrics_and_flags_are_read_from_what_the_server_sends() {
        let text = "greenbelt_feature_view_freshness_breach{view=\"a\"} 1\n\
                    greenbelt_feature_view_freshness_breach{view=\"ab\"} 0\n";
        assert_eq!(
            metric(text, "greenbelt_feature_view_freshness_breach", "view", "a"),
            Some(1.0)
        );
        assert_eq!(
            metric(text, "greenbelt_feature_view_freshness_breach", "view", "b"),
            None
        );
        let body = json!({"outputs": [{"name": "feature_status", "data": ["PRESENT", "STALE"]}]});
        assert!(flagged(false, &body));
        assert!(flagged(true, &Value::Null));
        assert!(!flagged(
            false,
            &json!({"outputs": [{"name": "feature_status", "data": ["PRESENT"]}]})
        ));
    }
}
