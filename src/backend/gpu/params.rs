//! The kernels' parameter structs, as the shaders declare them.

use super::*;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct DequantParams {
    pub(super) w_k: u32,
    pub(super) w_bpr: u32,
    pub(super) w_scales: u32,
    pub(super) rows: u32,
    pub(super) row_start: u32,
    pub(super) n: u32,
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

/// shaders/common.wgsl's ProductParams, field for field.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct ProductParams {
    pub(super) w_k: u32,
    pub(super) w_bpr: u32,
    pub(super) w_scales: u32,
    pub(super) rows: u32,
    pub(super) row_start: u32,
    pub(super) y_stride: u32,
    pub(super) has_bias: u32,
    pub(super) n_tokens: u32,
    pub(super) accumulate: u32,
    pub(super) norm: u32,
    pub(super) eps: f32,
    pub(super) pos: u32,
    pub(super) head_dim: u32,
    pub(super) kv_width: u32,
    pub(super) neox: u32,
    pub(super) glu: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct NormParams {
    pub(super) cols: u32,
    pub(super) eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct RopeParams {
    pub(super) pos: u32,
    pub(super) head_dim: u32,
    pub(super) q_width: u32,
    pub(super) kv_width: u32,
    pub(super) neox: u32,
    pub(super) n: u32,
    /// 1: q and k heads in pair order, as the device's own `[q | k | v]` matrices leave them;
    /// 0: in the heads' own order.
    pub(super) pairs: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct AttentionParams {
    pub(super) n_head: u32,
    pub(super) n_head_kv: u32,
    pub(super) head_dim: u32,
    pub(super) pos: u32,
    pub(super) kv_width: u32,
    pub(super) q_width: u32,
    pub(super) scale: f32,
    pub(super) n_chunks: u32,
    pub(super) n: u32,
    pub(super) scales: u32,
}

/// shaders/kv_store.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct KvStoreParams {
    pub(super) pos: u32,
    pub(super) kv_width: u32,
    pub(super) n: u32,
    pub(super) scales: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct ElementParams {
    pub(super) len: u32,
    pub(super) offset: u32,
    /// glu, glu_pairs: the activation (`activation_code`); pointwise: 1 scale, 2 soft-cap.
    pub(super) kind: u32,
    /// pointwise: the scale or the cap.
    pub(super) value: f32,
}

impl ElementParams {
    /// The first `len` elements, with nothing else to say.
    pub(super) fn over(len: usize) -> Self {
        Self {
            len: len as u32,
            offset: 0,
            kind: 0,
            value: 0.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct ReduceParams {
    pub(super) len: u32,
    pub(super) temperature: f32,
}
