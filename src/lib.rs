//! vibrant: quantized LLM inference on any GPU through wgpu compute shaders, and on the CPU.
//!
//! Data flows one way: [`gguf`] file → [`quant`] weights → [`backend`] → tokens
//! ([`generate`]), with [`tokenizer`] and [`chat`] templates on either side.

pub mod backend;
pub mod catalog;
pub mod chat;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod perplexity;
pub mod quant;
pub mod rng;
pub mod sampling;
pub mod serve;
pub mod synth;
pub mod tokenizer;
