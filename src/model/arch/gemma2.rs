//! Gemma 2: Gemma 3's blocks without the q/k norms, with soft-capped attention scores
//! (`attn_logit_softcapping`, 50 by default) and logits (`final_logit_softcapping`, 30), a
//! sliding window (4096 by default) on every other layer from the first, one RoPE base for
//! all layers unless the file gives the local one. The output is always the token
//! embeddings. As llama.cpp's `src/models/gemma2.cpp`.

use super::gemma3::{sandwich_ffn, SANDWICH_ATTENTION_NORMS};
use super::{AttentionSpec, Bias, Family, Ffn, LayerSpec, Spec};
use crate::backend::{AttentionOpts, RopeKind};
use crate::model::config::{Meta, Result};

pub const FAMILY: Family = Family {
    name: "gemma2",
    spec,
};

/// llama.cpp's defaults where the file has no key.
const WINDOW: u64 = 4096;
const ATTENTION_SOFTCAP: f32 = 50.0;
const FINAL_SOFTCAP: f32 = 30.0;

fn spec(meta: &Meta) -> Result<Spec> {
    let config = meta.config(RopeKind::Neox)?;
    let file = meta.file;
    let a = &config.attention;
    let window = file.u64_or(&meta.key("attention.sliding_window"), WINDOW)? as usize;
    let local_base = file.f32_or(&meta.key("rope.freq_base_swa"), config.rope_base)?;
    let softcap = |key: &str, default: f32| -> Result<Option<f32>> {
        let cap = file.f32_or(&meta.key(key), default)?;
        Ok((cap > 0.0).then_some(cap))
    };
    let attention_cap = softcap("attn_logit_softcapping", ATTENTION_SOFTCAP)?;
    let final_cap = softcap("final_logit_softcapping", FINAL_SOFTCAP)?;
    // Gemma 2 27B scales by n_embd / n_head, as its reference implementation does.
    let scale_dim = match config.n_layer {
        46 => config.n_embd / a.n_head,
        _ => a.head_dim,
    };
    let ffn = sandwich_ffn(&config);
    let layers = (0..config.n_layer)
        .map(|il| {
            let local = il % 2 == 0 && window > 0;
            LayerSpec {
                attention: AttentionSpec {
                    norms: SANDWICH_ATTENTION_NORMS,
                    opts: AttentionOpts {
                        window: local.then_some(window),
                        softcap: attention_cap,
                        ..AttentionOpts::causal(scale_dim)
                    },
                    rope_base: if local { local_base } else { config.rope_base },
                    ..AttentionSpec::standard(&config, Bias::None)
                },
                ffn: Ffn::Dense(ffn.clone()),
            }
        })
        .collect();
    Ok(Spec {
        tied_output: true,
        embedding_scale: Some((config.n_embd as f32).sqrt()),
        final_logit_softcap: final_cap,
        ..Spec::plain(meta, config, layers)?
    })
}
