//! A mixture-of-experts feed-forward network (Mixtral-style `llama`, Qwen3-MoE): a router
//! picks each token's experts, each a SwiGLU network of its own, and mixes their outputs.

use super::{Bias, Weight};
use crate::backend::{Activation, Routing};
use crate::model::config::{Config, Meta, Result};

/// Σ over the chosen experts e of weight_e · down_e · (act(gate_e · x) ⊙ (up_e · x)), x the
/// normalised input; the experts and their weights from the router's logits (`routing`).
#[derive(Clone, Debug)]
pub struct MoeFfn {
    /// The pre-norm's tensor role.
    pub norm: &'static str,
    /// One row of router logits per expert.
    pub router: Weight,
    pub n_expert: usize,
    pub routing: Routing,
    /// One expert's gate rows, then as many up rows (its slices of 3-D tensors).
    pub gate_up: Weight,
    /// One expert's down rows.
    pub down: Weight,
    pub activation: Activation,
}

impl MoeFfn {
    /// The experts of a file whose `expert_count` is above 0 (else `None`: a dense model):
    /// pre-norm (`ffn_norm`) SwiGLU experts `ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`
    /// of `n_ff` rows each, routed by `ffn_gate_inp` to `expert_used_count` of them.
    pub fn swiglu(meta: &Meta, c: &Config, n_ff: usize, normalize: bool) -> Result<Option<Self>> {
        let Some((n_expert, k)) = expert_counts(meta)? else {
            return Ok(None);
        };
        if n_ff == 0 {
            return Err(meta.invalid("experts of feed-forward width 0".into()));
        }
        Ok(Some(Self {
            norm: "ffn_norm",
            router: Weight::single("ffn_gate_inp", n_expert, c.n_embd),
            n_expert,
            routing: Routing { k, normalize },
            gate_up: Weight {
                parts: vec![("ffn_gate_exps", n_ff), ("ffn_up_exps", n_ff)],
                cols: c.n_embd,
                bias: Bias::None,
            },
            down: Weight::single("ffn_down_exps", c.n_embd, n_ff),
            activation: Activation::Silu,
        }))
    }

    /// Each expert's width.
    pub fn n_ff(&self) -> usize {
        self.down.cols
    }
}

/// `expert_count` and `expert_used_count`, or `None` where the file has no experts.
pub fn expert_counts(meta: &Meta) -> Result<Option<(usize, usize)>> {
    let n_expert = meta.file.u64_or(&meta.key("expert_count"), 0)? as usize;
    if n_expert == 0 {
        return Ok(None);
    }
    let k = meta.file.u64_or(&meta.key("expert_used_count"), 0)? as usize;
    // Ids travel as f32 values between the backends' ops, exact far beyond this; and a GPU
    // launch spans the experts in one grid dimension.
    if n_expert > 4096 || k == 0 || k > n_expert {
        return Err(meta.invalid(format!(
            "{k} experts used of {n_expert} is not a usable mixture of experts"
        )));
    }
    Ok(Some((n_expert, k)))
}
