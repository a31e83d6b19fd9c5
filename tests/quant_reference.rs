//! vibrant::quant against an independent implementation (gguf-py, vectors written by
//! scripts/quant_reference.py into tests/data/quant), plus error bounds for quantization and
//! for the dot products with quantized activations.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use vibrant::quant::{
    dequantize, dequantize_vec, quantize, quantize_acts, vec_dot, ActFormat, GgmlType, QuantError,
    ALL_TYPES, QK_K,
};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read reference file {}: {e} (regenerate with scripts/quant_reference.py)",
            path.display()
        )
    })
}

fn read_f32(path: &Path) -> Vec<f32> {
    read(path)
        .as_chunks::<4>()
        .0
        .iter()
        .map(|b| f32::from_le_bytes(*b))
        .collect()
}

struct Case {
    kind: String,
    name: String,
    /// A tensor type, or Q8_K for the "acts" cases.
    type_name: String,
    n: usize,
    source: String,
}

impl Case {
    fn ty(&self) -> GgmlType {
        GgmlType::from_name(&self.type_name)
            .unwrap_or_else(|| panic!("{}: unknown type {}", self.name, self.type_name))
    }

    fn bytes(&self) -> Vec<u8> {
        read(&data_dir().join(format!("{}.bin", self.name)))
    }

    fn values(&self) -> Vec<f32> {
        let v = read_f32(&data_dir().join(format!("{}.f32", self.name)));
        assert_eq!(v.len(), self.n, "{}: element count", self.name);
        v
    }
}

fn manifest() -> Vec<Case> {
    let text = String::from_utf8(read(&data_dir().join("manifest.tsv"))).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 5, "bad manifest line {line:?}");
            Case {
                kind: f[0].into(),
                name: f[1].into(),
                type_name: f[2].into(),
                n: f[3].parse().unwrap(),
                source: f[4].into(),
            }
        })
        .collect()
}

fn cases_of(kind: &str) -> Vec<Case> {
    manifest().into_iter().filter(|c| c.kind == kind).collect()
}

/// Cases whose `.bin` holds blocks and `.f32` their dequantization.
fn dequantization_cases() -> Vec<Case> {
    manifest()
        .into_iter()
        .filter(|c| c.kind == "real" || c.kind == "random")
        .collect()
}

/// The first differing element, compared by bits (so -0.0 ≠ 0.0).
fn first_difference(got: &[f32], want: &[f32]) -> Option<String> {
    got.iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
        .map(|i| format!("element {i}: got {:e}, gguf-py {:e}", got[i], want[i]))
}

#[test]
fn reference_covers_every_type_and_the_real_models() {
    let cases = manifest();
    let types = |kind: &str| -> BTreeSet<GgmlType> {
        cases
            .iter()
            .filter(|c| c.kind == kind)
            .map(Case::ty)
            .collect()
    };
    assert_eq!(types("random"), ALL_TYPES.into_iter().collect());
    use GgmlType::*;
    assert_eq!(
        types("real"),
        [F32, Q4_1, Q5_0, Q8_0, Q4K, Q6K].into_iter().collect()
    );
    // Every quantizer but the trivial F32 one.
    assert_eq!(
        types("quantize"),
        ALL_TYPES.into_iter().filter(|&t| t != F32).collect()
    );
    assert!(cases
        .iter()
        .any(|c| c.kind == "acts" && c.type_name == "Q8_K"));
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let mut failures = Vec::new();
    let cases = dequantization_cases();
    assert!(
        cases.len() > 40,
        "only {} dequantization cases",
        cases.len()
    );
    for case in &cases {
        let want = case.values();
        let got = dequantize_vec(case.ty(), &case.bytes(), case.n).unwrap();
        if let Some(diff) = first_difference(&got, &want) {
            failures.push(format!(
                "{} {} ({}): {diff}",
                case.type_name, case.name, case.source
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn assert_same_bytes(got: &[u8], want: &[u8], block_bytes: usize, case: &Case) {
    assert_eq!(got.len(), want.len(), "{}", case.name);
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{} ({}): byte {i} (block {}) is {:#04x}, reference {:#04x}",
            case.name,
            case.source,
            i / block_bytes,
            got[i],
            want[i]
        );
    }
}

/// Legacy and float types against gguf-py, k-quants against ggml's C reference quantizers.
#[test]
fn quantizers_match_references_bit_for_bit() {
    let cases = cases_of("quantize");
    assert!(cases.len() >= 12, "only {} quantization cases", cases.len());
    for case in cases {
        let got = quantize(case.ty(), &case.values()).unwrap();
        assert_same_bytes(&got, &case.bytes(), case.ty().type_size(), &case);
    }
}

#[test]
fn q8k_activations_match_ggml_bit_for_bit() {
    let cases = cases_of("acts");
    assert!(!cases.is_empty(), "no Q8_K activation case in the manifest");
    for case in cases {
        let mut got = Vec::new();
        quantize_acts(ActFormat::Q8K, &case.values(), &mut got);
        assert_same_bytes(&got, &case.bytes(), ActFormat::Q8K.type_size(), &case);
    }
}

/// Approximately normal values (sum of uniforms) with a few outliers, like trained weights.
fn weights(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.7;
            if rng.random::<f32>() < 0.01 {
                v * 6.0
            } else {
                v
            }
        })
        .collect()
}

fn relative_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / norm).sqrt()
}

