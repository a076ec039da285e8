//! Native-messaging framing: a u32 length in native byte order, then that
//! many bytes of UTF-8 JSON. The one implementation of it: the browser side
//! (native mode, the relay), the daemon's connections, doctor's handshake
//! and update's daemon requests all read with [`Decoder`] (through
//! [`FrameReader`] or [`BlockingFrameReader`]) and write with
//! [`encode_message`] / [`push_frame`].
//!
//! Reading never trusts the declared length: bytes are buffered as they
//! arrive (at most [`READ_CHUNK`] more than the frame being assembled), a
//! frame over the limit is reported as soon as its header is read and its
//! body then dropped as it arrives (the stream stays in sync), and a stream
//! that ends inside a frame is reported as such. Writing never emits a frame
//! over the browser's 1 MiB host-to-browser limit: a larger message is
//! split into ordered `chunk` frames (see docs/protocol.md) that reassemble
//! to the exact original text.

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame the browser accepts from a host (Chromium and Firefox).
pub const MAX_OUTBOUND: usize = 1 << 20;
/// Largest frame we accept from the browser (Chromium's own limit is 64 MiB).
pub const MAX_INBOUND: usize = 64 << 20;
/// Bytes asked of the stream per read: many small frames arrive in one.
pub const READ_CHUNK: usize = 64 * 1024;

/// What one read from the inbound stream produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A whole frame's payload.
    Frame(Vec<u8>),
    /// A frame whose declared length exceeds the limit, reported as soon as
    /// its header arrived; its body is dropped as it arrives.
    Oversized { declared: u64 },
    /// The stream ended inside a frame (header or body).
    Truncated { declared: Option<u32>, received: usize },
    /// The stream ended cleanly between frames.
    Eof,
}

/// Frames out of a byte stream, with no I/O of its own: feed it what the
/// stream gave ([`Decoder::spare`] + [`Decoder::filled`]), take frames with
/// [`Decoder::next_frame`], and [`Decoder::finish`] at end of stream.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    /// Storage, initialised once as it grows; bytes `pos..end` are unread.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// An oversized frame being dropped: (declared, body bytes still to drop).
    skipping: Option<(u32, u64)>,
}

impl Decoder {
    pub fn new(max: usize) -> Self {
        Self { max, buf: Vec::new(), pos: 0, end: 0, skipping: None }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Room for the next read (at least `READ_CHUNK` bytes).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.pos == self.end {
            (self.pos, self.end) = (0, 0);
        } else if self.pos > 0 && self.end + READ_CHUNK > self.buf.len() {
            // Move the partial frame to the front rather than grow.
            self.buf.copy_within(self.pos..self.end, 0);
            (self.pos, self.end) = (0, self.end - self.pos);
        }
        if self.end + READ_CHUNK > self.buf.len() {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes of the last [`Decoder::spare`] were filled by the stream.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
        self.drop_skipped();
    }

    /// Copies `bytes` in (for callers that already hold them).
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.spare();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.filled(n);
            bytes = &bytes[n..];
        }
    }

    fn drop_skipped(&mut self) {
        if let Some((declared, left)) = self.skipping {
            let drop = ((self.end - self.pos) as u64).min(left);
            self.pos += drop as usize;
            self.skipping = if drop == left { None } else { Some((declared, left - drop)) };
        }
    }

    /// The next complete frame in what was fed, if any.
    pub fn next_frame(&mut self) -> Option<Inbound> {
        if self.skipping.is_some() {
            return None;
        }
        let avail = self.unread();
        if avail.len() < 4 {
            return None;
        }
        let declared = u32::from_ne_bytes(avail[..4].try_into().expect("four bytes"));
        if declared as usize > self.max {
            self.pos += 4;
            self.skipping = Some((declared, u64::from(declared)));
            self.drop_skipped();
            return Some(Inbound::Oversized { declared: u64::from(declared) });
        }
        let end = 4 + declared as usize;
        if avail.len() < end {
            return None;
        }
        let body = avail[4..end].to_vec();
        self.pos += end;
        Some(Inbound::Frame(body))
    }

    /// Whether [`Decoder::next_frame`] would return something now.
    pub fn has_frame(&self) -> bool {
        let avail = self.unread();
        self.skipping.is_none()
            && avail.len() >= 4
            && (u32::from_ne_bytes(avail[..4].try_into().expect("four bytes")) as usize > self.max
                || avail.len() >= 4 + u32::from_ne_bytes(avail[..4].try_into().expect("four bytes")) as usize)
    }

    /// What the end of the stream means here: a clean end between frames,
    /// or a frame cut short.
    pub fn finish(&self) -> Inbound {
        let avail = self.unread();
        match self.skipping {
            Some((declared, left)) => {
                Inbound::Truncated { declared: Some(declared), received: (u64::from(declared) - left) as usize }
            }
            None if avail.is_empty() => Inbound::Eof,
            None if avail.len() < 4 => Inbound::Truncated { declared: None, received: avail.len() },
            None => Inbound::Truncated {
                declared: Some(u32::from_ne_bytes(avail[..4].try_into().expect("four bytes"))),
                received: avail.len() - 4,
            },
        }
    }
}

