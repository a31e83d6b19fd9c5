//! Quantization block formats of ggml: exact bit layouts, dequantization, quantization,
//! and the dot products the CPU backend computes straight from the blocks.
//!
//! A weight row is dotted with an activation vector prepared once per vector by
//! [`quantize_acts`] in the row type's [`GgmlType::act_format`]; inside each block the
//! products are summed in integers, as ggml's `vec_dot_*_q8_*` do. On x86-64 CPUs with AVX2
//! and FMA the dot kernels run as a second compilation for those features, chosen at run time,
//! and [`mat_mul`] of the block types runs hand-written kernels that decode each weight block
//! once for several tokens.

mod acts;
mod blocks;
mod float;
mod intdot;
mod kscale;
mod legacy;
mod q2k_q3k;
mod q4k_q5k;
mod q6k;
#[cfg(target_arch = "x86_64")]
mod simd;
mod types;

pub use acts::{quantize_acts, ActFormat};
pub use types::{GgmlType, ALL_TYPES, QK_K};

use blocks::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, QuantBlock,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty}: {n} elements are not a whole number of {block}-element blocks")]
    PartialBlock {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error("{ty}: {n} elements take {expected} bytes, but {got} bytes were given")]
    DataLength {
        ty: GgmlType,
        n: usize,
        expected: usize,
        got: usize,
    },
    #[error("cannot quantize to {ty}: element {index} is {value}, not a finite number")]
    NonFinite {
        ty: GgmlType,
        index: usize,
        value: f32,
    },
}

/// Evaluates the expression of `ty`'s arm: block types run `$body` with `$B` naming the block
/// struct and `$N` its element count; the float types have their own expressions.
macro_rules! by_type {
    ($ty:expr, |$B:ident, $N:ident| $body:expr, f32: $f32:expr, f16: $f16:expr, bf16: $bf16:expr $(,)?) => {
        match $ty {
            GgmlType::F32 => $f32,
            GgmlType::F16 => $f16,
            GgmlType::BF16 => $bf16,
            GgmlType::Q4_0 => by_type!(@block BlockQ4_0, 32, $B, $N, $body),
            GgmlType::Q4_1 => by_type!(@block BlockQ4_1, 32, $B, $N, $body),
            GgmlType::Q5_0 => by_type!(@block BlockQ5_0, 32, $B, $N, $body),
            GgmlType::Q5_1 => by_type!(@block BlockQ5_1, 32, $B, $N, $body),
            GgmlType::Q8_0 => by_type!(@block BlockQ8_0, 32, $B, $N, $body),
            GgmlType::Q2K => by_type!(@block BlockQ2K, QK_K, $B, $N, $body),
            GgmlType::Q3K => by_type!(@block BlockQ3K, QK_K, $B, $N, $body),
            GgmlType::Q4K => by_type!(@block BlockQ4K, QK_K, $B, $N, $body),
            GgmlType::Q5K => by_type!(@block BlockQ5K, QK_K, $B, $N, $body),
            GgmlType::Q6K => by_type!(@block BlockQ6K, QK_K, $B, $N, $body),
        }
    };
    (@block $block:ty, $n:expr, $B:ident, $N:ident, $body:expr) => {{
        type $B = $block;
        const $N: usize = $n;
        $body
    }};
}

impl GgmlType {
    /// The form activations take to be dotted with rows of this type: f32 for the float
    /// types, Q8_0 for the legacy quants, Q8_K for the k-quants.
    pub fn act_format(self) -> ActFormat {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => ActFormat::F32,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => ActFormat::Q8_0,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => ActFormat::Q8K,
        }
    }

    /// Bytes taken by `n` elements, or why `n` elements cannot be stored in this type.
    pub fn row_bytes(self, n: usize) -> Result<usize, QuantError> {
        let partial = QuantError::PartialBlock {
            ty: self,
            n,
            block: self.block_size(),
        };
        let bytes = self.bytes_for(n as u64).ok_or(partial.clone())?;
        usize::try_from(bytes).map_err(|_| partial)
    }
}

