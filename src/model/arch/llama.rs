//! Llama (and the files that load as it: Mistral, Llama 3, SmolLM, Mixtral): pre-norm
//! blocks, SwiGLU (or, where the file has `expert_count`, a mixture of SwiGLU experts whose
//! weights are renormalised over the chosen ones), RoPE on adjacent pairs, q/k/v biases
//! where a converted file has them.

use super::moe::MoeFfn;
use super::{AttentionSpec, Bias, DenseFfn, Family, Ffn, LayerSpec, Spec};
use crate::backend::RopeKind;
use crate::model::config::{Meta, Result};

pub const FAMILY: Family = Family {
    name: "llama",
    spec,
};

fn spec(meta: &Meta) -> Result<Spec> {
    let config = meta.config(RopeKind::Normal)?;
    // Mixtral's experts are `feed_forward_length` wide.
    let ffn = match MoeFfn::swiglu(meta, &config, config.n_ff, true)? {
        Some(moe) => Ffn::Moe(moe),
        None => Ffn::Dense(DenseFfn::swiglu(&config)),
    };
    let layer = LayerSpec {
        attention: AttentionSpec::standard(&config, Bias::IfPresent),
        ffn,
    };
    let layers = vec![layer; config.n_layer];
    Spec::plain(meta, config, layers)
}
