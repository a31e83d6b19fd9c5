//! Phi-3: llama's blocks with fused matrices, `attn_qkv` (query, key and value rows) and
//! `ffn_up` (gate rows, then up rows), and RoPE on the halves of each head. Files with
//! separate q/k/v tensors load too, as llama.cpp loads them. Like llama.cpp, the sliding
//! window some files declare is not applied.

use super::{AttentionSpec, Bias, DenseFfn, Family, Ffn, LayerSpec, Spec, Weight};
use crate::backend::RopeKind;
use crate::model::config::{Meta, Result};

pub const FAMILY: Family = Family { name: "phi3", spec };

fn spec(meta: &Meta) -> Result<Spec> {
    // 128k-context Phi-3 files rotate by "longrope" factors, which vibrant does not apply:
    // refuse them rather than answer wrongly past the short context.
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if meta.file.tensor(name).is_some() {
            return Err(meta.invalid(format!(
                "has '{name}': Phi-3's longrope scaling is not supported"
            )));
        }
    }
    if meta.file.tensor("output.bias").is_some() {
        return Err(meta.invalid("has 'output.bias': an output bias is not supported".into()));
    }
    let config = meta.config(RopeKind::Neox)?;
    let mut attention = AttentionSpec::standard(&config, Bias::None);
    if meta.file.tensor("blk.0.attn_qkv.weight").is_some() {
        attention.qkv = Weight::single("attn_qkv", attention.qkv.rows(), config.n_embd);
    }
    let ffn = DenseFfn {
        gate_up: Weight::single("ffn_up", 2 * config.n_ff, config.n_embd),
        ..DenseFfn::swiglu(&config)
    };
    let layer = LayerSpec {
        attention,
        ffn: Ffn::Dense(ffn),
    };
    let layers = vec![layer; config.n_layer];
    Ok(Spec::plain(meta, config, layers))
}