/// Decodes `out.len()` elements of type `ty` from `data`, which must hold exactly
/// `ty.row_bytes(out.len())` bytes. Bit-exact with ggml's `dequantize_row_*`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let expected = ty.row_bytes(out.len())?;
    if data.len() != expected {
        return Err(QuantError::DataLength {
            ty,
            n: out.len(),
            expected,
            got: data.len(),
        });
    }
    by_type!(ty, |B, N| dequantize_blocks::<B, N>(data, out),
        f32: float::dequantize_f32(data, out),
        f16: float::dequantize_f16(data, out),
        bf16: float::dequantize_bf16(data, out),
    );
    Ok(())
}

/// [`dequantize`] into a new vector of `n` elements.
pub fn dequantize_vec(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0.0; n];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

fn dequantize_blocks<B: QuantBlock<N>, const N: usize>(data: &[u8], out: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(data);
    for (block, chunk) in blocks.iter().zip(out.as_chunks_mut::<N>().0) {
        block.dequantize(chunk);
    }
}

/// Encodes `src` as type `ty`, with ggml's reference (non-imatrix) quantizers. The length must
/// be a whole number of blocks, and block-quantized types need finite values.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    ty.row_bytes(src.len())?;
    if ty.block_size() > 1 {
        if let Some((index, &value)) = src.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(QuantError::NonFinite { ty, index, value });
        }
    }
    Ok(by_type!(ty, |B, N| quantize_blocks::<B, N>(src),
        f32: float::quantize_f32(src),
        f16: float::quantize_f16(src),
        bf16: float::quantize_bf16(src),
    ))
}

fn quantize_blocks<B: QuantBlock<N>, const N: usize>(src: &[f32]) -> Vec<u8> {
    let chunks = src.as_chunks::<N>().0;
    let mut out = Vec::with_capacity(chunks.len() * std::mem::size_of::<B>());
    for chunk in chunks {
        out.extend_from_slice(bytemuck::bytes_of(&B::quantize(chunk)));
    }
    out
}

/// The dot product of one weight row of `n` elements of type `ty` with an activation vector
/// prepared by [`quantize_acts`] in `ty.act_format()`.
///
/// # Panics
/// When `row` or `acts` does not hold exactly `n` elements: both come from tensors whose
/// shapes the model loader has checked, so a mismatch is a bug in the caller.
pub fn vec_dot(ty: GgmlType, row: &[u8], acts: &[u8], n: usize) -> f32 {
    let row_bytes = check_dot_args(ty, acts, n);
    assert_eq!(
        row.len(),
        row_bytes,
        "vec_dot: a {ty} row of {n} elements takes {row_bytes} bytes"
    );
    #[cfg(target_arch = "x86_64")]
    if fast_isa() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { vec_dot_avx2(ty, row, acts) };
    }
    vec_dot_with::<false>(ty, row, acts)
}

/// `out[r]` = [`vec_dot`] of row r of the `out.len()` consecutive rows of `n` elements in `rows`
/// (to float rounding, as [`mat_mul`]).
///
/// # Panics
/// As [`Activations::new`] and [`mat_mul`].
pub fn mat_vec(ty: GgmlType, rows: &[u8], n: usize, acts: &[u8], out: &mut [f32]) {
    mat_mul(rows, &Activations::new(ty, acts.to_vec(), n), out)
}

/// Activation vectors quantized for [`mat_mul`] with weight rows of one type, and arranged once
/// for the kernels this CPU runs rather than once per block of rows.
pub struct Activations {
    ty: GgmlType,
    n: usize,
    /// The vectors as [`quantize_acts`] writes them.
    bytes: Vec<u8>,
    act_bytes: usize,
    kernels: Kernels,
    #[cfg(target_arch = "x86_64")]
    layout: simd::Layout,
}

impl Activations {
    /// Activation vectors of `n` values to meet rows of type `ty`: `bytes` holds them as
    /// [`quantize_acts`] writes them in `ty.act_format()`, one after the other.
    ///
    /// # Panics
    /// When `n` is not a whole number of `ty`'s blocks, or `bytes` not a whole, non-zero number
    /// of vectors: both come from tensors whose shapes the model loader has checked, so a
    /// mismatch is a bug in the caller.
    pub fn new(ty: GgmlType, bytes: Vec<u8>, n: usize) -> Self {
        Self::for_kernels(Kernels::best(), ty, bytes, n)
    }

