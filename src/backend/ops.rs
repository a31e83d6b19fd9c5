//! The parameters of the backend's ops: architecture choices passed as values (activation,
//! attention options, norms, RoPE), and the rows of a step as spans of sequences.

/// The activation of a gated linear unit's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// x · sigmoid(x): SwiGLU (llama, qwen).
    Silu,
    /// GELU with the tanh approximation, as ggml's `ggml_gelu`: GeGLU (gemma).
    GeluTanh,
}

impl Activation {
    pub const ALL: [Activation; 2] = [Activation::Silu, Activation::GeluTanh];
    /// ggml's constants of GELU's tanh approximation (as f32).
    pub const GELU_SQRT_2_OVER_PI: f32 = 0.797_884_6;
    pub const GELU_COEF_A: f32 = 0.044_715;

    /// The activation of one value, in f32 as every backend computes it. GELU is exact 0 below
    /// -10 and x above 10, where f32's tanh saturates anyway (so that no device's tanh sees
    /// arguments large enough to overflow its exponentials).
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Silu => x / (1.0 + (-x).exp()),
            Self::GeluTanh if x <= -10.0 => 0.0,
            Self::GeluTanh if x >= 10.0 => x,
            Self::GeluTanh => {
                let inner = Self::GELU_SQRT_2_OVER_PI * x * (1.0 + Self::GELU_COEF_A * x * x);
                0.5 * x * (1.0 + inner.tanh())
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Silu => "silu",
            Self::GeluTanh => "gelu_tanh",
        }
    }
}

/// How one layer attends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionOpts {
    /// Multiplies q · k before the softmax (1/√head_dim in most models).
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions above p - window.
    pub window: Option<usize>,
    /// Scores become cap · tanh(score / cap) after scaling (gemma2).
    pub softcap: Option<f32>,
}

impl AttentionOpts {
    /// Full causal attention scaled by 1/√head_dim.
    pub fn causal(head_dim: usize) -> Self {
        Self {
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: None,
            softcap: None,
        }
    }

    /// The first key position a query at `pos` sees.
    pub fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }

    /// A score as the softmax takes it.
    pub fn score(&self, dot: f32) -> f32 {
        let s = self.scale * dot;
        self.softcap.map_or(s, |cap| cap * (s / cap).tanh())
    }
}

/// An element-wise map applied in place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pointwise {
    /// x · s (gemma's embeddings, by √n_embd).
    Scale(f32),
    /// cap · tanh(x / cap) (gemma2's final logits).
    SoftCap(f32),
}

impl Pointwise {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Scale(s) => x * s,
            Self::SoftCap(cap) => cap * (x / cap).tanh(),
        }
    }
}

/// How a mixture of experts picks each token's experts from its router logits: the `k`
/// largest of their softmax (the lower id first on ties), weighted by their probabilities,
/// renormalised to sum to 1 where `normalize` (Mixtral, Qwen3-MoE) or as the softmax gave
/// them (OLMoE), as llama.cpp's `build_moe_ffn` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    pub k: usize,
    pub normalize: bool,
}

impl Routing {
    /// One row's route from its logits: `route[..k]` the chosen experts' ids (as f32 values,
    /// exact below 2²⁴) in falling probability, `route[k..2k]` their weights. Every backend
    /// routes by these values, so that they choose alike.
    pub fn route(&self, logits: &[f32], route: &mut [f32]) {
        let k = self.k;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
        let sum: f32 = p.iter().sum();
        let mut order: Vec<usize> = (0..p.len()).collect();
        // Stable: equal probabilities keep the lower id first.
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let (ids, weights) = route[..2 * k].split_at_mut(k);
        for ((id, w), &e) in ids.iter_mut().zip(weights.iter_mut()).zip(&order) {
            *id = e as f32;
            *w = p[e] / sum;
        }
        if self.normalize {
            // llama.cpp's clamp: the smallest normal f16, against a division by zero.
            let total = weights.iter().sum::<f32>().max(6.103_515_6e-5);
            weights.iter_mut().for_each(|w| *w /= total);
        }
    }
}

/// Which row of a product's input each expert choice of [`super::Backend::matmul_id`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertInput {
    /// Row t for every choice of row t: the token's input, shared by its experts.
    Token,
    /// Row t·k + j for choice j of row t: each choice's own input.
    Choice,
}

/// RMS normalisation by a weight: x / √(mean(x²) + eps) · weight.
pub struct RmsNorm<'a, V> {
    pub weight: &'a V,
    pub eps: f32,
}

impl<V> Clone for RmsNorm<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for RmsNorm<'_, V> {}

/// The per-head RMS norms of queries and keys before RoPE (Qwen3, Gemma 3): each head's
/// `head_dim` values normalised, with a `[head_dim]` weight for queries and one for keys.
pub struct QkNorm<'a, V> {
    pub q: &'a V,
    pub k: &'a V,
    pub eps: f32,
}

