//! Byte layouts of the ggml blocks, field for field as ggml-common.h declares them.
//!
//! Every field is a byte array, so each struct has alignment 1 and can be viewed in place
//! over any byte slice: GGUF aligns tensors, not the blocks inside them (a Q4_0 block is
//! 18 bytes). Multi-byte fields are little-endian and read through the helpers below.

use super::float::F16_TABLE;
use bytemuck::{Pod, Zeroable};

/// A scale stored as IEEE half precision, converted by table: one load, where the arithmetic
/// conversion takes a dozen instructions (a lot next to a 32-element block's integer dot)
/// and the F16C instruction needs a register merge that chains successive blocks together.
#[inline(always)]
pub(crate) fn f16_field(bytes: [u8; 2]) -> f32 {
    F16_TABLE[u16::from_le_bytes(bytes) as usize]
}

#[inline(always)]
pub(crate) fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// A ggml block of `N` elements: how it decodes, encodes, and dots with activations.
pub(crate) trait QuantBlock<const N: usize>: Pod {
    /// The activation block this block is dotted with.
    type Act: Pod;
    fn dequantize(&self, out: &mut [f32; N]);
    /// Encodes finite values (the caller checks).
    fn quantize(x: &[f32; N]) -> Self;
    /// Dot product with the same `N` elements of the activation, in integers inside the block.
    fn dot(&self, act: &Self::Act) -> f32;
}

/// 32 weights `d * (q - 8)`, q in 0..16; byte j holds element j (low nibble) and j + 16.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}

/// 32 weights `d * q + m`, q in 0..16, nibbles as in [`BlockQ4_0`].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}

/// 32 weights `d * (q - 16)`, q in 0..32: low nibbles as in [`BlockQ4_0`], bit i of the
/// little-endian u32 `qh` is the fifth bit of element i.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 32 weights `d * q + m`, q in 0..32, bits as in [`BlockQ5_0`].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 32 values `d * q`. Also the activation block of the legacy quants.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}

/// 256 weights in 16 groups of 16: `d * sc * q - dmin * m`, q in 0..4, `scales[g]` = sc | m << 4.
/// Element 128h + 32s + l is bits 2s..2s+2 of `qs[32h + l]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}

/// 256 weights in 16 groups of 16: `d * (sc - 32) * q`, q in -4..4, 6-bit scales packed in
/// `scales`. Low two bits of q as in [`BlockQ2K`]; the high bit of element 128h + 32s + l is bit
/// 4h + s of `hmask[l]`, and a set bit means "no -4 offset".
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}

/// 256 weights in 8 groups of 32: `d * sc * q - dmin * m`, q in 0..16, 6-bit sc and m packed
/// in `scales`. Element 64h + l is the low nibble of `qs[32h + l]`, element 64h + 32 + l the high.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// [`BlockQ4K`] with a fifth bit: bit 2h of `qh[l]` for element 64h + l, bit 2h + 1 for 64h + 32 + l.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// 256 weights in 16 groups of 16: `d * scales[g] * (q - 32)`, q in 0..64. For half h, l in 0..32:
/// elements 128h + l, +32, +64, +96 take the low nibble of `ql[64h + l]`, of `ql[64h + 32 + l]`,
/// the high nibble of each, and bits 0-1, 2-3, 4-5, 6-7 of `qh[32h + l]` as their top two bits.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}

/// Activation block of the k-quants: 256 values `d * q` and the sums of each 16 q, which
/// fold the k-quants' per-group minimums into one multiply per group.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; 256],
    pub bsums: [u8; 32],
}

impl BlockQ8K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    #[inline(always)]
    pub fn bsum(&self, group: usize) -> i32 {
        i16::from_le_bytes([self.bsums[2 * group], self.bsums[2 * group + 1]]) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;
    use std::mem::size_of;

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(size_of::<BlockQ4_0>(), GgmlType::Q4_0.type_size());
        assert_eq!(size_of::<BlockQ4_1>(), GgmlType::Q4_1.type_size());
        assert_eq!(size_of::<BlockQ5_0>(), GgmlType::Q5_0.type_size());
        assert_eq!(size_of::<BlockQ5_1>(), GgmlType::Q5_1.type_size());
        assert_eq!(size_of::<BlockQ8_0>(), GgmlType::Q8_0.type_size());
        assert_eq!(size_of::<BlockQ2K>(), GgmlType::Q2K.type_size());
        assert_eq!(size_of::<BlockQ3K>(), GgmlType::Q3K.type_size());
        assert_eq!(size_of::<BlockQ4K>(), GgmlType::Q4K.type_size());
        assert_eq!(size_of::<BlockQ5K>(), GgmlType::Q5K.type_size());
        assert_eq!(size_of::<BlockQ6K>(), GgmlType::Q6K.type_size());
        // ggml's block_q8_K: float d, int8 qs[256], int16 bsums[16].
        assert_eq!(size_of::<BlockQ8K>(), 292);
    }
}
