//! Test support: a fake browser over stdio and the stand-in server's helpers.

pub mod bench;
pub mod browser;
pub mod devtools;
pub mod files;
pub mod standin;
