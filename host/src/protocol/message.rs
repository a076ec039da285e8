//! Protocol v1 messages: requests, replies, events and the closed set of
//! error codes. docs/protocol.md is the written contract; keep them in step.

use serde::Serialize;
use serde_json::{Map, Value};

/// Protocol versions this host speaks.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];

/// Every error code a reply can carry. The set is closed: an extension may
/// switch on it exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame declared more than the inbound limit (64 MiB).
    FrameTooLarge,
    /// The stream ended inside a frame.
    TruncatedFrame,
    /// The frame's bytes are not UTF-8.
    InvalidUtf8,
    /// The frame is not JSON.
    InvalidJson,
    /// JSON, but not a request (no object, no id, no type, bad field).
    InvalidRequest,
    /// A request type this host does not know.
    UnknownType,
    /// No protocol version in common.
    UnsupportedVersion,
    /// Known, but the part of the host that serves it is not there (yet, or
    /// on this machine).
    NotAvailable,
    /// The request asks for something the host never does (running commands).
    Forbidden,
    /// The request was cancelled (by `cancel`, `stop_generation` or shutdown).
    Cancelled,
    /// Too many requests queued; try again later.
    Busy,
    /// A deadline passed.
    Timeout,
    /// The named thing (model, request, file) does not exist.
    NotFound,
    /// The backend died while serving the request.
    BackendCrashed,
    /// The backend answered with an error.
    BackendError,
    /// The backend or remote refused our credentials.
    Unauthorized,
    /// A bug or an unexpected condition in the host.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrameTooLarge => "frame_too_large",
            Self::TruncatedFrame => "truncated_frame",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::UnknownType => "unknown_type",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotAvailable => "not_available",
            Self::Forbidden => "forbidden",
            Self::Cancelled => "cancelled",
            Self::Busy => "busy",
            Self::Timeout => "timeout",
            Self::NotFound => "not_found",
            Self::BackendCrashed => "backend_crashed",
            Self::BackendError => "backend_error",
            Self::Unauthorized => "unauthorized",
            Self::Internal => "internal",
        }
    }
}

/// A failed request, as the extension sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut e = Map::new();
        e.insert("code".into(), Value::from(self.code.as_str()));
        e.insert("message".into(), Value::from(self.message.clone()));
        if let Some(d) = &self.details {
            e.insert("details".into(), d.clone());
        }
        Value::Object(e)
    }
}

/// The errors every transport sends alike (native mode, the relay, the
/// daemon): one constructor each, so the words and details match.
impl ProtoError {
    pub fn frame_too_large(declared: u64, limit: usize) -> Self {
        Self::new(
            ErrorCode::FrameTooLarge,
            format!("frame of {declared} bytes exceeds the {limit}-byte limit; it was skipped"),
        )
        .with_details(serde_json::json!({"declared": declared, "limit": limit}))
    }

    pub fn truncated_frame(declared: Option<u32>, received: usize) -> Self {
        Self::new(ErrorCode::TruncatedFrame, "the stream ended inside a frame")
            .with_details(serde_json::json!({"declared": declared, "received": received}))
    }

    pub fn duplicate_id() -> Self {
        Self::new(ErrorCode::InvalidRequest, "a request with this id is still running")
    }

    /// The daemon connection carrying the request ended before its reply.
    pub fn daemon_lost() -> Self {
        Self::new(ErrorCode::BackendCrashed, "the bitnet-host daemon stopped while answering; send the request again")
    }
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ProtoError {}

/// Longest request id accepted, as JSON text: every frame of a reply
/// repeats the id, so an unbounded one could push a single frame over the
/// browser's 1 MiB limit.
pub const MAX_ID_BYTES: usize = 1024;

/// A request id: any JSON string or number the client chose. Kept as the
/// exact JSON value so it is echoed back unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestId(pub Value);

impl RequestId {
    /// A key that compares ids by their JSON text (1 and "1" differ).
    pub fn key(&self) -> String {
        self.0.to_string()
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::String(_) => Some(Self(v.clone())),
            Value::Number(_) => Some(Self(v.clone())),
            _ => None,
        }
    }

    /// The id of a request, read from `field` (`id` or `messageId`): None
    /// when there is none, an error when it is not a string or number or is
    /// longer than [`MAX_ID_BYTES`].
    pub(super) fn read(obj: &Map<String, Value>, field: &str) -> Result<Option<Self>, ProtoError> {
        let Some(v) = obj.get(field) else { return Ok(None) };
        let Some(id) = Self::from_json(v) else {
            return Err(ProtoError::new(ErrorCode::InvalidRequest, format!("`{field}` must be a string or a number")));
        };
        let len = id.key().len();
        if len > MAX_ID_BYTES {
            return Err(ProtoError::new(
                ErrorCode::InvalidRequest,
                format!("`{field}` is {len} bytes long; ids are at most {MAX_ID_BYTES}"),
            )
            .with_details(serde_json::json!({"id_bytes": len, "limit": MAX_ID_BYTES})));
        }
        Ok(Some(id))
    }
}

