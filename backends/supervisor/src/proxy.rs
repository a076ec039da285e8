//! Requests to a running server (bundled, built-in or remote) over its
//! OpenAI-compatible / llama-server HTTP API: pooled keep-alive connections,
//! the per-launch API key, SSE parsed incrementally, an idle timeout per
//! stream, and HTTP errors turned into typed errors that keep the server's
//! message. Dropping a stream drops the connection, which is how llama-server
//! learns to stop generating.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::Value;

use crate::endpoint::{error_message, Endpoint};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProxyError {
    #[error("the model server is not reachable: {0}")]
    Unreachable(String),
    #[error("the model server went away mid-answer: {0}")]
    Disconnected(String),
    #[error("the model server sent nothing for {0:.1} s")]
    Stalled(f64),
    #[error("the model server answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("the model server sent an unreadable answer: {0}")]
    BadResponse(String),
}

/// HTTP clients: one for loopback servers (never through a proxy), one for
/// remote ones (system proxy settings apply).
#[derive(Debug, Clone)]
pub struct Proxy {
    local: reqwest::Client,
    remote: reqwest::Client,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
}

impl Proxy {
    pub fn new() -> Self {
        Self { local: builder().no_proxy().build().unwrap_or_default(), remote: builder().build().unwrap_or_default() }
    }

    fn request(&self, ep: &Endpoint, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let client = if ep.pid.is_some() { &self.local } else { &self.remote };
        let mut r = client.request(method, format!("{}{}", ep.url, path));
        if let Some(k) = &ep.api_key {
            r = r.bearer_auth(k);
        }
        r
    }

    /// GET `path`, JSON back.
    pub async fn get_json(&self, ep: &Endpoint, path: &str, timeout: Duration) -> Result<Value, ProxyError> {
        let resp = send(self.request(ep, reqwest::Method::GET, path).timeout(timeout)).await?;
        read_json(resp, timeout).await
    }

