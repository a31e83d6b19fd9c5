//! Phi-3: llama's blocks with fused matrices, `attn_qkv` (query, key and value rows) and
//! `ffn_up` (gate rows, then up rows), and RoPE on the halves of each head. Files with
//! separate q/k/v tensors load too, as llama.cpp loads them. Like llama.cpp, the sliding
//! window some files declare is not applied. 128k-context files rotate by "longrope"
//! factors, long or short by the context they run with.

use super::{AttentionSpec, Bias, DenseFfn, Family, Ffn, LayerSpec, RopeFactors, Spec, Weight};
use crate::backend::RopeKind;
use crate::model::config::{Config, Meta, Result};

pub const FAMILY: Family = Family { name: "phi3", spec };

fn spec(meta: &Meta) -> Result<Spec> {
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
    let rope_factors = longrope(meta, &config)?;
    let spec = Spec::plain(meta, config, layers)?;
    Ok(Spec {
        rope_factors: rope_factors.unwrap_or(spec.rope_factors),
        ..spec
    })
}

/// Longrope's factors where the file has them: both sets, or neither.
fn longrope(meta: &Meta, config: &Config) -> Result<Option<RopeFactors>> {
    let has = |name: &str| meta.file.tensor(name).is_some();
    match (has("rope_factors_long.weight"), has("rope_factors_short.weight")) {
        (false, false) => Ok(None),
        (true, true) => {
            let key = meta.key("rope.scaling.original_context_length");
            let original_ctx = meta.file.u64_or(&key, config.n_ctx_train as u64)? as usize;
            Ok(Some(RopeFactors::ByContext { original_ctx }))
        }
        _ => Err(meta.invalid(
            "has only one of 'rope_factors_long.weight' and 'rope_factors_short.weight': longrope needs both".into(),
        )),
    }
}