/// Largest relative RMS error of a quantize → dequantize round trip on [`weights`] data: the
/// measured values (the quantizers are bit-exact with ggml's) plus about 10%. A misplaced
/// bit, nibble or scale gives errors near 1.
fn rmse_bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 2.5e-4,
        GgmlType::BF16 => 2e-3,
        GgmlType::Q8_0 => 8.5e-3,
        GgmlType::Q6K => 0.025,
        GgmlType::Q5K => 0.046,
        GgmlType::Q5_1 => 0.048,
        GgmlType::Q5_0 => 0.065,
        GgmlType::Q4K => 0.09,
        GgmlType::Q4_1 => 0.097,
        GgmlType::Q4_0 => 0.13,
        GgmlType::Q3K => 0.195,
        GgmlType::Q2K => 0.36,
    }
}

#[test]
fn quantization_error_is_within_per_type_bounds() {
    let mut rng = StdRng::seed_from_u64(1);
    let x = weights(&mut rng, 64 * QK_K);
    let mut report = Vec::new();
    for ty in ALL_TYPES {
        let q = quantize(ty, &x).unwrap();
        assert_eq!(q.len(), ty.row_bytes(x.len()).unwrap(), "{ty}");
        let y = dequantize_vec(ty, &q, x.len()).unwrap();
        let e = relative_rmse(&x, &y);
        let ok = e <= rmse_bound(ty);
        report.push(format!(
            "{ty}: {e:.5} (bound {}){}",
            rmse_bound(ty),
            if ok { "" } else { " FAIL" }
        ));
    }
    let report = report.join("\n");
    assert!(!report.contains("FAIL"), "{report}");
    eprintln!("{report}");
}

/// A k-quant beats the legacy quant of its width, and a wider k-quant a narrower one.
#[test]
fn k_quants_beat_legacy_quants_of_the_same_width() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = weights(&mut rng, 16 * QK_K);
    let err = |ty| {
        relative_rmse(
            &x,
            &dequantize_vec(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap(),
        )
    };
    assert!(err(GgmlType::Q4K) < err(GgmlType::Q4_0));
    assert!(err(GgmlType::Q5K) < err(GgmlType::Q5_0));
    assert!(err(GgmlType::Q6K) < err(GgmlType::Q5K));
    assert!(err(GgmlType::Q3K) < err(GgmlType::Q2K));
}

/// Decodes activations back to f32 (Q8_K parsed here from ggml's layout, independently of
/// the library).
fn dequantize_acts(format: ActFormat, acts: &[u8], n: usize) -> Vec<f32> {
    match format {
        ActFormat::F32 => dequantize_vec(GgmlType::F32, acts, n).unwrap(),
        ActFormat::Q8_0 => dequantize_vec(GgmlType::Q8_0, acts, n).unwrap(),
        ActFormat::Q8K => acts
            .chunks_exact(292)
            .flat_map(|b| {
                let d = f32::from_le_bytes(b[..4].try_into().unwrap());
                b[4..260].iter().map(move |&q| q as i8 as f32 * d)
            })
            .collect(),
    }
}

