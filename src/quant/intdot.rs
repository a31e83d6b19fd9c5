//! Integer sums inside one block, written as plain loops over fixed-size arrays so LLVM
//! turns them into widening multiply-adds (pmaddwd and friends) under each target feature set.

/// Σ a[i]·b[i]. No overflow: |a·b| ≤ 2^14 and N ≤ 256.
#[inline(always)]
pub(crate) fn dot_i8<const N: usize>(a: &[i8; N], b: &[i8; N]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// Σ a[i]·b[i] for pre-scaled weights (|a| < 2^13 in every k-quant, so the sum stays in i32).
#[inline(always)]
pub(crate) fn dot_i16_i8<const N: usize>(a: &[i16; N], b: &[i8; N]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

#[inline(always)]
pub(crate) fn sum_i8<const N: usize>(a: &[i8; N]) -> i32 {
    a.iter().map(|&x| x as i32).sum()
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
#[inline(always)]
pub(crate) fn unpack_fifth_bits(qh: [u8; 4]) -> [u8; 32] {
    let bits = u32::from_le_bytes(qh);
    std::array::from_fn(|i| (((bits >> i) & 1) << 4) as u8)
}
