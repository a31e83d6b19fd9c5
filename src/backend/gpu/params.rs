//! The kernels' parameter structs, defined once here: each is the `#[repr(C)]` struct the host
//! writes into a dispatch's uniform slot and, from the same definition, the WGSL struct the
//! shaders read (prepended to their source when a kernel is composed; the two op files that
//! declare theirs by hand are checked against it by `kernels`' tests, as every kernel is).

use super::{MatrixPart, WeightRun};
use bytemuck::{Pod, Zeroable};

/// A parameter struct as the shaders see it: its WGSL name, and its fields in order (all of
/// them 4-byte scalars, so that the host's `repr(C)` layout is WGSL's uniform layout), each
/// with its WGSL type and its documentation.
pub struct ParamsLayout {
    pub wgsl_name: &'static str,
    pub doc: &'static str,
    pub fields: &'static [ParamsField],
}

pub struct ParamsField {
    pub name: &'static str,
    pub wgsl_type: &'static str,
    pub doc: &'static str,
}

impl ParamsLayout {
    /// The WGSL declaration, the fields' documentation as comments.
    pub fn wgsl(&self) -> String {
        let mut text = comments(self.doc, "");
        text += &format!("struct {} {{\n", self.wgsl_name);
        for f in self.fields {
            text += &comments(f.doc, "    ");
            text += &format!("    {}: {},\n", f.name, f.wgsl_type);
        }
        text + "}\n"
    }
}

/// Documentation as WGSL line comments.
fn comments(doc: &str, indent: &str) -> String {
    doc.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{indent}// {l}\n"))
        .collect()
}

/// A struct the host writes as a kernel's parameters.
pub trait KernelParams: Pod {
    /// Its layout, one `static` per struct (compared by address).
    fn layout() -> &'static ParamsLayout;
}

/// The WGSL name of a field's Rust type.
pub trait WgslScalar {
    const WGSL: &'static str;
}

impl WgslScalar for u32 {
    const WGSL: &'static str = "u32";
}

impl WgslScalar for f32 {
    const WGSL: &'static str = "f32";
}

