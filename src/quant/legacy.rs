//! The legacy 32-element quants Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0. Quantization follows ggml's
//! reference (`quantize_row_*_ref`) operation for operation, so it is bit-exact with ggml and
//! gguf-py; the dots take Q8_0 activations.

use super::blocks::{
    f16_bytes, f16_field, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantBlock,
};
use super::intdot::{dot_i8, sum_i8, unpack_fifth_bits, unpack_nibbles};
use super::kscale::{nearest_int, signed_absmax};
use std::array::from_fn;

/// Strict comparisons as in ggml, so which of -0.0 and 0.0 is kept matches it.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    (lo, hi)
}

fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The largest magnitude of a block of 32, in independent lanes so that it vectorizes (a
/// maximum is exact in any order): the legacy quants' activations are quantized per token.
pub(crate) fn absmax_32(x: &[f32; 32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for chunk in x.as_chunks::<8>().0 {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    lanes.into_iter().fold(0.0, f32::max)
}

/// Inverse of [`unpack_nibbles`]: element j in the low nibble of byte j, element j + 16 high.
fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    from_fn(|j| (q[j] & 0x0f) | (q[j + 16] << 4))
}

fn pack_fifth_bits(q: &[u8; 32]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &v)| acc | (((v >> 4) as u32 & 1) << i));
    bits.to_le_bytes()
}

/// `v.round()` for |v| < 2^22, which a quantizer's scaled values are (NaN gives 0, as
/// `round() as i8` does), in steps that vectorize: the nearest integer, ties to even, then a
/// step away from zero where a tie went toward it.
#[inline(always)]
fn round_half_away(v: f32) -> i32 {
    let r = nearest_int(v);
    let cut = v - r as f32;
    r + (cut == 0.5 && v > 0.0) as i32 - (cut == -0.5 && v < 0.0) as i32
}

/// Truncates `v` toward zero into `0..=max`, as ggml's `MIN(max, (int8_t)v)` on its in-range inputs.
fn trunc_clamp(v: f32, max: i8) -> u8 {
    (v as i8).clamp(0, max) as u8
}

impl QuantBlock<32> for BlockQ4_0 {
    type Act = BlockQ8_0;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_field(self.d);
        for (o, q) in out.iter_mut().zip(unpack_nibbles(&self.qs)) {
            *o = (q as i32 - 8) as f32 * d;
        }
    }

    fn quantize(x: &[f32; 32]) -> Self {
        let d = signed_absmax(x) / -8.0;
        let id = inverse_or_zero(d);
        let q = x.map(|v| trunc_clamp(v * id + 8.5, 15));
        Self {
            d: f16_bytes(d),
            qs: pack_nibbles(&q),
        }
    }

    #[inline(always)]
    fn dot(&self, act: &BlockQ8_0) -> f32 {
        let q = unpack_nibbles(&self.qs).map(|v| v as i8 - 8);
        dot_i8(&q, &act.qs) as f32 * (f16_field(self.d) * f16_field(act.d))
    }
}

impl QuantBlock<32> for BlockQ4_1 {
    type Act = BlockQ8_0;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 32]) {
        let (d, m) = (f16_field(self.d), f16_field(self.m));
        for (o, q) in out.iter_mut().zip(unpack_nibbles(&self.qs)) {
            *o = q as f32 * d + m;
        }
    }

    fn quantize(x: &[f32; 32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        let q = x.map(|v| trunc_clamp((v - min) * id + 0.5, 15));
        Self {
            d: f16_bytes(d),
            m: f16_bytes(min),
            qs: pack_nibbles(&q),
        }
    }

    /// Σ (d·q + m)·a = d·Σ q·a + m·Σ a.
    #[inline(always)]
    fn dot(&self, act: &BlockQ8_0) -> f32 {
        let q = unpack_nibbles(&self.qs);
        let da = f16_field(act.d);
        let qa = dot_i8(&q, &act.qs) as f32;
        let a = sum_i8(&act.qs) as f32;
        f16_field(self.d) * da * qa + f16_field(self.m) * da * a
    }
}

#[inline(always)]
fn unpack_q5(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let lo = unpack_nibbles(qs);
    let hi = unpack_fifth_bits(qh);
    from_fn(|i| lo[i] | hi[i])
}

impl QuantBlock<32> for BlockQ5_0 {
    type Act = BlockQ8_0;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_field(self.d);
        for (o, q) in out.iter_mut().zip(unpack_q5(&self.qs, self.qh)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }

