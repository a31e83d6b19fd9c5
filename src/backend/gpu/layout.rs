//! How weight matrices are laid out in GPU memory: still quantized, with each block's f16
//! scale fields moved to a side array so that every block's remaining bytes start on a
//! 4-byte boundary (WGSL reads storage in u32 words). Same bytes, same size as the file.
//! Blocks of a multiple of 16 bytes (Q4_K, Q5_K) stay as they are: aligned already, and
//! kernels read them 16 bytes at a time.

use crate::quant::GgmlType;

/// The GPU layout of one matrix (or one row range of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightLayout {
    /// u32 words of each block's body (the block minus its scale fields, or the whole block
    /// where it stays as it is); 0 for float types.
    pub body_words: u32,
    /// Word index where the scale array starts (after all bodies).
    pub scales_offset: u32,
    pub blocks_per_row: u32,
}

/// Repacks whole rows of `ty` into the GPU layout: every block body, then every block's
/// scale fields (2-byte fields packed two to a word). Float types, and blocks of a multiple
/// of 16 bytes, are copied as they are.
pub fn repack(ty: GgmlType, cols: usize, data: &[u8]) -> (WeightLayout, Vec<u32>) {
    let blocks_per_row = (cols / ty.block_size()) as u32;
    let block = ty.type_size();
    let (at, len) = match ty.scale_fields() {
        Some(fields) if !block.is_multiple_of(16) => fields,
        _ => {
            let mut words = vec![0u32; data.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..data.len()].copy_from_slice(data);
            let layout = WeightLayout {
                body_words: ty.scale_fields().map_or(0, |_| (block / 4) as u32),
                scales_offset: 0,
                blocks_per_row,
            };
            return (layout, words);
        }
    };
    let n_blocks = data.len() / block;
    let body = block - len;
    let scales_offset = n_blocks * body / 4;
    let mut out = vec![0u8; n_blocks * body + (n_blocks * len).next_multiple_of(4)];
    let (bodies, scales) = out.split_at_mut(n_blocks * body);
    for (i, b) in data.chunks_exact(block).enumerate() {
        let dst = &mut bodies[i * body..(i + 1) * body];
        dst[..at].copy_from_slice(&b[..at]);
        dst[at..].copy_from_slice(&b[at + len..]);
        scales[i * len..(i + 1) * len].copy_from_slice(&b[at..at + len]);
    }
    let mut words = vec![0u32; out.len() / 4];
    bytemuck::cast_slice_mut::<u32, u8>(&mut words).copy_from_slice(&out);
    let layout = WeightLayout {
        body_words: (body / 4) as u32,
        scales_offset: scales_offset as u32,
        blocks_per_row,
    };
    (layout, words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ALL_TYPES;

    #[test]
    fn bodies_are_word_aligned_and_nothing_grows() {
        for ty in ALL_TYPES {
            if let Some((_, len)) = ty.scale_fields() {
                assert_eq!((ty.type_size() - len) % 4, 0, "{ty}");
            }
            let cols = ty.block_size() * 3;
            let bytes = ty.bytes_for(cols as u64 * 5).unwrap() as usize;
            let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + 3) as u8).collect();
            let (layout, words) = repack(ty, cols, &data);
            assert!(words.len() * 4 <= bytes + 4, "{ty} grew");
            assert_eq!(
                layout.blocks_per_row as usize,
                cols / ty.block_size(),
                "{ty}"
            );
        }
    }

    #[test]
    fn q8_0_moves_the_scale_aside() {
        let mut block = vec![0u8; 34];
        block[0..2].copy_from_slice(&[0xAB, 0xCD]);
        for i in 0..32 {
            block[2 + i] = i as u8;
        }
        let data = [block.clone(), block].concat();
        let (layout, words) = repack(GgmlType::Q8_0, 64, &data);
        assert_eq!(
            layout,
            WeightLayout {
                body_words: 8,
                scales_offset: 16,
                blocks_per_row: 2
            }
        );
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        assert_eq!(bytes[..32], (0..32).collect::<Vec<u8>>()[..]);
        assert_eq!(bytes[64..68], [0xAB, 0xCD, 0xAB, 0xCD]);
    }
}
