//! Test support: the fixtures' golden files (`X.golden.json` describes raw
//! little-endian arrays in `X.golden.bin`).

use std::path::PathBuf;

use serde_json::Value;

pub struct Golden {
    pub meta: Value,
    bin: Vec<u8>,
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

impl Golden {
    pub fn open(stem: &str) -> Self {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("{stem}.golden.json"))).expect("golden json"))
                .expect("json");
        let bin = std::fs::read(fixture(&format!("{stem}.golden.bin"))).expect("golden bin");
        Golden { meta, bin }
    }

    fn raw(&self, name: &str) -> &[u8] {
        let a = &self.meta["arrays"][name];
        let off = a["offset"].as_u64().unwrap_or_else(|| panic!("no array {name}")) as usize;
        let n = a["nbytes"].as_u64().expect("nbytes") as usize;
        &self.bin[off..off + n]
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.raw(name).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
    pub fn i32(&self, name: &str) -> Vec<i32> {
        self.raw(name).chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
    pub fn i8(&self, name: &str) -> Vec<i8> {
        self.raw(name).iter().map(|&b| b as i8).collect()
    }
    pub fn u8(&self, name: &str) -> Vec<u8> {
        self.raw(name).to_vec()
    }
}