    /// POST JSON, JSON back (non-streaming calls). `timeout` bounds the
    /// whole exchange.
    pub async fn post_json(
        &self,
        ep: &Endpoint,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, ProxyError> {
        let resp = send(self.request(ep, reqwest::Method::POST, path).json(body).timeout(timeout)).await?;
        read_json(resp, timeout).await
    }

    /// POST JSON, an SSE stream back. `idle` bounds the wait for the
    /// headers and for each chunk after them.
    pub async fn post_sse(
        &self,
        ep: &Endpoint,
        path: &str,
        body: &Value,
        idle: Duration,
    ) -> Result<SseStream, ProxyError> {
        let req = self.request(ep, reqwest::Method::POST, path).header("accept", "text/event-stream").json(body);
        let resp = match tokio::time::timeout(idle, send(req)).await {
            Ok(r) => r?,
            Err(_) => return Err(ProxyError::Stalled(idle.as_secs_f64())),
        };
        Ok(SseStream { resp, parser: SseParser::default(), idle, done: false })
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, ProxyError> {
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            ProxyError::Stalled(0.0)
        } else {
            ProxyError::Unreachable(root_cause(&e))
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    Err(ProxyError::Http { status: status.as_u16(), message: error_message(&text) })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn read_json(resp: reqwest::Response, timeout: Duration) -> Result<Value, ProxyError> {
    let bytes = match tokio::time::timeout(timeout, resp.bytes()).await {
        Err(_) => return Err(ProxyError::Stalled(timeout.as_secs_f64())),
        Ok(Err(e)) => return Err(ProxyError::Disconnected(root_cause(&e))),
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice(&bytes).map_err(|e| ProxyError::BadResponse(e.to_string()))
}

/// An SSE response being read.
pub struct SseStream {
    resp: reqwest::Response,
    parser: SseParser,
    idle: Duration,
    done: bool,
}

impl SseStream {
    /// The next `data:` payload as JSON; None after `[DONE]`, or after
    /// llama-server's native last chunk (`"stop": true`: servers from before
    /// its OpenAI-shaped /v1/completions end that stream there, without
    /// `[DONE]`). A stream that ends before either is
    /// [`ProxyError::Disconnected`].
    pub async fn next(&mut self) -> Option<Result<Value, ProxyError>> {
        loop {
            if let Some(data) = self.parser.pop() {
                if data == "[DONE]" {
                    self.done = true;
                    return None;
                }
                let e = event(&data);
                if matches!(&e, Ok(v) if v["stop"] == true) {
                    self.done = true;
                }
                return Some(e);
            }
            if self.done {
                return None;
            }
            match tokio::time::timeout(self.idle, self.resp.chunk()).await {
                Err(_) => {
                    self.done = true;
                    return Some(Err(ProxyError::Stalled(self.idle.as_secs_f64())));
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Some(Err(ProxyError::Disconnected(root_cause(&e))));
                }
                Ok(Ok(None)) => {
                    self.done = true;
                    self.parser.finish();
                    if let Some(data) = self.parser.pop() {
                        if data != "[DONE]" {
                            return Some(event(&data));
                        }
                        return None;
                    }
                    return Some(Err(ProxyError::Disconnected("the stream ended before [DONE]".into())));
                }
                Ok(Ok(Some(bytes))) => self.parser.feed(&bytes),
            }
        }
    }
}

/// One SSE `data` payload: its JSON, or the error a server sends as an
/// event (`{"error": {code, message}}`) when it fails mid-stream.
fn event(data: &str) -> Result<Value, ProxyError> {
    let v: Value = serde_json::from_str(data).map_err(|e| ProxyError::BadResponse(format!("{e}: {data:.200}")))?;
    match v.get("error") {
        Some(e) if !e.is_null() => {
            let status = e["code"].as_u64().and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400).unwrap_or(500);
            Err(ProxyError::Http { status, message: error_message(data) })
        }
        _ => Ok(v),
    }
}

/// Incremental SSE parser (the `data` field only, which is all the OpenAI
/// stream uses): bytes in any cut, events out once their blank line arrives.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    ready: VecDeque<String>,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line);
            } else {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                self.ready.push_back(d);
            }
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let v = String::from_utf8_lossy(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&v);
                }
                None => self.data = Some(v.into_owned()),
            }
        }
    }

    /// End of input: a last event without its blank line still counts.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line);
        }
        if let Some(d) = self.data.take() {
            self.ready.push_back(d);
        }
    }

    pub fn pop(&mut self) -> Option<String> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser) -> Vec<String> {
        std::iter::from_fn(|| p.pop()).collect()
    }

    #[test]
    fn sse_events_come_out_whole_however_the_bytes_are_cut() {
        let text =
            b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":\r\ndata: 2}\r\n\r\nevent: x\nid: 3\ndata: [DONE]\n\n";
        for cut in 1..text.len() {
            let mut p = SseParser::default();
            p.feed(&text[..cut]);
            let mut got = all(&mut p);
            p.feed(&text[cut..]);
            got.extend(all(&mut p));
            assert_eq!(got, vec!["{\"a\":1}", "{\"b\":\n2}", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_kept_at_the_end() {
        let mut p = SseParser::default();
        p.feed(b"data: x\n\ndata: tail");
        assert_eq!(all(&mut p), vec!["x"]);
        p.finish();
        assert_eq!(all(&mut p), vec!["tail"]);
    }

    #[test]
    fn error_messages_are_taken_from_openai_and_llama_server_bodies() {
        assert_eq!(error_message(r#"{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}"#), "bad");
        assert_eq!(error_message(r#"{"error":"flat"}"#), "flat");
        assert_eq!(error_message("plain text\n"), "plain text");
    }

    /// A one-shot HTTP server on 127.0.0.1 that answers any request with
    /// `body` as an event stream, then closes the connection.
    async fn sse_server(body: &'static str) -> Endpoint {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            // The request's head and its short JSON body.
            while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body.as_bytes()).await.unwrap();
        });
        Endpoint { candidate: "t".into(), url, api_key: None, pid: Some(1) }
    }

    #[tokio::test]
    async fn a_native_stream_ends_at_its_stop_chunk_and_a_cut_one_is_a_disconnect() {
        let proxy = Proxy::new();
        let body = serde_json::json!({"prompt": "x"});
        let idle = Duration::from_secs(5);
        // llama-server's native /v1/completions stream (2024 builds): no [DONE].
        let ep = sse_server("data: {\"content\":\"v\",\"stop\":false}\n\ndata: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":1}\n\n").await;
        let mut s = proxy.post_sse(&ep, "/v1/completions", &body, idle).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap()["content"], "v");
        assert_eq!(s.next().await.unwrap().unwrap()["stop"], true);
        assert!(s.next().await.is_none());
        // Cut after a chunk that is not the last: the server went away.
        let ep = sse_server("data: {\"content\":\"v\",\"stop\":false}\n\n").await;
        let mut s = proxy.post_sse(&ep, "/v1/completions", &body, idle).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap()["content"], "v");
        assert!(matches!(s.next().await, Some(Err(ProxyError::Disconnected(_)))));
        // The OpenAI shape still ends at [DONE].
        let ep = sse_server("data: {\"choices\":[{\"text\":\"v\"}]}\n\ndata: [DONE]\n\n").await;
        let mut s = proxy.post_sse(&ep, "/v1/completions", &body, idle).await.unwrap();
        assert!(s.next().await.unwrap().is_ok());
        assert!(s.next().await.is_none());
    }
}
