//! Cost: the ledger's background task (a snapshot into the history every
//! `[cost] interval`, then the `[[budget]]`s evaluated on it, transitions
//! logged and sent to the `[alerts]` webhook), `greenbelt cost report`
//! (a server's `GET /admin/cost` as a table) and `greenbelt cost compare`
//! (two measured `greenbelt bench --json` runs: $ per 1M predictions
//! before and after, and where the saving came from).

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use greenbelt_core::cost::{
    Comparison, FEATURES, GIB, GroupBy, HOURS_PER_MONTH, Prices, Report, RunCost, Snapshot, Store,
    compare,
};
use greenbelt_serve::cost::Holding;
use greenbelt_serve::infer::AppState;
use serde::{Deserialize, Serialize};

use crate::error::{AppError, Result};
use crate::table::columns;
use crate::tasks::Tasks;

/// Start the ledger's loop (history and budgets).
pub fn spawn(state: Arc<AppState>, tasks: &mut Tasks) {
    let Ok(every) = state.config.cost.interval() else {
        return; // validated with the config
    };
    tasks.spawn_ticker(every, move |_now| {
        let snapshot = state.metrics.cost.record();
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for t in state.budgets.evaluate(&snapshot, unix) {
            state.alerts.notify(t);
        }
    });
}

/// The longest one scan of a store may take; a scan cut here keeps the
/// previous measurement.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);

/// Measure a store every `[cost] storage_interval` (the first time at
/// once) with `scan` and give the ledger what it holds. A failed or cut
/// scan is logged and keeps the previous measurement.
pub fn spawn_store_scan<F, Fut>(
    state: &Arc<AppState>,
    tasks: &mut Tasks,
    store: Store,
    in_memory: bool,
    scan: F,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::result::Result<Vec<Holding>, String>> + Send,
{
    let Ok(every) = state.config.cost.storage_interval() else {
        return; // validated with the config
    };
    let ledger = state.metrics.cost.clone();
    let limit = SCAN_TIMEOUT.min(every.max(Duration::from_secs(1)));
    tasks.spawn_async_ticker(every, move || {
        let measured = tokio::time::timeout(limit, scan());
        let ledger = ledger.clone();
        async move {
            match measured.await {
                Ok(Ok(held)) => ledger.held(store, in_memory, held),
                Ok(Err(e)) => {
                    tracing::warn!(store = store.as_str(), error = %e, "measuring what the store holds failed; the cost ledger keeps the last measurement");
                }
                Err(_) => {
                    tracing::warn!(store = store.as_str(), "measuring what the store holds took too long; the cost ledger keeps the last measurement");
                }
            }
        }
    });
}

/// The registry's artifacts by model version; an artifact several
/// versions share counts for the first of them. Sizes are asked once per
/// artifact (content-addressed: they never change) and kept in `sizes`.
pub async fn registry_holdings(
    registry: &greenbelt_registry::Registry,
    artifacts: &greenbelt_registry::artifacts::ArtifactStore,
    sizes: &tokio::sync::Mutex<std::collections::HashMap<String, u64>>,
) -> std::result::Result<Vec<Holding>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for model in registry.models().await.map_err(|e| e.to_string())? {
        for v in registry.versions(&model).await.map_err(|e| e.to_string())? {
            if !seen.insert(v.sha256.clone()) {
                continue;
            }
            let known = sizes.lock().await.get(&v.sha256).copied();
            let bytes = match known {
                Some(b) => b,
                None => match artifacts.size(&v.artifact_uri).await {
                    Ok(b) => {
                        sizes.lock().await.insert(v.sha256.clone(), b);
                        b
                    }
                    Err(e) => {
                        tracing::warn!(model = %model, version = v.version, error = %e, "the cost ledger cannot size this artifact; it is left out");
                        continue;
                    }
                },
            };
            out.push(Holding {
                model: model.clone(),
                version: v.version.to_string(),
                bytes,
                items: 1,
            });
        }
    }
    Ok(out)
}