/// Frames from an async stream.
pub struct FrameReader<R> {
    inner: R,
    decoder: Decoder,
    ended: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self { inner, decoder: Decoder::new(max), ended: false }
    }

    /// The next frame, an oversized or truncated one, or the end. I/O errors
    /// other than end-of-stream are returned. Not cancel-safe.
    pub async fn read_frame(&mut self) -> std::io::Result<Inbound> {
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return Ok(f);
            }
            if self.ended {
                return Ok(Inbound::Eof);
            }
            let n = self.inner.read(self.decoder.spare()).await?;
            self.decoder.filled(n);
            if n == 0 {
                self.ended = true;
                return Ok(self.decoder.finish());
            }
        }
    }

    /// Whether a frame is already buffered (the next `read_frame()` returns
    /// without reading).
    pub fn has_frame(&self) -> bool {
        self.decoder.has_frame()
    }
}

/// Frames from a blocking stream (a dedicated thread's stdin, a child's
/// pipe in a CLI check).
pub struct BlockingFrameReader<R> {
    inner: R,
    decoder: Decoder,
    ended: bool,
}

impl<R: std::io::Read> BlockingFrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self { inner, decoder: Decoder::new(max), ended: false }
    }

    /// As [`FrameReader::read_frame`], blocking.
    pub fn read_frame(&mut self) -> std::io::Result<Inbound> {
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return Ok(f);
            }
            if self.ended {
                return Ok(Inbound::Eof);
            }
            let n = loop {
                match self.inner.read(self.decoder.spare()) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.decoder.filled(n);
            if n == 0 {
                self.ended = true;
                return Ok(self.decoder.finish());
            }
        }
    }
}

/// Appends one frame (header + payload) to `out`. The caller guarantees the
/// payload fits the receiver's limit; messages go through [`encode_message`].
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    out.extend_from_slice(payload);
}

/// Length of `c` once written inside a JSON string by serde_json.
fn json_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Splits `text` into pieces whose JSON-escaped length is at most `budget`
/// bytes, cutting only at char boundaries.
fn split_escaped(text: &str, budget: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let len = json_escaped_len(c);
        if used + len > budget && i > start {
            pieces.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += len;
    }
    if start < text.len() || pieces.is_empty() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// What the chunk frames of a split message carry besides their piece.
pub struct Chunking<'a> {
    /// The fields every chunk repeats so the receiver can route it
    /// (`{"id": ..}` in protocol v1, `{"messageId": ..}` in the legacy
    /// dialect).
    pub tag: &'a Map<String, Value>,
    /// The field that says "this is a chunk": `event` in v1, `type` in the
    /// legacy dialect.
    pub event_key: &'a str,
    /// Set on a final reply's chunks (`"final": true`), so a relay knows the
    /// request is answered without reassembling it.
    pub final_reply: bool,
}

