//! Freshness of each feature view: the materialization watermark, the
//! newest event in the offline store, and their ages, as a report and as
//! Prometheus text (`greenbelt_feature_view_*`; the only label is the view,
//! a bounded set from the definitions).

use std::fmt::Write;

use datafusion::arrow::array::{Array, TimestampMicrosecondArray};
use serde::{Deserialize, Serialize};

use crate::defs::Definitions;
use crate::error::Result;
use crate::offline::{EVENT_TIMESTAMP, OfflineStore};
use crate::source::{EngineOptions, session};
use crate::time::format_ts;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewFreshness {
    pub view: String,
    pub watermark: Option<String>,
    pub newest_event: Option<String>,
    /// Seconds since the newest event (None without offline data).
    pub age_seconds: Option<f64>,
    /// The view's freshness SLA in seconds, if it has one.
    pub sla_seconds: Option<f64>,
    /// Age above the SLA.
    pub breach: bool,
    #[serde(skip)]
    watermark_us: Option<i64>,
    #[serde(skip)]
    newest_us: Option<i64>,
}

/// Freshness of every view at `now_us`.
pub async fn freshness(
    defs: &Definitions,
    store: &OfflineStore,
    now_us: i64,
) -> Result<Vec<ViewFreshness>> {
    let ctx = session(&EngineOptions::default())?;
    let mut out = Vec::new();
    for view in defs.views.values() {
        let watermark_us = store.watermark(&view.name).await?;
        let mut newest_us = None;
        if !store.partitions(&view.name).await?.is_empty() {
            let df = store.read_view(&ctx, &view.name).await?;
            let agg = df
                .aggregate(
                    vec![],
                    vec![
                        datafusion::functions_aggregate::expr_fn::max(datafusion::prelude::col(
                            EVENT_TIMESTAMP,
                        ))
                        .alias("m"),
                    ],
                )?
                .collect()
                .await?;
            newest_us = agg.first().and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .filter(|a| a.len() == 1 && a.is_valid(0))
                    .map(|a| a.value(0))
            });
        }
        let age_seconds = newest_us.map(|t| (now_us - t) as f64 / 1e6);
        let sla_seconds = view.freshness_sla_us.map(|s| s as f64 / 1e6);
        let breach = match (age_seconds, sla_seconds) {
            (Some(a), Some(s)) => a > s,
            (None, Some(_)) => true,
            _ => false,
        };
        out.push(ViewFreshness {
            view: view.name.clone(),
            watermark: watermark_us.map(format_ts),
            newest_event: newest_us.map(format_ts),
            age_seconds,
            sla_seconds,
            breach,
            watermark_us,
            newest_us,
        });
    }
    Ok(out)
}

/// The report as Prometheus text exposition.
pub fn prometheus_text(views: &[ViewFreshness]) -> String {
    let mut out = String::new();
    let metric =
        |out: &mut String, name: &str, help: &str, f: &dyn Fn(&ViewFreshness) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for v in views {
                if let Some(x) = f(v) {
                    let _ = writeln!(out, "{name}{{view=\"{}\"}} {x}", v.view);
                }
            }
        };
    metric(
        &mut out,
        "greenbelt_feature_view_watermark_timestamp_seconds",
        "End of the last materialized range (Unix seconds).",
        &|v| v.watermark_us.map(|t| t as f64 / 1e6),
    );
    metric(
        &mut out,
        "greenbelt_feature_view_newest_event_timestamp_seconds",
        "Newest event time in the offline store (Unix seconds).",
        &|v| v.newest_us.map(|t| t as f64 / 1e6),
    );
    metric(
        &mut out,
        "greenbelt_feature_view_age_seconds",
        "Seconds since the newest event in the offline store.",
        &|v| v.age_seconds,
    );
    metric(
        &mut out,
        "greenbelt_feature_view_freshness_breach",
        "1 when the age is above the view's freshness SLA.",
        &|v| v.sla_seconds.map(|_| f64::from(u8::from(v.breach))),
    );
    out
}
