//! Shadow comparisons from a running server (`GET /admin/shadow/{deployment}`).

use std::time::Duration;

use greenbelt_serve::shadow::ShadowReport;

use crate::error::{AppError, Result};

/// The shadow reports of `deployment` on the server at `server` (REST base URL).
pub async fn fetch_reports(server: &str, deployment: &str) -> Result<Vec<ShadowReport>> {
    let url = format!("{}/admin/shadow/{deployment}", server.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| AppError::Remote(format!("asking {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(AppError::Remote(format!(
            "{url}: HTTP {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        )));
    }
    resp.json()
        .await
        .map_err(|e| AppError::Remote(format!("reading the shadow report from {url}: {e}")))
}
