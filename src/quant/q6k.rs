//! Q6_K: 256 weights in 16 groups of 16, six bits per weight, a signed 8-bit scale per group.

use super::blocks::{f16_bytes, f16_field, BlockQ6K, BlockQ8K, QuantBlock};
use super::intdot::scaled_dot_16;
use super::kscale::{make_qx_quants, nearest_int, signed_absmax, GROUP_MAX_EPS};

/// Levels in -32..32. For h in 0..2, l in 0..32, elements 128h + l, +32, +64, +96 take the low
/// nibble of `ql[64h + l]`, of `ql[64h + 32 + l]`, then the high nibbles, and bit pairs 0, 1, 2, 3
/// of `qh[32h + l]` on top.
#[inline(always)]
fn unpack_q6k(b: &BlockQ6K) -> [i8; 256] {
    let mut q = [0i8; 256];
    for h in 0..2 {
        for l in 0..32 {
            let (lo, hi, top) = (b.ql[64 * h + l], b.ql[64 * h + 32 + l], b.qh[32 * h + l]);
            let level =
                |nibble: u8, pair: usize| (nibble | (((top >> (2 * pair)) & 3) << 4)) as i8 - 32;
            q[128 * h + l] = level(lo & 0x0f, 0);
            q[128 * h + 32 + l] = level(hi & 0x0f, 1);
            q[128 * h + 64 + l] = level(lo >> 4, 2);
            q[128 * h + 96 + l] = level(hi >> 4, 3);
        }
    }
    q
}

/// Inverse of [`unpack_q6k`] for unsigned levels `q + 32`.
fn pack_q6k(levels: &[u8; 256]) -> ([u8; 128], [u8; 64]) {
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for h in 0..2 {
        for l in 0..32 {
            let q = |s: usize| levels[128 * h + 32 * s + l];
            ql[64 * h + l] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
            ql[64 * h + 32 + l] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
            qh[32 * h + l] = (0..4).fold(0, |acc, s| acc | ((q(s) >> 4) << (2 * s)));
        }
    }
    (ql, qh)
}

impl QuantBlock<256> for BlockQ6K {
    type Act = BlockQ8K;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 256]) {
        let q = unpack_q6k(self);
        let d = f16_field(self.d);
        for g in 0..16 {
            let dl = d * self.scales[g] as f32;
            for l in 0..16 {
                out[16 * g + l] = dl * q[16 * g + l] as f32;
            }
        }
    }

    /// ggml's reference: per group of 16 a symmetric fit of levels -32..32, then 8-bit group
    /// scales relative to the largest (which maps to -128), then requantization.
    fn quantize(x: &[f32; 256]) -> Self {
        let mut levels = [0u8; 256];
        let mut scales = [0.0f32; 16];
        for g in 0..16 {
            scales[g] = make_qx_quants(
                &x[16 * g..16 * g + 16],
                32,
                &mut levels[16 * g..16 * g + 16],
            );
        }
        let max_scale = signed_absmax(&scales);
        if max_scale.abs() < GROUP_MAX_EPS {
            return bytemuck::Zeroable::zeroed();
        }
        let iscale = -128.0 / max_scale;
        let d = f16_bytes(1.0 / iscale);
        let stored = scales.map(|s| nearest_int(iscale * s).clamp(-128, 127) as i8);
        for g in 0..16 {
            let dl = f16_field(d) * stored[g] as f32;
            if dl == 0.0 {
                continue;
            }
            for l in 0..16 {
                levels[16 * g + l] = (nearest_int(x[16 * g + l] / dl).clamp(-32, 31) + 32) as u8;
            }
        }
        let (ql, qh) = pack_q6k(&levels);
        Self {
            ql,
            qh,
            scales: stored,
            d,
        }
    }

    #[inline(always)]
    fn dot(&self, act: &BlockQ8K) -> f32 {
        let scales = self.scales.map(i16::from);
        let sumi = scaled_dot_16(&unpack_q6k(self), &scales, &act.qs);
        act.d() * f16_field(self.d) * sumi as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_bit_packing_round_trips() {
        let levels: [u8; 256] = std::array::from_fn(|i| (i * 13 % 64) as u8);
        let (ql, qh) = pack_q6k(&levels);
        let block = BlockQ6K {
            ql,
            qh,
            scales: [0; 16],
            d: [0; 2],
        };
        assert_eq!(unpack_q6k(&block), levels.map(|v| v as i8 - 32));
    }
}
