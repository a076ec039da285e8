//! The request parser on any frame: it never panics; whatever it accepts
//! gets a reply that routes back to its id, in frames under the browser's
//! limit; whatever it refuses gets an error reply that does too.
#![no_main]

use bitnet_host::protocol::frame::{Chunking, Decoder, Inbound, MAX_OUTBOUND};
use bitnet_host::protocol::route::{self, Kind};
use bitnet_host::protocol::{encode, error_reply, parse_request, Outgoing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let wire = match parse_request(data) {
        Ok(req) => {
            // A result as long as the request, so that big ones are chunked.
            let text = String::from_utf8_lossy(data).into_owned();
            encode(&req.dialect, req.id.as_ref(), Outgoing::Final(Ok(serde_json::json!({"text": text}))))
        }
        Err(rej) => {
            assert!(rej.id.as_ref().is_none_or(|id| id.key().len() <= 1024));
            error_reply(&rej.dialect, rej.id.as_ref(), rej.error)
        }
    };
    let key = wire.chunk_tag.values().next().filter(|v| !v.is_null()).map(|v| v.to_string());
    let mut bytes = Vec::new();
    // A small frame limit, so that chunking is exercised often.
    let c = Chunking { tag: &wire.chunk_tag, event_key: wire.event_key, final_reply: true };
    bitnet_host::protocol::frame::encode_message(&mut bytes, &wire.message, &c, 4096);
    let mut d = Decoder::new(MAX_OUTBOUND);
    d.feed(&bytes);
    let mut finals = 0;
    while let Some(f) = d.next_frame() {
        let Inbound::Frame(f) = f else { panic!("bad frame {f:?}") };
        assert!(f.len() <= 4096);
        let r = route::reply(&f).expect("every reply is a JSON object");
        assert_eq!(r.key, key);
        match r.kind {
            Kind::Final => finals += 1,
            Kind::Chunk { index, count, final_reply } => {
                assert!(final_reply);
                finals += usize::from(index + 1 == count);
            }
            Kind::Event => panic!("a final reply read as an event"),
        }
    }
    assert_eq!(finals, 1);
});
