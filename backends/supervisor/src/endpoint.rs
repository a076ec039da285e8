//! A running server as its clients see it: where it answers, and what its
//! error bodies say. Shared by the job (which publishes it), the health
//! checks and the proxy, none of which depends on another for it.

use serde_json::Value;

/// Where to send requests once the job is ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub candidate: String,
    /// Base URL without `/v1`.
    pub url: String,
    pub api_key: Option<String>,
    pub pid: Option<u32>,
}

/// The message inside an OpenAI / llama-server error body, or the body itself.
pub fn error_message(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let from_json = v.as_ref().and_then(|v| {
        v["error"]["message"].as_str().or(v["error"].as_str()).or(v["message"].as_str()).map(String::from)
    });
    from_json.unwrap_or_else(|| body.chars().take(500).collect::<String>().trim().to_string())
}
