//! Qwen3-MoE (Qwen3-30B-A3B): Qwen3's attention (per-head RMS norms of queries and keys
//! before RoPE on the halves of each head, no biases) over a mixture of SwiGLU experts,
//! whose weights are renormalised over the chosen ones (`norm_top_k_prob`).

use super::moe::MoeFfn;
use super::{AttentionSpec, Bias, Family, Ffn, LayerSpec, Spec};
use crate::backend::RopeKind;
use crate::model::config::{Meta, Result};

pub const FAMILY: Family = Family {
    name: "qwen3moe",
    spec,
};

fn spec(meta: &Meta) -> Result<Spec> {
    let config = meta.config(RopeKind::Neox)?;
    let Some((_, k)) = super::moe::expert_counts(meta)? else {
        return Err(meta.invalid("a qwen3moe file without experts (expert_count)".into()));
    };
    // llama.cpp's default where the file gives no expert width.
    let n_ff = meta.file.u64_or(
        &meta.key("expert_feed_forward_length"),
        (config.n_ff / k) as u64,
    )? as usize;
    let moe = MoeFfn::swiglu(meta, &config, n_ff, true)?
        .ok_or_else(|| meta.invalid("a qwen3moe file without experts".into()))?;
    let layer = LayerSpec {
        attention: AttentionSpec {
            qk_norm: Some(("attn_q_norm", "attn_k_norm")),
            ..AttentionSpec::standard(&config, Bias::None)
        },
        ffn: Ffn::Moe(moe),
    };
    let layers = vec![layer; config.n_layer];
    Spec::plain(meta, config, layers)
}
