//! A fake browser: starts the real host binary the way Chromium or Firefox
//! does, talks native messaging to it over pipes, and checks every byte the
//! host writes to stdout is a well-formed frame.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The browser's limit on one host-to-browser frame.
pub const MAX_OUTBOUND: usize = 1 << 20;

/// One frame the host wrote, as bytes (parsing is the test's business).
#[derive(Debug)]
pub enum Output {
    Frame(Vec<u8>),
    /// stdout ended; `leftover` bytes were not a whole frame.
    Closed {
        leftover: usize,
    },
}

/// A message after chunk reassembly, with how many frames carried it.
#[derive(Debug, Clone)]
pub struct Message {
    pub value: Value,
    pub frames: usize,
    pub largest_frame: usize,
}

pub struct FakeBrowser {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Output>,
    reader: Option<JoinHandle<()>>,
    /// Reassembled messages read but not yet asked for.
    pending: VecDeque<Message>,
    /// Chunks of the message being reassembled.
    partial: Vec<String>,
    partial_frames: usize,
    partial_largest: usize,
    _home: Option<tempfile::TempDir>,
    home: std::path::PathBuf,
}

/// Launch arguments as each browser family passes them.
/// Flags for a real headless Chromium on a machine without internet: no
/// sandbox (root in CI), no GPU, and none of the background connections
/// a closed network refuses by the dozen.
pub const CHROMIUM_HEADLESS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

pub fn chromium_args(extension_id: &str) -> Vec<String> {
    vec![format!("chrome-extension://{extension_id}/")]
}

pub fn firefox_args(manifest: &str, extension_id: &str) -> Vec<String> {
    vec![manifest.to_owned(), extension_id.to_owned()]
}

pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_ne_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn reader_loop(mut stdout: impl Read, tx: mpsc::Sender<Output>) {
    let mut header = [0u8; 4];
    loop {
        let mut got = 0;
        while got < 4 {
            match stdout.read(&mut header[got..]) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Output::Closed { leftover: got });
                    return;
                }
                Ok(n) => got += n,
            }
        }
        let len = u32::from_ne_bytes(header) as usize;
        let mut body = vec![0u8; len.min(64 << 20)];
        if len > body.len() || stdout.read_exact(&mut body).is_err() {
            let _ = tx.send(Output::Closed { leftover: 4 + len });
            return;
        }
        if tx.send(Output::Frame(body)).is_err() {
            return;
        }
    }
}

impl FakeBrowser {
    /// Starts `bin` with `args`, its folders in a fresh temp home.
    pub fn spawn(bin: &Path, args: &[String]) -> Self {
        Self::spawn_with_env(bin, args, &[])
    }

    /// Same, with extra environment variables.
    pub fn spawn_with_env(bin: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        Self::spawn_in_home(bin, args, env, tempfile::tempdir().expect("temp home"))
    }

    /// Same, in a home the test prepared (installed binaries, config).
    pub fn spawn_in_home(bin: &Path, args: &[String], env: &[(&str, &str)], home: tempfile::TempDir) -> Self {
        let mut b = Self::spawn_shared(bin, args, env, home.path());
        b._home = Some(home);
        b
    }

