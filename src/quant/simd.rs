//! AVX2 kernels for the product of weight rows with a batch of activation vectors, one per
//! token. Each weight block is decoded into registers once per tile of tokens and dotted with
//! every token of the tile, so prompt processing decodes a block once per few tokens instead
//! of once per token. Inside a block the sums stay in integers, as in the portable kernels.
//!
//! Levels are made unsigned, their offset folded into a minimum term, so that one `vpmaddubsw`
//! multiplies 32 of them by 32 signed activation bytes.
//!
//! The code is compiled three times, into [`mat_mul_avx2`], [`mat_mul_avx512`] (whose 32 vector
//! registers hold a tile of twice the tokens) and [`mat_mul_avx512_vnni`] (which multiplies
//! and adds bytes in one instruction). Every other function is `unsafe` for the one reason that
//! it runs AVX2, FMA and F16C instructions, and is inlined into those three.

use super::blocks::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0,
};
use super::q2k_q3k::unpack_q3_scales;
use super::q4k_q5k::unpack_scale_min;
use super::{ActFormat, GgmlType};
use bytemuck::Pod;
use std::arch::x86_64::*;

/// Weight rows and the activation vectors they meet: `act_bytes` per token as
/// `quantize_acts` writes them, and as [`lay_out`] arranged them for the kernels.
pub(super) struct Batch<'a> {
    pub rows: &'a [u8],
    pub row_bytes: usize,
    pub acts: &'a [u8],
    pub act_bytes: usize,
    pub layout: &'a Layout,
}

impl Batch<'_> {
    fn rows<B: Pod>(&self) -> impl Iterator<Item = &[B]> + Clone {
        self.rows
            .chunks_exact(self.row_bytes)
            .map(bytemuck::cast_slice)
    }

    fn acts<A: Pod>(&self) -> Vec<&[A]> {
        self.acts
            .chunks_exact(self.act_bytes)
            .map(bytemuck::cast_slice)
            .collect()
    }
}

/// The activations of a batch, arranged once for the kernels that read them rather than once
/// per block of rows.
pub(super) enum Layout {
    /// As `quantize_acts` writes them.
    Plain,
    /// Q8_K blocks whose values are in the order of [`transpose_act`], for the VNNI kernels.
    Transposed(Vec<BlockQ8K>),
    /// Q8_0 blocks for the legacy kernels.
    Legacy(LegacyActs),
}

/// Q8_0 activations for the legacy kernels: tiles of [`LEGACY_TILE`] tokens, then single
/// tokens, block by block (tile i, block b at `i * nb + b`).
pub(super) struct LegacyActs {
    nb: usize,
    tiles: Vec<ActTile<LEGACY_TILE>>,
    singles: Vec<ActTile<1>>,
}

/// Tokens per tile of the legacy kernels, in every tier: a tile's scales then fill one
/// AVX2 register.
const LEGACY_TILE: usize = 8;

/// One block of each of `T` tokens' activations: the values, their scales, and the scales
/// times the values' sums (for the minimum terms). The scales of the tile sit side by side,
/// to be multiplied by a weight block's scale in one instruction.
#[derive(Clone, Copy)]
struct ActTile<const T: usize> {
    qs: [[i8; 32]; T],
    d: [f32; T],
    d_sum: [f32; T],
}

/// Arranges `acts`, activation vectors of `act_bytes` in `format`, for the kernels (those
/// with VNNI or without).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn lay_out(
    format: ActFormat,
    acts: &[u8],
    act_bytes: usize,
    vnni: bool,
) -> Layout {
    match format {
        ActFormat::Q8_0 => Layout::Legacy(legacy_acts(acts, act_bytes)),
        ActFormat::Q8K if vnni => {
            let blocks: &[BlockQ8K] = bytemuck::cast_slice(acts);
            let mut transposed = Vec::with_capacity(blocks.len());
            for block in blocks {
                transposed.push(transpose_act(block));
            }
            Layout::Transposed(transposed)
        }
        ActFormat::Q8K | ActFormat::F32 => Layout::Plain,
    }
}

