//! How weight matrices are laid out in GPU memory: still quantized, with each block's f16
//! scale fields moved to a side array so that every block's remaining bytes start on a
//! 4-byte boundary (WGSL reads storage in u32 words). Same bytes, same size as the file.
//! Blocks of a multiple of 16 bytes (Q4_K, Q5_K) stay as they are: aligned already, and
//! kernels read them 16 bytes at a time.

use crate::quant::GgmlType;
use rayon::prelude::*;
use std::ops::Range;
use wgpu::WriteOnly;

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

/// How whole rows of one weight type, `cols` wide, are repacked into the GPU layout: every
/// block body, then every block's scale fields (2-byte fields packed two to a word). Float
/// types, and blocks of a multiple of 16 bytes, are copied as they are.
#[derive(Clone, Copy, Debug)]
pub struct Repack {
    /// Bytes of one block as stored.
    block: usize,
    blocks_per_row: usize,
    /// The scale fields moved aside: (byte offset in the block, bytes); `None` where blocks
    /// stay as they are.
    scales: Option<(usize, usize)>,
    body_words: u32,
}

/// Rows repacked per task on rayon's threads: about this many bytes of them.
const TASK_BYTES: usize = 256 << 10;

impl Repack {
    pub fn new(ty: GgmlType, cols: usize) -> Self {
        let block = ty.type_size();
        let scales = ty.scale_fields().filter(|_| !block.is_multiple_of(16));
        let body_words = match (ty.scale_fields(), scales) {
            (None, _) => 0,
            (Some(_), Some((_, len))) => ((block - len) / 4) as u32,
            (Some(_), None) => (block / 4) as u32,
        };
        Self {
            block,
            blocks_per_row: cols / ty.block_size(),
            scales,
            body_words,
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.blocks_per_row * self.block
    }

    fn body_bytes(&self, rows: usize) -> usize {
        rows * self.blocks_per_row * (self.block - self.scales.map_or(0, |(_, len)| len))
    }

    fn scale_bytes(&self, rows: usize) -> usize {
        rows * self.blocks_per_row * self.scales.map_or(0, |(_, len)| len)
    }

    /// The layout of a part of `rows` rows, and its size in bytes: the stored bytes, rounded
    /// up to whole words.
    pub fn layout(&self, rows: usize) -> (WeightLayout, u64) {
        let bodies = self.body_bytes(rows);
        let layout = WeightLayout {
            body_words: self.body_words,
            scales_offset: (bodies / 4) as u32,
            blocks_per_row: self.blocks_per_row as u32,
        };
        let size = match self.scales {
            Some(_) => bodies + self.scale_bytes(rows).next_multiple_of(4),
            None => bodies.next_multiple_of(4),
        };
        (layout, size as u64)
    }

    /// Where rows `first..first + n` of a part of `rows` rows go: the byte ranges of their
    /// bodies and of their scale fields (empty where there are none). Both start on a word
    /// when `first` is a multiple of 4, and the part's last rows take its padding.
    pub fn ranges(&self, rows: usize, first: usize, n: usize) -> [Range<u64>; 2] {
        let last = first + n == rows;
        let pad = |end: usize| if last { end.next_multiple_of(4) } else { end };
        let bodies = self.body_bytes(first)..self.body_bytes(first + n);
        let bodies = match self.scales {
            Some(_) => bodies,
            None => bodies.start..pad(bodies.end),
        };
        let base = self.body_bytes(rows);
        let scales = match self.scales {
            Some(_) => base + self.scale_bytes(first)..base + pad(self.scale_bytes(first + n)),
            None => bodies.end..bodies.end,
        };
        [
            bodies.start as u64..bodies.end as u64,
            scales.start as u64..scales.end as u64,
        ]
    }

    /// Repacks rows `row(0)..row(n - 1)` (each as stored) into `bodies` and `scales`, sized
    /// as [`Repack::ranges`] gives them, on rayon's threads; padding is zeroed. Each task
    /// gathers its rows in a small buffer first, so that the destination (mapped device
    /// memory, maybe write-combined) is written in long runs.
    pub fn write<'a>(
        &self,
        n: usize,
        row: &(dyn Fn(usize) -> &'a [u8] + Sync),
        mut bodies: WriteOnly<'_, [u8]>,
        mut scales: WriteOnly<'_, [u8]>,
    ) {
        let per_task = (TASK_BYTES / self.row_bytes().max(1)).max(1);
        let tasks = n.div_ceil(per_task);
        let mut jobs = Vec::with_capacity(tasks);
        for t in 0..tasks {
            let rows = per_task.min(n - t * per_task);
            let mut b = bodies
                .split_off(..self.body_bytes(rows))
                .expect("sized by ranges");
            let mut s = scales
                .split_off(..self.scale_bytes(rows))
                .expect("sized by ranges");
            jobs.push((
                t * per_task,
                rows,
                Dest(b.as_raw_ptr()),
                Dest(s.as_raw_ptr()),
            ));
        }
        bodies.fill(0);
        scales.fill(0);
        jobs.into_par_iter().for_each(|(first, rows, b, s)| {
            let Some((at, len)) = self.scales else {
                let mut gathered = Vec::with_capacity(b.0.len());
                (first..first + rows).for_each(|r| gathered.extend_from_slice(row(r)));
                return b.write(&gathered);
            };
            let body = self.block - len;
            let mut gathered_b = vec![0u8; b.0.len()];
            let mut gathered_s = vec![0u8; s.0.len()];
            let blocks = (first..first + rows).flat_map(|r| row(r).chunks_exact(self.block));
            let dst = gathered_b
                .chunks_exact_mut(body)
                .zip(gathered_s.chunks_exact_mut(len));
            for (block, (db, ds)) in blocks.zip(dst) {
                db[..at].copy_from_slice(&block[..at]);
                db[at..].copy_from_slice(&block[at + len..]);
                ds.copy_from_slice(&block[at..at + len]);
            }
            b.write(&gathered_b);
            s.write(&gathered_s);
        });
    }
}

/// A range of a [`WriteOnly`] view that one task writes: the view itself cannot cross threads.
struct Dest(std::ptr::NonNull<[u8]>);

// SAFETY: each Dest is a range split off one view, disjoint from every other, and is written
// only while that view is borrowed by [`Repack::write`].
unsafe impl Send for Dest {}

impl Dest {
    fn write(&self, src: &[u8]) {
        assert_eq!(src.len(), self.0.len());
        // SAFETY: the range is valid for writes of its length (see the Send impl), and
        // nothing else reads or writes it meanwhile; it is only written, never read.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.as_ptr().cast(), src.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ALL_TYPES;

    /// The layout written one block at a time, serially: bodies, then scale fields.
    fn reference(ty: GgmlType, data: &[u8]) -> Vec<u8> {
        let block = ty.type_size();
        let Some((at, len)) = ty.scale_fields().filter(|_| !block.is_multiple_of(16)) else {
            let mut out = data.to_vec();
            out.resize(data.len().next_multiple_of(4), 0);
            return out;
        };
        let (mut bodies, mut scales) = (Vec::new(), Vec::new());
        for b in data.chunks_exact(block) {
            bodies.extend_from_slice(&b[..at]);
            bodies.extend_from_slice(&b[at + len..]);
            scales.extend_from_slice(&b[at..at + len]);
        }
        scales.resize(scales.len().next_multiple_of(4), 0);
        [bodies, scales].concat()
    }

    /// Repacks `rows` rows of `data` into a buffer of garbage, `chunk` rows at a time.
    fn repacked(ty: GgmlType, cols: usize, rows: usize, data: &[u8], chunk: usize) -> Vec<u8> {
        let repack = Repack::new(ty, cols);
        let (_, size) = repack.layout(rows);
        let mut out = vec![0xEEu8; size as usize];
        let row_bytes = repack.row_bytes();
        for first in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - first);
            let [b, s] = repack.ranges(rows, first, n);
            assert!(b.start % 4 == 0 && s.start % 4 == 0 && b.end % 4 == 0 && s.end % 4 == 0);
            let (front, back) = out.split_at_mut(s.start as usize);
            let bodies = &mut front[b.start as usize..b.end as usize];
            let scales = &mut back[..(s.end - s.start) as usize];
            let row = |r: usize| &data[(first + r) * row_bytes..][..row_bytes];
            repack.write(n, &row, bodies.into(), scales.into());
        }
        out
    }

