//! Quantization block formats of ggml: exact bit layouts, dequantization, quantization,
//! and the dot products the CPU backend computes straight from the blocks.
//!
//! A weight row is dotted with an activation vector prepared once per vector by
//! [`quantize_acts`] in the row type's [`GgmlType::act_format`]; inside each block the
//! products are summed in integers, as ggml's `vec_dot_*_q8_*` do. On x86-64 CPUs with AVX2
//! and FMA the dot kernels run as a second compilation for those features, chosen at run time.

mod acts;
mod blocks;
mod float;
mod intdot;
mod kscale;
mod legacy;
mod q2k_q3k;
mod q4k_q5k;
mod q6k;
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

/// `out[r]` = [`vec_dot`] of row r of the `out.len()` consecutive rows of `n` elements in `rows`.
///
/// # Panics
/// As [`vec_dot`], or when `rows` does not hold exactly `out.len()` rows.
pub fn mat_vec(ty: GgmlType, rows: &[u8], n: usize, acts: &[u8], out: &mut [f32]) {
    let row_bytes = check_dot_args(ty, acts, n);
    assert_eq!(
        Some(rows.len()),
        row_bytes.checked_mul(out.len()),
        "mat_vec: {ty} weights of {} bytes are not {} rows of {n} elements",
        rows.len(),
        out.len()
    );
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if fast_isa() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { mat_vec_avx2(ty, rows, row_bytes, acts, out) };
    }
    mat_vec_with::<false>(ty, rows, row_bytes, acts, out)
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

#[inline(always)]
fn mat_vec_with<const FMA: bool>(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    acts: &[u8],
    out: &mut [f32],
) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
        *o = vec_dot_with::<FMA>(ty, row, acts);
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
fn mat_vec_avx2(ty: GgmlType, rows: &[u8], row_bytes: usize, acts: &[u8], out: &mut [f32]) {
    mat_vec_with::<true>(ty, rows, row_bytes, acts, out)
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

    #[test]
    fn mat_vec_matches_vec_dot_per_row() {
        let n = QK_K;
        let x = wave(n, 0.1);
        for ty in [GgmlType::Q4K, GgmlType::Q8_0, GgmlType::F16] {
            let weights = quantize(ty, &wave(3 * n, 2.0)).unwrap();
            let mut acts = Vec::new();
            quantize_acts(ty.act_format(), &x, &mut acts);
            let mut out = [0.0; 3];
            mat_vec(ty, &weights, n, &acts, &mut out);
            let row_bytes = ty.row_bytes(n).unwrap();
            for (r, o) in out.iter().enumerate() {
                let row = &weights[r * row_bytes..(r + 1) * row_bytes];
                assert_eq!(*o, vec_dot(ty, row, &acts, n), "{ty} row {r}");
            }
        }
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
