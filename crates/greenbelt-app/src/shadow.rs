//! Shadow comparisons from a running server (`GET /admin/shadow/{deployment}`).

use std::time::Duration;

use greenbelt_serve::shadow::ShadowReport;

use crate::error::{AppError, Result};

/// The shadow reports of `deployment` on the server at `server` (REST base
/// URL). They carry samples of request inputs, so a server with tokens
/// wants one of role viewer or better.
pub async fn fetch_reports(
    server: &str,
    deployment: &str,
    token: Option<&str>,
) -> Result<Vec<ShadowReport>> {
    let url = format!("{}/admin/shadow/{deployment}", server.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
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
