//! Quantization block formats of ggml: exact bit layouts, dequantization, quantization,
//! and the dot products the CPU backend computes straight from the blocks.

mod types;

pub use types::{GgmlType, ALL_TYPES, QK_K};