/// `out[t * n_rows + r]` = row r · activation vector t, for the block types; `false`, with
/// nothing written, for the float types, which have no kernel here. The k-quants take tiles
/// of 4 tokens: their integer and float accumulators, a block's levels and scales and a few
/// temporaries fill the 16 vector registers of AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn mat_mul_avx2(ty: GgmlType, batch: &Batch, out: &mut [f32]) -> bool {
    mat_mul::<4, false>(ty, batch, out)
}

/// [`mat_mul_avx2`] with k-quant tiles of 8 tokens, in the 32 registers of AVX-512.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, and AVX-512 F, BW and VL.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn mat_mul_avx512(ty: GgmlType, batch: &Batch, out: &mut [f32]) -> bool {
    mat_mul::<8, false>(ty, batch, out)
}

/// [`mat_mul_avx512`] with `vpdpbusd`, which multiplies and sums bytes in one instruction,
/// for activations that [`lay_out`] arranged with `vnni`.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C, and AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn mat_mul_avx512_vnni(ty: GgmlType, batch: &Batch, out: &mut [f32]) -> bool {
    mat_mul::<8, true>(ty, batch, out)
}

#[inline(always)]
unsafe fn mat_mul<const TILE: usize, const VNNI: bool>(
    ty: GgmlType,
    batch: &Batch,
    out: &mut [f32],
) -> bool {
    match ty {
        GgmlType::Q4_0 => legacy_rows::<BlockQ4_0, VNNI>(batch, out),
        GgmlType::Q4_1 => legacy_rows::<BlockQ4_1, VNNI>(batch, out),
        GgmlType::Q5_0 => legacy_rows::<BlockQ5_0, VNNI>(batch, out),
        GgmlType::Q5_1 => legacy_rows::<BlockQ5_1, VNNI>(batch, out),
        GgmlType::Q8_0 => legacy_rows::<BlockQ8_0, VNNI>(batch, out),
        GgmlType::Q2K => kquant_rows::<BlockQ2K, TILE, VNNI>(batch, out),
        GgmlType::Q3K => kquant_rows::<BlockQ3K, TILE, VNNI>(batch, out),
        GgmlType::Q4K => kquant_rows::<BlockQ4K, TILE, VNNI>(batch, out),
        GgmlType::Q5K => kquant_rows::<BlockQ5K, TILE, VNNI>(batch, out),
        GgmlType::Q6K => kquant_rows::<BlockQ6K, TILE, VNNI>(batch, out),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return false,
    }
    true
}

/// Fills `out[t * n_rows + r]` with `full` of each row and each tile of `T` tokens, then
/// `single` of each row and each remaining token. Tiles are the outer loop so that a tile's
/// activations stay in cache while the rows of the batch, each read from memory once, cycle
/// through the faster levels.
#[inline(always)]
fn for_each_tile<'a, B: 'a, Tile, Token, const T: usize>(
    rows: impl Iterator<Item = &'a [B]> + Clone,
    tiles: &[Tile],
    rest: &[Token],
    out: &mut [f32],
    mut full: impl FnMut(&'a [B], &Tile) -> [f32; T],
    mut single: impl FnMut(&'a [B], &Token) -> f32,
) {
    let n_rows = out.len() / (tiles.len() * T + rest.len());
    for (i, tile) in tiles.iter().enumerate() {
        for (r, row) in rows.clone().enumerate() {
            for (t, v) in full(row, tile).into_iter().enumerate() {
                out[(i * T + t) * n_rows + r] = v;
            }
        }
    }
    for (i, token) in rest.iter().enumerate() {
        let out = &mut out[(tiles.len() * T + i) * n_rows..][..n_rows];
        for (o, row) in out.iter_mut().zip(rows.clone()) {
            *o = single(row, token);
        }
    }
}

#[inline(always)]
unsafe fn load_256<T: Pod>(x: &T) -> __m256i {
    const { assert!(size_of::<T>() == 32) };
    // `x` is 32 readable bytes, and the load has no alignment requirement.
    _mm256_loadu_si256((x as *const T).cast())
}

#[inline(always)]
unsafe fn load_128<T: Pod>(x: &T) -> __m128i {
    const { assert!(size_of::<T>() == 16) };
    // `x` is 16 readable bytes, and the load has no alignment requirement.
    _mm_loadu_si128((x as *const T).cast())
}

/// A half-precision field, converted by F16C (a table lookup would miss the cache here).
#[inline(always)]
unsafe fn half(bytes: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes(bytes) as i32
    )))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