    #[test]
    fn parallel_chunked_repacking_matches_the_serial_reference_for_every_type() {
        for ty in ALL_TYPES {
            // Odd widths where the type allows, rows past one task and not a multiple of 4.
            let cols = ty.block_size() * 3;
            let rows = 4099;
            let bytes = ty.bytes_for((cols * rows) as u64).unwrap() as usize;
            let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 251) as u8).collect();
            let want = reference(ty, &data);
            for chunk in [rows, 4, 1000] {
                let got = repacked(ty, cols, rows, &data, chunk);
                assert!(got == want, "{ty}: chunks of {chunk} rows differ");
            }
            let (layout, size) = Repack::new(ty, cols).layout(rows);
            assert_eq!(size as usize, want.len(), "{ty}");
            assert!(want.len() <= bytes + 4, "{ty} grew");
            assert_eq!(layout.blocks_per_row, 3, "{ty}");
            if let Some((_, len)) = ty.scale_fields() {
                assert_eq!((ty.type_size() - len) % 4, 0, "{ty}");
            }
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
        let (layout, _) = Repack::new(GgmlType::Q8_0, 64).layout(1);
        assert_eq!(
            layout,
            WeightLayout {
                body_words: 8,
                scales_offset: 16,
                blocks_per_row: 2
            }
        );
        let bytes = repacked(GgmlType::Q8_0, 64, 1, &data, 1);
        assert_eq!(bytes[..32], (0..32).collect::<Vec<u8>>()[..]);
        assert_eq!(bytes[64..68], [0xAB, 0xCD, 0xAB, 0xCD]);
    }
}