/// The offline store's files by feature view.
pub async fn offline_holdings(
    store: &greenbelt_features::offline::OfflineStore,
    views: &[String],
) -> std::result::Result<Vec<Holding>, String> {
    let mut out = Vec::new();
    for view in views {
        let (bytes, files) = store.view_usage(view).await.map_err(|e| e.to_string())?;
        if files > 0 {
            out.push(Holding {
                model: FEATURES.into(),
                version: view.clone(),
                bytes,
                items: files,
            });
        }
    }
    Ok(out)
}

/// The online store's keys by feature view.
pub async fn online_holdings(
    store: &greenbelt_features::online::OnlineStore,
) -> std::result::Result<Vec<Holding>, String> {
    let usage = store.usage().await.map_err(|e| e.to_string())?;
    Ok(usage
        .into_iter()
        .map(|(view, (keys, bytes))| Holding {
            model: FEATURES.into(),
            version: view,
            bytes,
            items: keys,
        })
        .collect())
}

/// What `GET /admin/cost` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostView {
    pub report: Report,
    pub snapshot: Snapshot,
    pub budgets: serde_json::Value,
}

/// Read a server's cost report over the last `since`, grouped `by`.
pub async fn fetch(
    client: &reqwest::Client,
    base: &str,
    since: Option<&str>,
    by: GroupBy,
) -> Result<CostView> {
    let by = serde_json::to_value(by)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "model".into());
    let mut query = vec![("by", by)];
    if let Some(s) = since {
        query.push(("since", s.to_string()));
    }
    let url = format!("{}/admin/cost", base.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .query(&query)
        .send()
        .await
        .map_err(|e| AppError::Remote(format!("GET {url}: {e}")))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| AppError::Remote(format!("GET {url}: {e}")))?;
    if !status.is_success() {
        return Err(AppError::Remote(format!("GET {url}: {status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|e| {
        AppError::Remote(format!(
            "GET {url}: not a cost report ({e}); is this a Greenbelt server with cost accounting?"
        ))
    })
}

/// A server's cumulative ledger now (None when it has none: not Greenbelt).
pub async fn snapshot(client: &reqwest::Client, base: &str) -> Option<Snapshot> {
    fetch(client, base, None, GroupBy::Model)
        .await
        .ok()
        .map(|v| v.snapshot)
}

/// Dollars, with enough digits for the small amounts a short run costs.
pub fn money(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.6}")
    }
}

