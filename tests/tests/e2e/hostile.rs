//! Hostile files where a request names a model or the models folder holds
//! one: a clear error at once, nothing blocks, nothing balloons.

use std::path::Path;
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use serde_json::json;

use crate::host_bin;
use crate::server::home_with_server;

const T: Duration = Duration::from_secs(20);

fn browser(daemon: bool, home: &Path, report: &str) -> FakeBrowser {
    FakeBrowser::spawn_shared(
        host_bin(),
        &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[
            ("BITNET_HOST_HARDWARE", report),
            ("BITNET_HOST_DAEMON", if daemon { "1" } else { "0" }),
            ("BITNET_DAEMON_IDLE_MS", "2000"),
        ],
        home,
    )
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_fifo_or_a_device_named_as_a_model_is_refused_at_once() {
    for daemon in [false, true] {
        let (home, report) = home_with_server(&[]);
        let fifo = home.path().join("model.gguf");
        mkfifo(&fifo);
        let zero = home.path().join("zero.gguf");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let mut b = browser(daemon, home.path(), &report);
        for (path, kind) in [(&fifo, "a FIFO"), (&zero, "a device"), (&home.path().to_path_buf(), "a folder")] {
            let t = Instant::now();
            let r = b.request(&json!({"id": "l", "type": "load_model", "model": path}));
            assert_eq!(r["error"]["code"], "invalid_request", "daemon {daemon}: {r}");
            let msg = r["error"]["message"].as_str().unwrap();
            assert!(msg.contains(kind), "daemon {daemon}: {msg}");
            assert!(t.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(b.request(&json!({"id": "p", "type": "ping"}))["ok"], true);
    }
}

#[test]
fn a_huge_header_in_the_models_folder_is_refused_without_holding_anyone_up() {
    let (home, report) = home_with_server(&[]);
    let dir = home.path().join("data/models/junk");
    std::fs::create_dir_all(&dir).unwrap();
    // A header of one 16 Mi-element byte array: 16 MiB on disk, 512 MiB as
    // decoded values.
    let n: u64 = 16 << 20;
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(b"junk");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    b.resize(b.len() + n as usize, 0);
    std::fs::write(dir.join("big.gguf"), &b).unwrap();
    // And a FIFO with a model's name, which a scan must not open.
    mkfifo(&dir.join("pipe.gguf"));
    let mut a = browser(false, home.path(), &report);
    a.send(&json!({"id": "m", "type": "models"}));
    let t = Instant::now();
    // Meanwhile the connection answers at once.
    assert_eq!(a.request(&json!({"id": "p", "type": "ping"}))["ok"], true);
    let (_, models) = a.collect("id", &json!("m"), T);
    assert!(t.elapsed() < Duration::from_secs(10));
    let list = models.value["result"]["models"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "the FIFO is not listed: {list:?}");
    let err = list[0]["error"].as_str().unwrap();
    assert!(err.contains("decoded metadata"), "{err}");
}
