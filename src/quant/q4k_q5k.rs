//! Q4_K and Q5_K: 256 weights in 8 groups of 32, each group with a 6-bit scale and minimum.

use super::blocks::{f16_bytes, f16_field, BlockQ4K, BlockQ5K, BlockQ8K, QuantBlock};
use super::intdot::group_dots;
use super::kscale::{make_qkx2_quants, nearest_int, positive_max};

/// The 8 group scales and minimums: for g < 4, the low six bits of bytes g and g + 4; for
/// g ≥ 4, the nibbles of byte g + 4 with top bits from the spare high bits of bytes g - 4 and g.
/// Done four bytes at a time in u32 words, a dozen instructions instead of a vectorizer's tangle.
#[inline(always)]
pub(super) fn unpack_scale_min(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let sc_high = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let m_high = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let join = |low: u32, high: u32| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&low.to_le_bytes());
        out[4..].copy_from_slice(&high.to_le_bytes());
        out
    };
    (join(w0 & LOW6, sc_high), join(w1 & LOW6, m_high))
}

fn pack_scale_min(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for g in 0..4 {
        s[g] = sc[g] | ((sc[g + 4] >> 4) << 6);
        s[g + 4] = m[g] | ((m[g + 4] >> 4) << 6);
        s[g + 8] = (sc[g + 4] & 0x0f) | ((m[g + 4] & 0x0f) << 4);
    }
    s
}

/// Element 64h + l is the low nibble of `qs[32h + l]`, element 64h + 32 + l the high one.
#[inline(always)]
fn unpack_4bit(qs: &[u8; 128]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for h in 0..4 {
        for l in 0..32 {
            q[64 * h + l] = qs[32 * h + l] & 0x0f;
            q[64 * h + 32 + l] = qs[32 * h + l] >> 4;
        }
    }
    q
}

fn pack_4bit(q: &[u8; 256]) -> [u8; 128] {
    std::array::from_fn(|i| {
        let (h, l) = (i / 32, i % 32);
        (q[64 * h + l] & 0x0f) | ((q[64 * h + 32 + l] & 0x0f) << 4)
    })
}

/// Q5_K levels: the fifth bit of element e is bit e / 32 of `qh[e % 32]`.
#[inline(always)]
fn unpack_q5k(b: &BlockQ5K) -> [u8; 256] {
    let mut q = unpack_4bit(&b.qs);
    for bit in 0..8 {
        for l in 0..32 {
            q[32 * bit + l] |= ((b.qh[l] >> bit) & 1) << 4;
        }
    }
    q
}

/// `d·sc·q - dmin·m` per group of 32.
#[inline(always)]
fn dequantize_groups(q: &[u8; 256], d: f32, dmin: f32, scales: &[u8; 12], out: &mut [f32; 256]) {
    let (sc, m) = unpack_scale_min(scales);
    for g in 0..8 {
        let dl = d * sc[g] as f32;
        let ml = dmin * m[g] as f32;
        for l in 0..32 {
            out[32 * g + l] = dl * q[32 * g + l] as f32 - ml;
        }
    }
}

/// Σ (d·sc·q - dmin·m)·a = d·Σ sc·(Σ q·a over the group) - dmin·Σ m·(Σ a over the group).
#[inline(always)]
fn dot_groups(q: &[u8; 256], d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], act: &BlockQ8K) -> f32 {
    let (sc, m) = unpack_scale_min(scales);
    let sums = group_dots::<u8, 32, 8>(q, &act.qs);
    let (mut sumi, mut summ) = (0, 0);
    for g in 0..8 {
        sumi += sc[g] as i32 * sums[g];
        summ += m[g] as i32 * (act.bsum(2 * g) + act.bsum(2 * g + 1));
    }
    let da = act.d();
    da * f16_field(d) * sumi as f32 - da * f16_field(dmin) * summ as f32
}

/// ggml's reference quantizer shared by both types: per group, a weighted affine fit of
/// levels `0..=nmax`; then 6-bit group scales and minimums relative to the block's largest,
/// and a final requantization against the stored values. Returns (d, dmin, scales, levels).
fn quantize_groups(
    x: &[f32; 256],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; 256]) {
    let mut levels = [0u8; 256];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for g in 0..8 {
        let xs = &x[32 * g..32 * g + 32];
        let av_x = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        (scales[g], mins[g]) = make_qkx2_quants(
            xs,
            &weights,
            nmax,
            rmin,
            0.1,
            nstep,
            false,
            &mut levels[32 * g..32 * g + 32],
        );
    }
    let max_scale = positive_max(&scales);
    let max_min = positive_max(&mins);
    let to_6bit = |v: f32, max: f32| {
        let inv = if max > 0.0 { 63.0 / max } else { 0.0 };
        nearest_int(inv * v).clamp(0, 63) as u8
    };
    let sc = scales.map(|s| to_6bit(s, max_scale));
    let m = mins.map(|s| to_6bit(s, max_min));
    let d = f16_bytes(max_scale / 63.0);
    let dmin = f16_bytes(max_min / 63.0);

    for g in 0..8 {
        let dl = f16_field(d) * sc[g] as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = f16_field(dmin) * m[g] as f32;
        for l in 0..32 {
            let v = x[32 * g + l];
            levels[32 * g + l] = nearest_int((v + ml) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, pack_scale_min(&sc, &m), levels)
}

impl QuantBlock<256> for BlockQ4K {
    type Act = BlockQ8K;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 256]) {
        let q = unpack_4bit(&self.qs);
        dequantize_groups(
            &q,
            f16_field(self.d),
            f16_field(self.dmin),
            &self.scales,
            out,
        );
    }

    fn quantize(x: &[f32; 256]) -> Self {
        let (d, dmin, scales, levels) = quantize_groups(x, 15, -1.0, 20);
        Self {
            d,
            dmin,
            scales,
            qs: pack_4bit(&levels),
        }
    }

    #[inline(always)]
    fn dot(&self, act: &BlockQ8K) -> f32 {
        dot_groups(&unpack_4bit(&self.qs), self.d, self.dmin, &self.scales, act)
    }
}

impl QuantBlock<256> for BlockQ5K {
    type Act = BlockQ8K;

    #[inline(always)]
    fn dequantize(&self, out: &mut [f32; 256]) {
        let q = unpack_q5k(self);
        dequantize_groups(
            &q,
            f16_field(self.d),
            f16_field(self.dmin),
            &self.scales,
            out,
        );
    }

    fn quantize(x: &[f32; 256]) -> Self {
        let (d, dmin, scales, levels) = quantize_groups(x, 31, -0.5, 15);
        let mut qh = [0u8; 32];
        for (e, &l) in levels.iter().enumerate() {
            qh[e % 32] |= (l >> 4) << (e / 32);
        }
        Self {
            d,
            dmin,
            scales,
            qh,
            qs: pack_4bit(&levels),
        }
    }

    #[inline(always)]
    fn dot(&self, act: &BlockQ8K) -> f32 {
        dot_groups(&unpack_q5k(self), self.d, self.dmin, &self.scales, act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_packing_round_trips() {
        let sc: [u8; 8] = std::array::from_fn(|g| (g * 9 + 3) as u8 % 64);
        let m: [u8; 8] = std::array::from_fn(|g| (63 - g * 7) as u8);
        assert_eq!(unpack_scale_min(&pack_scale_min(&sc, &m)), (sc, m));
    }

    #[test]
    fn nibble_packing_round_trips() {
        let q: [u8; 256] = std::array::from_fn(|i| (i * 11 % 16) as u8);
        assert_eq!(unpack_4bit(&pack_4bit(&q)), q);
    }
}
