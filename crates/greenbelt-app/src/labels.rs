//! `greenbelt labels ingest FILE`: delayed labels from a file to a running
//! server's `POST /v2/models/{model}/labels`, in batches.
//!
//! Files: CSV with a header that has `id` and `label` columns (one label
//! per request), or JSON lines `{"id": "...", "label": 1}` /
//! `{"id": "...", "label": [0, 1]}` (one per row of a batch request).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{AppError, Result};

/// Labels sent per request (the server takes at most 100 000).
pub const BATCH: usize = 10_000;

/// What the server said about every batch, summed.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Ingested {
    pub sent: u64,
    pub joined: u64,
    pub unknown: u64,
    pub mismatched: u64,
    /// The versions' metrics after the last batch that touched them.
    pub quality: Vec<Value>,
}

/// Read the labels of `path` (CSV or JSON lines, by extension).
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let shown = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "csv" => read_csv(path, &shown),
        "jsonl" | "json" | "ndjson" => read_jsonl(path, &shown),
        _ => Err(AppError::Invalid(format!(
            "{shown}: unknown label file type; use .csv (columns id,label) or .jsonl ({{\"id\": ..., \"label\": ...}} per line)"
        ))),
    }
}

fn read_csv(path: &Path, shown: &str) -> Result<Vec<Value>> {
    let mut r =
        csv::Reader::from_path(path).map_err(|e| AppError::Invalid(format!("{shown}: {e}")))?;
    let headers = r
        .headers()
        .map_err(|e| AppError::Invalid(format!("{shown}: {e}")))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            AppError::Invalid(format!(
                "{shown}: no \"{name}\" column (columns: {}); the file needs id and label",
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let (id, label) = (col("id")?, col("label")?);
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| AppError::Invalid(format!("{shown}: line {line}: {e}")))?;
        let value = rec.get(label).unwrap_or("").trim();
        let y: f64 = value.parse().map_err(|_| {
            AppError::Invalid(format!(
                "{shown}: line {line}: label \"{value}\" is not a number (classes are 0, 1, ...)"
            ))
        })?;
        out.push(json!({ "id": rec.get(id).unwrap_or(""), "label": y }));
    }
    Ok(out)
}

fn read_jsonl(path: &Path, shown: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(AppError::io(format!("reading {shown}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| AppError::Invalid(format!("{shown}: line {}: {e}", i + 1)))?;
        if !v["id"].is_string() || !(v["label"].is_number() || v["label"].is_array()) {
            return Err(AppError::Invalid(format!(
                "{shown}: line {}: expected {{\"id\": \"<request id>\", \"label\": <number or list>}}",
                i + 1
            )));
        }
        out.push(v);
    }
    Ok(out)
}

/// Send `labels` to `server` for `model` in batches of [`BATCH`].
pub async fn send(
    server: &str,
    model: &str,
    labels: &[Value],
    token: Option<&str>,
) -> Result<Ingested> {
    let url = format!("{}/v2/models/{model}/labels", server.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut total = Ingested::default();
    for chunk in labels.chunks(BATCH) {
        let mut req = client
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(&json!({ "labels": chunk }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AppError::Remote(format!("posting labels to {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(AppError::Remote(format!(
                "{url}: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            )));
        }
        let got: Value = resp
            .json()
            .await
            .map_err(|e| AppError::Remote(format!("reading the answer of {url}: {e}")))?;
        total.sent += chunk.len() as u64;
        for (field, into) in [
            ("joined", &mut total.joined),
            ("unknown", &mut total.unknown),
            ("mismatched", &mut total.mismatched),
        ] {
            *into += got[field].as_u64().unwrap_or(0);
        }
        for q in got["quality"].as_array().into_iter().flatten() {
            total.quality.retain(|old| old["version"] != q["version"]);
            total.quality.push(q.clone());
        }
    }
    Ok(total)
}