/// Checks `vec_dot` of `row` with `x` against f64 sums over the dequantized row: with the
/// dequantized activations it must agree to float rounding; with the exact activations
/// within the activation quantization error, Σ|w|·(half a step + the f16 rounding of the
/// block scale).
fn check_dot(ty: GgmlType, row: &[u8], x: &[f32], what: &str) {
    let n = x.len();
    let w = dequantize_vec(ty, row, n).unwrap();
    let format = ty.act_format();
    let mut acts = Vec::new();
    quantize_acts(format, x, &mut acts);
    let xq = dequantize_acts(format, &acts, n);
    let got = vec_dot(ty, row, &acts, n) as f64;

    let exact: f64 = w.iter().zip(&xq).map(|(a, b)| *a as f64 * *b as f64).sum();
    let magnitude: f64 = w
        .iter()
        .zip(&xq)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    // f32 summation error (lanes of a few hundred terms); a misplaced element costs O(1).
    let tol = 1e-5 * magnitude + 1e-30;
    assert!(
        (got - exact).abs() <= tol,
        "{ty} {what}: vec_dot {got} vs dequantized dot {exact} (n = {n}, tolerance {tol:e})"
    );

    let block = format.block_size();
    let mut bound = 0.0f64;
    for (wb, xb) in w.chunks(block).zip(x.chunks(block)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let step = match format {
            ActFormat::F32 => 0.0,
            // Rounding to the step d = amax/127, whose f16 rounding moves a level by ≤ 127·2^-11·d.
            ActFormat::Q8_0 => amax / 127.0 * (0.5 + 127.0 / 2048.0),
            ActFormat::Q8K => amax / 127.0 * 0.5,
        };
        bound += step * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
    }
    let true_dot: f64 = w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
    let bound = bound * (1.0 + 1e-4) + tol + 1e-6 * true_dot.abs();
    assert!(
        (got - true_dot).abs() <= bound,
        "{ty} {what}: vec_dot {got} vs f32 dot {true_dot} beyond {bound:e}"
    );
}

#[test]
fn vec_dot_matches_dequantized_dot_for_every_type_and_length() {
    let mut rng = StdRng::seed_from_u64(3);
    for ty in ALL_TYPES {
        let block = ty.block_size().max(ty.act_format().block_size());
        let lengths: Vec<usize> = if ty.act_format() == ActFormat::F32 {
            vec![1, 5, 16, 31, 64, 1000, 4864]
        } else {
            [1, 2, 3, 7, 19, 40].iter().map(|b| b * block).collect()
        };
        for n in lengths {
            let row = quantize(ty, &weights(&mut rng, n)).unwrap();
            let x = weights(&mut rng, n);
            check_dot(ty, &row, &x, &format!("quantized row, n = {n}"));
        }
    }
}

/// Real model rows and random blocks (extreme levels and scales) through the dot products.
#[test]
fn vec_dot_handles_reference_blocks() {
    let mut rng = StdRng::seed_from_u64(4);
    // Random float bit patterns overflow any dot product; the block types' random cases stay.
    let float_noise = |c: &Case| c.kind == "random" && c.ty().block_size() == 1;
    for case in dequantization_cases()
        .into_iter()
        .filter(|c| !float_noise(c))
    {
        let x = weights(&mut rng, case.n);
        let ty = case.ty();
        if case.n % ty.act_format().block_size() == 0 {
            check_dot(ty, &case.bytes(), &x, &case.name);
        }
    }
}

#[test]
fn bad_lengths_are_errors() {
    for ty in ALL_TYPES {
        let n = 2 * ty.block_size();
        let good = vec![0u8; ty.row_bytes(n).unwrap()];
        let mut out = vec![0.0; n];
        assert_eq!(dequantize(ty, &good, &mut out), Ok(()));
        for bad in [good.len() - 1, good.len() + 1, 0] {
            let err = dequantize(ty, &vec![0; bad], &mut out).unwrap_err();
            assert_eq!(
                err,
                QuantError::DataLength {
                    ty,
                    n,
                    expected: good.len(),
                    got: bad
                },
                "{ty}"
            );
            assert!(err.to_string().contains(ty.name()), "{err}");
        }
        if ty.block_size() > 1 {
            let partial = ty.block_size() + 1;
            let err = dequantize(ty, &good, &mut vec![0.0; partial]).unwrap_err();
            assert!(
                matches!(err, QuantError::PartialBlock { n, .. } if n == partial),
                "{ty}: {err}"
            );
            let err = quantize(ty, &vec![0.5; partial]).unwrap_err();
            assert!(
                matches!(err, QuantError::PartialBlock { .. }),
                "{ty}: {err}"
            );
            let mut x = vec![0.5; n];
            x[3] = f32::NAN;
            let err = quantize(ty, &x).unwrap_err();
            assert!(
                matches!(err, QuantError::NonFinite { index: 3, .. }),
                "{ty}: {err}"
            );
        } else {
            // Float types store non-finite values as they are.
            let x = [f32::INFINITY, -0.0];
            let y = dequantize_vec(ty, &quantize(ty, &x).unwrap(), 2).unwrap();
            assert_eq!(y[0], f32::INFINITY);
            assert_eq!(y[1].to_bits(), (-0.0f32).to_bits());
        }
        assert_eq!(quantize(ty, &[]), Ok(Vec::new()));
    }
}
