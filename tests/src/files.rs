//! Serving a file the way download servers do, for tests of resumable
//! downloads: a `Range: bytes=N-` request gets 206 and the rest; a full
//! request can be cut half-way (the length promised, half sent, then the
//! connection breaks).

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// The start of a `Range: bytes=N-` request, if any.
pub fn range_start(h: &HeaderMap) -> Option<usize> {
    h.get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse::<usize>().ok())
}

/// `bytes` as a response to a request with headers `h` (206 from the
/// range start when there is one), with `extra` headers; `cut` sends half
/// and then fails the connection.
pub fn respond(bytes: &[u8], h: &HeaderMap, cut: bool, extra: &[(&'static str, String)]) -> Response {
    let mut b = Response::builder();
    for (k, v) in extra {
        b = b.header(*k, v);
    }
    if let Some(st) = range_start(h) {
        let body = bytes.get(st..).unwrap_or_default().to_vec();
        return b.status(StatusCode::PARTIAL_CONTENT).body(axum::body::Body::from(body)).unwrap().into_response();
    }
    if !cut {
        return b.body(axum::body::Body::from(bytes.to_vec())).unwrap().into_response();
    }
    let half = bytes[..bytes.len() / 2].to_vec();
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let half = half.clone();
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(half), 1)),
                1 => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    Some((Err(std::io::Error::other("cut")), 2))
                }
                _ => None,
            }
        }
    });
    b.header("content-length", bytes.len()).body(axum::body::Body::from_stream(stream)).unwrap().into_response()
}