/// Moves the bits at `from` of each byte to `to` (the caller masks them): 16-bit shifts,
/// whose spill-over from the neighbouring byte never reaches the masked bits.
#[inline(always)]
unsafe fn move_bits(v: __m256i, from: usize, to: usize) -> __m256i {
    if to >= from {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128((to - from) as i32))
    } else {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128((from - to) as i32))
    }
}

/// Bits `from..from + width` of each byte, as an unsigned number shifted to bit `to`.
#[inline(always)]
unsafe fn bit_field(v: __m256i, from: usize, width: usize, to: usize) -> __m256i {
    let mask = (((1u32 << width) - 1) << to) as i8;
    _mm256_and_si256(move_bits(v, from, to), _mm256_set1_epi8(mask))
}

// ---------------------------------------------------------------------------------------------
// k-quants: 256 weights whose value is d·sc·u − dmin·mc in each group of 16, u unsigned.

/// The per-group factors of a k-quant block.
struct KScales {
    d: f32,
    dmin: f32,
    /// sc of the 16 groups of 16, as i16.
    sc: __m256i,
    /// mc of the 16 groups, as i16, to be multiplied by the activations' group sums.
    mc: __m256i,
}

trait KBlock: Pod {
    /// dmin equals d, so the minimum term is subtracted exactly, in integers.
    const MIN_IN_INTEGERS: bool;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn scales(&self) -> KScales;

    /// The unsigned levels of elements 32j..32j + 32.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn levels(&self, j: usize) -> __m256i;
}

/// Each byte of `x` twice, widened to i16: the scales of 8 groups of 32 as 16 groups of 16.
#[inline(always)]
unsafe fn groups_of_16(x: [u8; 8]) -> __m256i {
    let v = _mm_cvtsi64_si128(i64::from_le_bytes(x));
    _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v))
}

/// Scales of groups 2j and 2j + 1 for the 16 products `vpmaddubsw` makes of elements
/// 32j..32j + 32: eight copies of each.
#[inline(always)]
unsafe fn scale_pair(sc: __m256i, j: usize) -> __m256i {
    let pair = _mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(j as i32));
    let spread = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, //
        2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
    );
    _mm256_shuffle_epi8(pair, spread)
}

impl KBlock for BlockQ2K {
    const MIN_IN_INTEGERS: bool = false;

    #[inline(always)]
    unsafe fn scales(&self) -> KScales {
        let s = load_128(&self.scales);
        let low = _mm_set1_epi8(0x0f);
        KScales {
            d: half(self.d),
            dmin: half(self.dmin),
            sc: _mm256_cvtepu8_epi16(_mm_and_si128(s, low)),
            mc: _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(s), low)),
        }
    }

    #[inline(always)]
    unsafe fn levels(&self, j: usize) -> __m256i {
        let bits = load_256(&self.qs.as_chunks::<32>().0[j / 4]);
        bit_field(bits, 2 * (j % 4), 2, 0)
    }
}

impl KBlock for BlockQ3K {
    const MIN_IN_INTEGERS: bool = true;

    #[inline(always)]
    unsafe fn scales(&self) -> KScales {
        let sc = _mm256_cvtepi8_epi16(load_128(&unpack_q3_scales(&self.scales)));
        let d = half(self.d);
        KScales {
            d,
            dmin: d,
            sc,
            mc: _mm256_slli_epi16::<2>(sc),
        }
    }

    /// u = q + 4 in 0..8: the two low bits, and 4 where the high bit is set.
    #[inline(always)]
    unsafe fn levels(&self, j: usize) -> __m256i {
        let bits = load_256(&self.qs.as_chunks::<32>().0[j / 4]);
        let low = bit_field(bits, 2 * (j % 4), 2, 0);
        _mm256_or_si256(low, bit_field(load_256(&self.hmask), j, 1, 2))
    }
}

/// The scales of Q4_K and Q5_K, which share the packed 6-bit scale/min layout.
#[inline(always)]
unsafe fn packed_scale_min(d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12]) -> KScales {
    let (sc, m) = unpack_scale_min(scales);
    KScales {
        d: half(d),
        dmin: half(dmin),
        sc: groups_of_16(sc),
        mc: groups_of_16(m),
    }
}