/// Defines a parameter struct (named `$wgsl` in the shaders) and its [`KernelParams`].
macro_rules! kernel_params {
    (
        $(#[doc = $doc:literal])*
        $wgsl:literal struct $name:ident {
            $($(#[doc = $fdoc:literal])* $field:ident: $ty:ident,)*
        }
    ) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
        pub(crate) struct $name {
            $($(#[doc = $fdoc])* pub(crate) $field: $ty,)*
        }

        impl KernelParams for $name {
            fn layout() -> &'static ParamsLayout {
                static LAYOUT: ParamsLayout = ParamsLayout {
                    wgsl_name: $wgsl,
                    doc: concat!($($doc, "\n",)* ""),
                    fields: &[$(ParamsField {
                        name: stringify!($field),
                        wgsl_type: <$ty as WgslScalar>::WGSL,
                        doc: concat!($($fdoc, "\n",)* ""),
                    }),*],
                };
                &LAYOUT
            }
        }
    };
}

kernel_params! {
    /// Weight rows to decode (shaders/dequant.wgsl).
    "Params" struct DequantParams {
        w_k: u32,
        w_bpr: u32,
        w_scales: u32,
        /// Rows held by this part of the matrix, and the first of them in the whole matrix.
        rows: u32,
        row_start: u32,
        /// Rows to produce (tokens for get_rows); for dequant_f16, the first row of this part
        /// that it decodes.
        n: u32,
    }
}

impl DequantParams {
    pub(super) fn new(run: &WeightRun, part: &MatrixPart, cols: usize, n: u32) -> Self {
        Self {
            w_k: cols as u32,
            w_bpr: part.layout.blocks_per_row,
            w_scales: part.layout.scales_offset,
            rows: part.rows,
            row_start: run.offset as u32 + part.row_start,
            n,
        }
    }
}

kernel_params! {
    /// Parameters of every weight product (matvec, matmul): the weight layout (row length,
    /// blocks per row, where the scales start), which rows this dispatch covers, and how to
    /// finish.
    "ProductParams" struct ProductParams {
        w_k: u32,
        w_bpr: u32,
        w_scales: u32,
        rows: u32,
        row_start: u32,
        /// Width of a y row (all rows of the whole matrix).
        y_stride: u32,
        has_bias: u32,
        n_tokens: u32,
        /// 1: add to y (the residual) instead of overwriting it.
        accumulate: u32,
        /// 1: x is RMS-normalised on the fly (matvec: weight NW, epsilon eps).
        norm: u32,
        eps: f32,
        /// Query/key/value products (matvec_qkv): first position, head size, key/value
        /// width, NeoX rotation pairs; y_stride is the query width.
        pos: u32,
        head_dim: u32,
        kv_width: u32,
        neox: u32,
        /// Not 0: rows interleave gate and up, and this is the activation of their GLU
        /// (ACT_*), written for each pair to column row / 2 of y.
        glu: u32,
    }
}

kernel_params! {
    /// shaders/norm.wgsl: rows of `cols` values.
    "Params" struct NormParams {
        cols: u32,
        eps: f32,
    }
}

kernel_params! {
    /// shaders/rope.wgsl: RoPE and the cache write after a step's `[q | k | v]` products.
    "Params" struct RopeParams {
        pos: u32,
        head_dim: u32,
        q_width: u32,
        kv_width: u32,
        neox: u32,
        n: u32,
        /// 1: q and k heads in pair order, as the device's own `[q | k | v]` matrices leave
        /// them; 0: in the heads' own order.
        pairs: u32,
        /// The step's row of the sequence's first token, in the products and in q.
        first_row: u32,
    }
}

kernel_params! {
    /// shaders/qk_norm.wgsl: per-head RMS norms of the queries and keys among a step's
    /// `[q | k | v]` products.
    "Params" struct QkNormParams {
        head_dim: u32,
        /// Query heads; the key heads follow them.
        q_heads: u32,
        /// One token's products: q_width + 2 kv_width.
        width: u32,
        neox: u32,
        /// 1: q and k heads in pair order; 0: in their own order.
        pairs: u32,
        eps: f32,
    }
}

kernel_params! {
    /// Every attention kernel's (declared by shaders/attention_params.wgsl).
    "Params" struct AttentionParams {
        n_head: u32,
        n_head_kv: u32,
        head_dim: u32,
        pos: u32,
        kv_width: u32,
        q_width: u32,
        scale: f32,
        /// Key chunks per (head, token) in the decode kernel's partials.
        n_chunks: u32,
        /// Queries in this step.
        n: u32,
        /// Where a q8_0 cache's scales begin, in words (kv_q8_0.wgsl).
        scales: u32,
        /// Sliding-window attention: a query sees its last `window` keys (itself
        /// included); 0: all.
        window: u32,
        /// Scores become softcap · tanh(score / softcap) (Gemma 2); 0: left as they are.
        softcap: f32,
        /// The step's row of the sequence's first query, in q and the output.
        first_row: u32,
    }
}

kernel_params! {
    /// shaders/quantize_acts.wgsl: rows of `cols` activations, `n` of them, and the norm's
    /// epsilon where it is folded in.
    "Params" struct ActsParams {
        cols: u32,
        n: u32,
        eps: f32,
    }
}

kernel_params! {
    /// shaders/kv_store.wgsl's (declared there).
    "Params" struct KvStoreParams {
        pos: u32,
        kv_width: u32,
        n: u32,
        /// Where the caches' scales begin, in words.
        scales: u32,
    }
}

kernel_params! {
    /// shaders/elementwise.wgsl: ops over the first `len` elements.
    "Params" struct ElementParams {
        len: u32,
        /// copy_row: first element of the source row; glu: the width of a row of the output
        /// (its gate and up inputs are rows twice as wide).
        offset: u32,
        /// glu, glu_pairs: the activation (ACT_*); pointwise: 1 scale, 2 soft-cap.
        kind: u32,
        /// pointwise: the scale or the cap.
        value: f32,
    }
}

impl ElementParams {
    /// The first `len` elements, with nothing else to say.
    pub(super) fn over(len: usize) -> Self {
        Self {
            len: len as u32,
            ..Self::default()
        }
    }
}

kernel_params! {
    /// shaders/moe.wgsl: routing and mixing a mixture of experts.
    "MoeParams" struct MoeParams {
        /// Rows (tokens).
        n: u32,
        /// moe_route, moe_lists: experts; moe_combine_add: the width of a residual row.
        width: u32,
        /// Experts a row takes.
        k: u32,
        /// moe_route: 1 renormalises the chosen weights to sum to 1.
        normalize: u32,
    }
}

kernel_params! {
    /// shaders/matvec_id.wgsl: products with the experts each row chose.
    "IdParams" struct IdParams {
        w_k: u32,
        w_bpr: u32,
        w_scales: u32,
        /// Rows of one expert's block: the width of a y row.
        rows: u32,
        /// Experts a row chose.
        k: u32,
        /// The experts this part holds: `experts` of them from `expert_start`.
        expert_start: u32,
        experts: u32,
        /// 1: choice c reads row c of x; 0: row t = c / k, shared by the row's choices.
        per_choice: u32,
        /// Rows (tokens): matmul_id's lists are n + 1 long.
        n: u32,
    }
}

kernel_params! {
    /// shaders/reduce.wgsl: row reductions.
    "Params" struct ReduceParams {
        len: u32,
        /// softmax: logits are divided by this first.
        temperature: f32,
    }
}

kernel_params! {
    /// shaders/sample.wgsl: the sampler's settings and this step's vocabulary.
    "SampleParams" struct SampleParams {
        n_vocab: u32,
        top_k: u32,
        top_p: f32,
        min_p: f32,
        temperature: f32,
        repeat_penalty: f32,
        frequency_penalty: f32,
        presence_penalty: f32,
        /// Entries of `bias`: (token, bias) pairs.
        n_bias: u32,
        /// How many recent tokens the penalties look at (at most WINDOW).
        repeat_last_n: u32,
        seed_lo: u32,
        seed_hi: u32,
        /// Slices of the first stage: n_vocab / SLICE, rounded up.
        n_slices: u32,
    }
}
