//! A Grafana dashboard for Greenbelt's metrics, generated here so the panel
//! queries live beside the metric names (`greenbelt slo dashboard` writes
//! it; `deploy/grafana/greenbelt.json` is the committed copy, kept equal by
//! a test). Panels: request rate, p50/p99, error ratio, queue vs compute,
//! in flight vs limit, sheds, canary weight, shadow agreement, feature
//! freshness, SLO error ratios, cost per hour and per 1M predictions, what
//! the stores hold, process CPU and memory. `$model` selects
//! models or deployments; `$__rate_interval` is Grafana's.

use serde_json::{Value, json};

/// One panel: (title, unit, [(legend, PromQL)]).
pub type Panel = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Every panel.
pub const PANELS: &[Panel] = &[
    (
        "Request rate by version",
        "reqps",
        &[(
            "{{model}} v{{version}}",
            "sum by (model, version) (rate(greenbelt_requests_total{model=~\"$model\"}[$__rate_interval]))",
        )],
    ),
    (
        "Latency p50 / p99",
        "s",
        &[
            (
                "p50 {{model}} v{{version}}",
                "histogram_quantile(0.5, sum by (model, version, le) (rate(greenbelt_request_duration_seconds_bucket{model=~\"$model\"}[$__rate_interval])))",
            ),
            (
                "p99 {{model}} v{{version}}",
                "histogram_quantile(0.99, sum by (model, version, le) (rate(greenbelt_request_duration_seconds_bucket{model=~\"$model\"}[$__rate_interval])))",
            ),
        ],
    ),
    (
        "Error ratio (server errors, timeouts, sheds)",
        "percentunit",
        &[(
            "{{model}} v{{version}}",
            "sum by (model, version) (rate(greenbelt_requests_total{model=~\"$model\",outcome=~\"server_error|timeout|shed\"}[$__rate_interval])) / sum by (model, version) (rate(greenbelt_requests_total{model=~\"$model\"}[$__rate_interval]))",
        )],
    ),
    (
        "Queue vs compute per request",
        "s",
        &[
            (
                "queue {{model}} v{{version}}",
                "sum by (model, version) (rate(greenbelt_queue_duration_seconds_sum{model=~\"$model\"}[$__rate_interval])) / sum by (model, version) (rate(greenbelt_queue_duration_seconds_count{model=~\"$model\"}[$__rate_interval]))",
            ),
            (
                "compute {{model}} v{{version}}",
                "sum by (model, version) (rate(greenbelt_compute_duration_seconds_sum{model=~\"$model\"}[$__rate_interval])) / sum by (model, version) (rate(greenbelt_compute_duration_seconds_count{model=~\"$model\"}[$__rate_interval]))",
            ),
        ],
    ),
    (
        "In flight vs limit",
        "short",
        &[
            (
                "in flight {{instance}}",
                "sum by (instance) (greenbelt_inflight_requests)",
            ),
            (
                "limit {{instance}}",
                "max by (instance) (greenbelt_inflight_limit)",
            ),
        ],
    ),
    (
        "Shed requests by reason",
        "reqps",
        &[(
            "{{reason}}",
            "sum by (reason) (rate(greenbelt_shed_total[$__rate_interval]))",
        )],
    ),
    (
        "Canary weight",
        "percentunit",
        &[(
            "{{deployment}}",
            "max by (deployment) (greenbelt_rollout_canary_weight_ratio{deployment=~\"$model\"})",
        )],
    ),
    (
        "Shadow agreement",
        "percentunit",
        &[(
            "{{deployment}} shadow v{{version}}",
            "sum by (deployment, version) (rate(greenbelt_shadow_rows_total{deployment=~\"$model\",agreement=\"agree\"}[$__rate_interval])) / sum by (deployment, version) (rate(greenbelt_shadow_rows_total{deployment=~\"$model\"}[$__rate_interval]))",
        )],
    ),
    (
        "Feature freshness (age of the newest event)",
        "s",
        &[(
            "{{view}}",
            "max by (view) (greenbelt_feature_view_age_seconds)",
        )],
    ),
    (
        "SLO error ratio, 1h (recording rules of `greenbelt slo rules`)",
        "percentunit",
        &[("{{slo}}", "max by (slo) (greenbelt:slo_error_ratio:rate1h)")],
    ),
    (
        "Cost per hour by model and resource",
        "currencyUSD",
        &[(
            "{{model}} {{resource}}",
            "sum by (model, resource) (rate(greenbelt_cost_dollars_total{model=~\"$model|_.*\"}[$__rate_interval])) * 3600",
        )],
    ),
    (
        "Cost per 1M predictions",
        "currencyUSD",
        &[(
            "{{model}}",
            "sum by (model) (rate(greenbelt_cost_dollars_total{model=~\"$model\"}[$__rate_interval])) / sum by (model) (rate(greenbelt_predictions_total{model=~\"$model\"}[$__rate_interval])) * 1e6",
        )],
    ),
    (
        "Held by the stores",
        "bytes",
        &[(
            "{{store}} {{model}} {{version}}",
            "sum by (store, model, version) (greenbelt_store_bytes)",
        )],
    ),
    (
        "Process CPU and memory",
        "short",
        &[
            (
                "CPU cores used {{instance}}",
                "rate(process_cpu_seconds_total[$__rate_interval])",
            ),
            (
                "resident GiB {{instance}}",
                "process_resident_memory_bytes / 2^30",
            ),
        ],
    ),
];