impl KBlock for BlockQ4K {
    const MIN_IN_INTEGERS: bool = false;

    #[inline(always)]
    unsafe fn scales(&self) -> KScales {
        packed_scale_min(self.d, self.dmin, &self.scales)
    }

    #[inline(always)]
    unsafe fn levels(&self, j: usize) -> __m256i {
        let bits = load_256(&self.qs.as_chunks::<32>().0[j / 2]);
        bit_field(bits, 4 * (j % 2), 4, 0)
    }
}

impl KBlock for BlockQ5K {
    const MIN_IN_INTEGERS: bool = false;

    #[inline(always)]
    unsafe fn scales(&self) -> KScales {
        packed_scale_min(self.d, self.dmin, &self.scales)
    }

    #[inline(always)]
    unsafe fn levels(&self, j: usize) -> __m256i {
        let bits = load_256(&self.qs.as_chunks::<32>().0[j / 2]);
        let low = bit_field(bits, 4 * (j % 2), 4, 0);
        _mm256_or_si256(low, bit_field(load_256(&self.qh), j, 1, 4))
    }
}

impl KBlock for BlockQ6K {
    const MIN_IN_INTEGERS: bool = true;

    #[inline(always)]
    unsafe fn scales(&self) -> KScales {
        let sc = _mm256_cvtepi8_epi16(load_128(&self.scales));
        let d = half(self.d);
        KScales {
            d,
            dmin: d,
            sc,
            mc: _mm256_slli_epi16::<5>(sc),
        }
    }

    /// u = q + 32 in 0..64: for j = 4h + s, a nibble of `ql` chunk 2h + s % 2 (low for s < 2)
    /// under bit pair s of `qh` chunk h.
    #[inline(always)]
    unsafe fn levels(&self, j: usize) -> __m256i {
        let (h, s) = (j / 4, j % 4);
        let ql = load_256(&self.ql.as_chunks::<32>().0[2 * h + s % 2]);
        let qh = load_256(&self.qh.as_chunks::<32>().0[h]);
        _mm256_or_si256(bit_field(ql, 4 * (s / 2), 4, 0), bit_field(qh, 2 * s, 2, 4))
    }
}

#[inline(always)]
unsafe fn kquant_rows<B: KBlock, const TILE: usize, const VNNI: bool>(
    batch: &Batch,
    out: &mut [f32],
) {
    // Tokens left over from the tiles take the plain kernel: for one token, transposing each
    // weight block costs more than `vpdpbusd` saves.
    let plain = batch.acts::<BlockQ8K>();
    let full = plain.len() / TILE * TILE;
    let acts = match (VNNI, batch.layout) {
        (false, _) => plain[..full].to_vec(),
        (true, Layout::Transposed(blocks)) => {
            let nb = batch.act_bytes / size_of::<BlockQ8K>();
            blocks[..full * nb].chunks_exact(nb).collect()
        }
        (true, _) => unreachable!("activations for the VNNI kernels are transposed"),
    };
    for_each_tile(
        batch.rows::<B>(),
        acts.as_chunks::<TILE>().0,
        &plain[full..],
        out,
        #[inline(always)]
        |row, acts| kquant_tile::<B, TILE, VNNI>(row, acts),
        #[inline(always)]
        |row, act| kquant_tile::<B, 1, false>(row, &[*act])[0],
    );
}

/// Σ over the blocks of `row` · each of `T` activation vectors; with `VNNI`, the
/// activations' values are in the order of [`transpose_act`].
#[inline(always)]
unsafe fn kquant_tile<B: KBlock, const T: usize, const VNNI: bool>(
    row: &[B],
    acts: &[&[BlockQ8K]; T],
) -> [f32; T] {
    let mut sums = [_mm256_setzero_ps(); T];
    for (b, w) in row.iter().enumerate() {
        let s = w.scales();
        let mut block_acts = [&acts[0][b]; T];
        for (block, act) in block_acts.iter_mut().zip(acts) {
            *block = &act[b];
        }
        let acts = block_acts;
        let dots = match VNNI {
            true => group_dots_vnni(w, s.sc, &acts),
            false => group_dots(w, s.sc, &acts),
        };
        for ((sum, dot), act) in sums.iter_mut().zip(dots).zip(acts) {
            let mins = _mm256_madd_epi16(load_256(&act.bsums), s.mc);
            let da = act.d();
            if B::MIN_IN_INTEGERS {
                let dot = _mm256_sub_epi32(dot, mins);
                *sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(s.d * da), *sum);
            } else {
                *sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(s.d * da), *sum);
                let dm = _mm256_set1_ps(s.dmin * da);
                *sum = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), dm, *sum);
            }
        }
    }
    let mut out = [0.0; T];
    for (o, sum) in out.iter_mut().zip(sums) {
        *o = hsum(sum);
    }
    out
}

