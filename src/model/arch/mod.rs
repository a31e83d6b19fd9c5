//! Model families as data: each file here maps one family's GGUF metadata keys and tensor
//! names to a [`Spec`], which says per layer what the one forward pass (`super::forward`)
//! computes: where the norms sit, which tensors make the query/key/value and feed-forward
//! matrices, the activation, how each layer attends. A family that fits these blocks is a
//! file of its own here, and a line in `FAMILIES`.

mod gemma2;
mod gemma3;
mod llama;
mod moe;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen3moe;

pub use moe::MoeFfn;

use super::config::{Config, Meta, ModelError, Result};
use crate::backend::{Activation, AttentionOpts};
use crate::gguf::GgufFile;

/// A model family: the `general.architecture` it runs, and how its metadata describes it.
pub struct Family {
    pub name: &'static str,
    spec: fn(&Meta) -> Result<Spec>,
}

/// Every family vibrant runs.
const FAMILIES: &[Family] = &[
    llama::FAMILY,
    qwen2::FAMILY,
    qwen3::FAMILY,
    qwen3moe::FAMILY,
    gemma2::FAMILY,
    gemma3::FAMILY,
    phi3::FAMILY,
];

/// The families vibrant runs, for messages: "llama and qwen2".
pub fn supported() -> String {
    let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// What a model computes, layer by layer, and where its weights are.
#[derive(Clone, Debug)]
pub struct Spec {
    pub config: Config,
    pub layers: Vec<LayerSpec>,
    /// The logits come from the token embeddings (no `output.weight`).
    pub tied_output: bool,
    /// Multiplies the token embeddings (gemma: √n_embd).
    pub embedding_scale: Option<f32>,
    /// Soft-caps the logits: cap · tanh(logit / cap) (gemma2).
    pub final_logit_softcap: Option<f32>,
    /// Per-frequency divisors of RoPE's angles, where the file has them.
    pub rope_factors: RopeFactors,
    /// Multiplies RoPE's cos and sin, so every attention score by its square (longrope's
    /// `rope.scaling.attn_factor`, as ggml's `rope_ext` applies it).
    pub rope_attn_factor: f32,
}

/// Where RoPE's per-frequency divisors come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeFactors {
    None,
    /// Llama 3's `rope_freqs.weight`.
    Fixed,
    /// Phi-3's longrope: `rope_factors_long.weight` for a context past `original_ctx`
    /// tokens, `rope_factors_short.weight` within it (llama.cpp chooses so).
    ByContext {
        original_ctx: usize,
    },
}

impl RopeFactors {
    /// The tensor of divisors a context of `n_ctx` tokens rotates by.
    pub fn tensor(self, n_ctx: usize) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Fixed => Some("rope_freqs.weight"),
            Self::ByContext { original_ctx } if n_ctx > original_ctx => {
                Some("rope_factors_long.weight")
            }
            Self::ByContext { .. } => Some("rope_factors_short.weight"),
        }
    }
}

impl Spec {
    /// The spec of a file of a family vibrant runs.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.str("general.architecture")?;
        let Some(family) = FAMILIES.iter().find(|f| f.name == arch) else {
            return Err(ModelError::UnsupportedArch {
                path: file.path().display().to_string(),
                arch: arch.to_string(),
                supported: supported(),
            });
        };
        (family.spec)(&Meta {
            file,
            arch: family.name,
        })
    }

    /// A spec whose output is the file's `output.weight`, or the token embeddings where it
    /// has none, with no embedding scale or logit cap.
    fn plain(meta: &Meta, config: Config, layers: Vec<LayerSpec>) -> Result<Self> {
        let rope_factors = match meta.file.tensor("rope_freqs.weight") {
            Some(_) => RopeFactors::Fixed,
            None => RopeFactors::None,
        };
        let rope_attn_factor = meta
            .file
            .f32_or(&meta.key("rope.scaling.attn_factor"), 1.0)?;
        Ok(Self {
            config,
            layers,
            tied_output: meta.file.tensor("output.weight").is_none(),
            embedding_scale: None,
            final_logit_softcap: None,
            rope_factors,
            rope_attn_factor,
        })
    }
}

