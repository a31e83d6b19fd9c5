//! Llama (and the files that load as it: Mistral, Llama 3, SmolLM): pre-norm blocks, SwiGLU,
//! RoPE on adjacent pairs, q/k/v biases where a converted file has them.

use super::{AttentionSpec, Bias, DenseFfn, Family, Ffn, LayerSpec, Spec};
use crate::backend::RopeKind;
use crate::model::config::{Meta, Result};

pub const FAMILY: Family = Family {
    name: "llama",
    spec,
};

fn spec(meta: &Meta) -> Result<Spec> {
    let config = meta.config(RopeKind::Normal)?;
    let layer = LayerSpec {
        attention: AttentionSpec::standard(&config, Bias::IfPresent),
        ffn: Ffn::Dense(DenseFfn::swiglu(&config)),
    };
    let layers = vec![layer; config.n_layer];
    Ok(Spec::plain(meta, config, layers))
}