/// Σ over the 16 groups of sc · Σ u·a, for each token's block, spread over 8 lanes.
#[inline(always)]
unsafe fn group_dots<B: KBlock, const T: usize>(
    w: &B,
    sc: __m256i,
    acts: &[&BlockQ8K; T],
) -> [__m256i; T] {
    let mut dots = [_mm256_setzero_si256(); T];
    for j in 0..8 {
        let q = w.levels(j);
        let sc = scale_pair(sc, j);
        for (dot, act) in dots.iter_mut().zip(acts) {
            let a = load_256(&act.qs.as_chunks::<32>().0[j]);
            *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), sc));
        }
    }
    dots
}

/// Transposes the 4×4 blocks of 32-bit words in each 128-bit half of four vectors: word k of
/// a half of input i becomes word i of that half of output k.
#[inline(always)]
unsafe fn transpose_4x4(v: [__m256i; 4]) -> [__m256i; 4] {
    let ab_lo = _mm256_unpacklo_epi32(v[0], v[1]);
    let ab_hi = _mm256_unpackhi_epi32(v[0], v[1]);
    let cd_lo = _mm256_unpacklo_epi32(v[2], v[3]);
    let cd_hi = _mm256_unpackhi_epi32(v[2], v[3]);
    [
        _mm256_unpacklo_epi64(ab_lo, cd_lo),
        _mm256_unpackhi_epi64(ab_lo, cd_lo),
        _mm256_unpacklo_epi64(ab_hi, cd_hi),
        _mm256_unpackhi_epi64(ab_hi, cd_hi),
    ]
}

/// The values of a block reordered so that the 32-bit lanes of each of its eight 32-byte
/// vectors belong to fixed groups of 16: [`transpose_4x4`] of vectors 0-3 and of 4-7 puts
/// groups 0, 2, 4, 6, 1, 3, 5, 7 in the lanes of the first four vectors and groups 8, 10, 12,
/// 14, 9, 11, 13, 15 in those of the last four. One `vpdpbusd` accumulator per half then sums
/// each lane's group, and the scales apply once per block.
#[inline(always)]
unsafe fn transposed(v: [__m256i; 8]) -> [__m256i; 8] {
    let x = transpose_4x4([v[0], v[1], v[2], v[3]]);
    let y = transpose_4x4([v[4], v[5], v[6], v[7]]);
    [x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3]]
}

#[inline(always)]
unsafe fn transpose_act(a: &BlockQ8K) -> BlockQ8K {
    let mut v = [_mm256_setzero_si256(); 8];
    for (v, chunk) in v.iter_mut().zip(a.qs.as_chunks::<32>().0) {
        *v = load_256(chunk);
    }
    let v = transposed(v);
    let mut out = *a;
    for (chunk, v) in out.qs.as_chunks_mut::<32>().0.iter_mut().zip(v) {
        _mm256_storeu_si256(chunk.as_mut_ptr().cast(), v);
    }
    out
}