    fn for_kernels(kernels: Kernels, ty: GgmlType, bytes: Vec<u8>, n: usize) -> Self {
        ty.row_bytes(n)
            .unwrap_or_else(|e| panic!("activations: {e}"));
        let format = ty.act_format();
        let act_bytes = format.bytes_for(n).expect("whole blocks, as the rows");
        assert!(
            act_bytes > 0 && !bytes.is_empty() && bytes.len().is_multiple_of(act_bytes),
            "activations: {} bytes are not whole vectors of {n} values in {format:?}",
            bytes.len()
        );
        #[cfg(target_arch = "x86_64")]
        let layout = match kernels {
            Kernels::PerToken => simd::Layout::Plain,
            // SAFETY: `kernels` is at most `Kernels::best()`, so the CPU has the features.
            _ => unsafe {
                simd::lay_out(format, &bytes, act_bytes, kernels == Kernels::Avx512Vnni)
            },
        };
        Self {
            ty,
            n,
            bytes,
            act_bytes,
            kernels,
            #[cfg(target_arch = "x86_64")]
            layout,
        }
    }

    /// The number of vectors.
    pub fn n_tokens(&self) -> usize {
        self.bytes.len() / self.act_bytes
    }
}

/// The products of consecutive weight rows with several activation vectors:
/// `out[t * n_rows + r]` becomes [`vec_dot`] of row r with vector t, to float rounding (the
/// per-block sums may be added in another order). Each weight block is decoded once for
/// several tokens, which is what makes prompt processing fast.
///
/// # Panics
/// When `rows` is not `out.len() / acts.n_tokens()` rows of the activations' type and length:
/// both come from tensors whose shapes the model loader has checked, so a mismatch is a bug in
/// the caller.
pub fn mat_mul(rows: &[u8], acts: &Activations, out: &mut [f32]) {
    let (ty, n) = (acts.ty, acts.n);
    let row_bytes = ty.row_bytes(n).expect("checked with the activations");
    let n_tokens = acts.n_tokens();
    assert!(
        out.len().is_multiple_of(n_tokens)
            && Some(rows.len()) == row_bytes.checked_mul(out.len() / n_tokens),
        "mat_mul: {ty} weights of {} bytes are not {} rows of {n} elements",
        rows.len(),
        out.len() / n_tokens
    );
    #[cfg(target_arch = "x86_64")]
    if acts.kernels > Kernels::PerToken {
        let batch = simd::Batch {
            rows,
            row_bytes,
            acts: &acts.bytes,
            act_bytes: acts.act_bytes,
            layout: &acts.layout,
        };
        // SAFETY: `kernels` is at most `Kernels::best()`, so the CPU has the features.
        let done = unsafe {
            match acts.kernels {
                Kernels::Avx512Vnni => simd::mat_mul_avx512_vnni(ty, &batch, out),
                Kernels::Avx512 => simd::mat_mul_avx512(ty, &batch, out),
                _ => simd::mat_mul_avx2(ty, &batch, out),
            }
        };
        if done {
            return;
        }
    }
    let (bytes, act_bytes) = (&acts.bytes, acts.act_bytes);
    #[cfg(target_arch = "x86_64")]
    if fast_isa() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { mat_mul_per_token_avx2(ty, rows, row_bytes, bytes, act_bytes, out) };
    }
    mat_mul_per_token::<false>(ty, rows, row_bytes, bytes, act_bytes, out)
}

/// The implementations of [`mat_mul`], in order of speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kernels {
    /// One [`vec_dot`] per row and token (compiled for AVX2 where the CPU has it).
    PerToken,
    /// The batched kernels of [`simd`], on CPUs with AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The same with AVX-512 F, BW and VL besides.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// The same with AVX-512 VNNI besides.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernels {
    fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if fast_isa() && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                    if has!("avx512vnni") {
                        return Self::Avx512Vnni;
                    }
                    return Self::Avx512;
                }
                return Self::Avx2;
            }
        }
        Self::PerToken
    }
}

