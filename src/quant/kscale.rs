//! Scale searches of ggml's reference k-quant quantizers (no importance matrix): for one
//! group of values, pick the quantized levels and the scale (and minimum) that minimize the
//! weighted reconstruction error.

/// Below this magnitude a group counts as all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even, for |x| < 2^22: adding 1.5·2^23 leaves the
/// integer in the low mantissa bits (ggml's trick; it rounds exactly as ggml does).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The element of largest magnitude, with its sign (the first on ties).
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    // The largest magnitude first, in independent lanes that vectorize (a maximum is exact in
    // any order), then the first element that has it.
    const LANES: usize = 16;
    let (chunks, rest) = x.as_chunks::<LANES>();
    let mut lanes = [0.0f32; LANES];
    for chunk in chunks {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    let amax = rest
        .iter()
        .fold(lanes.into_iter().fold(0.0, f32::max), |m, v| m.max(v.abs()));
    match x.iter().find(|v| v.abs() == amax) {
        Some(&v) if amax > 0.0 => v,
        _ => 0.0,
    }
}

/// The largest element, or 0.0 when none is positive; compared as ggml does, so a -0.0
/// minimum never becomes a stored -0.0 scale.
pub(crate) fn positive_max(x: &[f32]) -> f32 {
    let mut max = 0.0;
    for &v in x {
        if v > max {
            max = v;
        }
    }
    max
}

