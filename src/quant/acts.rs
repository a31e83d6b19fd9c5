//! Activation vectors in the form the dot products read: f32 for float weights, Q8_0 blocks
//! for the legacy quants, Q8_K blocks for the k-quants (as ggml's `vec_dot_type`).

use super::blocks::{f16_bytes, BlockQ8K, BlockQ8_0};
use super::kscale::{nearest_int, signed_absmax};
use super::legacy::absmax_32;
use super::QK_K;
use std::mem::size_of;

/// The form an activation vector takes to be dotted with weight rows of some type
/// (see [`GgmlType::act_format`](super::GgmlType::act_format)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActFormat {
    /// Little-endian f32 values.
    F32,
    /// ggml `block_q8_0`: f16 scale and 32 i8 (34 bytes per 32 values).
    Q8_0,
    /// ggml `block_q8_K`: f32 scale, 256 i8 and the 16 i16 sums of each 16 (292 bytes per 256).
    Q8K,
}

impl ActFormat {
    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::Q8_0 => 32,
            Self::Q8K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Q8_0 => size_of::<BlockQ8_0>(),
            Self::Q8K => size_of::<BlockQ8K>(),
        }
    }

    /// Bytes taken by `n` values; `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }
}

/// Converts the activation vector `x` into `format`, replacing the contents of `out`
/// (kept as a buffer so a forward pass allocates once).
///
/// # Panics
/// When `x.len()` is not a multiple of the format's block size: activations are as long as
/// the weight rows they meet, which the model loader has checked to be whole blocks.
pub fn quantize_acts(format: ActFormat, x: &[f32], out: &mut Vec<u8>) {
    let Some(bytes) = format.bytes_for(x.len()) else {
        panic!(
            "quantize_acts: {} values are not a whole number of {}-value {format:?} blocks",
            x.len(),
            format.block_size()
        );
    };
    out.clear();
    out.reserve(bytes);
    match format {
        ActFormat::F32 => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
        ActFormat::Q8_0 => {
            for chunk in x.as_chunks::<32>().0 {
                out.extend_from_slice(bytemuck::bytes_of(&quantize_q8_0_act(chunk)));
            }
        }
        ActFormat::Q8K => {
            for chunk in x.as_chunks::<QK_K>().0 {
                out.extend_from_slice(bytemuck::bytes_of(&quantize_q8k(chunk)));
            }
        }
    }
}

/// ggml-cpu's x86 `quantize_row_q8_0`, the one its products use there: the scale's inverse
/// taken as 127 / max (not 1 / d) and ties rounded to even. It differs from the weights'
/// quantizer ([`BlockQ8_0::quantize`], C's `roundf`) in a handful of values per million, and
/// yet SmolLM2's mean KL divergence from the exact reference moved from 0.0031 to 0.0028
/// with it (llama.cpp: 0.0027): the statistic swings this much on rounding alone.
fn quantize_q8_0_act(x: &[f32; 32]) -> BlockQ8_0 {
    let amax = absmax_32(x);
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    BlockQ8_0 {
        d: f16_bytes(amax / 127.0),
        qs: x.map(|v| nearest_int(v * id) as i8),
    }
}

/// ggml's `quantize_row_q8_K_ref`: the largest magnitude maps to -127, the f32 scale is kept
/// unrounded, and each 16 values' sum is stored for the k-quants' minimum terms.
fn quantize_q8k(x: &[f32; QK_K]) -> BlockQ8K {
    let max = signed_absmax(x);
    if max == 0.0 {
        return bytemuck::Zeroable::zeroed();
    }
    let iscale = -127.0 / max;
    let qs = x.map(|v| nearest_int(iscale * v).clamp(-128, 127) as i8);
    let mut bsums = [0u8; 32];
    for (sum, group) in bsums
        .as_chunks_mut::<2>()
        .0
        .iter_mut()
        .zip(qs.as_chunks::<16>().0)
    {
        let s: i16 = group.iter().map(|&q| q as i16).sum();
        *sum = s.to_le_bytes();
    }
    BlockQ8K {
        d: (1.0 / iscale).to_le_bytes(),
        qs,
        bsums,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8k_keeps_group_sums_and_scale() {
        let x: Vec<f32> = (0..QK_K).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let mut out = Vec::new();
        quantize_acts(ActFormat::Q8K, &x, &mut out);
        assert_eq!(out.len(), ActFormat::Q8K.bytes_for(QK_K).unwrap());
        let block: &BlockQ8K = bytemuck::from_bytes(&out);
        for g in 0..16 {
            let want: i32 = block.qs[16 * g..16 * g + 16]
                .iter()
                .map(|&q| q as i32)
                .sum();
            assert_eq!(block.bsum(g), want);
        }
        for (q, v) in block.qs.iter().zip(&x) {
            assert!((*q as f32 * block.d() - v).abs() <= block.d().abs() * 0.5 + 1e-6);
        }
    }

    /// Ties go to even and the inverse scale is 127 / max, as ggml-cpu's x86 quantizer has
    /// them: 2.5 and -2.5 steps of the scale become 2 and -2 (`roundf` would give 3 and -3).
    #[test]
    fn q8_0_activations_round_as_ggml_cpu() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 3.5;
        x[4] = -0.4;
        let block = quantize_q8_0_act(&x);
        assert_eq!(&block.qs[..5], &[127, 2, -2, 4, 0]);
        assert_eq!(half::f16::from_le_bytes(block.d).to_f32(), 1.0);
    }

    #[test]
    fn zero_activations_quantize_to_zero_blocks() {
        let mut out = vec![1u8; 3];
        quantize_acts(ActFormat::Q8K, &[0.0; QK_K], &mut out);
        assert!(out.iter().all(|&b| b == 0));
        quantize_acts(ActFormat::Q8_0, &[0.0; 64], &mut out);
        assert_eq!(out.len(), 68);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    #[should_panic(expected = "not a whole number")]
    fn partial_blocks_are_refused() {
        quantize_acts(ActFormat::Q8_0, &[1.0; 33], &mut Vec::new());
    }
}
