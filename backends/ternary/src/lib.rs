//! The built-in BitNet engine: the GGUF reader every model path goes
//! through, quant formats, SIMD kernels, the model, tokenizers, sampling
//! and the llama-server-compatible runner.

// Clippy 1.96 asks for `const` initializers in thread_local! on
// windows-gnu although ours are const (model.rs, pool.rs).
#![cfg_attr(all(windows, target_env = "gnu"), allow(clippy::missing_const_for_thread_local))]

pub mod batch;
pub mod bench;
pub mod engine;
pub mod gguf;
pub mod kernels;
pub mod linear;
pub mod model;
pub mod pool;
pub mod quant;
pub mod sampler;
pub mod server;
pub mod tokenizer;
pub mod weights;
pub mod writer;

#[cfg(test)]
mod golden;

pub use gguf::{Gguf, GgufError, TensorType};