/// Serialises a message into one or more frames of at most `max` bytes,
/// appended to `out`.
pub fn encode_message(out: &mut Vec<u8>, message: &Value, chunking: &Chunking, max: usize) {
    let text = serde_json::to_string(message).expect("a serde_json::Value always serialises");
    if text.len() <= max {
        push_frame(out, text.as_bytes());
        return;
    }
    // Envelope without the data: measure it once, leave generous room for
    // the index/count digits.
    let mut envelope = chunking.tag.clone();
    envelope.insert(chunking.event_key.to_owned(), Value::from("chunk"));
    if chunking.final_reply {
        envelope.insert("final".into(), Value::Bool(true));
    }
    envelope.insert("index".into(), Value::from(0u64));
    envelope.insert("count".into(), Value::from(0u64));
    envelope.insert("data".into(), Value::from(""));
    let overhead = serde_json::to_string(&envelope).map(|s| s.len()).unwrap_or(0) + 48;
    // Ids are bounded (message::MAX_ID_BYTES), so the envelope is small.
    let pieces = split_escaped(&text, max.saturating_sub(overhead).max(1024));
    let count = pieces.len();
    for (index, piece) in pieces.into_iter().enumerate() {
        envelope.insert("index".into(), Value::from(index));
        envelope.insert("count".into(), Value::from(count));
        envelope.insert("data".into(), Value::from(piece));
        let frame = serde_json::to_vec(&envelope).expect("a serde_json::Value always serialises");
        debug_assert!(frame.len() <= max, "chunk frame of {} bytes over {max}", frame.len());
        push_frame(out, &frame);
    }
}

