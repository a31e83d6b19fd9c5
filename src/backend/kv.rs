//! What a KV cache holds: the shape of the attention it serves, how it encodes keys and values,
//! and how many sequences it keeps apart.

use super::{AttentionOpts, BackendError, Result};
use crate::quant::GgmlType;

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs (x[2i], x[2i+1]): llama.
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX, qwen2.
    Neox,
}

/// Shape of the attention of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope: RopeKind,
}

impl AttentionShape {
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// How the KV cache stores keys or values: `f16` (the default), or `q8_0` as ggml lays it out
/// (blocks of 32 values: an f16 scale, max |x| / 127, and 32 rounded 8-bit quants), 34 bytes
/// per 32 values instead of 64. Named as llama.cpp's `--cache-type-k` / `--cache-type-v` name
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CacheType {
    #[default]
    F16,
    Q8_0,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown KV cache type '{0}' (expected f16 or q8_0)")]
pub struct UnknownCacheType(String);

impl CacheType {
    pub const ALL: [CacheType; 2] = [CacheType::F16, CacheType::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The ggml type of a cache row.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// Bytes of `n` values (a whole number of blocks).
    pub fn bytes_for(self, n: usize) -> usize {
        self.ggml_type()
            .row_bytes(n)
            .expect("cache rows are whole blocks, checked at load")
    }
}

impl std::fmt::Display for CacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CacheType {
    type Err = UnknownCacheType;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownCacheType(s.to_string()))
    }
}

impl clap::ValueEnum for CacheType {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// The types of a KV cache's keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvTypes {
    pub k: CacheType,
    pub v: CacheType,
}

impl KvTypes {
    /// Refuses heads that do not split into whole blocks of a quantized type: a row of the
    /// cache (one head) must be whole blocks, so that each head's values have scales of
    /// their own.
    pub fn check(&self, shape: &AttentionShape) -> Result<()> {
        for (what, ty) in [("key", self.k), ("value", self.v)] {
            let block = ty.ggml_type().block_size();
            if !shape.head_dim.is_multiple_of(block) {
                return Err(BackendError::Unsupported(format!(
                    "a {ty} {what} cache (--cache-type-{}) needs attention heads of a multiple of {block} values; this model's heads have {}",
                    &what[..1],
                    shape.head_dim
                )));
            }
        }
        Ok(())
    }

    /// Bytes of one position's keys and values for one layer of attention shaped `shape`.
    pub fn bytes_per_position(&self, shape: &AttentionShape) -> usize {
        self.k.bytes_for(shape.kv_width()) + self.v.bytes_for(shape.kv_width())
    }
}

impl std::fmt::Display for KvTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K {}, V {}", self.k, self.v)
    }
}

/// Everything a backend needs to make a KV cache, and to refuse at load what its kernels
/// cannot do for the model.
#[derive(Clone, Debug)]
pub struct KvLayout {
    /// Sequences the cache keeps apart (the slots of [`super::Span`]s).
    pub slots: usize,
    /// Positions per slot.
    pub n_ctx: usize,
    pub shape: AttentionShape,
    pub types: KvTypes,
    /// Each layer's attention options, in layer order.
    pub layers: Vec<AttentionOpts>,
    /// Whether queries and keys are RMS-normalised per head before RoPE ([`super::QkNorm`]).
    pub qk_norm: bool,
}
