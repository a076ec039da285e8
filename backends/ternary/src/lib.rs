//! The built-in BitNet engine. So far: the GGUF reader that every model path
//! goes through (validation before any server sees the file).

pub mod gguf;

pub use gguf::{Gguf, GgufError, TensorType};