/// Levels `l` in `0..=nmax` with `x ≈ scale·l - min` for a group of at most 32 values,
/// searching `nstep + 1` trial scales around `nmax / (max - min)` and refitting scale and min
/// by weighted least squares for each (ggml's `make_qkx2_quants`). Returns `(scale, min)`;
/// `min` ≥ 0 is subtracted.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    levels: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    let mut min = x.iter().fold(x[0], |m, &v| if v < m { v } else { m });
    let max = x.iter().fold(x[0], |m, &v| if v > m { v } else { m });
    let sum_w: f32 = weights.iter().sum();
    let sum_x: f32 = weights.iter().zip(x).map(|(w, v)| w * v).sum();
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let error = |scale: f32, min: f32, levels: &[u8]| -> f32 {
        let mut e = 0.0;
        for ((&l, &v), &w) in levels.iter().zip(x).zip(weights) {
            let diff = scale * l as f32 + min - v;
            e += w * if use_mad { diff.abs() } else { diff * diff };
        }
        e
    };
    let quantize = |iscale: f32, min: f32, levels: &mut [u8]| {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
        }
    };

    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    quantize(iscale, min, levels);
    let mut best_error = error(scale, min, levels);
    let mut trial = [0u8; 32];
    let trial = &mut trial[..n];
    // As in ggml, a better fit's min carries into the later trials.
    for step in 0..=nstep {
        let iscale = (rmin + rdelta * step as f32 + nmax as f32) / (max - min);
        quantize(iscale, min, trial);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((&l, &v), &w) in trial.iter().zip(x).zip(weights) {
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let e = error(this_scale, this_min, trial);
        if e < best_error {
            levels.copy_from_slice(trial);
            best_error = e;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

/// Signed levels stored as `l + nmax` in `0..2·nmax`, `x ≈ scale·l`, weighted by x², trying 18
/// scales around `nmax / max|x|` (ggml's `make_qx_quants` with `rmse_type` 1). Returns the scale.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, levels: &mut [u8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    // Σ w·x·l and Σ w·l² for the levels at `iscale`, w = x².
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let store = |iscale: f32, levels: &mut [u8]| {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = (nearest_int(iscale * v).clamp(-nmax, nmax - 1) + nmax) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    store(iscale, levels);
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        // Maximizing (Σ w·x·l)² / Σ w·l² minimizes the error at the best scale for these levels.
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            store(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Signed levels stored as `l + nmax`, `x ≈ scale·l`, weighted by x²: start from the plain
/// rounding, then move single levels while that improves the fit (ggml's `make_q3_quants`
/// with `do_rmse`). Returns the scale.
pub(crate) fn make_q3_quants(x: &[f32], nmax: i32, levels: &mut [u8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut signed = [0i32; 16];
    let signed = &mut signed[..x.len()];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (l, &v) in signed.iter_mut().zip(x) {
        *l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *l as f32;
        suml2 += w * (*l * *l) as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (l, &v) in signed.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *l as f32;
            if slx <= 0.0 {
                continue;
            }
            let mut sl2 = suml2 - w * (*l * *l) as f32;
            let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
            if new_l == *l {
                continue;
            }
            slx += w * v * new_l as f32;
            sl2 += w * (new_l * new_l) as f32;
            if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                *l = new_l;
                sumlx = slx;
                suml2 = sl2;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (out, &l) in levels.iter_mut().zip(signed.iter()) {
        *out = (l + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's loop, which the vectorized version must match exactly.
    fn signed_absmax_sequential(x: &[f32]) -> f32 {
        let mut max = 0.0f32;
        for &v in x {
            if max.abs() < v.abs() {
                max = v;
            }
        }
        max
    }

    #[test]
    fn signed_absmax_keeps_the_first_of_ties_and_its_sign() {
        assert_eq!(signed_absmax(&[1.0, -3.0, 3.0]), -3.0);
        assert_eq!(signed_absmax(&[3.0, -3.0]), 3.0);
        assert_eq!(signed_absmax(&[-0.0, -0.0]).to_bits(), 0.0f32.to_bits());
        assert_eq!(signed_absmax(&[f32::NAN, -2.0, 1.0]), -2.0);
        assert_eq!(signed_absmax(&[]), 0.0);
        for n in [5, 16, 37, 256] {
            for seed in 0..20 {
                // Values on a coarse grid, so magnitudes tie often, anywhere in the slice.
                let x: Vec<f32> = (0..n)
                    .map(|i| (((i * 7 + seed * 13) % 11) as f32 - 5.0) * 0.5)
                    .collect();
                let want = signed_absmax_sequential(&x);
                assert_eq!(signed_absmax(&x).to_bits(), want.to_bits(), "{x:?}");
            }
        }
    }

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.51), -3);
        assert_eq!(nearest_int(31.49), 31);
    }

    #[test]
    fn qkx2_fits_an_affine_grid_exactly() {
        // x = 0.25·l - 1 for l in 0..16: the search must find scale 0.25 and min 1.
        let x: Vec<f32> = (0..32).map(|i| 0.25 * (i % 16) as f32 - 1.0).collect();
        let w = vec![1.0; 32];
        let mut levels = [0u8; 32];
        let (scale, min) = make_qkx2_quants(&x, &w, 15, -1.0, 0.1, 20, false, &mut levels);
        assert!(
            (scale - 0.25).abs() < 1e-6 && (min - 1.0).abs() < 1e-6,
            "{scale} {min}"
        );
        for (l, v) in levels.iter().zip(&x) {
            assert_eq!(scale * *l as f32 - min, *v);
        }
    }

    #[test]
    fn qx_and_q3_fit_symmetric_grids() {
        let x: Vec<f32> = (0..16).map(|i| 0.5 * (i % 8) as f32 - 2.0).collect();
        let mut levels = [0u8; 16];
        let scale = make_q3_quants(&x, 4, &mut levels);
        for (l, v) in levels.iter().zip(&x) {
            assert!(
                (scale * (*l as f32 - 4.0) - v).abs() < 1e-6,
                "{scale} {l} {v}"
            );
        }
        let x: Vec<f32> = (0..16).map(|i| 0.125 * i as f32 - 1.0).collect();
        let scale = make_qx_quants(&x, 32, &mut levels);
        for (l, v) in levels.iter().zip(&x) {
            assert!(
                (scale * (*l as f32 - 32.0) - v).abs() < 1e-6,
                "{scale} {l} {v}"
            );
        }
    }
}