/// How queries and keys are finished before attention: RoPE by a `[n_ctx, head_dim / 2]`
/// table of (cos, sin) pairs (one per position and frequency, so that every backend rotates
/// by the same values), after the per-head norms where the model has them.
pub struct Rope<'a, V> {
    pub cos_sin: &'a V,
    pub qk_norm: Option<QkNorm<'a, V>>,
}

/// Consecutive rows of a step that belong to one sequence: `len` positions from `pos` of the
/// sequence whose keys and values are in cache slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub slot: usize,
    pub pos: usize,
    pub len: usize,
}

/// The rows of one forward step: spans of independent sequences, one after the other, each
/// with its own cache slot and positions. One sequence is the batch of one span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    spans: Vec<Span>,
}

impl Batch {
    /// `len` rows of the sequence in `slot`, at positions `pos..pos + len`.
    pub fn one(slot: usize, pos: usize, len: usize) -> Self {
        Self::new(vec![Span { slot, pos, len }])
    }

    /// The spans in row order; empty ones are dropped.
    pub fn new(mut spans: Vec<Span>) -> Self {
        spans.retain(|s| s.len > 0);
        Self { spans }
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    pub fn rows(&self) -> usize {
        self.spans.iter().map(|s| s.len).sum()
    }

    /// The cache slot and position of each row, in row order.
    pub fn positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.spans
            .iter()
            .flat_map(|s| (s.pos..s.pos + s.len).map(move |p| (s.slot, p)))
    }
}

/// One layer of a KV cache, for the rows of a step.
pub struct CacheLayer<'a, C> {
    pub cache: &'a C,
    pub layer: usize,
    pub batch: &'a Batch,
}

impl<C> Clone for CacheLayer<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for CacheLayer<'_, C> {}

/// A backend's own scratch tensors, used inside a fused op between its steps: a fused op
/// takes each of them at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scratch {
    /// The normalised input of a product.
    Normed,
    /// The outputs of a product before they are finished (GLU, RoPE, a residual add).
    Products,
    /// Each expert's list of the choices routed to it, for a backend's prompt products of
    /// [`super::Backend::matmul_id`].
    ExpertLists,
}

/// The shape of a tensor (`[rows, cols]`, rows as allocated) or of a weight matrix
/// (`[out_features, in_features]`).
pub trait Dims {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_lists_each_rows_slot_and_position() {
        let batch = Batch::new(vec![
            Span {
                slot: 2,
                pos: 5,
                len: 2,
            },
            Span {
                slot: 0,
                pos: 0,
                len: 0,
            },
            Span {
                slot: 0,
                pos: 9,
                len: 1,
            },
        ]);
        assert_eq!(batch.rows(), 3);
        assert_eq!(batch.spans().len(), 2, "the empty span is dropped");
        let rows: Vec<_> = batch.positions().collect();
        assert_eq!(rows, [(2, 5), (2, 6), (0, 9)]);
    }

    #[test]
    fn a_window_hides_keys_at_or_before_pos_minus_window() {
        let opts = AttentionOpts {
            window: Some(4),
            ..AttentionOpts::causal(64)
        };
        assert_eq!(opts.first_key(2), 0);
        assert_eq!(opts.first_key(3), 0);
        assert_eq!(opts.first_key(4), 1);
        assert_eq!(opts.first_key(10), 7);
        assert_eq!(AttentionOpts::causal(64).first_key(10), 0);
    }

    #[test]
    fn routing_takes_the_top_k_of_the_softmax_and_renormalises_where_asked() {
        let logits = [0.5f32, 2.0, -1.0, 2.0, 1.0];
        let p: Vec<f32> = logits.iter().map(|l| l.exp()).collect();
        let z: f32 = p.iter().sum();
        let mut route = [0f32; 6];
        Routing {
            k: 3,
            normalize: false,
        }
        .route(&logits, &mut route);
        // The tie between experts 1 and 3 keeps the lower id first.
        assert_eq!(route[..3], [1.0, 3.0, 4.0]);
        for (w, e) in route[3..].iter().zip([1, 3, 4]) {
            assert!((w - p[e] / z).abs() < 1e-6, "{route:?}");
        }
        Routing {
            k: 3,
            normalize: true,
        }
        .route(&logits, &mut route);
        assert_eq!(route[..3], [1.0, 3.0, 4.0]);
        let kept = p[1] + p[3] + p[4];
        for (w, e) in route[3..].iter().zip([1, 3, 4]) {
            assert!((w - p[e] / kept).abs() < 1e-6, "{route:?}");
        }
    }

    #[test]
    fn gelu_matches_the_tanh_formula_in_f64_and_saturates() {
        for x in [-9.5f32, -3.0, -0.5, 0.0, 0.1, 1.0, 2.5, 9.9] {
            let xd = x as f64;
            let want = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            let got = Activation::GeluTanh.apply(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu({x}): {got} vs {want}"
            );
        }
        assert_eq!(Activation::GeluTanh.apply(-20.0), 0.0);
        assert_eq!(Activation::GeluTanh.apply(20.0), 20.0);
        assert!((Activation::Silu.apply(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
