//! The built-in BitNet engine. So far: the GGUF reader that every model path
//! goes through (validation before any server sees the file).

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
pub mod writer;

#[cfg(test)]
mod golden;

pub use gguf::{Gguf, GgufError, TensorType};