/// Checks `n` and the activation length; returns the bytes of one row.
fn check_dot_args(ty: GgmlType, acts: &[u8], n: usize) -> usize {
    let row_bytes = ty.row_bytes(n).unwrap_or_else(|e| panic!("vec_dot: {e}"));
    let format = ty.act_format();
    assert_eq!(
        Some(acts.len()),
        format.bytes_for(n),
        "vec_dot: activations of {n} values in {format:?} have the wrong length"
    );
    row_bytes
}

#[inline(always)]
fn vec_dot_with<const FMA: bool>(ty: GgmlType, row: &[u8], acts: &[u8]) -> f32 {
    by_type!(ty, |B, N| dot_blocks::<B, N>(row, acts),
        f32: float::dot_f32::<FMA>(row, acts),
        f16: float::dot_f16::<FMA>(row, acts),
        bf16: float::dot_bf16::<FMA>(row, acts),
    )
}

#[inline(always)]
fn dot_blocks<B: QuantBlock<N>, const N: usize>(row: &[u8], acts: &[u8]) -> f32 {
    let weights: &[B] = bytemuck::cast_slice(row);
    let acts: &[B::Act] = bytemuck::cast_slice(acts);
    // A plain loop, not an iterator `sum` (see `intdot`).
    let mut sum = 0.0;
    for (w, a) in weights.iter().zip(acts) {
        sum += w.dot(a);
    }
    sum
}

