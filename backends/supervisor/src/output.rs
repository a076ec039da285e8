//! A server's stdout and stderr: always drained (a child blocks once its pipe
//! fills), kept as the last lines in a bounded ring for `logs` and failure
//! reports, and appended to a log file that rotates once it grows large.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A line longer than this is cut into pieces (a flood without newlines must
/// not grow memory).
pub const MAX_LINE: usize = 4096;
/// The log file is rotated to `<name>.1` past this size.
pub const MAX_LOG_FILE: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines the supervisor itself adds (launch banners, failures).
    Supervisor,
}

#[derive(Debug)]
struct RingInner {
    lines: VecDeque<(Stream, String)>,
    bytes: usize,
    cap_bytes: usize,
    total_lines: u64,
    last_activity: Instant,
    file: Option<LogFile>,
}

/// The last `cap_bytes` of a job's output, across restarts.
#[derive(Debug, Clone)]
pub struct Ring(Arc<Mutex<RingInner>>);

impl Ring {
    pub fn new(cap_bytes: usize, log_file: Option<PathBuf>) -> Self {
        let file = log_file.map(LogFile::new);
        Ring(Arc::new(Mutex::new(RingInner {
            lines: VecDeque::new(),
            bytes: 0,
            cap_bytes,
            total_lines: 0,
            last_activity: Instant::now(),
            file,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RingInner> {
        // A panic while holding this lock cannot leave the ring inconsistent
        // in a way that matters for logs; keep serving.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, stream: Stream, line: String) {
        let mut g = self.lock();
        if let Some(f) = g.file.as_mut() {
            f.write_line(stream, &line);
        }
        g.bytes += line.len();
        g.lines.push_back((stream, line));
        g.total_lines += 1;
        g.last_activity = Instant::now();
        while g.bytes > g.cap_bytes && g.lines.len() > 1 {
            if let Some((_, old)) = g.lines.pop_front() {
                g.bytes -= old.len();
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let g = self.lock();
        g.lines.iter().skip(g.lines.len().saturating_sub(n)).map(|(_, l)| l.clone()).collect()
    }

    /// The last `n` lines with the stream each came from.
    pub fn tail_tagged(&self, n: usize) -> Vec<(Stream, String)> {
        let g = self.lock();
        g.lines.iter().skip(g.lines.len().saturating_sub(n)).cloned().collect()
    }

    /// Up to the last `n` lines among those pushed after the first
    /// `mark` lines (`mark` from [`Ring::total_lines`]), oldest first.
    pub fn tail_since(&self, mark: u64, n: usize) -> Vec<String> {
        let g = self.lock();
        let newer = (g.total_lines.saturating_sub(mark) as usize).min(g.lines.len());
        let take = newer.min(n);
        g.lines.iter().skip(g.lines.len() - take).map(|(_, l)| l.clone()).collect()
    }

    pub fn total_lines(&self) -> u64 {
        self.lock().total_lines
    }

    pub fn last_activity(&self) -> Instant {
        self.lock().last_activity
    }

    pub fn log_path(&self) -> Option<PathBuf> {
        self.lock().file.as_ref().map(|f| f.path.clone())
    }
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    written: u64,
}

impl LogFile {
    fn new(path: PathBuf) -> Self {
        Self { path, file: None, written: 0 }
    }

    fn open(path: &Path) -> Option<(std::fs::File, u64)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok()?;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path).ok()?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        Some((f, len))
    }

    fn write_line(&mut self, stream: Stream, line: &str) {
        if self.file.is_none() {
            match Self::open(&self.path) {
                Some((f, len)) => {
                    self.file = Some(f);
                    self.written = len;
                }
                // Logging must never stop the drain; the ring still has it.
                None => return,
            }
        }
        if self.written > MAX_LOG_FILE {
            self.file = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            let Some((f, len)) = Self::open(&self.path) else { return };
            self.file = Some(f);
            self.written = len;
        }
        let tag = match stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
            Stream::Supervisor => "sup",
        };
        if let Some(f) = self.file.as_mut() {
            let n = line.len() as u64 + 5;
            if writeln!(f, "{tag} {line}").is_ok() {
                self.written += n;
            }
        }
    }
}

/// Read `pipe` to its end, pushing each line into `ring`. Invalid UTF-8 is
/// replaced, never fatal.
pub async fn drain<R: AsyncRead + Unpin>(mut pipe: R, stream: Stream, ring: Ring) {
    let mut buf = vec![0u8; 16 << 10];
    let mut line: Vec<u8> = Vec::new();
    let flush = |line: &mut Vec<u8>| {
        let end = if line.last() == Some(&b'\r') { line.len() - 1 } else { line.len() };
        ring.push(stream, String::from_utf8_lossy(&line[..end]).into_owned());
        line.clear();
    };
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.last() {
                Some(b'\n') => (&chunk[..chunk.len() - 1], true),
                _ => (chunk, false),
            };
            let mut body = body;
            while line.len() + body.len() > MAX_LINE {
                let take = MAX_LINE - line.len();
                line.extend_from_slice(&body[..take]);
                flush(&mut line);
                body = &body[take..];
            }
            line.extend_from_slice(body);
            if ends {
                flush(&mut line);
            }
        }
    }
    if !line.is_empty() {
        flush(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_byte_budget() {
        let r = Ring::new(100, None);
        for i in 0..50 {
            r.push(Stream::Stderr, format!("line {i:04}"));
        }
        let t = r.tail(1000);
        assert_eq!(t.len(), 100 / "line 0049".len());
        assert_eq!(t.last().unwrap(), "line 0049");
        assert_eq!(r.tail(2), vec!["line 0048".to_string(), "line 0049".to_string()]);
        assert_eq!(r.total_lines(), 50);
        assert_eq!(r.tail_since(48, 10), vec!["line 0048".to_string(), "line 0049".to_string()]);
        assert_eq!(r.tail_since(49, 10), vec!["line 0049".to_string()]);
        assert!(r.tail_since(50, 10).is_empty());
        assert_eq!(r.tail_since(0, 1000).len(), t.len());
    }

    #[tokio::test]
    async fn drain_splits_lines_cuts_long_ones_and_writes_the_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        let r = Ring::new(1 << 20, Some(log.clone()));
        let mut input = b"first\r\nsecond\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE * 2 + 10));
        input.extend(b"\n\xffbad utf8\nno newline at end");
        drain(&input[..], Stream::Stdout, r.clone()).await;
        let t = r.tail(100);
        assert_eq!(t[0], "first");
        assert_eq!(t[1], "second");
        assert_eq!(t[2].len(), MAX_LINE);
        assert_eq!(t[3].len(), MAX_LINE);
        assert_eq!(t[4].len(), 10);
        assert_eq!(t[5], "\u{FFFD}bad utf8");
        assert_eq!(t[6], "no newline at end");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("out first\nout second\n"), "{text:.40}");
        assert_eq!(text.lines().count(), 7);
    }
}