/// [`group_dots`] with `vpdpbusd`, against activations in the order of [`transpose_act`].
#[inline(always)]
unsafe fn group_dots_vnni<B: KBlock, const T: usize>(
    w: &B,
    sc: __m256i,
    acts: &[&BlockQ8K; T],
) -> [__m256i; T] {
    let mut q = [_mm256_setzero_si256(); 8];
    for (j, q) in q.iter_mut().enumerate() {
        *q = w.levels(j);
    }
    let q = transposed(q);
    // The i16 scales in the lane order of `transposed`, widened to i32 for each half.
    let order = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    let sc = _mm256_shuffle_epi8(sc, order);
    let sc_x = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sc));
    let sc_y = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(sc));
    let mut dots = [_mm256_setzero_si256(); T];
    for (dot, act) in dots.iter_mut().zip(acts) {
        let a = act.qs.as_chunks::<32>().0;
        let (mut x, mut y) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for k in 0..4 {
            x = _mm256_dpbusd_epi32(x, q[k], load_256(&a[k]));
            y = _mm256_dpbusd_epi32(y, q[4 + k], load_256(&a[4 + k]));
        }
        *dot = _mm256_add_epi32(_mm256_mullo_epi32(x, sc_x), _mm256_mullo_epi32(y, sc_y));
    }
    dots
}

// ---------------------------------------------------------------------------------------------
// Legacy quants: 32 weights d·u + m, or d·q with signed q for Q8_0; activations in Q8_0.

trait LegacyBlock: Pod {
    /// Signed levels (Q8_0) with no minimum term, dotted by moving their signs onto the
    /// activations.
    const SIGNED: bool;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn levels(&self) -> __m256i;

    /// The scale d and the minimum m.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn d_m(&self) -> (f32, f32);
}

/// The 32 nibbles of 16 bytes: low nibbles first, then the high ones.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let x = load_128(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(x), x);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 16 in each byte whose bit of the little-endian `qh` is set.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let word = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte i takes byte i / 8 of the word (each 128-bit lane holds a copy of all four).
    let spread = _mm256_shuffle_epi8(
        word,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

impl LegacyBlock for BlockQ4_0 {
    const SIGNED: bool = false;

    #[inline(always)]
    unsafe fn levels(&self) -> __m256i {
        nibbles(&self.qs)
    }

    #[inline(always)]
    unsafe fn d_m(&self) -> (f32, f32) {
        let d = half(self.d);
        (d, -8.0 * d)
    }
}

impl LegacyBlock for BlockQ4_1 {
    const SIGNED: bool = false;

    #[inline(always)]
    unsafe fn levels(&self) -> __m256i {
        nibbles(&self.qs)
    }

    #[inline(always)]
    unsafe fn d_m(&self) -> (f32, f32) {
        (half(self.d), half(self.m))
    }
}

impl LegacyBlock for BlockQ5_0 {
    const SIGNED: bool = false;

    #[inline(always)]
    unsafe fn levels(&self) -> __m256i {
        _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh))
    }

    #[inline(always)]
    unsafe fn d_m(&self) -> (f32, f32) {
        let d = half(self.d);
        (d, -16.0 * d)
    }
}

impl LegacyBlock for BlockQ5_1 {
    const SIGNED: bool = false;

    #[inline(always)]
    unsafe fn levels(&self) -> __m256i {
        _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh))
    }

    #[inline(always)]
    unsafe fn d_m(&self) -> (f32, f32) {
        (half(self.d), half(self.m))
    }
}

/// Levels are −127..=127 as ggml's quantizer writes them; a −128 would saturate the
/// pairwise sums.
impl LegacyBlock for BlockQ8_0 {
    const SIGNED: bool = true;

    #[inline(always)]
    unsafe fn levels(&self) -> __m256i {
        load_256(&self.qs)
    }

    #[inline(always)]
    unsafe fn d_m(&self) -> (f32, f32) {
        (half(self.d), 0.0)
    }
}

#[inline(always)]
unsafe fn legacy_acts(acts: &[u8], act_bytes: usize) -> LegacyActs {
    let tokens: Vec<&[BlockQ8_0]> = acts
        .chunks_exact(act_bytes)
        .map(bytemuck::cast_slice)
        .collect();
    let full = tokens.len() / LEGACY_TILE * LEGACY_TILE;
    let nb = act_bytes / size_of::<BlockQ8_0>();
    LegacyActs {
        nb,
        tiles: act_tiles(&tokens[..full], nb),
        singles: act_tiles(&tokens[full..], nb),
    }
}