/// Bytes in binary units (B, KiB, MiB, GiB, TiB).
fn bytes(b: f64) -> String {
    let mut v = b;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return if unit == "B" {
                format!("{v:.0} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn duration(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0.0).round() as u64)).to_string()
}

/// `greenbelt cost report` as text.
pub fn report_text(v: &CostView) -> String {
    let r = &v.report;
    let by = match r.by {
        GroupBy::Model => "MODEL",
        GroupBy::Version => "VERSION",
        GroupBy::Deployment => "DEPLOYMENT",
        GroupBy::Resource => "RESOURCE",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cost over the last {} (egress priced as {:?}); prices: {}",
        duration(r.window_seconds),
        r.egress_class,
        r.prices.source
    );
    let _ = writeln!(
        out,
        "total ${}: attributed ${}, overhead ${}, idle ${}; {} predictions in {} requests; ${} per 1M predictions\n",
        money(r.total_dollars),
        money(r.attributed_dollars),
        money(r.overhead_dollars),
        money(r.idle_dollars),
        r.predictions,
        r.requests,
        r.dollars_per_million.map_or("–".into(), money)
    );
    let rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|g| {
            vec![
                g.key.clone(),
                money(g.dollars),
                pct(g.share),
                if g.predictions > 0 {
                    g.predictions.to_string()
                } else {
                    "-".into()
                },
                g.dollars_per_million.map_or("-".into(), money),
            ]
        })
        .collect();
    out.push_str(&columns(
        &[by, "$", "SHARE", "PREDICTIONS", "$ PER 1M"],
        &rows,
    ));
    out.push_str("\ntop cost drivers\n");
    let rows: Vec<Vec<String>> = r
        .drivers
        .iter()
        .map(|d| {
            vec![
                d.model.clone(),
                d.resource.clone(),
                money(d.dollars),
                pct(d.share),
                d.trend
                    .map_or("-".into(), |t| format!("{:+.0}%", t * 100.0)),
            ]
        })
        .collect();
    out.push_str(&columns(
        &["MODEL", "RESOURCE", "$", "SHARE", "TREND"],
        &rows,
    ));
    let held: Vec<Vec<String>> = v
        .snapshot
        .rows
        .iter()
        .filter_map(|row| {
            let h = row.held.filter(|h| h.bytes > 0.0)?;
            let gib = h.bytes / GIB;
            let monthly = if h.in_memory {
                r.prices.ram(gib * HOURS_PER_MONTH)
            } else {
                gib * r.prices.storage_gib_month
            };
            Some(vec![
                h.store.as_str().to_string(),
                row.model.clone(),
                row.version.clone(),
                bytes(h.bytes),
                h.items.to_string(),
                money(monthly),
            ])
        })
        .collect();
    if !held.is_empty() {
        out.push_str(
            "
held by the stores (last scan)
",
        );
        out.push_str(&columns(
            &[
                "STORE",
                "MODEL",
                "VERSION/VIEW",
                "BYTES",
                "ITEMS",
                "$ A MONTH",
            ],
            &held,
        ));
    }
    if let Some(budgets) = v.budgets.as_array().filter(|b| !b.is_empty()) {
        out.push_str("\nbudgets\n");
        let rows: Vec<Vec<String>> = budgets
            .iter()
            .map(|b| {
                let f = &b["forecast"];
                let state = b["alerts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|x| x["state"] == "firing")
                            .filter_map(|x| x["severity"].as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "ok".into());
                vec![
                    b["budget"].as_str().unwrap_or("").to_string(),
                    format!(
                        "{} / {}",
                        money(b["amount"].as_f64().unwrap_or(0.0)),
                        b["period"].as_str().unwrap_or("")
                    ),
                    f["spent"].as_f64().map_or("-".into(), money),
                    f["forecast"].as_f64().map_or("-".into(), money),
                    b["burn_rate"]["1h"]
                        .as_f64()
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    state,
                ]
            })
            .collect();
        out.push_str(&columns(
            &["BUDGET", "AMOUNT", "SPENT", "FORECAST", "BURN 1H", "ALERTS"],
            &rows,
        ));
    }
    out
}

/// The part of a `greenbelt bench --json` report `compare` reads.
#[derive(Debug, Deserialize)]
struct BenchRun {
    model: String,
    #[serde(default)]
    label: Option<String>,
    throughput_rps: f64,
    cost: Option<RunCost>,
}

fn read_run(path: &Path) -> Result<(String, RunCost)> {
    let text = std::fs::read_to_string(path)
        .map_err(AppError::io(format!("reading {}", path.display())))?;
    // `greenbelt bench --json` prints one object; take the last line that
    // parses, so a file with logs before it still works.
    let run: BenchRun = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .or_else(|| serde_json::from_str(&text).ok())
        .ok_or_else(|| {
            AppError::Invalid(format!(
                "{}: not a `greenbelt bench --json` report",
                path.display()
            ))
        })?;
    let cost = run.cost.ok_or_else(|| {
        AppError::Invalid(format!(
            "{}: the run has no cost block (bench a Greenbelt server of this version)",
            path.display()
        ))
    })?;
    let name = run.label.unwrap_or_else(|| {
        format!(
            "{} ({:.0} req/s)",
            path.file_stem()
                .map_or(run.model.clone(), |s| s.to_string_lossy().into_owned()),
            run.throughput_rps
        )
    });
    Ok((name, cost))
}

/// A price table file: TOML with the fields of `[cost.prices]`.
pub fn read_prices(path: &Path) -> Result<Prices> {
    let text = std::fs::read_to_string(path)
        .map_err(AppError::io(format!("reading {}", path.display())))?;
    let prices: Prices =
        toml::from_str(&text).map_err(|e| AppError::Invalid(format!("{}: {e}", path.display())))?;
    prices
        .validate()
        .map_err(|e| AppError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(prices)
}

/// `greenbelt cost compare`: two bench reports, priced with `prices`
/// (default: what run A's server priced with).
pub fn compare_files(
    a: &Path,
    b: &Path,
    prices: Option<&Prices>,
) -> Result<(String, String, Comparison)> {
    let (na, ra) = read_run(a)?;
    let (nb, rb) = read_run(b)?;
    let c = compare(&ra, &rb, prices).map_err(AppError::Invalid)?;
    Ok((na, nb, c))
}

/// A comparison as text.
pub fn compare_text(a: &str, b: &str, c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {a}\nB: {b}\nprices: {}", c.prices.source);
    let _ = writeln!(
        out,
        "$ per 1M predictions: A {} → B {}: saving {} ({:.1}%)\nthroughput: A {:.0}/s, B {:.0}/s\n",
        money(c.before),
        money(c.after),
        money(c.saving),
        c.saving_ratio * 100.0,
        c.throughput_before,
        c.throughput_after
    );
    let rows: Vec<Vec<String>> = c
        .lines
        .iter()
        .map(|l| {
            vec![
                l.item.clone(),
                money(l.before),
                money(l.after),
                money(l.saving),
                l.share_of_saving.map_or("-".into(), pct),
            ]
        })
        .collect();
    out.push_str(&columns(
        &["ITEM", "A $/1M", "B $/1M", "SAVING $/1M", "OF SAVING"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use greenbelt_core::cost::{EgressClass, Process, Usage, report};

    #[test]
    fn the_report_text_has_headers_shares_and_drivers() {
        let s = Snapshot::new(
            3600.0,
            Prices::default(),
            EgressClass::Internet,
            vec![(
                "fraud".into(),
                "1".into(),
                "fraud".into(),
                Usage {
                    requests: 1000,
                    predictions: 1000,
                    compute_cpu_seconds: 60.0,
                    ..Usage::default()
                },
            )],
            Process {
                cpu_seconds: 80.0,
                uptime_seconds: 3600.0,
                ..Process::default()
            },
        )
        .with_held(vec![(
            FEATURES.into(),
            "user_profile".into(),
            greenbelt_core::cost::Held {
                store: Store::Online,
                bytes: 3.0 * 1024.0 * 1024.0,
                items: 1200,
                in_memory: false,
            },
            Usage::default(),
        )]);
        let v = CostView {
            report: report(&s, GroupBy::Model, None),
            snapshot: s,
            budgets: serde_json::json!([]),
        };
        let t = report_text(&v);
        assert!(t.contains("MODEL"), "{t}");
        assert!(
            t.contains("fraud") && t.contains("75.0%") && t.contains("_overhead"),
            "{t}"
        );
        assert!(
            t.contains("top cost drivers") && t.contains("compute_cpu"),
            "{t}"
        );
        assert!(t.contains("1h"), "{t}");
        // What the stores hold, with what it costs a month at that size.
        let line = t
            .lines()
            .find(|l| l.starts_with("online"))
            .unwrap_or_else(|| panic!("{t}"));
        for cell in ["_features", "user_profile", "3.0 MiB", "1200"] {
            assert!(line.contains(cell), "{line}");
        }
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1.5 * GIB), "1.5 GiB");
    }

    #[test]
    fn compare_refuses_what_is_not_a_bench_run() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, "not json").unwrap();
        let e = compare_files(&a, &a, None).unwrap_err().to_string();
        assert!(e.contains("not a `greenbelt bench --json` report"), "{e}");
        std::fs::write(&a, r#"{"model":"m","throughput_rps":1.0}"#).unwrap();
        let e = compare_files(&a, &a, None).unwrap_err().to_string();
        assert!(e.contains("no cost block"), "{e}");
    }
}
