//! What a relay reads of a reply frame to route it, without building the
//! message: whose it is (the id's key, as [`RequestId::key`] makes it) and
//! whether it ends the request.
//!
//! The daemon writes every frame with serde_json from the id value it
//! parsed, so the raw id text here equals the key of the request's id.

use serde::Deserialize;
use serde_json::value::RawValue;

#[cfg(doc)]
use super::RequestId;

/// What a reply frame is, for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An event of a running request (v1 `event`, legacy `type`).
    Event,
    /// The request's final reply, whole.
    Final,
    /// Piece `index` of `count` of one message; `final_reply` when that
    /// message is the request's final reply.
    Chunk { index: u64, count: u64, final_reply: bool },
}

/// A reply frame's routing facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The request's id as JSON text; None for notices to the connection.
    pub key: Option<String>,
    pub kind: Kind,
    /// The event's name, for notices (frames without an id).
    pub notice: Option<String>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ok: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(rename = "final", default)]
    final_reply: Option<bool>,
}

/// Routing facts of a reply frame (v1 or legacy); None when the frame is
/// not a JSON object.
pub fn reply(bytes: &[u8]) -> Option<Routing> {
    // serde would read a struct from an array too: objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let h: Head = serde_json::from_slice(bytes).ok()?;
    let legacy = h.message_id.is_some();
    let key = if legacy { h.message_id } else { h.id };
    let key = key.map(RawValue::get).filter(|k| *k != "null").map(str::to_owned);
    let tag = if legacy { h.kind } else { h.event.or(h.kind) };
    let kind = if tag.is_some_and(|t| t.get() == "\"chunk\"") && h.index.is_some() && h.count.is_some() {
        Kind::Chunk {
            index: h.index.unwrap_or(0),
            count: h.count.unwrap_or(0),
            final_reply: h.final_reply.unwrap_or(false),
        }
    } else if h.ok.is_some() || h.status.is_some() {
        Kind::Final
    } else {
        Kind::Event
    };
    let notice = match (&key, h.event) {
        (None, Some(e)) => serde_json::from_str::<String>(e.get()).ok(),
        _ => None,
    };
    Some(Routing { key, kind, notice })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{encode_message, Chunking, Decoder, Inbound, MAX_OUTBOUND};
    use crate::protocol::{encode, Dialect, ErrorCode, Outgoing, ProtoError, RequestId};
    use serde_json::{json, Map, Value};

    fn route(v: &Value) -> Routing {
        reply(v.to_string().as_bytes()).expect("an object")
    }

    #[test]
    fn every_message_the_host_writes_routes_to_its_request() {
        let ids = [json!("a\"b\\c\u{1}é"), json!(7), json!(-1.5e300), json!(u64::MAX)];
        let dialects = [Dialect::V1, Dialect::Legacy { action: "generate".into() }];
        for id in ids {
            let rid = RequestId(id);
            for d in &dialects {
                let mut f = Map::new();
                f.insert("text".into(), json!("x"));
                let ev = encode(d, Some(&rid), Outgoing::Event { name: "delta".into(), fields: f });
                let ok = encode(d, Some(&rid), Outgoing::Final(Ok(json!({"text": "y"}))));
                let err = encode(d, Some(&rid), Outgoing::Final(Err(ProtoError::new(ErrorCode::Busy, "b"))));
                for (w, kind) in [(ev, Kind::Event), (ok, Kind::Final), (err, Kind::Final)] {
                    let r = route(&w.message);
                    assert_eq!(r.key.as_deref(), Some(rid.key().as_str()), "{}", w.message);
                    assert_eq!(r.kind, kind, "{}", w.message);
                }
            }
        }
    }

    #[test]
    fn chunks_say_their_place_and_whether_they_end_the_request() {
        let rid = RequestId(json!("r"));
        for (d, out) in [
            (Dialect::V1, Outgoing::Final(Ok(json!({"text": "z".repeat(5000)})))),
            (Dialect::Legacy { action: "generate".into() }, Outgoing::Final(Ok(json!({"text": "z".repeat(5000)})))),
            (
                Dialect::V1,
                Outgoing::Event {
                    name: "delta".into(),
                    fields: Map::from_iter([("t".into(), json!("z".repeat(5000)))]),
                },
            ),
        ] {
            let w = encode(&d, Some(&rid), out);
            let mut bytes = Vec::new();
            let c = Chunking { tag: &w.chunk_tag, event_key: w.event_key, final_reply: w.final_reply };
            encode_message(&mut bytes, &w.message, &c, 2048);
            let mut frames = Vec::new();
            let mut decoder = Decoder::new(MAX_OUTBOUND);
            decoder.feed(&bytes);
            while let Some(Inbound::Frame(f)) = decoder.next_frame() {
                frames.push(reply(&f).unwrap());
            }
            assert!(frames.len() > 2);
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(f.key.as_deref(), Some("\"r\""));
                assert_eq!(
                    f.kind,
                    Kind::Chunk { index: i as u64, count: frames.len() as u64, final_reply: w.final_reply }
                );
            }
        }
    }

    #[test]
    fn notices_have_no_key_and_a_name() {
        let w = encode(&Dialect::V1, None, Outgoing::Event { name: "daemon_retiring".into(), fields: Map::new() });
        let r = route(&w.message);
        assert_eq!((r.key, r.kind, r.notice.as_deref()), (None, Kind::Event, Some("daemon_retiring")));
        assert_eq!(reply(b"[1]"), None);
        assert_eq!(reply(b"nope"), None);
    }
}