    /// Same, in a home another browser may share (the caller keeps it alive).
    pub fn spawn_shared(bin: &Path, args: &[String], env: &[(&str, &str)], home: &Path) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            // In-process unless the test asks for the daemon: each test's
            // host is its own, and none leaves a daemon behind.
            .env("BITNET_HOST_DAEMON", "0")
            .env_remove("BITNET_HOST_LOG")
            .env_remove("BITNET_HOST_HARDWARE")
            // After the removals: a test's recorded report must reach the
            // host (it did not, until selection began to depend on the CPU
            // family and the tests saw this machine's).
            .envs(env.iter().copied())
            .env("BITNET_HOST_HOME", home)
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || reader_loop(stdout, tx));
        Self {
            stdin: child.stdin.take(),
            child,
            rx,
            reader: Some(reader),
            pending: VecDeque::new(),
            partial: Vec::new(),
            partial_frames: 0,
            partial_largest: 0,
            _home: None,
            home: home.to_path_buf(),
        }
    }

    /// The host's folders root (BITNET_HOST_HOME).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// SIGKILL the host, as Chromium does 2 s after closing stdin.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(bytes).expect("write to host");
        stdin.flush().expect("flush to host");
    }

    pub fn send(&mut self, message: &Value) {
        self.send_raw(&encode_frame(message.to_string().as_bytes()));
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next frame's raw bytes, or None on timeout or end of output.
    pub fn recv_frame(&mut self, timeout: Duration) -> Option<Output> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next whole message (chunks reassembled). Panics on timeout, on a
    /// frame over the browser's limit, and on bytes that are not a frame of
    /// JSON: anything else on stdout is a bug.
    pub fn recv_message(&mut self, timeout: Duration) -> Message {
        if let Some(m) = self.pending.pop_front() {
            return m;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let bytes = match self.rx.recv_timeout(left) {
                Ok(Output::Frame(b)) => b,
                Ok(Output::Closed { leftover }) => panic!("host closed stdout ({leftover} stray bytes)"),
                Err(_) => panic!("no message from the host within {timeout:?}"),
            };
            if let Some(m) = self.absorb(&bytes) {
                return m;
            }
        }
    }

    /// One frame: the message it completes, if any (a chunk may not).
    fn absorb(&mut self, bytes: &[u8]) -> Option<Message> {
        assert!(bytes.len() <= MAX_OUTBOUND, "frame of {} bytes is over the browser's limit", bytes.len());
        let value: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!("host wrote a frame that is not JSON ({e}): {:?}", String::from_utf8_lossy(bytes))
        });
        let is_chunk = value.get("event").or_else(|| value.get("type")).and_then(Value::as_str) == Some("chunk");
        if !is_chunk {
            assert!(self.partial.is_empty(), "a frame landed between the chunks of another message: {value}");
            return Some(Message { value, frames: 1, largest_frame: bytes.len() });
        }
        let index = value["index"].as_u64().expect("chunk index") as usize;
        let count = value["count"].as_u64().expect("chunk count") as usize;
        assert_eq!(index, self.partial.len(), "chunks arrive in order");
        self.partial.push(value["data"].as_str().expect("chunk data").to_owned());
        self.partial_frames += 1;
        self.partial_largest = self.partial_largest.max(bytes.len());
        if self.partial.len() < count {
            return None;
        }
        let text: String = self.partial.drain(..).collect();
        let value = serde_json::from_str(&text).expect("reassembled chunks are JSON");
        let m = Message { value, frames: self.partial_frames, largest_frame: self.partial_largest };
        self.partial_frames = 0;
        self.partial_largest = 0;
        Some(m)
    }

    pub fn recv(&mut self, timeout: Duration) -> Value {
        self.recv_message(timeout).value
    }

    /// Collects the events and the final reply of request `id` (v1: `id`;
    /// legacy: `messageId`), keeping other requests' messages for later.
    pub fn collect(&mut self, id_key: &str, id: &Value, timeout: Duration) -> (Vec<Value>, Message) {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        let mut others = VecDeque::new();
        // Look at what is already pending first.
        let mut pending: VecDeque<Message> = std::mem::take(&mut self.pending);
        loop {
            let m = match pending.pop_front() {
                Some(m) => m,
                None => self.recv_message(deadline.saturating_duration_since(Instant::now())),
            };
            if m.value.get(id_key) != Some(id) {
                others.push_back(m);
                continue;
            }
            let is_final =
                if id_key == "id" { m.value.get("event").is_none() } else { m.value.get("status").is_some() };
            if is_final {
                others.extend(pending);
                self.pending = others;
                return (events, m);
            }
            events.push(m.value);
        }
    }

    /// Sends a v1 request and waits for its final reply.
    pub fn request(&mut self, message: &Value) -> Value {
        self.send(message);
        self.collect("id", &message["id"], Duration::from_secs(10)).1.value
    }

    /// Every message that arrives within `period` (chunks reassembled),
    /// after those already read and not yet asked for.
    pub fn messages_for(&mut self, period: Duration) -> Vec<Value> {
        let deadline = Instant::now() + period;
        let mut out: Vec<Value> = self.pending.drain(..).map(|m| m.value).collect();
        while let Ok(Output::Frame(b)) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            out.extend(self.absorb(&b).map(|m| m.value));
        }
        out
    }

    /// Waits for the process to exit; None if it is still running at the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Messages still unread plus what arrives until stdout closes.
    pub fn drain_until_closed(&mut self, timeout: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = self.pending.drain(..).map(|m| m.value).collect();
        let deadline = Instant::now() + timeout;
        while let Ok(r) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            match r {
                Output::Frame(b) => out.push(serde_json::from_slice(&b).expect("frame is JSON")),
                Output::Closed { leftover } => {
                    assert_eq!(leftover, 0, "stray bytes on stdout");
                    break;
                }
            }
        }
        out
    }
}

impl Drop for FakeBrowser {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
