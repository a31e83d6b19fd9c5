//! The transformer's forward pass, written once in blocks over the [`Backend`] ops: each
//! block reads its layer's weights and the values its family chose (norm placement,
//! activation, attention options), so that families differ in data, not in code.

use super::weights::{Attention, BlockNorms, Dense, FeedForward, Layer, Moe, Weights};
use crate::backend::{Backend, CacheLayer, ExpertInput, Pointwise, QkNorm, RmsNorm, Rope};

/// The activations of a step of up to `n_batch` rows, allocated once.
pub(super) struct Acts<B: Backend> {
    /// The residual stream, `[n_batch, n_embd]`.
    pub x: B::Tensor,
    /// Rotated queries, `[n_batch, q_width]`.
    pub q: B::Tensor,
    /// Attention's output, `[n_batch, q_width]`.
    pub attn: B::Tensor,
    /// The feed-forward hidden state, `[n_batch, n_ff]`.
    pub hidden: B::Tensor,
    /// A sub-block's output and its post-norm, `[n_batch, n_embd]` each: only for families
    /// with post-norms.
    pub sandwich: Option<[B::Tensor; 2]>,
    /// The mixture of experts' activations: only for families with one.
    pub moe: Option<MoeActs<B>>,
    /// The last row of x, for its logits.
    pub last: B::Tensor,
    pub logits: B::Tensor,
}

/// A mixture of experts' activations for up to `n_batch` rows routed to `k` experts each.
pub(super) struct MoeActs<B: Backend> {
    /// rms_norm(x), `[n_batch, n_embd]`.
    pub normed: B::Tensor,
    /// Router logits, `[n_batch, n_expert]`.
    pub logits: B::Tensor,
    /// Each row's experts and weights, `[n_batch, 2k]`.
    pub routes: B::Tensor,
    /// Each choice's gate and up products, `[n_batch · k, 2 n_ff]`.
    pub gate_up: B::Tensor,
    /// Each choice's hidden state, `[n_batch · k, n_ff]`.
    pub hidden: B::Tensor,
    /// Each choice's output, `[n_batch · k, n_embd]`.
    pub out: B::Tensor,
}

/// One layer over the step's rows: x += attention(x), then x += ffn(x).
pub(super) fn layer<B: Backend>(
    b: &mut B,
    w: &Layer<B>,
    rope_tables: &[B::Vector],
    a: &Acts<B>,
    at: CacheLayer<'_, B::KvCache>,
    eps: f32,
) {
    attention_block(
        b,
        &w.attention,
        &rope_tables[w.attention.rope_table],
        a,
        at,
        eps,
    );
    let n = at.batch.rows();
    match &w.ffn {
        FeedForward::Dense(ffn) => dense_ffn(b, ffn, a, n, eps),
        FeedForward::Moe(ffn) => moe_ffn(b, ffn, a, n, eps),
    }
}

/// x += Wo · attention(q, k, v): q, k and v from Wqkv · rms_norm(x), q and k rotated (and
/// normalised per head where the family does), k and v through the cache.
fn attention_block<B: Backend>(
    b: &mut B,
    w: &Attention<B>,
    rope_table: &B::Vector,
    a: &Acts<B>,
    at: CacheLayer<'_, B::KvCache>,
    eps: f32,
) {
    let rope = Rope {
        cos_sin: rope_table,
        qk_norm: w.qk_norm.as_ref().map(|(q, k)| QkNorm { q, k, eps }),
    };
    let norm = RmsNorm {
        weight: &w.norms.pre,
        eps,
    };
    b.attention_inputs(&a.x, norm, &w.qkv, &rope, &a.q, at);
    b.attention(&a.q, at, &w.opts, &a.attn);
    residual(b, &a.attn, &w.output, &w.norms, a, at.batch.rows(), eps);
}

/// x += W_down · (act(W_gate · rms_norm(x)) ⊙ W_up · rms_norm(x)).
fn dense_ffn<B: Backend>(b: &mut B, w: &Dense<B>, a: &Acts<B>, n: usize, eps: f32) {
    let norm = RmsNorm {
        weight: &w.norms.pre,
        eps,
    };
    b.norm_glu(&a.x, norm, &w.gate_up, w.activation, &a.hidden, n);
    residual(b, &a.hidden, &w.down, &w.norms, a, n, eps);
}

/// x += Σ_j weight_j · FFN_{e_j}(rms_norm(x)) over the k experts e_j the router picks for
/// each row, the FFNs gated as [`dense_ffn`]'s.
fn moe_ffn<B: Backend>(b: &mut B, w: &Moe<B>, a: &Acts<B>, n: usize, eps: f32) {
    let m = a.moe.as_ref().expect("allocated for a family with experts");
    let norm = RmsNorm {
        weight: &w.norm,
        eps,
    };
    b.rms_norm(&a.x, norm, &m.normed, n);
    b.matmul(&m.normed, &w.router, &m.logits, n);
    b.moe_route(&m.logits, w.routing, &m.routes, n);
    b.matmul_id(
        &m.normed,
        &w.gate_up,
        &m.routes,
        ExpertInput::Token,
        &m.gate_up,
        n,
    );
    b.glu(w.activation, &m.gate_up, &m.hidden, n * w.routing.k);
    b.matmul_id(
        &m.hidden,
        &w.down,
        &m.routes,
        ExpertInput::Choice,
        &m.out,
        n,
    );
    b.moe_combine_add(&m.out, &m.routes, &a.x, n);
}

/// x += W · y, or x += rms_norm(W · y) where the sub-block has a post-norm.
fn residual<B: Backend>(
    b: &mut B,
    y: &B::Tensor,
    w: &B::Matrix,
    norms: &BlockNorms<B>,
    a: &Acts<B>,
    n: usize,
    eps: f32,
) {
    let Some(post) = &norms.post else {
        return b.matmul_add(y, w, &a.x, n);
    };
    let [out, normed] = a
        .sandwich
        .as_ref()
        .expect("allocated for a family with post-norms");
    b.matmul(y, w, out, n);
    let norm = RmsNorm { weight: post, eps };
    b.rms_norm(out, norm, normed, n);
    b.add(&a.x, normed, n);
}

/// x = the embeddings of `tokens` (scaled where the family scales them).
pub(super) fn embed<B: Backend>(
    b: &mut B,
    w: &Weights<B>,
    scale: Option<f32>,
    tokens: &[u32],
    x: &B::Tensor,
) {
    b.embed(&w.token_embd, tokens, x);
    scale_embeddings(b, scale, x, tokens.len());
}

/// Scales `n` rows of embeddings where the family does.
pub(super) fn scale_embeddings<B: Backend>(b: &mut B, scale: Option<f32>, x: &B::Tensor, n: usize) {
    if let Some(s) = scale {
        b.pointwise(x, Pointwise::Scale(s), n);
    }
}

/// out = output · rms_norm(x) for the first `n` rows of x: the logits (soft-capped where
/// the family caps them).
pub(super) fn logits<B: Backend>(
    b: &mut B,
    w: &Weights<B>,
    softcap: Option<f32>,
    eps: f32,
    x: &B::Tensor,
    out: &B::Tensor,
    n: usize,
) {
    let norm = RmsNorm {
        weight: &w.output_norm,
        eps,
    };
    b.norm_matmul(x, norm, w.output(), out, n);
    if let Some(cap) = softcap {
        b.pointwise(out, Pointwise::SoftCap(cap), n);
    }
}