/// The dashboard JSON (Grafana's dashboard model, schema 39), for a
/// Prometheus data source chosen at import (`${DS_PROMETHEUS}`).
pub fn dashboard() -> Value {
    let panels: Vec<Value> = PANELS
        .iter()
        .enumerate()
        .map(|(i, (title, unit, targets))| {
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": { "type": "prometheus", "uid": "${DS_PROMETHEUS}" },
                "gridPos": { "h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8 },
                "fieldConfig": { "defaults": { "unit": unit }, "overrides": [] },
                "targets": targets.iter().enumerate().map(|(j, (legend, expr))| json!({
                    "refId": char::from(b'A' + j as u8).to_string(),
                    "expr": expr,
                    "legendFormat": legend,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "__inputs": [{
            "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
            "pluginId": "prometheus", "pluginName": "Prometheus",
        }],
        "title": "Greenbelt",
        "uid": "greenbelt-overview",
        "schemaVersion": 39,
        "editable": true,
        "refresh": "10s",
        "time": { "from": "now-1h", "to": "now" },
        "tags": ["greenbelt"],
        "templating": { "list": [{
            "name": "model",
            "label": "model / deployment",
            "type": "query",
            "datasource": { "type": "prometheus", "uid": "${DS_PROMETHEUS}" },
            "query": { "query": "label_values(greenbelt_requests_total, model)", "refId": "model" },
            "includeAll": true,
            "multi": true,
            "allValue": ".+",
            "current": { "text": "All", "value": "$__all" },
            "refresh": 2,
        }]},
        "panels": panels,
    })
}

/// Every panel query with Grafana's variables filled in (`$model` = all,
/// `$__rate_interval` = `interval`), for checking them against Prometheus.
pub fn queries(interval: &str) -> Vec<(String, String)> {
    PANELS
        .iter()
        .flat_map(|(title, _, targets)| {
            targets.iter().map(move |(legend, expr)| {
                (
                    format!("{title}: {legend}"),
                    expr.replace("$__rate_interval", interval)
                        .replace("$model", ".+"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy is what the code generates.
    #[test]
    fn committed_dashboard_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/grafana/greenbelt.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let want = serde_json::to_string_pretty(&dashboard()).unwrap() + "\n";
        assert!(
            committed == want,
            "deploy/grafana/greenbelt.json is stale: regenerate it with `greenbelt slo dashboard --out deploy/grafana/greenbelt.json`"
        );
    }
}
