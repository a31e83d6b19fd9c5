//! The float element types F32, F16 and BF16: exact conversions, and their dot products
//! with f32 activations.

/// 2^112: rebiases a half's exponent (bias 15) to a single's (bias 127).
const F16_REBIAS: f32 = f32::from_bits((112 + 127) << 23);

/// Exact IEEE half → single conversion, branch-free so it vectorizes. Shifting the half's
/// exponent and mantissa into single position and scaling by 2^112 is exact for normal and
/// subnormal halves alike; infinities and NaNs (payload kept) get the single's all-ones exponent.
#[inline(always)]
pub(crate) const fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let mag = ((h & 0x7fff) as u32) << 13;
    let finite = (f32::from_bits(mag) * F16_REBIAS).to_bits();
    let special = 0x7f80_0000 | mag;
    f32::from_bits(sign | if mag >= 0x7c00 << 13 { special } else { finite })
}

/// [`f16_to_f32`] of every half, computed at compile time.
pub(crate) static F16_TABLE: [f32; 1 << 16] = {
    let mut table = [0.0; 1 << 16];
    let mut h = 0;
    while h < table.len() {
        table[h] = f16_to_f32(h as u16);
        h += 1;
    }
    table
};

#[inline(always)]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Single → bfloat16, rounding to nearest even and quieting NaNs, as ggml does.
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u as u64 + 0x7fff + ((u >> 16) & 1) as u64) >> 16) as u16
}

pub(crate) fn dequantize_f32(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(data.as_chunks::<4>().0) {
        *o = f32::from_le_bytes(*b);
    }
}

pub(crate) fn dequantize_f16(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(data.as_chunks::<2>().0) {
        *o = f16_to_f32(u16::from_le_bytes(*b));
    }
}

pub(crate) fn dequantize_bf16(data: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(data.as_chunks::<2>().0) {
        *o = bf16_to_f32(u16::from_le_bytes(*b));
    }
}

pub(crate) fn quantize_f32(src: &[f32]) -> Vec<u8> {
    src.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn quantize_f16(src: &[f32]) -> Vec<u8> {
    src.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

pub(crate) fn quantize_bf16(src: &[f32]) -> Vec<u8> {
    src.iter()
        .flat_map(|&x| f32_to_bf16(x).to_le_bytes())
        .collect()
}

/// `a * b + c`, fused where the caller was compiled with FMA (without it `mul_add` would be a
/// slow library call).
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Independent accumulators: float addition is not associative, so LLVM vectorizes a
/// reduction only when the lanes are spelled out.
const LANES: usize = 16;

/// Σ w(row[i]) · acts[i] over little-endian element bytes.
#[inline(always)]
fn dot_lanes<const W: usize, const FMA: bool>(
    row: &[u8],
    acts: &[u8],
    widen: impl Fn([u8; W]) -> f32,
) -> f32 {
    let (rows, row_tail) = row.as_chunks::<W>();
    let (xs, xs_tail) = acts.as_chunks::<4>();
    debug_assert!(row_tail.is_empty() && xs_tail.is_empty());
    let (row_groups, row_rest) = rows.as_chunks::<LANES>();
    let (x_groups, x_rest) = xs.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (r, x) in row_groups.iter().zip(x_groups) {
        for l in 0..LANES {
            acc[l] = mul_add::<FMA>(widen(r[l]), f32::from_le_bytes(x[l]), acc[l]);
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (r, x) in row_rest.iter().zip(x_rest) {
        sum = mul_add::<FMA>(widen(*r), f32::from_le_bytes(*x), sum);
    }
    sum
}

#[inline(always)]
pub(crate) fn dot_f32<const FMA: bool>(row: &[u8], acts: &[u8]) -> f32 {
    dot_lanes::<4, FMA>(row, acts, f32::from_le_bytes)
}

#[inline(always)]
pub(crate) fn dot_f16<const FMA: bool>(row: &[u8], acts: &[u8]) -> f32 {
    dot_lanes::<2, FMA>(row, acts, |b| f16_to_f32(u16::from_le_bytes(b)))
}

#[inline(always)]
pub(crate) fn dot_bf16<const FMA: bool>(row: &[u8], acts: &[u8]) -> f32 {
    dot_lanes::<2, FMA>(row, acts, |b| bf16_to_f32(u16::from_le_bytes(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_half() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32_const();
            let got = f16_to_f32(h);
            assert_eq!(got.to_bits(), F16_TABLE[h as usize].to_bits(), "{h:#06x}");
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
                assert_eq!(got.to_bits() & 0x8000_0000, want.to_bits() & 0x8000_0000);
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // Halfway between 0x3f80 and 0x3f81: ties go to the even 0x3f80.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        // A signalling NaN whose payload sits only in the low half must stay a NaN.
        let nan = f32_to_bf16(f32::from_bits(0x7f80_0001));
        assert!(bf16_to_f32(nan).is_nan());
    }

    #[test]
    fn float_dots_match_scalar_sums() {
        type Case = (
            fn(&[f32]) -> Vec<u8>,
            fn(&[u8], &mut [f32]),
            fn(&[u8], &[u8]) -> f32,
            fn(&[u8], &[u8]) -> f32,
        );
        let cases: [Case; 3] = [
            (
                quantize_f32,
                dequantize_f32,
                dot_f32::<false>,
                dot_f32::<true>,
            ),
            (
                quantize_f16,
                dequantize_f16,
                dot_f16::<false>,
                dot_f16::<true>,
            ),
            (
                quantize_bf16,
                dequantize_bf16,
                dot_bf16::<false>,
                dot_bf16::<true>,
            ),
        ];
        // 37 = two full lane groups and a tail of five.
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let acts = quantize_f32(&x);
        for (quantize, dequantize, dot, dot_fma) in cases {
            let bytes = quantize(&w);
            let mut deq = vec![0.0; w.len()];
            dequantize(&bytes, &mut deq);
            let want: f64 = deq.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            for got in [dot(&bytes, &acts), dot_fma(&bytes, &acts)] {
                assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
            }
        }
    }
}