/// `tokens`' activations as tiles of `T` tokens, block by block.
#[inline(always)]
unsafe fn act_tiles<const T: usize>(tokens: &[&[BlockQ8_0]], nb: usize) -> Vec<ActTile<T>> {
    let ones = _mm256_set1_epi8(1);
    let mut tiles = Vec::with_capacity(nb * tokens.len() / T);
    for tile in tokens.chunks_exact(T) {
        for b in 0..nb {
            let mut out = ActTile {
                qs: [[0; 32]; T],
                d: [0.0; T],
                d_sum: [0.0; T],
            };
            for (t, act) in tile.iter().enumerate() {
                let a = &act[b];
                let pairs = _mm256_maddubs_epi16(ones, load_256(&a.qs));
                let sum = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
                out.qs[t] = a.qs;
                out.d[t] = half(a.d);
                out.d_sum[t] = out.d[t] * hsum(_mm256_cvtepi32_ps(sum));
            }
            tiles.push(out);
        }
    }
    tiles
}

#[inline(always)]
unsafe fn legacy_rows<B: LegacyBlock, const VNNI: bool>(batch: &Batch, out: &mut [f32]) {
    let Layout::Legacy(acts) = batch.layout else {
        unreachable!("legacy activations are laid out for the legacy kernels");
    };
    for_each_tile(
        batch.rows::<B>(),
        &acts.tiles.chunks_exact(acts.nb).collect::<Vec<_>>(),
        &acts.singles.chunks_exact(acts.nb).collect::<Vec<_>>(),
        out,
        #[inline(always)]
        |row, acts| legacy_tile::<B, LEGACY_TILE, 1, VNNI>(row, acts),
        #[inline(always)]
        |row, acts| legacy_tile::<B, 1, 4, VNNI>(row, acts)[0],
    );
}

/// Σ over the blocks of `row` · each of the `T` activation vectors of `acts`, `U` blocks at
/// a time into separate sums: with one token, a single chain of additions would leave the
/// CPU waiting on each block's.
#[inline(always)]
unsafe fn legacy_tile<B: LegacyBlock, const T: usize, const U: usize, const VNNI: bool>(
    row: &[B],
    acts: &[ActTile<T>],
) -> [f32; T] {
    let acts = &acts[..row.len()];
    let mut sums = [[_mm256_setzero_ps(); T]; U];
    let mut mins = [[0f32; T]; U];
    let (groups, rest) = row.as_chunks::<U>();
    for (ws, acts) in groups.iter().zip(acts.chunks_exact(U)) {
        for (((w, acts), sums), mins) in ws.iter().zip(acts).zip(&mut sums).zip(&mut mins) {
            legacy_block::<B, T, VNNI>(w, acts, sums, mins);
        }
    }
    for (w, acts) in rest.iter().zip(&acts[groups.len() * U..]) {
        legacy_block::<B, T, VNNI>(w, acts, &mut sums[0], &mut mins[0]);
    }
    for u in 1..U {
        for t in 0..T {
            sums[0][t] = _mm256_add_ps(sums[0][t], sums[u][t]);
            mins[0][t] += mins[u][t];
        }
    }
    let mut out = [0.0; T];
    for ((o, sum), min) in out.iter_mut().zip(sums[0]).zip(mins[0]) {
        *o = hsum(sum) + min;
    }
    out
}

/// Adds block `w` · each token's block in `acts` to the token's sums.
#[inline(always)]
unsafe fn legacy_block<B: LegacyBlock, const T: usize, const VNNI: bool>(
    w: &B,
    acts: &ActTile<T>,
    sums: &mut [__m256; T],
    mins: &mut [f32; T],
) {
    let q = w.levels();
    let (d, m) = w.d_m();
    let u = if B::SIGNED { _mm256_sign_epi8(q, q) } else { q };
    let mut scales = [0f32; T];
    for (scale, da) in scales.iter_mut().zip(acts.d) {
        *scale = d * da;
    }
    for ((sum, qs), scale) in sums.iter_mut().zip(&acts.qs).zip(scales) {
        let mut a = load_256(qs);
        if B::SIGNED {
            a = _mm256_sign_epi8(a, q);
        }
        let dot = match VNNI {
            true => _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, a),
            false => _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1)),
        };
        *sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), *sum);
    }
    if !B::SIGNED {
        for (min, d_sum) in mins.iter_mut().zip(acts.d_sum) {
            *min += m * d_sum;
        }
    }
}
