//! The wire: framing, protocol v1 messages, and the TabAgent legacy dialect.
//!
//! Everything here is pure (no I/O beyond the generic frame reader/writer)
//! so the browser-facing relay and the daemon share it.

pub mod frame;
pub mod legacy;
pub mod message;
pub mod route;

pub use message::{parse_request, Dialect, ErrorCode, ProtoError, Rejected, Request, RequestId};

use serde_json::{Map, Value};

/// Something a request handler sends back: events while it runs, then
/// exactly one final reply.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Event { name: String, fields: Map<String, Value> },
    Final(Result<Value, ProtoError>),
}

/// A message ready for the frame writer: the JSON plus what every chunk
/// frame must repeat should it need splitting.
#[derive(Debug, Clone)]
pub struct Wire {
    pub message: Value,
    pub chunk_tag: Map<String, Value>,
    pub event_key: &'static str,
    /// A final reply (its chunks say so, for relays that count finals).
    pub final_reply: bool,
}

impl Wire {
    /// Appends the frames of this message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let chunking =
            frame::Chunking { tag: &self.chunk_tag, event_key: self.event_key, final_reply: self.final_reply };
        frame::encode_message(out, &self.message, &chunking, frame::MAX_OUTBOUND);
    }
}

/// The final reply `error` to a request, in its dialect.
pub fn error_reply(dialect: &Dialect, id: Option<&RequestId>, error: ProtoError) -> Wire {
    encode(dialect, id, Outgoing::Final(Err(error)))
}

/// Turns a handler's output into the message of the request's dialect.
pub fn encode(dialect: &Dialect, id: Option<&RequestId>, out: Outgoing) -> Wire {
    let final_reply = matches!(out, Outgoing::Final(_));
    match dialect {
        Dialect::V1 => {
            let id_value = id.map(|i| i.0.clone()).unwrap_or(Value::Null);
            let mut m = Map::new();
            m.insert("id".into(), id_value.clone());
            match out {
                Outgoing::Event { name, fields } => {
                    m.insert("event".into(), Value::from(name));
                    m.extend(fields);
                }
                Outgoing::Final(Ok(result)) => {
                    m.insert("ok".into(), Value::Bool(true));
                    m.insert("result".into(), result);
                }
                Outgoing::Final(Err(e)) => {
                    m.insert("ok".into(), Value::Bool(false));
                    m.insert("error".into(), e.to_json());
                }
            }
            let mut tag = Map::new();
            tag.insert("id".into(), id_value);
            Wire { message: Value::Object(m), chunk_tag: tag, event_key: "event", final_reply }
        }
        Dialect::Legacy { action } => {
            let mut m = match out {
                Outgoing::Event { name, fields } => legacy::shape_event(&name, &fields),
                Outgoing::Final(Ok(result)) => legacy::shape_result(action, result),
                Outgoing::Final(Err(e)) => legacy::shape_error(action, &e),
            };
            let mut tag = Map::new();
            if let Some(id) = id {
                m.insert("messageId".into(), id.0.clone());
                tag.insert("messageId".into(), id.0.clone());
            }
            Wire { message: Value::Object(m), chunk_tag: tag, event_key: "type", final_reply }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v1_replies_events_and_errors_carry_the_id() {
        let id = RequestId(json!("r1"));
        let w = encode(&Dialect::V1, Some(&id), Outgoing::Final(Ok(json!({"x": 1}))));
        assert_eq!(w.message, json!({"id": "r1", "ok": true, "result": {"x": 1}}));
        let mut f = Map::new();
        f.insert("text".into(), json!("a"));
        let w = encode(&Dialect::V1, Some(&id), Outgoing::Event { name: "delta".into(), fields: f });
        assert_eq!(w.message, json!({"id": "r1", "event": "delta", "text": "a"}));
        let w = encode(&Dialect::V1, Some(&id), Outgoing::Final(Err(ProtoError::new(ErrorCode::Busy, "full"))));
        assert_eq!(w.message, json!({"id": "r1", "ok": false, "error": {"code": "busy", "message": "full"}}));
    }

    #[test]
    fn legacy_messages_echo_message_id() {
        let id = RequestId(json!(42));
        let d = Dialect::Legacy { action: "ping".into() };
        let w = encode(&d, Some(&id), Outgoing::Final(Ok(json!({"version": "1", "pid": 5}))));
        assert_eq!(
            w.message,
            json!({"status": "success", "response": "pong", "version": "1", "pid": 5, "messageId": 42})
        );
        assert_eq!(w.chunk_tag.get("messageId"), Some(&json!(42)));
        let w = encode(&d, None, Outgoing::Final(Err(ProtoError::new(ErrorCode::Internal, "x"))));
        assert_eq!(w.message, json!({"status": "error", "message": "x", "code": "internal"}));
    }
}