/// [`mat_mul`] as one [`vec_dot`] per row and token.
#[inline(always)]
fn mat_mul_per_token<const FMA: bool>(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    out: &mut [f32],
) {
    let n_rows = rows.len() / row_bytes;
    for (act, out) in acts
        .chunks_exact(act_bytes)
        .zip(out.chunks_exact_mut(n_rows))
    {
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
            *o = vec_dot_with::<FMA>(ty, row, act);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn fast_isa() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn vec_dot_avx2(ty: GgmlType, row: &[u8], acts: &[u8]) -> f32 {
    vec_dot_with::<true>(ty, row, acts)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn mat_mul_per_token_avx2(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    acts: &[u8],
    act_bytes: usize,
    out: &mut [f32],
) {
    mat_mul_per_token::<true>(ty, rows, row_bytes, acts, act_bytes, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.618 + seed).sin() * (1.0 + (i % 7) as f32 * 0.3))
            .collect()
    }

    /// The portable and the AVX2 compilations sum the same integers, so they agree to float
    /// rounding (the float types differ by FMA alone).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_portable_kernels_agree() {
        if !fast_isa() {
            return;
        }
        let n = 2 * QK_K;
        let x = wave(n, 0.5);
        for ty in ALL_TYPES {
            let row = quantize(ty, &wave(n, 1.5)).unwrap();
            let mut acts = Vec::new();
            quantize_acts(ty.act_format(), &x, &mut acts);
            let portable = vec_dot_with::<false>(ty, &row, &acts);
            // SAFETY: checked above.
            let avx2 = unsafe { vec_dot_avx2(ty, &row, &acts) };
            assert!(
                (portable - avx2).abs() <= 1e-5 * portable.abs().max(1.0),
                "{ty}: {portable} vs {avx2}"
            );
        }
    }

    /// Large levels of both signs: the extremes of every type's range, where an overflowing
    /// or saturating integer sum would show.
    fn extremes(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| match (i * 7 + seed) % 5 {
                0 => 1.0,
                1 | 2 => -1.0,
                3 => 0.98,
                _ => -0.02,
            })
            .collect()
    }

    /// [`mat_mul`] of `rows` rows with `tokens` vectors against [`vec_dot`] per row and token,
    /// allowing float rounding relative to the sum of the magnitudes of the per-block dots.
    fn check_mat_mul(kernels: Kernels, ty: GgmlType, weights: &[f32], xs: &[Vec<f32>], n: usize) {
        let rows = quantize(ty, weights).unwrap();
        let row_bytes = ty.row_bytes(n).unwrap();
        let format = ty.act_format();
        let mut acts = Vec::new();
        let mut all_acts = Vec::new();
        for x in xs {
            quantize_acts(format, x, &mut acts);
            all_acts.extend_from_slice(&acts);
        }
        let act_bytes = all_acts.len() / xs.len();
        let mut out = vec![f32::NAN; weights.len() / n * xs.len()];
        let prepared = Activations::for_kernels(kernels, ty, all_acts.clone(), n);
        mat_mul(&rows, &prepared, &mut out);
        let block = ty.block_size();
        let (w_block, a_block) = (
            ty.row_bytes(block).unwrap(),
            format.bytes_for(block).unwrap(),
        );
        for (r, row) in rows.chunks(row_bytes).enumerate() {
            for (t, act) in all_acts.chunks(act_bytes).enumerate() {
                let want = vec_dot(ty, row, act, n);
                let magnitude: f32 = row
                    .chunks(w_block)
                    .zip(act.chunks(a_block))
                    .map(|(w, a)| vec_dot(ty, w, a, block).abs())
                    .sum();
                let got = out[t * (weights.len() / n) + r];
                assert!(
                    (got - want).abs() <= 1e-5 * magnitude.max(1e-3),
                    "{kernels:?} {ty} row {r} token {t} of {}: {got} vs {want}",
                    xs.len()
                );
            }
        }
    }

    /// Every type on every implementation this CPU runs, for token counts that fill whole
    /// tiles (of 4 or 8), leave a remainder, or are a single token (decoding).
    #[test]
    fn mat_mul_matches_vec_dot_per_row_and_token() {
        let n = 2 * QK_K;
        #[cfg(target_arch = "x86_64")]
        let all = [
            Kernels::PerToken,
            Kernels::Avx2,
            Kernels::Avx512,
            Kernels::Avx512Vnni,
        ];
        #[cfg(not(target_arch = "x86_64"))]
        let all = [Kernels::PerToken];
        for kernels in all.into_iter().filter(|k| *k <= Kernels::best()) {
            for ty in ALL_TYPES {
                for n_tokens in [1, 3, 8, 13] {
                    let xs: Vec<Vec<f32>> = (0..n_tokens).map(|t| wave(n, t as f32)).collect();
                    check_mat_mul(kernels, ty, &wave(3 * n, 2.0), &xs, n);
                    let xs: Vec<Vec<f32>> = (0..n_tokens).map(|t| extremes(n, t)).collect();
                    check_mat_mul(kernels, ty, &extremes(3 * n, 11), &xs, n);
                }
            }
        }
    }

    #[test]
    fn mat_vec_is_mat_mul_of_one_token() {
        let n = QK_K;
        let weights = quantize(GgmlType::Q6K, &wave(2 * n, 0.3)).unwrap();
        let mut acts = Vec::new();
        quantize_acts(ActFormat::Q8K, &wave(n, 0.9), &mut acts);
        let (mut a, mut b) = ([0.0; 2], [0.0; 2]);
        mat_vec(GgmlType::Q6K, &weights, n, &acts, &mut a);
        mat_mul(&weights, &Activations::new(GgmlType::Q6K, acts, n), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    #[should_panic(expected = "not 2 rows")]
    fn mat_mul_refuses_a_short_output() {
        let n = QK_K;
        let weights = quantize(GgmlType::Q4K, &wave(3 * n, 0.3)).unwrap();
        let mut acts = Vec::new();
        quantize_acts(ActFormat::Q8K, &wave(n, 0.9), &mut acts);
        mat_mul(
            &weights,
            &Activations::new(GgmlType::Q4K, acts, n),
            &mut [0.0; 2],
        );
    }

    #[test]
    #[should_panic(expected = "wrong length")]
    fn dot_refuses_activations_of_another_format() {
        let row = quantize(GgmlType::Q4K, &[0.5; QK_K]).unwrap();
        let mut acts = Vec::new();
        quantize_acts(ActFormat::Q8_0, &[0.5; QK_K], &mut acts);
        vec_dot(GgmlType::Q4K, &row, &acts, QK_K);
    }
}
