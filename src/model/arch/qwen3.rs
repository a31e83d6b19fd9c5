//! Qwen3: Qwen2's blocks without the q/k/v biases, with per-head RMS norms of queries and
//! keys before RoPE (`attn_q_norm`, `attn_k_norm`), RoPE on the halves of each head.

use super::{AttentionSpec, Bias, DenseFfn, Family, Ffn, LayerSpec, Spec};
use crate::backend::RopeKind;
use crate::model::config::{Meta, Result};

pub const FAMILY: Family = Family {
    name: "qwen3",
    spec,
};

fn spec(meta: &Meta) -> Result<Spec> {
    let config = meta.config(RopeKind::Neox)?;
    let layer = LayerSpec {
        attention: AttentionSpec {
            qk_norm: Some(("attn_q_norm", "attn_k_norm")),
            ..AttentionSpec::standard(&config, Bias::None)
        },
        ffn: Ffn::Dense(DenseFfn::swiglu(&config)),
    };
    let layers = vec![layer; config.n_layer];
    Spec::plain(meta, config, layers)
}