    fn quantize(x: &[f32; 32]) -> Self {
        let d = signed_absmax(x) / -16.0;
        let id = inverse_or_zero(d);
        let q = x.map(|v| trunc_clamp(v * id + 16.5, 31));
        Self {
            d: f16_bytes(d),
            qh: pack_fifth_bits(&q),
            qs: pack_nibbles(&q),
        }
    }

    #[inline(always)]
    fn dot(&self, act: &BlockQ8_0) -> f32 {
        let q = unpack_q5(&self.qs, self.qh).map(|v| v as i8 - 16);
        dot_i8(&q, &act.qs) as f32 * (f16_field(self.d) * f16_field(act.d))
    }
}

impl QuantBlock<32> for BlockQ5_1 {
    type Act = BlockQ8_0;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 32]) {
        let (d, m) = (f16_field(self.d), f16_field(self.m));
        for (o, q) in out.iter_mut().zip(unpack_q5(&self.qs, self.qh)) {
            *o = q as f32 * d + m;
        }
    }

    fn quantize(x: &[f32; 32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        let q = x.map(|v| trunc_clamp((v - min) * id + 0.5, 31));
        Self {
            d: f16_bytes(d),
            m: f16_bytes(min),
            qh: pack_fifth_bits(&q),
            qs: pack_nibbles(&q),
        }
    }

    #[inline(always)]
    fn dot(&self, act: &BlockQ8_0) -> f32 {
        let q = unpack_q5(&self.qs, self.qh);
        let da = f16_field(act.d);
        let qa = dot_i8(&q, &act.qs) as f32;
        let a = sum_i8(&act.qs) as f32;
        f16_field(self.d) * da * qa + f16_field(self.m) * da * a
    }
}

impl QuantBlock<32> for BlockQ8_0 {
    type Act = BlockQ8_0;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 32]) {
        let d = f16_field(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    /// Rounds half away from zero (C's `roundf`), as ggml does for this type.
    fn quantize(x: &[f32; 32]) -> Self {
        let d = absmax_32(x) / 127.0;
        let id = inverse_or_zero(d);
        Self {
            d: f16_bytes(d),
            qs: x.map(|v| round_half_away(v * id) as i8),
        }
    }

    #[inline(always)]
    fn dot(&self, act: &BlockQ8_0) -> f32 {
        dot_i8(&self.qs, &act.qs) as f32 * (f16_field(self.d) * f16_field(act.d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<B: QuantBlock<32>>(x: &[f32; 32]) -> [f32; 32] {
        let mut out = [0.0; 32];
        B::quantize(x).dequantize(&mut out);
        out
    }

    #[test]
    fn levels_on_the_grid_survive_exactly() {
        // Multiples of 0.5 from -4 to 3.5: exactly the 16 levels of Q4_0 with d = 0.5, and
        // representable by every other legacy type with a power-of-two scale.
        let x: [f32; 32] = from_fn(|i| ((i % 16) as f32 - 8.0) * 0.5);
        assert_eq!(round_trip::<BlockQ4_0>(&x), x);
        assert_eq!(round_trip::<BlockQ4_1>(&x), x);
        let x5: [f32; 32] = from_fn(|i| (i as f32 - 16.0) * 0.25);
        assert_eq!(round_trip::<BlockQ5_0>(&x5), x5);
        assert_eq!(round_trip::<BlockQ5_1>(&x5), x5);
    }

    #[test]
    fn fifth_bits_land_on_their_elements() {
        let q: [u8; 32] = from_fn(|i| {
            if i % 3 == 0 {
                16 + i as u8 % 16
            } else {
                i as u8 % 16
            }
        });
        assert_eq!(unpack_q5(&pack_nibbles(&q), pack_fifth_bits(&q)), q);
    }

    #[test]
    fn rounding_matches_round_half_away_from_zero() {
        let edges = [
            0.5,
            -0.5,
            1.5,
            -2.5,
            0.499_999_97,
            -0.499_999_97,
            126.5,
            -127.0,
            127.49,
            -3.5,
            4.5,
            f32::NAN,
        ];
        let steps = (-2600..2600).map(|i| i as f32 * 0.049);
        for v in edges.into_iter().chain(steps) {
            assert_eq!(round_half_away(v) as i8, v.round() as i8, "{v}");
        }
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let zero = [0.0f32; 32];
        assert_eq!(round_trip::<BlockQ4_0>(&zero), zero);
        assert_eq!(round_trip::<BlockQ4_1>(&zero), zero);
        assert_eq!(round_trip::<BlockQ5_0>(&zero), zero);
        assert_eq!(round_trip::<BlockQ5_1>(&zero), zero);
        assert_eq!(round_trip::<BlockQ8_0>(&zero), zero);
    }
}