/// Writes already-encoded frames and flushes.
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn decode_all(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
            out.push(bytes[4..4 + len].to_vec());
            bytes = &bytes[4 + len..];
        }
        out
    }

    async fn read_all(input: &[u8], max: usize) -> Vec<Inbound> {
        let mut r = FrameReader::new(input, max);
        let mut out = Vec::new();
        loop {
            let f = r.read_frame().await.unwrap();
            let end = matches!(f, Inbound::Eof | Inbound::Truncated { .. });
            out.push(f);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn reads_frames_then_eof() {
        let mut input = frame(b"{\"a\":1}");
        input.extend(frame(b"[]"));
        assert_eq!(
            read_all(&input, 100).await,
            [Inbound::Frame(b"{\"a\":1}".to_vec()), Inbound::Frame(b"[]".to_vec()), Inbound::Eof]
        );
    }

    #[tokio::test]
    async fn oversized_frame_is_skipped_and_stream_stays_in_sync() {
        let mut input = frame(&[b'x'; 200]);
        input.extend(frame(b"{}"));
        assert_eq!(
            read_all(&input, 100).await,
            [Inbound::Oversized { declared: 200 }, Inbound::Frame(b"{}".to_vec()), Inbound::Eof]
        );
    }

    #[tokio::test]
    async fn oversized_is_reported_before_its_body_arrives() {
        // A client that sent a bad header must not wait for an answer until
        // it has sent the gigabytes it declared.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&(1u32 << 30).to_ne_bytes()).await.unwrap();
        let mut r = FrameReader::new(server, 100);
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), r.read_frame()).await;
        assert_eq!(first.expect("answered at once").unwrap(), Inbound::Oversized { declared: 1 << 30 });
        client.write_all(&[0u8; 500]).await.unwrap();
        drop(client);
        assert_eq!(r.read_frame().await.unwrap(), Inbound::Truncated { declared: Some(1 << 30), received: 500 });
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_reported() {
        assert_eq!(read_all(&[1u8, 0], 100).await, [Inbound::Truncated { declared: None, received: 2 }]);
        let mut body = (50u32).to_ne_bytes().to_vec();
        body.extend_from_slice(b"abc");
        assert_eq!(read_all(&body, 100).await, [Inbound::Truncated { declared: Some(50), received: 3 }]);
        // A huge declared length: over the limit at once, then cut short.
        assert_eq!(
            read_all(&u32::MAX.to_ne_bytes(), 100).await,
            [
                Inbound::Oversized { declared: u64::from(u32::MAX) },
                Inbound::Truncated { declared: Some(u32::MAX), received: 0 }
            ]
        );
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_frames() {
        // Frames of many sizes (one over the limit), fed in pieces of every
        // size from 1 byte up: the decoder must not depend on read sizes.
        let mut input = Vec::new();
        let mut want = Vec::new();
        for len in [0usize, 1, 3, 4, 5, 100, 70_000, 150_000, 3] {
            if len > 100_000 {
                input.extend(frame(&vec![b'o'; len]));
                want.push(Inbound::Oversized { declared: len as u64 });
            } else {
                let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                input.extend(frame(&body));
                want.push(Inbound::Frame(body));
            }
        }
        for piece in [1usize, 2, 3, 7, 4096, READ_CHUNK + 1, input.len()] {
            let mut d = Decoder::new(100_000);
            let mut got = Vec::new();
            for part in input.chunks(piece) {
                d.feed(part);
                while let Some(f) = d.next_frame() {
                    got.push(f);
                }
            }
            assert_eq!(d.finish(), Inbound::Eof, "piece {piece}");
            assert_eq!(got, want, "piece {piece}");
        }
    }

    #[test]
    fn blocking_reader_reads_what_the_async_one_does() {
        let mut input = frame(b"{}");
        input.extend(frame(&[b'x'; 300]));
        input.extend(frame(b"[1]"));
        input.extend_from_slice(&[9, 0]);
        let mut r = BlockingFrameReader::new(&input[..], 100);
        assert_eq!(r.read_frame().unwrap(), Inbound::Frame(b"{}".to_vec()));
        assert_eq!(r.read_frame().unwrap(), Inbound::Oversized { declared: 300 });
        assert_eq!(r.read_frame().unwrap(), Inbound::Frame(b"[1]".to_vec()));
        assert_eq!(r.read_frame().unwrap(), Inbound::Truncated { declared: None, received: 2 });
        assert_eq!(r.read_frame().unwrap(), Inbound::Eof);
    }

    #[test]
    fn small_message_is_one_frame() {
        let mut out = Vec::new();
        let msg = json!({"id": 1, "ok": true});
        encode_message(
            &mut out,
            &msg,
            &Chunking { tag: &Map::new(), event_key: "event", final_reply: true },
            MAX_OUTBOUND,
        );
        let frames = decode_all(&out);
        assert_eq!(frames.len(), 1);
        assert_eq!(serde_json::from_slice::<Value>(&frames[0]).unwrap(), msg);
    }

    #[test]
    fn large_message_chunks_reassemble_exactly_under_worst_case_escaping() {
        // Control characters escape to six bytes each, quotes to two, and
        // multi-byte characters must not be cut.
        let mut s = String::new();
        for i in 0..400_000u32 {
            s.push(match i % 5 {
                0 => '\u{1}',
                1 => '"',
                2 => 'é',
                3 => '😀',
                _ => 'a',
            });
        }
        let msg = json!({"id": "x", "ok": true, "result": {"text": s}});
        let mut tag = Map::new();
        tag.insert("id".into(), json!("x"));
        let mut out = Vec::new();
        let max = 64 * 1024;
        encode_message(&mut out, &msg, &Chunking { tag: &tag, event_key: "event", final_reply: true }, max);
        let frames = decode_all(&out);
        assert!(frames.len() > 1);
        let mut joined = String::new();
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() <= max, "frame {i} is {} bytes", f.len());
            let v: Value = serde_json::from_slice(f).unwrap();
            assert_eq!(v["id"], "x");
            assert_eq!(v["event"], "chunk");
            assert_eq!(v["final"], true);
            assert_eq!(v["index"], i);
            assert_eq!(v["count"], frames.len());
            joined.push_str(v["data"].as_str().unwrap());
        }
        assert_eq!(joined, serde_json::to_string(&msg).unwrap());
    }

    #[test]
    fn split_never_returns_empty_pieces() {
        assert_eq!(split_escaped("", 10), vec![""]);
        assert_eq!(split_escaped("abcdef", 2), vec!["ab", "cd", "ef"]);
        // A char wider than the budget still makes progress.
        assert_eq!(split_escaped("\u{1}\u{1}", 3), vec!["\u{1}", "\u{1}"]);
    }
}
