//! Native-messaging framing: a u32 length in native byte order, then that
//! many bytes of UTF-8 JSON.
//!
//! Reading never trusts the declared length: a frame over the limit is
//! skipped in small pieces without allocating its size, and a frame cut short
//! by end-of-stream is reported as such. Writing never emits a frame over the
//! browser's 1 MiB host-to-browser limit: a larger message is split into
//! ordered `chunk` frames (see docs/protocol.md) that reassemble to the exact
//! original text.

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame the browser accepts from a host (Chromium and Firefox).
pub const MAX_OUTBOUND: usize = 1 << 20;
/// Largest frame we accept from the browser (Chromium's own limit is 64 MiB).
pub const MAX_INBOUND: usize = 64 << 20;

/// What one read from the inbound stream produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A whole frame's payload.
    Frame(Vec<u8>),
    /// A frame whose declared length exceeds the limit. Its bytes were read
    /// and dropped so the stream stays in sync.
    Oversized { declared: u64 },
    /// The stream ended inside a frame (header or body).
    Truncated { declared: Option<u32>, received: usize },
    /// The stream ended cleanly between frames.
    Eof,
}

/// Reads the next frame. I/O errors other than end-of-stream are returned.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Inbound> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return Ok(if got == 0 { Inbound::Eof } else { Inbound::Truncated { declared: None, received: got } });
        }
        got += n;
    }
    let declared = u32::from_ne_bytes(header);
    if declared as usize > max {
        // Skip the body without holding it: the stream stays usable for the
        // frames behind it.
        let skipped = tokio::io::copy(&mut r.take(u64::from(declared)), &mut tokio::io::sink()).await?;
        if skipped < u64::from(declared) {
            return Ok(Inbound::Truncated { declared: Some(declared), received: skipped as usize });
        }
        return Ok(Inbound::Oversized { declared: u64::from(declared) });
    }
    // Grow with the bytes that actually arrive rather than trusting the
    // header with an up-front allocation.
    let mut body = Vec::with_capacity((declared as usize).min(64 * 1024));
    r.take(u64::from(declared)).read_to_end(&mut body).await?;
    if body.len() < declared as usize {
        return Ok(Inbound::Truncated { declared: Some(declared), received: body.len() });
    }
    Ok(Inbound::Frame(body))
}

/// Appends one frame (header + payload) to `out`. The caller guarantees the
/// payload fits; see [`encode_message`].
fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
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

/// Serialises a message into one or more frames, appended to `out`.
///
/// `tag` holds the fields every chunk frame repeats so the receiver can route
/// it (`{"id": ..}` in protocol v1, `{"messageId": ..}` in the legacy
/// dialect); `event_key` is the name of the field that says "this is a chunk"
/// (`event` in v1, `type` in the legacy dialect).
pub fn encode_message(out: &mut Vec<u8>, message: &Value, tag: &Map<String, Value>, event_key: &str, max: usize) {
    let text = serde_json::to_string(message).expect("a serde_json::Value always serialises");
    if text.len() <= max {
        push_frame(out, text.as_bytes());
        return;
    }
    // Envelope without the data: measure it once, leave generous room for
    // the index/count digits.
    let mut envelope = tag.clone();
    envelope.insert(event_key.to_owned(), Value::from("chunk"));
    envelope.insert("index".into(), Value::from(0u64));
    envelope.insert("count".into(), Value::from(0u64));
    envelope.insert("data".into(), Value::from(""));
    let overhead = serde_json::to_string(&envelope).map(|s| s.len()).unwrap_or(0) + 48;
    let pieces = split_escaped(&text, max - overhead);
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

    #[tokio::test]
    async fn reads_frames_then_eof() {
        let mut input = frame(b"{\"a\":1}");
        input.extend(frame(b"[]"));
        let mut r = &input[..];
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), Inbound::Frame(b"{\"a\":1}".to_vec()));
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), Inbound::Frame(b"[]".to_vec()));
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), Inbound::Eof);
    }

    #[tokio::test]
    async fn oversized_frame_is_skipped_and_stream_stays_in_sync() {
        let mut input = frame(&[b'x'; 200]);
        input.extend(frame(b"{}"));
        let mut r = &input[..];
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), Inbound::Oversized { declared: 200 });
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), Inbound::Frame(b"{}".to_vec()));
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_reported() {
        let mut r = &[1u8, 0][..];
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), Inbound::Truncated { declared: None, received: 2 });
        let mut body = (50u32).to_ne_bytes().to_vec();
        body.extend_from_slice(b"abc");
        let mut r = &body[..];
        assert_eq!(read_frame(&mut r, 100).await.unwrap(), Inbound::Truncated { declared: Some(50), received: 3 });
        // A huge declared length that is over the limit and cut short.
        let mut r = &u32::MAX.to_ne_bytes()[..];
        assert_eq!(
            read_frame(&mut r, 100).await.unwrap(),
            Inbound::Truncated { declared: Some(u32::MAX), received: 0 }
        );
    }

    #[test]
    fn small_message_is_one_frame() {
        let mut out = Vec::new();
        let msg = json!({"id": 1, "ok": true});
        encode_message(&mut out, &msg, &Map::new(), "event", MAX_OUTBOUND);
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
        encode_message(&mut out, &msg, &tag, "event", max);
        let frames = decode_all(&out);
        assert!(frames.len() > 1);
        let mut joined = String::new();
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() <= max, "frame {i} is {} bytes", f.len());
            let v: Value = serde_json::from_slice(f).unwrap();
            assert_eq!(v["id"], "x");
            assert_eq!(v["event"], "chunk");
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