/// Which dialect a request arrived in; replies go back in the same one.
#[derive(Debug, Clone, PartialEq)]
pub enum Dialect {
    V1,
    /// TabAgent's `{action, messageId}` messages; `action` is kept to shape
    /// the replies the way that extension expects.
    Legacy {
        action: String,
    },
}

/// A request after parsing, whatever its dialect.
#[derive(Debug, Clone)]
pub struct Request {
    /// None only for legacy requests sent without a `messageId`.
    pub id: Option<RequestId>,
    pub dialect: Dialect,
    /// The v1 request type the request maps onto.
    pub kind: String,
    /// The request object (v1) or the mapped parameters (legacy).
    pub params: Map<String, Value>,
}

/// A frame that is no valid request, with what is needed to answer it: the
/// id when one could be read and the dialect it seemed to be in.
#[derive(Debug)]
pub struct Rejected {
    pub error: ProtoError,
    pub id: Option<RequestId>,
    pub dialect: Dialect,
}

impl Rejected {
    pub fn v1(error: ProtoError, id: Option<RequestId>) -> Self {
        Self { error, id, dialect: Dialect::V1 }
    }
}

/// Parses one inbound frame.
pub fn parse_request(bytes: &[u8]) -> Result<Request, Rejected> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejected::v1(ProtoError::new(ErrorCode::InvalidUtf8, format!("frame is not UTF-8: {e}")), None))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejected::v1(ProtoError::new(ErrorCode::InvalidJson, format!("frame is not JSON: {e}")), None))?;
    let Value::Object(obj) = value else {
        return Err(Rejected::v1(
            ProtoError::new(ErrorCode::InvalidRequest, "a request is a JSON object with `id` and `type`"),
            None,
        ));
    };
    if let Some(action) = obj.get("action") {
        let action = action.clone();
        return super::legacy::parse(obj, &action);
    }
    let id = RequestId::read(&obj, "id").map_err(|e| Rejected::v1(e, None))?;
    let Some(id) = id else {
        return Err(Rejected::v1(
            ProtoError::new(ErrorCode::InvalidRequest, "a request needs an `id` (string or number)"),
            None,
        ));
    };
    match obj.get("type") {
        Some(Value::String(kind)) => {
            Ok(Request { id: Some(id), dialect: Dialect::V1, kind: kind.clone(), params: obj })
        }
        Some(_) => Err(Rejected::v1(ProtoError::new(ErrorCode::InvalidRequest, "`type` must be a string"), Some(id))),
        None => Err(Rejected::v1(ProtoError::new(ErrorCode::InvalidRequest, "a request needs a `type`"), Some(id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err_of(bytes: &[u8]) -> (ErrorCode, Option<Value>) {
        let r = parse_request(bytes).unwrap_err();
        (r.error.code, r.id.map(|i| i.0))
    }

    #[test]
    fn v1_request_parses_with_its_id() {
        let r = parse_request(br#"{"id": 7, "type": "ping"}"#).unwrap();
        assert_eq!(r.id, Some(RequestId(json!(7))));
        assert_eq!(r.kind, "ping");
        assert_eq!(r.dialect, Dialect::V1);
    }

    #[test]
    fn each_bad_input_gets_its_code_and_the_id_when_readable() {
        assert_eq!(err_of(&[0xff, 0xfe]), (ErrorCode::InvalidUtf8, None));
        assert_eq!(err_of(b"{not json"), (ErrorCode::InvalidJson, None));
        assert_eq!(err_of(b"[1,2]"), (ErrorCode::InvalidRequest, None));
        assert_eq!(err_of(br#"{"type":"ping"}"#), (ErrorCode::InvalidRequest, None));
        assert_eq!(err_of(br#"{"id":{},"type":"ping"}"#), (ErrorCode::InvalidRequest, None));
        assert_eq!(err_of(br#"{"id":"a"}"#), (ErrorCode::InvalidRequest, Some(json!("a"))));
        assert_eq!(err_of(br#"{"id":"a","type":3}"#), (ErrorCode::InvalidRequest, Some(json!("a"))));
    }

    #[test]
    fn ids_longer_than_the_bound_are_refused_without_echoing_them() {
        let fits = "x".repeat(MAX_ID_BYTES - 2); // plus its two quotes
        assert!(parse_request(json!({"id": fits, "type": "ping"}).to_string().as_bytes()).is_ok());
        let long = "x".repeat(MAX_ID_BYTES - 1);
        for req in [json!({"id": long, "type": "ping"}), json!({"action": "ping", "messageId": long})] {
            let r = parse_request(req.to_string().as_bytes()).unwrap_err();
            assert_eq!(r.error.code, ErrorCode::InvalidRequest, "{req}");
            assert_eq!(r.id, None);
            assert_eq!(r.error.details.unwrap()["id_bytes"], MAX_ID_BYTES + 1);
        }
    }

    #[test]
    fn error_codes_serialise_as_their_names() {
        for code in [ErrorCode::FrameTooLarge, ErrorCode::UnknownType, ErrorCode::BackendCrashed] {
            assert_eq!(serde_json::to_value(code).unwrap(), Value::from(code.as_str()));
        }
    }
}
