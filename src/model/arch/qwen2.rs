//! Qwen2 (Qwen2.5): llama's blocks with q/k/v biases and RoPE on the halves of each head
//! (GPT-NeoX's pairing).

use super::{AttentionSpec, Bias, DenseFfn, Family, Ffn, LayerSpec, Spec};
use crate::backend::RopeKind;
use crate::model::config::{Meta, Result};

pub const FAMILY: Family = Family {
    name: "qwen2",
    spec,
};

fn spec(meta: &Meta) -> Result<Spec> {
    let config = meta.config(RopeKind::Neox)?;
    let layer = LayerSpec {
        attention: AttentionSpec::standard(&config, Bias::Required),
        ffn: Ffn::Dense(DenseFfn::swiglu(&config)),
    };
    let layers = vec![layer; config.n_layer];
    Spec::plain(meta, config, layers)
}