/// One transformer block: attention, then the feed-forward network, each adding to the
/// residual stream.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub attention: AttentionSpec,
    pub ffn: Ffn,
}

/// The norms around a sub-block: `pre` on its input, `post` (gemma's "sandwich") on its
/// output before the residual add; tensor roles within the block (`attn_norm`).
#[derive(Clone, Debug)]
pub struct Norms {
    pub pre: &'static str,
    pub post: Option<&'static str>,
}

/// Whether a matrix has a bias (`{role}.bias` beside each part's weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    None,
    /// Where the file has one (llama: some converted models carry q/k/v biases).
    IfPresent,
    Required,
}

/// A weight matrix of a block made of one or more tensors' rows, in order: `[q | k | v]`
/// from three tensors, or from one fused `attn_qkv` (phi3); gate and up likewise.
#[derive(Clone, Debug)]
pub struct Weight {
    /// Tensor role (`attn_q`) and its rows.
    pub parts: Vec<(&'static str, usize)>,
    pub cols: usize,
    pub bias: Bias,
}

impl Weight {
    /// One tensor of `rows × cols`, without a bias.
    pub fn single(role: &'static str, rows: usize, cols: usize) -> Self {
        Self {
            parts: vec![(role, rows)],
            cols,
            bias: Bias::None,
        }
    }

    pub fn rows(&self) -> usize {
        self.parts.iter().map(|(_, rows)| rows).sum()
    }
}

#[derive(Clone, Debug)]
pub struct AttentionSpec {
    pub norms: Norms,
    /// Query, key and value rows.
    pub qkv: Weight,
    /// Per-head RMS norms of queries and keys before RoPE (tensor roles of q's and k's).
    pub qk_norm: Option<(&'static str, &'static str)>,
    pub output: Weight,
    pub opts: AttentionOpts,
    /// RoPE's base frequency in this layer (gemma3's local layers have their own).
    pub rope_base: f32,
}

impl AttentionSpec {
    /// Pre-norm (`attn_norm`) attention through `attn_q`, `attn_k` and `attn_v` (biases as
    /// `bias` says) and `attn_output`, causal over the whole context, RoPE at the model's
    /// base.
    pub fn standard(c: &Config, bias: Bias) -> Self {
        let a = &c.attention;
        let (q, kv) = (a.q_width(), a.kv_width());
        Self {
            norms: Norms {
                pre: "attn_norm",
                post: None,
            },
            qkv: Weight {
                parts: vec![("attn_q", q), ("attn_k", kv), ("attn_v", kv)],
                cols: c.n_embd,
                bias,
            },
            qk_norm: None,
            output: Weight::single("attn_output", c.n_embd, q),
            opts: AttentionOpts::causal(a.head_dim),
            rope_base: c.rope_base,
        }
    }
}

/// The feed-forward network of a block.
#[derive(Clone, Debug)]
pub enum Ffn {
    Dense(DenseFfn),
    Moe(MoeFfn),
}

/// down · (act(gate · x) ⊙ (up · x)), x the normalised input.
#[derive(Clone, Debug)]
pub struct DenseFfn {
    pub norms: Norms,
    /// Gate rows, then as many up rows.
    pub gate_up: Weight,
    pub down: Weight,
    pub activation: Activation,
}

impl DenseFfn {
    /// Pre-norm (`ffn_norm`) SwiGLU through `ffn_gate`, `ffn_up` and `ffn_down`.
    pub fn swiglu(c: &Config) -> Self {
        Self {
            norms: Norms {
                pre: "ffn_norm",
                post: None,
            },
            gate_up: Weight {
                parts: vec![("ffn_gate", c.n_ff), ("ffn_up", c.n_ff)],
                cols: c.n_embd,
                bias: Bias::None,
            },
            down: Weight::single("ffn_down", c.n_embd, c.n_ff),
            activation: Activation::Silu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supported_families_are_listed_in_prose() {
        assert_eq!(
            supported(),
            "llama, qwen2, qwen3, qwen3moe, gemma2, gemma3 and phi3"
        );
    }
}
