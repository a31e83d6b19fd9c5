//! Gemma 3: embeddings scaled by √n_embd; "sandwich" norms (before and after attention and
//! the FFN); per-head q/k norms; GeGLU (GELU-tanh); five sliding-window layers with their
//! own RoPE base for every global one; attention scaled by the head size `key_length` (256),
//! not n_embd / n_head. As llama.cpp's `src/models/gemma3.cpp`.

use super::{AttentionSpec, Bias, DenseFfn, Family, Ffn, LayerSpec, Norms, Spec};
use crate::backend::{Activation, AttentionOpts, RopeKind};
use crate::model::config::{Config, Meta, Result};

pub const FAMILY: Family = Family {
    name: "gemma3",
    spec,
};

/// llama.cpp's default layer pattern for gemma3 (`load_swa_pattern(ml, 6)`): every sixth
/// layer attends globally, the others through the window.
const SWA_PERIOD: usize = 6;
/// The local layers' RoPE base where the file gives no `rope.freq_base_swa` (llama.cpp's
/// default, which Gemma 3's converted files rely on).
const LOCAL_ROPE_BASE: f32 = 10_000.0;

/// Gemma's norms before attention and after it, before the residual add (gemma2 too).
pub(super) const SANDWICH_ATTENTION_NORMS: Norms = Norms {
    pre: "attn_norm",
    post: Some("post_attention_norm"),
};

/// Gemma's feed-forward block: GeGLU (GELU-tanh) between norms before and after it (gemma2
/// too).
pub(super) fn sandwich_ffn(config: &Config) -> DenseFfn {
    DenseFfn {
        norms: Norms {
            pre: "ffn_norm",
            post: Some("post_ffw_norm"),
        },
        activation: Activation::GeluTanh,
        ..DenseFfn::swiglu(config)
    }
}

fn spec(meta: &Meta) -> Result<Spec> {
    let config = meta.config(RopeKind::Neox)?;
    let file = meta.file;
    let a = &config.attention;
    let window = match file.u64_or(&meta.key("attention.sliding_window"), 0)? {
        0 => None,
        w => Some(w as usize),
    };
    let local_base = file.f32_or(&meta.key("rope.freq_base_swa"), LOCAL_ROPE_BASE)?;
    // Gemma 3 27B scales by n_embd / n_head, as its reference implementation does.
    let scale_dim = match config.n_layer {
        62 => config.n_embd / a.n_head,
        _ => a.head_dim,
    };
    let softcap = match file.f32_or(&meta.key("final_logit_softcapping"), 0.0)? {
        cap if cap > 0.0 => Some(cap),
        _ => None,
    };
    let ffn = sandwich_ffn(&config);
    let layers = (0..config.n_layer)
        .map(|il| {
            let local = window.is_some() && il % SWA_PERIOD < SWA_PERIOD - 1;
            LayerSpec {
                attention: AttentionSpec {
                    norms: SANDWICH_ATTENTION_NORMS,
                    qk_norm: Some(("attn_q_norm", "attn_k_norm")),
                    opts: AttentionOpts {
                        window: window.filter(|_| local),
                        ..AttentionOpts::causal(scale_dim)
                    },
                    rope_base: if local { local_base } else { config.rope_base },
                    ..AttentionSpec::standard(&config, Bias::None)
                },
                ffn: Ffn::Dense(ffn.clone()),
            }
        })
        .collect();
    let embedding_scale = Some((config.n_embd as f32).sqrt());
    Ok(Spec {
        embedding_scale,
        final_logit_softcap: softcap,
        ..Spec::plain(meta, config, layers)?
    })
}
