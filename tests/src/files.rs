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

/// The files a model server on 127.0.0.1 serves in Hugging Face's layout
/// (`/{owner}/{repo}/resolve/main/{file}`, any owner and repo).
#[derive(Default)]
pub struct ModelFiles {
    /// file name -> (bytes, the sha256 it advertises in X-Linked-Etag)
    pub files: std::sync::Mutex<std::collections::HashMap<String, (Vec<u8>, String)>>,
    /// Cut the next full download half-way.
    pub cut_once: std::sync::atomic::AtomicBool,
    /// Range requests seen (resumed downloads).
    pub ranges_seen: std::sync::atomic::AtomicUsize,
}

impl ModelFiles {
    /// Serve `bytes` as `name`, advertising their real sha256.
    pub fn add(&self, name: &str, bytes: Vec<u8>) {
        use sha2::Digest;
        let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
        self.files.lock().unwrap().insert(name.into(), (bytes, sha));
    }
}

async fn serve_model_file(
    axum::extract::State(s): axum::extract::State<std::sync::Arc<ModelFiles>>,
    axum::extract::Path((_o, _r, name)): axum::extract::Path<(String, String, String)>,
    h: HeaderMap,
) -> Response {
    use std::sync::atomic::Ordering;
    let Some((bytes, sha)) = s.files.lock().unwrap().get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if range_start(&h).is_some() {
        s.ranges_seen.fetch_add(1, Ordering::SeqCst);
    }
    let cut = range_start(&h).is_none() && s.cut_once.swap(false, Ordering::SeqCst);
    respond(&bytes, &h, cut, &[("x-linked-etag", format!("\"{sha}\""))])
}

/// Starts the model server on a thread of its own; its base URL (what
/// BITNET_MODELS_BASE takes).
pub fn start_model_server(files: std::sync::Arc<ModelFiles>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new()
                .route("/{o}/{r}/resolve/main/{f}", axum::routing::get(serve_model_file))
                .with_state(files);
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{addr}")
}
