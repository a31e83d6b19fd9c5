//! Integer sums inside one block, written as plain loops over fixed-size arrays so LLVM
//! turns them into widening multiply-adds (pmaddwd and friends) under each target feature set.

use super::QK_K;

// Hot loops here and in the kernels are plain `for` loops: an iterator `sum` runs in a
// `fold` that LLVM may leave un-inlined, compiled without the caller's target features.

/// Σ q[i]·a[i] for levels `q` (i8 or u8). No overflow: |q·a| ≤ 2^14 and N ≤ 256.
#[inline(always)]
pub(crate) fn dot_i8<T: Copy + Into<i32>, const N: usize>(q: &[T; N], a: &[i8; N]) -> i32 {
    let mut sum = 0;
    for (&x, &y) in q.iter().zip(a) {
        sum += x.into() * y as i32;
    }
    sum
}

/// [`dot_i8`] of each group of `L` consecutive elements of a k-quant block, for the caller to
/// weight by the group scales.
#[inline(always)]
pub(crate) fn group_dots<T: Copy + Into<i32>, const L: usize, const G: usize>(
    q: &[T; QK_K],
    a: &[i8; QK_K],
) -> [i32; G] {
    let mut sums = [0; G];
    let groups = q.as_chunks::<L>().0.iter().zip(a.as_chunks::<L>().0);
    for (sum, (q, a)) in sums.iter_mut().zip(groups) {
        *sum = dot_i8(q, a);
    }
    sums
}

/// Σ over 16 groups of 16 of scale[g]·Σ q·a, as one long dot of levels pre-multiplied by
/// their group scale (|q·scale| ≤ 2^12 fits i16): for groups this short, faster than
/// [`group_dots`]' sixteen separate sums.
#[inline(always)]
pub(crate) fn scaled_dot_16<T: Copy + Into<i16>>(
    q: &[T; QK_K],
    scales: &[i16; 16],
    a: &[i8; QK_K],
) -> i32 {
    let mut w = [0i16; QK_K];
    for (g, &scale) in scales.iter().enumerate() {
        for l in 0..16 {
            w[16 * g + l] = q[16 * g + l].into() * scale;
        }
    }
    let mut sum = 0;
    for (&x, &y) in w.iter().zip(a) {
        sum += x as i32 * y as i32;
    }
    sum
}

#[inline(always)]
pub(crate) fn sum_i8<const N: usize>(a: &[i8; N]) -> i32 {
    let mut sum = 0;
    for &x in a {
        sum += x as i32;
    }
    sum
}

/// Splits 16 bytes into their 32 nibbles: low nibbles first, then high ones (the order of
/// ggml's 32-element blocks).
#[inline(always)]
pub(crate) fn unpack_nibbles(qs: &[u8; 16]) -> [u8; 32] {
    let mut q = [0u8; 32];
    let (lo, hi) = q.split_at_mut(16);
    for ((&b, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = b & 0x0f;
        *h = b >> 4;
    }
    q
}

/// The fifth bits of a Q5 block as 0 or 16: bit i of little-endian `qh` belongs to element i.
/// Written as a byte select against constant masks, which vectorizes; per-lane variable
/// shifts do not, on AVX2.
#[inline(always)]
pub(crate) fn unpack_fifth_bits(qh: [u8; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = if qh[i / 8] & (1 << (i % 8)) != 0 {
            16
        } else {
            0
        };
    }
    out
}
