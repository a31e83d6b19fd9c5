//! vibrant: quantized LLM inference on any GPU through wgpu compute shaders, and on the CPU.
//!
//! Data flows one way: [`gguf`] file → [`quant`] weights → backend → tokens.

pub mod chat;
pub mod gguf;
pub mod quant;
pub mod tokenizer;
