//! The frame decoder on any byte stream, cut into reads of any sizes: it
//! never panics, never holds more than a frame plus one read, and gives the
//! same frames however the stream is cut.
#![no_main]

use bitnet_host::protocol::frame::{Decoder, Inbound};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn decode(data: &[u8], cut: usize) -> (Vec<Inbound>, Inbound) {
    let mut d = Decoder::new(MAX);
    let mut out = Vec::new();
    for piece in data.chunks(cut.max(1)) {
        d.feed(piece);
        while let Some(f) = d.next_frame() {
            if let Inbound::Frame(b) = &f {
                assert!(b.len() <= MAX);
            }
            out.push(f);
        }
    }
    let end = d.finish();
    (out, end)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, data)) = input.split_first() else { return };
    let whole = decode(data, data.len());
    let cut_up = decode(data, usize::from(cut % 17) + 1);
    assert_eq!(whole, cut_up);
});
