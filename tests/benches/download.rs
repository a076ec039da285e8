#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! Download throughput from a server on 127.0.0.1: the verified, resumable
//! downloader (`installer::download::fetch`: .part file, sha256 while
//! receiving, fsync, rename) against a plain reqwest copy of the same file
//! into a file, in the same run. Prints MB/s for each and the ratio.
//!
//! cargo bench -p bitnet-host-tests --bench download -- --bench [MB]

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::routing::get;
use bitnet_installer::download::{fetch, Request};
use sha2::{Digest, Sha256};

fn serve(body: Arc<Vec<u8>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().route(
                "/file",
                get(move || {
                    let b = body.clone();
                    async move { axum::body::Bytes::from_owner(ArcBytes(b)) }
                }),
            );
            axum::serve(l, app).await.unwrap();
        });
    });
    base
}

/// Lets the server hand out the same buffer without copying it.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

async fn plain_copy(client: &reqwest::Client, url: &str, dest: &std::path::Path) -> u64 {
    let mut resp = client.get(url).send().await.unwrap();
    let mut f = std::fs::File::create(dest).unwrap();
    let mut n = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        f.write_all(&chunk).unwrap();
        n += chunk.len() as u64;
    }
    f.sync_all().unwrap();
    n
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mb: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(512);
    let mut body = vec![0u8; mb << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in body.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let sha = format!("{:x}", Sha256::digest(&body));
    let len = body.len() as u64;
    let url = format!("{}/file", serve(Arc::new(body)));
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = reqwest::Client::new();
    println!("{mb} MiB from 127.0.0.1, 3 rounds each, best of 3 (MB = 10^6 bytes)");
    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let p = dir.path().join(format!("plain-{round}"));
        let t = Instant::now();
        let n = rt.block_on(plain_copy(&client, &url, &p));
        plain.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        assert_eq!(n, len);
        std::fs::remove_file(&p).unwrap();

        let dest = dir.path().join(format!("ours-{round}"));
        let req = Request { url: url.clone(), dest: dest.clone(), sha256: Some(sha.clone()) };
        let t = Instant::now();
        rt.block_on(fetch(&client, &req, None, &|_| Ok(()), &mut |_, _| {})).unwrap();
        ours.push(len as f64 / t.elapsed().as_secs_f64() / 1e6);
        std::fs::remove_file(&dest).unwrap();
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!("plain reqwest copy to a file     {:>8.0} MB/s  (rounds: {:.0?})", best(&plain), plain);
    println!("download::fetch (sha256, .part)  {:>8.0} MB/s  (rounds: {:.0?})", best(&ours), ours);
    println!("ratio                            {:>8.2}", best(&ours) / best(&plain));
}
