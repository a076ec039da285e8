//! Readiness checks: llama-server's `/health` answers 503 while the model
//! loads and 200 once it serves.

use std::time::Duration;

/// One /health answer, reduced to what the supervisor acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Listening, still loading (503) or some other status.
    Loading,
    /// Not accepting connections (yet).
    Down,
}

/// The HTTP client for health checks: no proxy (a system proxy must never see
/// loopback traffic), short timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

pub async fn check(http: &reqwest::Client, port: u16) -> Health {
    match http.get(format!("http://127.0.0.1:{port}/health")).timeout(Duration::from_secs(1)).send().await {
        Ok(r) if r.status().is_success() => Health::Ok,
        Ok(_) => Health::Loading,
        Err(_) => Health::Down,
    }
}

/// A remote OpenAI-compatible server is usable when `/v1/models` answers 2xx
/// with our key.
pub async fn check_remote(http: &reqwest::Client, base: &str, key: Option<&str>) -> Result<(), (String, Option<u16>)> {
    let mut req = http.get(format!("{base}/v1/models")).timeout(Duration::from_secs(5));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            Err((format!("HTTP {status}: {}", crate::endpoint::error_message(&body)), Some(status.as_u16())))
        }
        Err(e) => Err((e.to_string(), None)),
    }
}
