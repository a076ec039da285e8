//! The GGUF header reader on any bytes: a typed error or a header whose
//! every tensor lies inside the file, never a panic, never an allocation
//! beyond its bounds (libFuzzer's -rss_limit_mb / -malloc_limit_mb catch
//! those).
#![no_main]

use bitnet_ternary::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gguf::parse(data, data.len() as u64) {
        for t in &g.tensors {
            if let Some(size) = t.size {
                assert!(t.offset + size <= (data.len() as u64).saturating_sub(g.data_offset));
            }
        }
        let _ = g.weight_format();
    }
});
