//! Every GPU kernel against the CPU reference (or a float64 one) on seeded random inputs, with
//! shapes chosen to be awkward: odd row counts, widths that are not multiples of a workgroup's
//! reach, several tokens, positions past the first attention tile, grouped-query attention.
//!
//! These tests need a GPU adapter and fail without one; Mesa's lavapipe is enough (and slow, so
//! sizes stay modest). Tolerances are stated next to each comparison with the reason for them;
//! all of them are far below what one element read from a wrong index would cost.

mod common;

use common::ops::*;
use common::*;
use rand::rngs::StdRng;
use rand::Rng;
use std::time::{Duration, Instant};
use vibrant::backend::cpu::{self, CpuBackend};
use vibrant::backend::gpu::{GpuMatrix, GpuOptions, GpuTensor, WgpuBackend};
use vibrant::backend::{
    Activation, AttentionOpts, AttentionShape, Backend, BackendError, Batch, CacheLayer, CacheType,
    Dims, ExpertInput, KvLayout, KvTypes, MatrixUse, Pointwise, QkNorm, RmsNorm, Rope, RopeKind,
    Routing, Span, WeightBytes, WeightRows,
};
use vibrant::quant::{GgmlType, ALL_TYPES};

/// The GPU decodes each weight with the same f32 formula as the host decoder; only the
/// rounding of one multiply-add may differ (fused or not), a few ulps of the row's largest
/// value. A weight read from a wrong index is off by the size of the weights themselves.
const DECODE_TOL: f64 = 1e-6;

/// GPU matmul against the float64 reference, relative to |w_r|·|x_t| + |b_r| (the largest the
/// result can be). The GPU multiplies f32 weights by f32 activations and sums ~K/64 terms per
/// thread, then 64 partials: the rounding error stays near 1e-7 of that scale. One element
/// read from a wrong index moves the result by about 1/K of it, over 1e-3 at these widths.
const GPU_MATMUL_TOL: f64 = 1e-5;

/// Decode products of Q4_K and Q6_K rows quantize their activations to 8 bits per group of 16
/// (shaders/matvec_int8.wgsl), and the reference takes the same rounded activations
/// ([`int8_rounded`]). What remains is f32 rounding and, rarely, an activation rounded the
/// other way where the GPU's reciprocal differs in the last bit: one step of amax/127 in one
/// element, about 5e-5 of the scale here. One element read from a wrong index costs ~100
/// times that.
const INT8_TOL: f64 = 2e-4;

/// Activations as the 8-bit decode path sees them: per group of 16, scale d = amax / 127 and
/// each value rounded (ties to even) to a multiple of d.
fn int8_rounded(x: &[f32]) -> Vec<f32> {
    x.chunks(16)
        .flat_map(|block| {
            let d = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            block.iter().map(move |v| (v * id).round_ties_even() * d)
        })
        .collect()
}

/// The tolerance of a decode product, with 8-bit activations or f32 ones.
fn decode_tol(int8: bool) -> f64 {
    if int8 {
        INT8_TOL
    } else {
        GPU_MATMUL_TOL
    }
}

/// The activations a decode product of `w` on `gpu` sees, and its tolerance.
fn decode_inputs(gpu: &WgpuBackend, ty: GgmlType, x: &[f32], cols: usize) -> (Vec<f32>, f64) {
    let int8 = gpu.int8_activations(ty, cols);
    let x = if int8 { int8_rounded(x) } else { x.to_vec() };
    (x, decode_tol(int8))
}

/// The CPU backend quantizes activations to 8 bits (per block of 32 or 256) for the quantized
/// types: an error of up to amax/254 per activation, about 1e-4 of the scale on average and
/// well under 5e-3 in the worst row here. With f32 activations it is as tight as the GPU.
fn cpu_matmul_tol(ty: GgmlType) -> f64 {
    if ty.block_size() == 1 {
        GPU_MATMUL_TOL
    } else {
        5e-3
    }
}

fn matmul_reference(
    w: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    cols: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut want = Vec::new();
    let mut scale = Vec::new();
    for xt in x.chunks_exact(cols) {
        let x_norm = norm(xt);
        for (r, wr) in w.chunks_exact(cols).enumerate() {
            let dot: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            let b = bias.map_or(0.0, |b| b[r] as f64);
            want.push(dot + b);
            scale.push(norm(wr) * x_norm + b.abs());
        }
    }
    assert_eq!(want.len(), x.len() / cols * rows);
    (want, scale)
}

fn upload_vector<B: Backend>(b: &mut B, values: &[f32]) -> B::Vector {
    b.upload_vector("vector", values).expect("vector")
}

/// Checks matmul of `w` on the GPU (and the CPU, when given) against the float64 reference,
/// for 1 and 5 tokens, with and without a bias.
fn check_matmul(
    gpu: &mut WgpuBackend,
    cpu: Option<&mut CpuBackend>,
    rng: &mut StdRng,
    w: &Weights,
    what: &str,
) {
    let (rows, cols) = (w.rows, w.cols);
    let decoded = w.decoded();
    let bias = random_values(rng, rows, 1.0);
    let both = |b: &mut WgpuBackend| [w.upload(b, "w"), w.upload_with_bias(b, "w", Some(&bias))];
    let gw = both(gpu);
    let mut cpu = cpu.map(|c| {
        let cw = [w.upload(c, "w"), w.upload_with_bias(c, "w", Some(&bias))];
        (c, cw)
    });
    for n in [1, 5] {
        let x = random_values(rng, n * cols, 1.0);
        let (gpu_x, tol) = decode_inputs(gpu, w.ty, &x, cols);
        for with_bias in [false, true] {
            let b = with_bias.then_some(&bias[..]);
            let label = format!("{what}: matmul {}, n={n}, bias={with_bias}", w.label());
            let (want, scale) = matmul_reference(&decoded, &gpu_x, b, rows, cols);
            let got = run_matmul(gpu, &gw[with_bias as usize], &x, n, rows);
            assert_close(
                &format!("GPU {label}"),
                &got,
                &want,
                rows,
                |i| scale[i],
                tol,
            );
            if let Some((c, cw)) = cpu.as_mut() {
                let (want, scale) = matmul_reference(&decoded, &x, b, rows, cols);
                let scale = |i: usize| scale[i];
                let got = run_matmul(*c, &cw[with_bias as usize], &x, n, rows);
                let tol = cpu_matmul_tol(w.ty);
                assert_close(&format!("CPU {label}"), &got, &want, rows, scale, tol);
            }
        }
    }
}

#[test]
fn matmul_matches_a_float64_reference_for_every_type() {
    let (mut gpu, mut cpu) = (gpu(), cpu());
    let mut rng = rng(1);
    for ty in ALL_TYPES {
        for cols in widths(ty) {
            let w = Weights::random(&mut rng, ty, ROWS, cols);
            check_matmul(&mut gpu, Some(&mut cpu), &mut rng, &w, "random blocks");
        }
    }
}

#[test]
fn matmul_of_quantizer_output_matches_the_reference() {
    let (mut gpu, mut cpu) = (gpu(), cpu());
    let mut rng = rng(2);
    for ty in ALL_TYPES {
        let w = Weights::quantized(&mut rng, ty, ROWS, widths(ty)[1]);
        check_matmul(&mut gpu, Some(&mut cpu), &mut rng, &w, "quantized");
    }
}

/// Token ids covering the first and last rows, a repeat, and one past the end (both
/// backends clamp it to the last row).
fn awkward_tokens(rows: usize) -> Vec<u32> {
    let last = rows as u32 - 1;
    vec![0, last, 17, 17, last + 5, 33]
}

/// |got - want| within DECODE_TOL of the largest value of each `cols`-wide row of `want`.
fn assert_decoded(what: &str, got: &[f32], want: &[f32], cols: usize) {
    let row_max: Vec<f64> = want.chunks(cols).map(max_abs).collect();
    let scale = |i: usize| row_max[i / cols];
    assert_close(what, got, &to_f64(want), cols, scale, DECODE_TOL);
}

#[test]
fn embed_matches_the_cpu_for_every_type() {
    let (mut gpu, mut cpu) = (gpu(), cpu());
    let mut rng = rng(3);
    let tokens = awkward_tokens(ROWS);
    for ty in ALL_TYPES {
        for cols in widths(ty) {
            let w = Weights::random(&mut rng, ty, ROWS, cols);
            let (gt, ct) = (w.upload(&mut gpu, "table"), w.upload(&mut cpu, "table"));
            let got = embed_rows(&mut gpu, &gt, &tokens, cols);
            let want = embed_rows(&mut cpu, &ct, &tokens, cols);
            assert_decoded(&format!("embed {}", w.label()), &got, &want, cols);
        }
    }
}

/// What pipelined greedy decoding relies on: each queued id waits in its slot while the next
/// is computed, and the next token's embedding is looked up from the last id on the device.
#[test]
fn queued_argmaxes_keep_their_slots_and_embed_the_last_on_the_device() {
    let (w, ids, got, want) = queued_argmaxes_beside_the_cpu(&mut gpu(), &mut rng(12));
    assert_decoded("embedded argmax", &got, &want, w.cols);
    let mut cpu = cpu();
    let table = w.upload(&mut cpu, "table");
    assert_eq!(want, embed_rows(&mut cpu, &table, &ids[..1], w.cols));
}

fn gpu_dequantize(gpu: &mut WgpuBackend, m: &GpuMatrix) -> Vec<f32> {
    gpu.dequantize(m)
        .unwrap_or_else(|e| panic!("dequantize: {e}"))
}

#[test]
fn dequant_kernel_matches_the_host_decoder_for_every_type() {
    let mut gpu = gpu();
    let mut rng = rng(4);
    for ty in ALL_TYPES {
        for cols in widths(ty) {
            let random = Weights::random(&mut rng, ty, ROWS, cols);
            let quantized = Weights::quantized(&mut rng, ty, ROWS, cols);
            for (kind, w) in [("random blocks", random), ("quantized", quantized)] {
                let m = w.upload(&mut gpu, "w");
                let got = gpu_dequantize(&mut gpu, &m);
                let what = format!("dequant {} of {kind}", w.label());
                assert_decoded(&what, &got, &w.decoded(), cols);
            }
        }
    }
}

/// The GPU layout of whole rows of `ty`, written out serially: every block without its f16
/// scale fields, then the scale fields (blocks of a multiple of 16 bytes, and float types, as
/// stored), padded to a whole word.
fn device_layout(ty: GgmlType, rows: &[u8]) -> Vec<u8> {
    let block = ty.type_size();
    let Some((at, len)) = ty.scale_fields().filter(|_| !block.is_multiple_of(16)) else {
        let mut out = rows.to_vec();
        out.resize(rows.len().next_multiple_of(4), 0);
        return out;
    };
    let (mut bodies, mut scales) = (Vec::new(), Vec::new());
    for b in rows.chunks_exact(block) {
        bodies.extend_from_slice(&b[..at]);
        bodies.extend_from_slice(&b[at + len..]);
        scales.extend_from_slice(&b[at..at + len]);
    }
    scales.resize(scales.len().next_multiple_of(4), 0);
    [bodies, scales].concat()
}

/// Every part of `m` holds exactly its rows of `bytes` (all rows, as stored) in the device
/// layout.
fn assert_uploaded(gpu: &mut WgpuBackend, m: &GpuMatrix, ty: GgmlType, bytes: &[u8], what: &str) {
    let parts = gpu
        .weight_parts(m)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let rows = m.rows();
    let row_bytes = bytes.len() / rows;
    let mut first = 0;
    for (i, (n, got)) in parts.iter().enumerate() {
        let want = device_layout(ty, &bytes[first * row_bytes..(first + n) * row_bytes]);
        assert!(got.len() >= want.len(), "{what}: part {i} is short");
        if let Some(at) = (0..want.len()).find(|&j| got[j] != want[j]) {
            panic!("{what}: part {i} (rows {first}..) differs first at byte {at}");
        }
        first += n;
    }
    assert_eq!(first, rows, "{what}: the parts' rows");
}

/// Uploads (repacked on several threads, a chunk at a time, straight into staging memory)
/// put exactly the file's bytes on the device in the layout the kernels read, for every type:
/// whole matrices, matrices split into parts, gate and up rows interleaved, and a matrix
/// larger than lavapipe's 128 MiB binding and than one upload chunk.
#[test]
fn uploaded_weights_are_the_files_bytes_bit_for_bit() {
    let mut whole = gpu();
    let mut split = gpu_with(GpuOptions {
        max_weight_part: Some(PART_BYTES),
        ..gpu_options()
    });
    let mut rng = rng(41);
    for ty in ALL_TYPES {
        let cols = widths(ty)[1];
        let w = Weights::random(&mut rng, ty, ROWS, cols);
        for (gpu, how) in [(&mut whole, "whole"), (&mut split, "split")] {
            let m = w.upload(gpu, "w");
            assert_uploaded(gpu, &m, ty, &w.bytes, &format!("{how} {}", w.label()));
        }
        let u = Weights::random(&mut rng, ty, ROWS, cols);
        let parts = vec![w.rows_of(None), u.rows_of(None)];
        let m = whole
            .upload_matrix("ffn", cols, parts, MatrixUse::GateUp)
            .expect("upload");
        let row_bytes = w.bytes.len() / ROWS;
        let interleaved: Vec<u8> = w
            .bytes
            .chunks_exact(row_bytes)
            .zip(u.bytes.chunks_exact(row_bytes))
            .flat_map(|(g, u)| [g, u].concat())
            .collect();
        assert_uploaded(&mut whole, &m, ty, &interleaved, &format!("gate/up {ty}"));
    }
    let big = Weights::random(&mut rng, GgmlType::Q6K, 42_000, 4096);
    assert!(big.bytes.len() > 128 << 20);
    let m = big.upload(&mut whole, "big");
    assert!(m.parts() > 1 || whole.gpu().limits.max_storage_buffer_binding_size > 128 << 20);
    assert_uploaded(
        &mut whole,
        &m,
        GgmlType::Q6K,
        &big.bytes,
        "Q6_K [42000x4096]",
    );
}

/// Bytes per weight part in the splitting tests: a few rows of every type per part.
const PART_BYTES: u64 = 4096;

/// Matrices cut into several row ranges (as ones bigger than a binding are): every op that
/// reads a weight must find each row in its own part.
#[test]
fn split_matrices_give_the_same_results() {
    let mut gpu = gpu_with(GpuOptions {
        max_weight_part: Some(PART_BYTES),
        ..gpu_options()
    });
    let mut rng = rng(5);
    for ty in ALL_TYPES {
        let cols = widths(ty)[0];
        let per_part = PART_BYTES as usize / ty.row_bytes(cols).expect("whole blocks");
        assert!(
            (1..ROWS).contains(&per_part),
            "{ty}: the test should split {ROWS} rows, not {per_part} per part"
        );
        let w = Weights::random(&mut rng, ty, ROWS, cols);
        let want = w.decoded();
        let m = w.upload(&mut gpu, "split");

        let got = gpu_dequantize(&mut gpu, &m);
        assert_decoded(&format!("split dequant {ty}"), &got, &want, cols);

        // The rows on both sides of every boundary between parts.
        let mut tokens = vec![0, ROWS as u32 - 1];
        for start in (per_part..ROWS).step_by(per_part) {
            tokens.extend([start as u32 - 1, start as u32]);
        }
        let got = embed_rows(&mut gpu, &m, &tokens, cols);
        let want_rows: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| want[t as usize * cols..][..cols].to_vec())
            .collect();
        assert_decoded(&format!("split embed {ty}"), &got, &want_rows, cols);

        check_matmul(&mut gpu, None, &mut rng, &w, "split");

        // A prompt's product: tiles across the parts (and, on tensor cores, f16 slices of a
        // few rows within each part).
        let n = 70;
        let x = random_values(&mut rng, n * cols, 1.0);
        let (want, scale) = matmul_reference(&want, &x, None, ROWS, cols);
        let got = run_matmul(&mut gpu, &m, &x, n, ROWS);
        let what = format!("split prompt matmul {ty}");
        assert_close(&what, &got, &want, ROWS, |i| scale[i], tiled_tol(&gpu));
    }
}

/// Launches of more than 65535 workgroups spill into a second grid dimension, which each
/// kernel folds back into a linear index.
#[test]
fn launches_past_65535_workgroups_cover_every_element() {
    let mut gpu = gpu();
    let mut rng = rng(6);
    let (rows, cols) = (65_600, 32);
    let w = Weights::random(&mut rng, GgmlType::Q8_0, rows, cols);
    let m = w.upload(&mut gpu, "tall");
    let want = w.decoded();
    let got = gpu_dequantize(&mut gpu, &m);
    assert_decoded("dequant of 65600 rows", &got, &want, cols);

    let n = 2;
    let x = random_values(&mut rng, n * cols, 1.0);
    let (want, scale) = matmul_reference(&want, &x, None, rows, cols);
    let got = run_matmul(&mut gpu, &m, &x, n, rows);
    let tol = GPU_MATMUL_TOL;
    assert_close("matmul of 65600 rows", &got, &want, rows, |i| scale[i], tol);

    // 65535 workgroups of 256 elements, and some.
    let len = 65_535 * 256 + 300;
    let a = random_values(&mut rng, len, 1.0);
    let b = random_values(&mut rng, len, 1.0);
    let (at, bt) = (gpu.load("a", 1, len, &a), gpu.load("b", 1, len, &b));
    gpu.add(&at, &bt, 1);
    let got = read(&mut gpu, &at, 1);
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x + y) as f64).collect();
    // f32 addition is exact to the rounding both sides share.
    assert_close("add of 16.8M elements", &got, &want, len, |_| 1.0, 0.0);
}

/// Runs an op on a fresh GPU and a fresh CPU backend: (GPU, CPU) results.
fn on_both<F, G>(gpu_op: F, cpu_op: G) -> (Vec<f32>, Vec<f32>)
where
    F: FnOnce(&mut WgpuBackend) -> Vec<f32>,
    G: FnOnce(&mut CpuBackend) -> Vec<f32>,
{
    (gpu_op(&mut gpu()), cpu_op(&mut cpu()))
}

#[test]
fn rms_norm_matches_the_cpu() {
    let mut rng = rng(7);
    // Widths under, between and past multiples of the 256-thread workgroup.
    for cols in [37, 300, 600] {
        for n in [1, 5] {
            let x = random_values(&mut rng, 6 * cols, 2.0);
            let w = random_values(&mut rng, cols, 1.0);
            let (got, want) = on_both(
                |g| rms_norm_rows(g, &x, &w, n, 6),
                |c| rms_norm_rows(c, &x, &w, n, 6),
            );
            // Only the order of the f32 sum of squares differs: ~1e-7 relative.
            let scale = max_abs(&want);
            let what = format!("rms_norm [{n}x{cols}]");
            assert_close(&what, &got, &to_f64(&want), cols, |_| scale, 1e-5);
        }
    }
}

/// Element-wise ops against the CPU, over values within ±4 and within ±16 (where GELU's
/// tanh saturates, and the kernels take 0 below -10 and x above 10, as the CPU does).
#[test]
fn elementwise_ops_match_the_cpu() {
    let mut rng = rng(8);
    // 5 rows of 100: two 256-element workgroups, the second partly idle.
    let cols = 100;
    for spread in [4.0, 16.0] {
        let inputs: [Vec<f32>; 3] =
            std::array::from_fn(|_| random_values(&mut rng, 6 * cols, spread));
        check_elementwise_ops(&inputs, cols);
    }
}

fn check_elementwise_ops(inputs: &[Vec<f32>; 3], cols: usize) {
    let ops = [
        Elementwise::Add,
        Elementwise::Glu(Activation::Silu),
        Elementwise::Glu(Activation::GeluTanh),
        Elementwise::CopyRow,
        Elementwise::Pointwise(Pointwise::Scale(-1.7)),
        Elementwise::Pointwise(Pointwise::SoftCap(3.0)),
    ];
    for op in ops {
        let (got, want) = on_both(
            |g| elementwise(g, op, inputs, 5, cols),
            |c| elementwise(c, op, inputs, 5, cols),
        );
        // add, copy_row and scaling are exact; exp and tanh may differ by a few ulps between
        // devices. A value from a wrong index is off by the size of the values.
        let tol = match op {
            Elementwise::Glu(_) | Elementwise::Pointwise(Pointwise::SoftCap(_)) => 1e-6,
            _ => 0.0,
        };
        let scale = max_abs(&want);
        assert_close(
            &format!("{op:?}"),
            &got,
            &to_f64(&want),
            cols,
            |_| scale,
            tol,
        );
    }
}

/// A cache of one sequence for `n_layers` layers of causal attention.
fn kv_layout(shape: &AttentionShape, types: KvTypes, n_layers: usize, n_ctx: usize) -> KvLayout {
    KvLayout {
        slots: 1,
        n_ctx,
        shape: *shape,
        types,
        layers: vec![AttentionOpts::causal(shape.head_dim); n_layers],
        qk_norm: false,
    }
}

/// One forward step's input rows for the layer under test and for the other layer (which
/// must not leak into the results): every value ±1, so that RMS normalisation (epsilon 0)
/// leaves each row as it is.
struct Step {
    pos: usize,
    n: usize,
    x: Vec<f32>,
    other_x: Vec<f32>,
}

/// A prefill of `prefill` tokens in one call, then one token, then three, then a second
/// prompt of 300 (queries that see both prompts' keys).
fn attention_steps(rng: &mut StdRng, width: usize, prefill: usize) -> Vec<Step> {
    steps_of(rng, width, &[prefill, 1, 3, 300])
}

/// Steps of `sizes` tokens, one after the other from position 0.
fn steps_of(rng: &mut StdRng, width: usize, sizes: &[usize]) -> Vec<Step> {
    let signs = |rng: &mut StdRng, n: usize| -> Vec<f32> {
        (0..n * width)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect()
    };
    let mut pos = 0;
    sizes
        .iter()
        .map(|&n| {
            let step = Step {
                pos,
                n,
                x: signs(rng, n),
                other_x: signs(rng, n),
            };
            pos += n;
            step
        })
        .collect()
}

/// The projections under test: each row of Wq, Wk and Wv picks one column of x, so q, k and
/// v are exactly x times the norm weight (values that f16 holds exactly, so that tensor-core
/// tiles, which round their inputs to f16, are exact too), plus the bias.
struct Projections {
    norm: Vec<f32>,
    bias: Option<Vec<f32>>,
    v_type: GgmlType,
    /// Per-head norm weights of queries and keys (`[head_dim]` each), where the model has them.
    qk_norm: Option<[Vec<f32>; 2]>,
}

impl Projections {
    fn random(rng: &mut StdRng, shape: &AttentionShape, v_type: GgmlType, bias: bool) -> Self {
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let f16_exact = |v: f32| half::f16::from_f32(v).to_f32();
        // Larger queries make the softmax peaked, so a wrong key shows.
        let norm = random_values(rng, qw, 3.0)
            .into_iter()
            .chain(random_values(rng, 2 * kvw, 1.0))
            .map(f16_exact)
            .collect();
        let bias = bias.then(|| random_values(rng, qw + 2 * kvw, 0.5));
        Self {
            norm,
            bias,
            v_type,
            qk_norm: None,
        }
    }

    fn parts(&self, shape: &AttentionShape) -> Vec<WeightRows> {
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let width = qw + 2 * kvw;
        let part = |first: usize, rows: usize, ty: GgmlType| {
            let mut bytes = Vec::new();
            for r in 0..rows {
                for c in 0..width {
                    let one = if c == first + r { 1.0 } else { 0.0 };
                    match ty {
                        GgmlType::F16 => bytes.extend(half::f16::from_f32(one).to_le_bytes()),
                        _ => bytes.extend(one.to_le_bytes()),
                    }
                }
            }
            let bias = self.bias.as_ref().map(|b| b[first..first + rows].to_vec());
            WeightRows::new(ty, rows, WeightBytes::owned(bytes)).with_bias(bias)
        };
        vec![
            part(0, qw, GgmlType::F32),
            part(qw, kvw, GgmlType::F32),
            part(qw + kvw, kvw, self.v_type),
        ]
    }

    /// The same rows as one fused `[q | k | v]` tensor (phi3's `attn_qkv`), F32 throughout.
    fn fused_parts(&self, shape: &AttentionShape) -> Vec<WeightRows> {
        assert_eq!(self.v_type, GgmlType::F32, "one type to fuse");
        let parts = self.parts(shape);
        let rows = parts.iter().map(|p| p.rows).sum();
        let bytes = parts.iter().flat_map(|p| p.data.bytes().to_vec()).collect();
        let bias = self.bias.clone();
        vec![WeightRows::new(GgmlType::F32, rows, WeightBytes::owned(bytes)).with_bias(bias)]
    }
}

/// Per step: the rotated queries and the attention output, over caches of `types`.
fn run_attention<B: Load>(
    b: &mut B,
    shape: &AttentionShape,
    types: KvTypes,
    layer: usize,
    projections: &Projections,
    steps: &[Step],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let opts = AttentionOpts::causal(shape.head_dim);
    run_attention_with(b, shape, types, &opts, layer, projections, steps)
}

/// [`run_attention`] with attention options other than plain causal attention.
fn run_attention_with<B: Load>(
    b: &mut B,
    shape: &AttentionShape,
    types: KvTypes,
    opts: &AttentionOpts,
    layer: usize,
    projections: &Projections,
    steps: &[Step],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let parts = projections.parts(shape);
    run_attention_of(b, shape, types, opts, layer, parts, projections, steps)
}

/// [`run_attention_with`] with the projections' rows as `parts`.
#[allow(clippy::too_many_arguments)]
fn run_attention_of<B: Load>(
    b: &mut B,
    shape: &AttentionShape,
    types: KvTypes,
    opts: &AttentionOpts,
    layer: usize,
    parts: Vec<WeightRows>,
    projections: &Projections,
    steps: &[Step],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    let width = qw + 2 * kvw;
    let n_ctx: usize = steps.iter().map(|s| s.n).sum();
    let table = b
        .upload_vector("rope", &rope_table(n_ctx, shape.head_dim))
        .expect("rope table");
    let norm = b.upload_vector("norm", &projections.norm).expect("norm");
    let qkv = b
        .upload_matrix("qkv", width, parts, MatrixUse::Qkv(*shape))
        .expect("qkv");
    let layout = KvLayout {
        layers: vec![*opts; 2],
        qk_norm: projections.qk_norm.is_some(),
        ..kv_layout(shape, types, 2, n_ctx)
    };
    let cache = b.kv_cache(&layout).expect("cache");
    let qk_norm = projections.qk_norm.as_ref().map(|[q, k]| {
        let q = b.upload_vector("q norm", q).expect("q norm");
        let k = b.upload_vector("k norm", k).expect("k norm");
        (q, k)
    });
    steps
        .iter()
        .map(|s| {
            let q = b.load("q", s.n, qw, &vec![f32::NAN; s.n * qw]);
            let batch = Batch::one(0, s.pos, s.n);
            let rope = Rope {
                cos_sin: &table,
                qk_norm: qk_norm.as_ref().map(|(q, k)| QkNorm { q, k, eps: 1e-6 }),
            };
            let norm = RmsNorm {
                weight: &norm,
                eps: 0.0,
            };
            for (x, layer) in [(&s.other_x, 1 - layer), (&s.x, layer)] {
                let x = b.load("x", s.n, width, x);
                let at = CacheLayer {
                    cache: &cache,
                    layer,
                    batch: &batch,
                };
                b.attention_inputs(&x, norm, &qkv, &rope, &q, at);
            }
            let out = b.load("attention out", s.n, qw, &vec![f32::NAN; s.n * qw]);
            let at = CacheLayer {
                cache: &cache,
                layer,
                batch: &batch,
            };
            b.attention(&q, at, opts, &out);
            (read(b, &q, s.n), read(b, &out, s.n))
        })
        .collect()
}

/// The attention inputs (projections, RoPE, the cache write) and attention, on both backends.
#[test]
fn rope_and_attention_match_the_cpu_over_prefill_and_decode() {
    let mut rng = rng(9);
    // The prefill runs through the prompt kernels (70 keys: more than one 64-key tile), then
    // one token and three through the decode kernels: after 126 the three straddle the decode
    // attention's 128-key chunks (one token fits one chunk, two take two and a merge); after
    // 1030, nine chunks. A second prompt of 300 tokens follows, its queries over both
    // prompts' keys. Heads of 80 leave some of its threads without a value vector; heads
    // of 168 (not a multiple of 16) take the one-query-per-workgroup prompt kernel. Values
    // in f16 make [q | k | v] two weight runs on the GPU; biases go in where given.
    let cases = [
        (64, RopeKind::Normal, 0, 70, GgmlType::F32, true),
        (128, RopeKind::Neox, 1, 126, GgmlType::F16, true),
        (64, RopeKind::Neox, 1, 70, GgmlType::F32, false),
        (80, RopeKind::Neox, 0, 126, GgmlType::F32, true),
        (128, RopeKind::Neox, 0, 1030, GgmlType::F16, false),
        (168, RopeKind::Normal, 1, 70, GgmlType::F32, true),
    ];
    let mut gpu = gpu();
    for (head_dim, rope, layer, prefill, v_type, bias) in cases {
        // Grouped-query attention: three query heads per key/value head.
        let shape = AttentionShape {
            n_head: 6,
            n_head_kv: 2,
            head_dim,
            rope,
        };
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let projections = Projections::random(&mut rng, &shape, v_type, bias);
        let steps = attention_steps(&mut rng, qw + 2 * kvw, prefill);
        let f16 = KvTypes::default();
        let (got, want) = (
            run_attention(&mut gpu, &shape, f16, layer, &projections, &steps),
            run_attention(&mut cpu(), &shape, f16, layer, &projections, &steps),
        );
        if v_type == GgmlType::F32 {
            // One fused [q | k | v] tensor is the same rows: the same products, bit for bit.
            let fused = projections.fused_parts(&shape);
            let causal = AttentionOpts::causal(head_dim);
            let got_fused = run_attention_of(
                &mut gpu,
                &shape,
                f16,
                &causal,
                layer,
                fused,
                &projections,
                &steps,
            );
            assert!(got_fused == got, "head_dim {head_dim}: fused q/k/v differ");
        }
        let bias_scale = projections.bias.as_deref().map_or(0.0, max_abs);
        let q_scale = max_abs(&projections.norm[..qw]) + bias_scale;
        let v_scale = max_abs(&projections.norm[qw + kvw..]) + bias_scale;
        for (s, ((gq, go), (cq, co))) in steps.iter().zip(got.iter().zip(&want)) {
            let what = format!("head_dim {head_dim} {rope:?}, pos {} n {}", s.pos, s.n);
            // The same f32 rotation of the same values on both; a fused multiply-add may round
            // differently, by an ulp (seen on NVIDIA). A wrong pair or angle moves values by
            // their own size.
            let rope_what = format!("rope q, {what}");
            assert_close(&rope_what, gq, &to_f64(cq), qw, |_| q_scale, 2e-6);
            // A key whose f32 rotation differs by an ulp may round to the neighbouring f16 in
            // the cache (moving the output by ~1e-6 each) beside the softmax's order of sums
            // (attention_tol). Leaving out one of ~100 keys, or reading another head, costs
            // about 1e-2; one of 1031, about 1e-3.
            let tol = attention_tol(&gpu, f16, s.n);
            let what = format!("attention, {what}");
            assert_close(&what, go, &to_f64(co), qw, |_| v_scale, tol);
        }
    }
}

/// Per-head QK-norm (Qwen3, Gemma 3) before RoPE against the CPU: prompts (tiled products)
/// and decoded tokens (which leave the fused RoPE epilogue for the products and the RoPE
/// kernel), heads in NeoX and adjacent pairs, of 64, 80 (not a multiple of the kernel's 64
/// threads), 168 and 256 (Gemma 3), over f16 and q8_0 caches.
#[test]
fn qk_norm_matches_the_cpu_over_prefill_and_decode() {
    let mut rng = rng(12);
    let mut gpu = gpu();
    let cases = [
        (64, RopeKind::Neox, KvTypes::default()),
        (80, RopeKind::Neox, KvTypes::default()),
        (168, RopeKind::Normal, KvTypes::default()),
        (
            256,
            RopeKind::Neox,
            KvTypes {
                k: CacheType::Q8_0,
                v: CacheType::Q8_0,
            },
        ),
    ];
    for (head_dim, rope, types) in cases {
        let shape = AttentionShape {
            n_head: 6,
            n_head_kv: 2,
            head_dim,
            rope,
        };
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        // Uneven weights (0.5 to 1.5), so that a weight read at the wrong dimension shows.
        let weights = |rng: &mut StdRng| -> Vec<f32> {
            random_values(rng, head_dim, 0.5)
                .into_iter()
                .map(|w| 1.0 + w)
                .collect()
        };
        let projections = Projections {
            qk_norm: Some([weights(&mut rng), weights(&mut rng)]),
            ..Projections::random(&mut rng, &shape, GgmlType::F32, true)
        };
        let steps = attention_steps(&mut rng, qw + 2 * kvw, 70);
        let opts = AttentionOpts::causal(head_dim);
        let (got, want) = (
            run_attention_with(&mut gpu, &shape, types, &opts, 1, &projections, &steps),
            run_attention_with(&mut cpu(), &shape, types, &opts, 1, &projections, &steps),
        );
        // Normalised heads have values of about the weights' size (up to 1.5).
        for (s, ((gq, go), (cq, co))) in steps.iter().zip(got.iter().zip(&want)) {
            let what = format!(
                "head_dim {head_dim} {rope:?} {types:?}, pos {} n {}",
                s.pos, s.n
            );
            assert_close(&format!("q, {what}"), gq, &to_f64(cq), qw, |_| 1.5, 1e-5);
            // Normalised heads give scores of up to tens, so a key's f16 rounding in the cache
            // moves the softmax more than in the test above (4.7e-5 seen on lavapipe with
            // weights up to 2.5); a weight at the wrong dimension moves it by 1e-1.
            let tol = match types == KvTypes::default() {
                true if s.n > 4 && gpu.uses_tensor_cores() => 5e-4,
                true => 2e-4,
                false => Q8_0_CACHE_TOL,
            };
            assert_close(
                &format!("attention, {what}"),
                go,
                &to_f64(co),
                qw,
                |_| 2.0,
                tol,
            );
        }
    }
}

/// Sliding windows and soft-capped scores (Gemma's attention) against the CPU, over f16 and
/// q8_0 caches: a prompt of 300 tokens (windows of 50 and 200 cut into its tiles), one token
/// and three (the decode kernel skips chunks before the window; a window inside one chunk
/// leaves it the token's only one), then a prompt of 300 more. Heads of 64 and 128 (the
/// tensor-core or tiled prompt kernels) and 168 (one query per workgroup).
#[test]
fn windowed_and_soft_capped_attention_match_the_cpu() {
    let mut rng = rng(10);
    let mut gpu = gpu();
    let causal = |head_dim: usize| AttentionOpts::causal(head_dim);
    for head_dim in [64, 128, 168] {
        let shape = AttentionShape {
            n_head: 6,
            n_head_kv: 2,
            head_dim,
            rope: RopeKind::Neox,
        };
        let cases = [
            AttentionOpts {
                window: Some(50),
                ..causal(head_dim)
            },
            AttentionOpts {
                softcap: Some(2.0),
                ..causal(head_dim)
            },
            AttentionOpts {
                window: Some(200),
                softcap: Some(5.0),
                ..causal(head_dim)
            },
        ];
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        for (opts, types) in cases.iter().zip([
            KvTypes::default(),
            KvTypes::default(),
            KvTypes {
                k: CacheType::Q8_0,
                v: CacheType::Q8_0,
            },
        ]) {
            if head_dim % 32 != 0 && types != KvTypes::default() {
                continue;
            }
            let projections = Projections::random(&mut rng, &shape, GgmlType::F32, false);
            let steps = attention_steps(&mut rng, qw + 2 * kvw, 300);
            let (got, want) = (
                run_attention_with(&mut gpu, &shape, types, opts, 0, &projections, &steps),
                run_attention_with(&mut cpu(), &shape, types, opts, 0, &projections, &steps),
            );
            let v_scale = max_abs(&projections.norm[qw + kvw..]);
            for (s, ((_, go), (_, co))) in steps.iter().zip(got.iter().zip(&want)) {
                let what = format!(
                    "attention {opts:?} {types} head_dim {head_dim}, pos {} n {}",
                    s.pos, s.n
                );
                // One key in or out of a window of 50 moves the output by about 2e-2.
                let tol = attention_tol(&gpu, types, s.n);
                assert_close(&what, go, &to_f64(co), qw, |_| v_scale, tol);
            }
        }
    }
}

/// The tolerance of a GPU attention output against the CPU's, as a share of the values'
/// scale, for a step of `n` queries over caches of `types`: over f16 caches the softmax sums
/// in another order (4e-5; 2.1e-5 seen on the H100 over 126 keys), and prompts on tensor
/// cores also round the scaled queries and the softmax weights to f16 (5e-4); over q8_0
/// caches a key may round to the neighbouring quant ([`Q8_0_CACHE_TOL`]).
fn attention_tol(gpu: &WgpuBackend, types: KvTypes, n: usize) -> f64 {
    match (types == KvTypes::default(), n > 4) {
        (false, _) => Q8_0_CACHE_TOL,
        (true, true) if gpu.uses_tensor_cores() => 5e-4,
        (true, _) => 4e-5,
    }
}

/// Attention over q8_0 caches (keys, values or both) against the CPU with the same caches,
/// through every kernel that writes or reads them: steps of 1, 37, 4, 6, 81, 2, 130 and 3
/// tokens start at positions 0 (one key), 1, 38, 42 (six queries: decode products, prompt
/// attention), 48, 129 (two queries past the decode kernel's first 128-key chunk: a merge),
/// 131 (a prompt of several query tiles) and 261 (three chunks). Heads of 64 and 128 (the
/// tiled prompt kernel), 192 (the one-query-per-workgroup prompt kernel) and 96 with one
/// key/value head (three blocks a row, so that two positions share a word of scales);
/// grouped-query attention throughout.
#[test]
fn q8_0_cache_attention_matches_the_cpu() {
    let mut rng = rng(77);
    let q8 = CacheType::Q8_0;
    let f16 = CacheType::F16;
    let cases = [
        (64, 6, 2, RopeKind::Normal, (q8, q8), GgmlType::F32, false),
        (128, 6, 2, RopeKind::Neox, (q8, q8), GgmlType::F16, true),
        (96, 3, 1, RopeKind::Neox, (q8, q8), GgmlType::F32, true),
        (64, 4, 1, RopeKind::Neox, (f16, q8), GgmlType::F32, false),
        (128, 8, 2, RopeKind::Normal, (q8, f16), GgmlType::F32, true),
        (192, 4, 2, RopeKind::Neox, (q8, q8), GgmlType::F32, false),
    ];
    let mut gpu = gpu();
    for (head_dim, n_head, n_head_kv, rope, (k, v), v_type, bias) in cases {
        let shape = AttentionShape {
            n_head,
            n_head_kv,
            head_dim,
            rope,
        };
        let types = KvTypes { k, v };
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let projections = Projections::random(&mut rng, &shape, v_type, bias);
        let steps = steps_of(&mut rng, qw + 2 * kvw, &[1, 37, 4, 6, 81, 2, 130, 3]);
        let (got, want) = (
            run_attention(&mut gpu, &shape, types, 1, &projections, &steps),
            run_attention(&mut cpu(), &shape, types, 1, &projections, &steps),
        );
        let bias_scale = projections.bias.as_deref().map_or(0.0, max_abs);
        let v_scale = max_abs(&projections.norm[qw + kvw..]) + bias_scale;
        for (s, ((_, go), (_, co))) in steps.iter().zip(got.iter().zip(&want)) {
            let what = format!(
                "{types} head_dim {head_dim} {rope:?}, pos {} n {}",
                s.pos, s.n
            );
            assert_close(&what, go, &to_f64(co), qw, |_| v_scale, Q8_0_CACHE_TOL);
        }
    }
}

/// Both backends dequantize the same quants, but a key rotated an ulp apart (a fused
/// multiply-add), or a value scaled by a reciprocal an ulp apart, may round to the
/// neighbouring quant, one step of 1/127 of its block's largest value. Measured 6.4e-7 of
/// the value scale on lavapipe (no such step); with every staged value moved by 1e-5 before
/// quantizing, which rounds hundreds of them the other way, 6.3e-4. The scale of the
/// neighbouring block costs 0.05 to 0.37; a scale dropped, or overwritten by the next
/// position's, ~0.9.
const Q8_0_CACHE_TOL: f64 = 2e-3;

/// The q8_0 caches take 34 bytes per 32 values where f16 ones take 64.
/// One step of several sequences: each span's rows at its own slot and positions, rows in
/// span order.
struct BatchStep {
    spans: Vec<Span>,
    x: Vec<f32>,
    other_x: Vec<f32>,
}

/// Steps of `(slot, tokens)` spans, each sequence going on from where its last span ended.
fn batch_steps(rng: &mut StdRng, width: usize, steps: &[&[(usize, usize)]]) -> Vec<BatchStep> {
    let mut lengths = [0; 8];
    steps
        .iter()
        .map(|spans| {
            let spans: Vec<Span> = spans
                .iter()
                .map(|&(slot, len)| {
                    let span = Span {
                        slot,
                        pos: lengths[slot],
                        len,
                    };
                    lengths[slot] += len;
                    span
                })
                .collect();
            let rows: usize = spans.iter().map(|s| s.len).sum();
            let [x, other_x] = [0, 1].map(|_| {
                (0..rows * width)
                    .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                    .collect()
            });
            BatchStep { spans, x, other_x }
        })
        .collect()
}

/// Per step of several sequences: the rotated queries and the attention output, from the
/// fused attention inputs or (`generic`) from the products of a plain matrix and the
/// backend's RoPE op.
fn run_batched_attention<B: Load>(
    b: &mut B,
    shape: &AttentionShape,
    types: KvTypes,
    projections: &Projections,
    steps: &[BatchStep],
    generic: bool,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    let width = qw + 2 * kvw;
    let slots = 1 + steps
        .iter()
        .flat_map(|s| &s.spans)
        .map(|s| s.slot)
        .max()
        .unwrap();
    let n_ctx = steps
        .iter()
        .flat_map(|s| &s.spans)
        .map(|s| s.pos + s.len)
        .max()
        .unwrap();
    let table = b
        .upload_vector("rope", &rope_table(n_ctx, shape.head_dim))
        .expect("rope table");
    let norm = b.upload_vector("norm", &projections.norm).expect("norm");
    let usage = match generic {
        true => MatrixUse::Plain,
        false => MatrixUse::Qkv(*shape),
    };
    let qkv = b
        .upload_matrix("qkv", width, projections.parts(shape), usage)
        .expect("qkv");
    let layout = KvLayout {
        slots,
        qk_norm: projections.qk_norm.is_some(),
        ..kv_layout(shape, types, 2, n_ctx)
    };
    let cache = b.kv_cache(&layout).expect("cache");
    let qk_norm = projections.qk_norm.as_ref().map(|[q, k]| {
        let q = b.upload_vector("q norm", q).expect("q norm");
        let k = b.upload_vector("k norm", k).expect("k norm");
        (q, k)
    });
    let opts = AttentionOpts::causal(shape.head_dim);
    steps
        .iter()
        .map(|s| {
            let batch = Batch::new(s.spans.clone());
            let n = batch.rows();
            let q = b.load("q", n, qw, &vec![f32::NAN; n * qw]);
            let rope = Rope {
                cos_sin: &table,
                qk_norm: qk_norm.as_ref().map(|(q, k)| QkNorm { q, k, eps: 1e-6 }),
            };
            let norm = RmsNorm {
                weight: &norm,
                eps: 0.0,
            };
            for (x, layer) in [(&s.other_x, 0), (&s.x, 1)] {
                let x = b.load("x", n, width, x);
                let at = CacheLayer {
                    cache: &cache,
                    layer,
                    batch: &batch,
                };
                if generic {
                    let normed = b.load("normed", n, width, &vec![f32::NAN; n * width]);
                    let products = b.load("products", n, width, &vec![f32::NAN; n * width]);
                    b.rms_norm(&x, norm, &normed, n);
                    b.matmul(&normed, &qkv, &products, n);
                    b.rope_store_kv(&products, &rope, &q, at);
                } else {
                    b.attention_inputs(&x, norm, &qkv, &rope, &q, at);
                }
            }
            let out = b.load("attention out", n, qw, &vec![f32::NAN; n * qw]);
            let at = CacheLayer {
                cache: &cache,
                layer: 1,
                batch: &batch,
            };
            b.attention(&q, at, &opts, &out);
            (read(b, &q, n), read(b, &out, n))
        })
        .collect()
}

/// Steps that hold rows of several sequences (a server's batches) against the CPU: each
/// sequence in its own cache slot, spans out of slot order, prompts beside decoded tokens, a
/// sequence past the decode kernel's first 128-key chunk, a prompt of several tiles beside
/// three decoded rows; through the fused attention inputs (f16 and q8_0 caches, with and
/// without QK-norm) and through the generic RoPE op. A row attending to another sequence's
/// keys, or written into another's cache, moves its output by about its own size.
#[test]
fn steps_of_several_sequences_match_the_cpu() {
    let mut rng = rng(31);
    let schedule: [&[(usize, usize)]; 7] = [
        &[(2, 40)],
        &[(0, 70), (2, 1)],
        &[(1, 3), (0, 1), (2, 1)],
        &[(2, 1), (1, 1), (0, 1)],
        &[(2, 100), (0, 2)],
        &[(0, 1), (1, 1), (2, 1)],
        &[(1, 130), (2, 3)],
    ];
    let q8 = KvTypes {
        k: CacheType::Q8_0,
        v: CacheType::Q8_0,
    };
    let cases = [
        (64, RopeKind::Neox, KvTypes::default(), false, false),
        (64, RopeKind::Normal, q8, false, false),
        (128, RopeKind::Neox, KvTypes::default(), false, true),
        (64, RopeKind::Neox, KvTypes::default(), true, false),
    ];
    let mut gpu = gpu();
    for (head_dim, rope, types, qk_norm, generic) in cases {
        let shape = AttentionShape {
            n_head: 6,
            n_head_kv: 2,
            head_dim,
            rope,
        };
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let weights = |rng: &mut StdRng| -> Vec<f32> {
            random_values(rng, head_dim, 0.5)
                .into_iter()
                .map(|w| 1.0 + w)
                .collect()
        };
        let projections = Projections {
            qk_norm: qk_norm.then(|| [weights(&mut rng), weights(&mut rng)]),
            ..Projections::random(&mut rng, &shape, GgmlType::F32, true)
        };
        let steps = batch_steps(&mut rng, qw + 2 * kvw, &schedule);
        let (got, want) = (
            run_batched_attention(&mut gpu, &shape, types, &projections, &steps, generic),
            run_batched_attention(&mut cpu(), &shape, types, &projections, &steps, generic),
        );
        let bias_scale = projections.bias.as_deref().map_or(0.0, max_abs);
        let (q_scale, v_scale) = match qk_norm {
            true => (1.5, 2.0),
            false => (
                max_abs(&projections.norm[..qw]) + bias_scale,
                max_abs(&projections.norm[qw + kvw..]) + bias_scale,
            ),
        };
        for (s, ((gq, go), (cq, co))) in steps.iter().zip(got.iter().zip(&want)) {
            let what = format!("head_dim {head_dim} {rope:?} {types:?} qk_norm {qk_norm} generic {generic}, spans {:?}", s.spans);
            assert_close(
                &format!("q, {what}"),
                gq,
                &to_f64(cq),
                qw,
                |_| q_scale,
                1e-5,
            );
            let longest = s.spans.iter().map(|s| s.len).max().unwrap();
            let tol = match qk_norm {
                true if longest > 4 && gpu.uses_tensor_cores() => 5e-4,
                true => 2e-4,
                false => attention_tol(&gpu, types, longest),
            };
            let what = format!("attention, {what}");
            assert_close(&what, go, &to_f64(co), qw, |_| v_scale, tol);
        }
    }
}

#[test]
fn q8_0_caches_take_34_of_64_bytes_of_f16() {
    let shape = AttentionShape {
        n_head: 8,
        n_head_kv: 2,
        head_dim: 64,
        rope: RopeKind::Neox,
    };
    let bytes = |types: KvTypes| {
        let mut gpu = gpu();
        let before = gpu.memory_used();
        gpu.kv_cache(&kv_layout(&shape, types, 4, 1000))
            .expect("cache");
        gpu.memory_used() - before
    };
    let q8 = CacheType::Q8_0;
    let f16_bytes = bytes(KvTypes::default());
    let q8_bytes = bytes(KvTypes { k: q8, v: q8 });
    let half = bytes(KvTypes {
        k: q8,
        ..KvTypes::default()
    });
    // 4 layers, 1024 positions (whole tiles of 64) of 128 keys and 128 values.
    assert_eq!(f16_bytes, 4 * 1024 * 2 * 128 * 2 + 4 * 2 * 256);
    assert_eq!(q8_bytes, 4 * 1024 * 2 * 128 * 34 / 32);
    assert_eq!(half, (f16_bytes + q8_bytes) / 2);
    let ratio = q8_bytes as f64 / f16_bytes as f64;
    assert!((ratio - 34.0 / 64.0).abs() < 1e-3, "{ratio}");
}

/// Decoding's attention inputs from K-quant projections (8-bit activations on the GPU): at
/// position 0 RoPE is the identity and the attention of the one query over the one key is
/// that key's value, so the queries and the output are plain products, checked against a
/// float64 reference with the same activation rounding.
#[test]
fn quantized_attention_inputs_match_the_reference() {
    check_quantized_attention_inputs(&mut gpu());
}

/// The same with the 8-bit products reading activations quantized once (norm folded in).
#[test]
fn quantized_attention_inputs_over_activations_quantized_once_match_the_reference() {
    check_quantized_attention_inputs(&mut quantized_once_gpu());
}

fn check_quantized_attention_inputs(gpu: &mut WgpuBackend) {
    let mut rng = rng(41);
    let shape = AttentionShape {
        n_head: 8,
        n_head_kv: 2,
        head_dim: 64,
        rope: RopeKind::Neox,
    };
    let (qw, kvw, cols) = (shape.q_width(), shape.kv_width(), 512);
    let types = [GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q6K];
    let rows = [qw, kvw, kvw];
    let weights: Vec<Weights> = types
        .iter()
        .zip(rows)
        .map(|(&ty, r)| Weights::quantized(&mut rng, ty, r, cols))
        .collect();
    let bias = random_values(&mut rng, qw + 2 * kvw, 0.5);
    let starts = [0, qw, qw + kvw];
    let parts = (0..3)
        .map(|i| weights[i].rows_of(Some(&bias[starts[i]..starts[i] + rows[i]])))
        .collect();
    let norm_w = random_values(&mut rng, cols, 1.0);
    let x = random_values(&mut rng, cols, 1.0);

    let table = upload_vector(gpu, &rope_table(1, shape.head_dim));
    let norm = upload_vector(gpu, &norm_w);
    let qkv = gpu
        .upload_matrix("qkv", cols, parts, MatrixUse::Qkv(shape))
        .expect("qkv");
    let cache = gpu
        .kv_cache(&kv_layout(&shape, KvTypes::default(), 1, 1))
        .expect("cache");
    let nan = |len| vec![f32::NAN; len];
    let q = gpu.load("q", 1, qw, &nan(qw));
    let xt = gpu.load("x", 1, cols, &x);
    let batch = Batch::one(0, 0, 1);
    let at = CacheLayer {
        cache: &cache,
        layer: 0,
        batch: &batch,
    };
    let rope = Rope {
        cos_sin: &table,
        qk_norm: None,
    };
    let norm = RmsNorm {
        weight: &norm,
        eps: 1e-6,
    };
    gpu.attention_inputs(&xt, norm, &qkv, &rope, &q, at);
    let out = gpu.load("attention out", 1, qw, &nan(qw));
    gpu.attention(&q, at, &AttentionOpts::causal(shape.head_dim), &out);
    let (got_q, got_out) = (read(gpu, &q, 1), read(gpu, &out, 1));

    let int8 = gpu.int8_activations(GgmlType::Q4K, cols);
    assert_eq!(int8, gpu.int8_activations(GgmlType::Q6K, cols));
    let normed = normed_reference(&x, &norm_w, int8);
    let tol = decode_tol(int8);
    let bias_q = Some(&bias[..qw]);
    let (want_q, scale_q) = matmul_reference(&weights[0].decoded(), &normed, bias_q, qw, cols);
    assert_close("q", &got_q, &want_q, qw, |i| scale_q[i], tol);
    let bias_v = Some(&bias[qw + kvw..]);
    let (v, scale_v) = matmul_reference(&weights[2].decoded(), &normed, bias_v, kvw, cols);
    // Query head h reads value head h / 4; the cache holds values in f16 (2^-11 relative).
    let group = shape.n_head / shape.n_head_kv;
    let value_of = |i: usize| (i / shape.head_dim / group) * shape.head_dim + i % shape.head_dim;
    let want_out: Vec<f64> = (0..qw).map(|i| v[value_of(i)]).collect();
    let what = "attention output (the one value)";
    assert_close(
        what,
        &got_out,
        &want_out,
        qw,
        |i| scale_v[value_of(i)],
        6e-4,
    );
}

fn gpu_argmax(gpu: &mut WgpuBackend, x: &[f32]) -> u32 {
    let t = gpu.load("logits", 1, x.len(), x);
    gpu.argmax(&t).expect("argmax")
}

fn cpu_argmax(cpu: &mut CpuBackend, x: &[f32]) -> u32 {
    let t = cpu.load("logits", 1, x.len(), x);
    cpu.argmax(&t).expect("argmax")
}

#[test]
fn argmax_takes_the_first_largest_and_never_a_nan() {
    let (mut gpu, mut cpu) = (gpu(), cpu());
    let mut rng = rng(10);
    // 1000 values: 256 threads, some of which see four values and some three.
    let base = random_values(&mut rng, 1000, 1.0);
    let with = |changes: &[(usize, f32)]| {
        let mut x = base.clone();
        for &(i, v) in changes {
            x[i] = v;
        }
        x
    };
    let nan = f32::NAN;
    let host_max = (0..base.len())
        .max_by(|&a, &b| base[a].total_cmp(&base[b]))
        .expect("values");
    let cases = [
        ("random", base.clone(), host_max),
        // Ties in different threads (300, 301) and in one thread (300, 556).
        (
            "ties",
            with(&[(999, 5.0), (556, 5.0), (301, 5.0), (300, 5.0)]),
            300,
        ),
        // The first tie sits in a later thread than the others.
        (
            "ties across threads",
            with(&[(956, 5.0), (700, 5.0), (445, 5.0)]),
            445,
        ),
        (
            "NaNs",
            with(&[(0, nan), (10, nan), (523, 3.0), (600, nan)]),
            523,
        ),
        (
            "infinity",
            with(&[(0, nan), (77, f32::INFINITY), (78, 9.0)]),
            77,
        ),
        (
            "a NaN first, then -inf",
            vec![nan, f32::NEG_INFINITY, f32::NEG_INFINITY],
            1,
        ),
        ("short row", base[..37].to_vec(), {
            let short = &base[..37];
            (0..37)
                .max_by(|&a, &b| short[a].total_cmp(&short[b]))
                .expect("values")
        }),
    ];
    for (what, x, want) in cases {
        assert_eq!(gpu_argmax(&mut gpu, &x), want as u32, "GPU argmax: {what}");
        assert_eq!(cpu_argmax(&mut cpu, &x), want as u32, "CPU argmax: {what}");
    }
}

#[test]
fn softmax_matches_the_cpu() {
    let mut gpu = gpu();
    let mut rng = rng(11);
    for (len, temperature) in [(1000, 1.0), (1000, 0.7), (37, 1.5)] {
        let x = random_values(&mut rng, len, 8.0);
        let t = gpu.load("logits", 1, len, &x);
        gpu.softmax(&t, temperature);
        let got = read(&mut gpu, &t, 1);
        let mut want: Vec<f32> = x.iter().map(|v| v / temperature).collect();
        cpu::softmax(&mut want);
        // exp is accurate to a few ulps on both sides and the sums differ in order: 1e-5 of
        // the largest probability. Any misplaced value moves a probability by far more.
        let scale = max_abs(&want);
        let what = format!("softmax of {len} at temperature {temperature}");
        assert_close(&what, &got, &to_f64(&want), len, |_| scale, 1e-5);
        let sum: f32 = got.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{what}: sums to {sum}");
    }
}

fn open_error(options: GpuOptions) -> BackendError {
    match WgpuBackend::new(options) {
        Ok(b) => panic!("opened {}", b.describe()),
        Err(e) => e,
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_api_this_machine_lacks_is_no_such_adapter() {
    let err = open_error(GpuOptions {
        api: Some("metal".into()),
        ..GpuOptions::default()
    });
    assert!(err.to_string().contains("no such adapter"), "{err}");
}

#[test]
fn an_adapter_index_past_the_list_is_no_such_adapter() {
    let err = open_error(GpuOptions {
        adapter: Some(99),
        ..gpu_options()
    });
    let text = err.to_string();
    assert!(
        text.contains("no such adapter") && text.contains("99"),
        "{text}"
    );
}

#[test]
fn an_unknown_api_name_is_refused_by_name() {
    let err = open_error(GpuOptions {
        api: Some("vulcan".into()),
        ..GpuOptions::default()
    });
    let text = err.to_string();
    assert!(
        text.contains("'vulcan'") && text.contains("vulkan"),
        "{text}"
    );
}

/// A matmul that reads 16 MiB of weights for each of 8 tokens.
struct Workload {
    w: GpuMatrix,
    x: GpuTensor,
    out: GpuTensor,
}

fn workload(gpu: &mut WgpuBackend) -> Workload {
    let mut rng = rng(12);
    let (rows, cols, n) = (1024, 4096, 8);
    Workload {
        w: Weights::random(&mut rng, GgmlType::F32, rows, cols).upload(gpu, "big"),
        x: gpu.load("x", n, cols, &random_values(&mut rng, n * cols, 1.0)),
        out: gpu.tensor("out", n, rows).expect("tensor"),
    }
}

fn record(gpu: &mut WgpuBackend, work: &Workload, times: usize) {
    for _ in 0..times {
        gpu.matmul(&work.x, &work.w, &work.out, 8);
    }
}

#[test]
fn a_kernel_longer_than_the_timeout_is_reported_not_waited_for() {
    // Lavapipe needs a quarter of a second for one matmul, a fast GPU a few microseconds:
    // the work is sized on this device to last 50 times the timeout. One matmul is timed in a
    // batch of at least 20 ms, so that the cost of a submission and a wait (far above the
    // kernel's on a fast GPU, and larger still while other tests share it) does not count,
    // on a device of its own (a wait on the shared device waits for the other tests' work),
    // after a first matmul that builds the kernels it needs.
    let timeout = Duration::from_millis(1);
    let one = {
        let mut gpu = gpu_with(gpu_options());
        let work = workload(&mut gpu);
        record(&mut gpu, &work, 1);
        gpu.sync().expect("upload and a first matmul");
        let mut batch = 1;
        loop {
            let start = Instant::now();
            record(&mut gpu, &work, batch);
            gpu.sync().expect("timing matmuls");
            let elapsed = start.elapsed();
            if elapsed >= Duration::from_millis(20) {
                break elapsed / batch as u32;
            }
            batch *= 2;
        }
    };
    let times = (50.0 * timeout.as_secs_f64() / one.as_secs_f64()).ceil() as usize;

    let mut gpu = gpu_with(GpuOptions {
        timeout,
        ..gpu_options()
    });
    let work = workload(&mut gpu);
    record(&mut gpu, &work, times);
    let start = Instant::now();
    let result = gpu.sync();
    let waited = start.elapsed();
    assert!(
        matches!(result, Err(BackendError::Timeout { .. })),
        "expected a timeout after {timeout:?} ({times} matmuls of {one:?}), got {result:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
}

#[test]
fn a_tensor_past_the_binding_limit_is_refused_with_its_size() {
    let mut gpu = gpu();
    // 4Mi rows of 4096 floats: 64 GiB.
    let err = match gpu.tensor("huge activations", 1 << 22, 1 << 12) {
        Ok(_) => panic!("allocated a 64 GiB tensor"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("huge activations") && text.contains("65536 MiB"),
        "{text}"
    );
}

#[test]
fn a_weight_row_past_the_binding_limit_is_refused_with_its_size() {
    let mut gpu = gpu_with(GpuOptions {
        max_weight_part: Some(100),
        ..gpu_options()
    });
    let w = Weights::random(&mut rng(13), GgmlType::Q4K, 2, 256);
    let err = match gpu.upload_matrix("wide", w.cols, vec![w.rows_of(None)], MatrixUse::Plain) {
        Ok(_) => panic!("uploaded a row wider than a binding"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("wide") && text.contains("144 bytes"),
        "{text}"
    );
}

/// The fused products of decoding: the RMS norm folded into the matvec (`norm_matmul` with
/// up to 7 tokens) and the residual add folded into its epilogue (`matmul_add`), against a
/// float64 reference; 9 tokens take the unfused, tiled path and must agree too.
#[test]
fn fused_norm_and_residual_products_match_the_reference() {
    check_fused_products(&mut gpu());
}

/// The same with every 8-bit product reading activations quantized once for all its
/// workgroups (with the norm folded in where fused), as long rows' products do.
#[test]
fn fused_products_over_activations_quantized_once_match_the_reference() {
    check_fused_products(&mut quantized_once_gpu());
}

fn quantized_once_gpu() -> WgpuBackend {
    gpu_with(GpuOptions {
        int8_global_min_bytes: Some(0),
        ..gpu_options()
    })
}

fn check_fused_products(gpu: &mut WgpuBackend) {
    let mut rng = rng(23);
    let tiled_tol = tiled_tol(gpu);
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::F16,
        GgmlType::Q2K,
    ] {
        let cols = widths(ty)[1] / 32 * 32;
        let w = Weights::random(&mut rng, ty, ROWS, cols);
        let decoded = w.decoded();
        let gw = w.upload(gpu, "w");
        let norm_w = random_values(&mut rng, cols, 1.0);
        let g_norm = upload_vector(gpu, &norm_w);
        for n in [1, 3, 9] {
            let x = random_values(&mut rng, n * cols, 2.0);
            let int8 = n < 8 && gpu.int8_activations(ty, cols);
            let normed = normed_reference(&x, &norm_w, int8);
            let (want, scale) = matmul_reference(&decoded, &normed, None, ROWS, cols);
            let xt = gpu.load("x", n, cols, &x);
            let out = gpu.load("out", n, ROWS, &vec![f32::NAN; n * ROWS]);
            let norm = RmsNorm {
                weight: &g_norm,
                eps: 1e-6,
            };
            gpu.norm_matmul(&xt, norm, &gw, &out, n);
            let got = read(gpu, &out, n);
            let what = format!("norm_matmul {} n={n}", w.label());
            let tol = if n >= 8 { tiled_tol } else { decode_tol(int8) };
            assert_close(&what, &got, &want, ROWS, |i| scale[i], tol);

            let product_x = if int8 { int8_rounded(&x) } else { x.clone() };
            let product = Product {
                w: &w,
                gw: &gw,
                decoded: &decoded,
            };
            check_matmul_add(gpu, &mut rng, &product, &xt, &product_x, n, tol);
        }
    }
}

/// Decode products of model-sized matrices: widths of real models and enough rows that the
/// kernels run with the team sizes a model gets (small matrices spread rows over whole
/// workgroups), with the norm fused and without, for one and two tokens. Without the norm,
/// 8-bit products of rows of 8,192 or more read activations quantized once for all
/// workgroups (8,960 and 14,336 here).
#[test]
fn decode_products_of_model_shapes_match_the_reference() {
    let mut rng = rng(37);
    let mut gpu = gpu();
    for (ty, rows, cols) in [
        (GgmlType::Q4K, 4100, 1536),
        (GgmlType::Q6K, 4100, 2048),
        (GgmlType::Q4K, 600, 8960),
        (GgmlType::Q6K, 700, 14336),
        (GgmlType::Q8_0, 4100, 2048),
        (GgmlType::Q6K, 151_936, 1536),
    ] {
        let w = Weights::random(&mut rng, ty, rows, cols);
        let decoded = w.decoded();
        let gw = w.upload(&mut gpu, "w");
        let norm_w = random_values(&mut rng, cols, 1.0);
        let g_norm = upload_vector(&mut gpu, &norm_w);
        for n in [1, 2] {
            let x = random_values(&mut rng, n * cols, 2.0);
            let int8 = gpu.int8_activations(ty, cols);
            let normed = normed_reference(&x, &norm_w, int8);
            let (want, scale) = matmul_reference(&decoded, &normed, None, rows, cols);
            let xt = gpu.load("x", n, cols, &x);
            let out = gpu.load("out", n, rows, &vec![f32::NAN; n * rows]);
            let norm = RmsNorm {
                weight: &g_norm,
                eps: 1e-6,
            };
            gpu.norm_matmul(&xt, norm, &gw, &out, n);
            let got = read(&mut gpu, &out, n);
            let what = format!("norm_matmul {} n={n}", w.label());
            let tol = decode_tol(int8);
            assert_close(&what, &got, &want, rows, |i| scale[i], tol);

            let product_x = if int8 { int8_rounded(&x) } else { x.clone() };
            let (want, scale) = matmul_reference(&decoded, &product_x, None, rows, cols);
            gpu.matmul(&xt, &gw, &out, n);
            let got = read(&mut gpu, &out, n);
            let what = format!("matmul {} n={n}", w.label());
            assert_close(&what, &got, &want, rows, |i| scale[i], tol);
        }
    }
}

/// rms_norm (epsilon 1e-6) of each row of `x` in float64, as a fused product's input. The 8-bit
/// path rounds x · norm weight and applies the norm's common scale to the sums.
fn normed_reference(x: &[f32], norm_w: &[f32], int8: bool) -> Vec<f32> {
    let cols = norm_w.len();
    x.chunks_exact(cols)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / cols as f64;
            let s = 1.0 / (ms + 1e-6).sqrt();
            let weighted: Vec<f32> = row.iter().zip(norm_w).map(|(v, w)| v * w).collect();
            let weighted = if int8 {
                int8_rounded(&weighted)
            } else {
                weighted
            };
            weighted.into_iter().map(move |v| (v as f64 * s) as f32)
        })
        .collect()
}

/// The tolerance of prompt-sized products, which go through the tiled kernels: FMA in f32, or
/// tensor cores with f16 inputs, which round each weight and activation by up to 2^-11
/// relative: the dot then errs by at most ~1e-3 of |w|·|x|; 2e-3 leaves room and still catches
/// any misplaced element (about 1/sqrt(K) of the scale, over 3e-2 in these tests).
fn tiled_tol(gpu: &WgpuBackend) -> f64 {
    if gpu.uses_tensor_cores() {
        2e-3
    } else {
        GPU_MATMUL_TOL
    }
}

/// Prompt-sized products (70 tokens) go through the tiled kernels.
#[test]
fn prompt_matmul_tiles_match_the_reference() {
    let mut rng = rng(29);
    let mut gpu = gpu();
    let tol = tiled_tol(&gpu);
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q8_0,
        GgmlType::Q4_1,
        GgmlType::F32,
    ] {
        let cols = widths(ty)[1];
        let rows = 131;
        let w = Weights::random(&mut rng, ty, rows, cols);
        let decoded = w.decoded();
        let bias = random_values(&mut rng, rows, 1.0);
        let gw = w.upload_with_bias(&mut gpu, "w", Some(&bias));
        let n = 70;
        let x = random_values(&mut rng, n * cols, 1.0);
        let (want, scale) = matmul_reference(&decoded, &x, Some(&bias), rows, cols);
        let got = run_matmul(&mut gpu, &gw, &x, n, rows);
        let what = format!("prompt matmul {} n={n}", w.label());
        assert_close(&what, &got, &want, rows, |i| scale[i], tol);
    }
}

/// A product with enough rows for tensor cores' taller tiles (128 tokens × 128 rows, where they
/// cover it with at least 256 of them): 200 tokens and 32,800 rows leave both last tiles part
/// full.
#[test]
fn tall_prompt_tiles_match_the_reference() {
    let mut rng = rng(31);
    let mut gpu = gpu();
    let (rows, cols, n) = (32_800, 256, 200);
    let w = Weights::random(&mut rng, GgmlType::Q4K, rows, cols);
    let bias = random_values(&mut rng, rows, 1.0);
    let gw = w.upload_with_bias(&mut gpu, "w", Some(&bias));
    let x = random_values(&mut rng, n * cols, 1.0);
    let (want, scale) = matmul_reference(&w.decoded(), &x, Some(&bias), rows, cols);
    let got = run_matmul(&mut gpu, &gw, &x, n, rows);
    let what = format!("tall prompt matmul {} n={n}", w.label());
    assert_close(&what, &got, &want, rows, |i| scale[i], tiled_tol(&gpu));
}

/// Residual products (y += x · Wᵀ) of whole tensor-core tiles, which start from y and store
/// straight to it, beside part-filled tiles, which add through workgroup memory.
#[test]
fn residual_products_of_whole_tiles_match_the_reference() {
    let mut rng = rng(37);
    let mut gpu = gpu();
    let (rows, cols) = (256, 512);
    let w = Weights::random(&mut rng, GgmlType::Q4K, rows, cols);
    let decoded = w.decoded();
    let gw = w.upload(&mut gpu, "w");
    let product = Product {
        w: &w,
        gw: &gw,
        decoded: &decoded,
    };
    let tol = tiled_tol(&gpu);
    for n in [64, 130] {
        let x = random_values(&mut rng, n * cols, 1.0);
        let xt = gpu.load("x", n, cols, &x);
        check_matmul_add(&mut gpu, &mut rng, &product, &xt, &x, n, tol);
    }
}

/// A weight matrix under test: as generated, on the GPU, and decoded on the host.
struct Product<'a> {
    w: &'a Weights,
    gw: &'a GpuMatrix,
    decoded: &'a [f32],
}

/// Checks y += x · Wᵀ on the GPU, for a random y, against the float64 reference of
/// `product_x` (x as the GPU rounds it) times the decoded weights.
fn check_matmul_add(
    gpu: &mut WgpuBackend,
    rng: &mut StdRng,
    product: &Product,
    xt: &GpuTensor,
    product_x: &[f32],
    n: usize,
    tol: f64,
) {
    let (rows, cols) = (product.w.rows, product.w.cols);
    let acc0 = random_values(rng, n * rows, 1.0);
    let (prod, scale) = matmul_reference(product.decoded, product_x, None, rows, cols);
    let want: Vec<f64> = prod.iter().zip(&acc0).map(|(p, a)| p + *a as f64).collect();
    let acc = gpu.load("acc", n, rows, &acc0);
    gpu.matmul_add(xt, product.gw, &acc, n);
    let got = read(gpu, &acc, n);
    let what = format!("matmul_add {} n={n}", product.w.label());
    let scale = |i: usize| scale[i] + acc0[i].abs() as f64;
    assert_close(&what, &got, &want, rows, scale, tol);
}

/// An activation in f64, for the references.
fn activate(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::GeluTanh if x <= -10.0 => 0.0,
        Activation::GeluTanh if x >= 10.0 => x,
        Activation::GeluTanh => {
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
            0.5 * x * (1.0 + inner.tanh())
        }
    }
}

/// The feed-forward input of every activation: gate and up of one type are interleaved into
/// one matrix (one decode pass writes the GLU; prompts go through tiles and a pairwise GLU,
/// or the tensor cores' GLU epilogue), of two types they stay apart (both products, then the
/// GLU of their halves). Against the CPU backend in its exact mode (float products of the
/// same weights), or, where the GPU rounds the activations to 8 bits, a float64 reference of
/// the same rounding.
#[test]
fn gate_up_glu_matches_the_cpu() {
    check_gate_up_glu(&mut gpu());
}

/// The same with the 8-bit products reading activations quantized once (norm folded in).
#[test]
fn gate_up_glu_over_activations_quantized_once_matches_the_cpu() {
    check_gate_up_glu(&mut quantized_once_gpu());
}

fn check_gate_up_glu(gpu: &mut WgpuBackend) {
    let mut rng = rng(31);
    let mut cpu = CpuBackend::exact(2).expect("cpu");
    let tol = if gpu.uses_tensor_cores() { 2e-3 } else { 1e-4 };
    for (tg, tu) in [
        (GgmlType::Q4K, GgmlType::Q4K),
        (GgmlType::Q8_0, GgmlType::Q8_0),
        (GgmlType::Q4K, GgmlType::Q6K),
    ] {
        let (rows, cols) = (ROWS, 512);
        let (g, u) = (
            Weights::random(&mut rng, tg, rows, cols),
            Weights::random(&mut rng, tu, rows, cols),
        );
        let norm_w = random_values(&mut rng, cols, 1.0);
        for (n, act) in [1, 9]
            .into_iter()
            .flat_map(|n| Activation::ALL.map(|a| (n, a)))
        {
            let x = random_values(&mut rng, n * cols, 1.0);
            let what = format!("gate_up {} {tg}/{tu} n={n}", act.name());
            if n == 1 && gpu.int8_activations(tg, cols) {
                let normed = normed_reference(&x, &norm_w, true);
                let (gate, _) = matmul_reference(&g.decoded(), &normed, None, rows, cols);
                let (up, _) = matmul_reference(&u.decoded(), &normed, None, rows, cols);
                let want: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| activate(act, *g) * u)
                    .collect();
                let got = glu_on(gpu, act, [&g, &u], &norm_w, &x, n);
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                let what = format!("{what} (8-bit activations)");
                assert_close(&what, &got, &want, rows, |_| scale, INT8_TOL);
                continue;
            }
            let got = glu_on(gpu, act, [&g, &u], &norm_w, &x, n);
            let want = glu_on(&mut cpu, act, [&g, &u], &norm_w, &x, n);
            if tg == tu {
                // Gate and up rows in one fused tensor (phi3's ffn_up) are the same rows: the
                // same products, bit for bit.
                let fused = Weights {
                    ty: tg,
                    rows: 2 * rows,
                    cols,
                    bytes: [g.bytes.clone(), u.bytes.clone()].concat(),
                };
                let got_fused = glu_of(gpu, act, vec![fused.rows_of(None)], &norm_w, &x, n);
                assert!(got_fused == got, "{what}: fused gate/up differ");
            }
            let scale = max_abs(&want);
            assert_close(&what, &got, &to_f64(&want), rows, |_| scale, tol);
        }
    }
}

fn glu_on<B: Load>(
    b: &mut B,
    act: Activation,
    [g, u]: [&Weights; 2],
    norm_w: &[f32],
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    glu_of(b, act, vec![g.rows_of(None), u.rows_of(None)], norm_w, x, n)
}

/// norm_glu of a gate/up matrix of `parts`.
fn glu_of<B: Load>(
    b: &mut B,
    act: Activation,
    parts: Vec<WeightRows>,
    norm_w: &[f32],
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let cols = norm_w.len();
    let rows = parts.iter().map(|p| p.rows).sum::<usize>() / 2;
    let gate_up = b
        .upload_matrix("ffn", cols, parts, MatrixUse::GateUp)
        .expect("upload");
    let weight = b.upload_vector("norm", norm_w).expect("norm");
    let xt = b.load("x", n, cols, x);
    let out = b.load("out", n, rows, &vec![f32::NAN; n * rows]);
    let norm = RmsNorm {
        weight: &weight,
        eps: 1e-6,
    };
    b.norm_glu(&xt, norm, &gate_up, act, &out, n);
    read(b, &out, n)
}

/// Heads larger than the attention kernels hold in workgroup memory, or not a multiple of the
/// 8 values they read at a time, are refused at load.
#[test]
fn attention_heads_past_the_kernel_limit_are_refused() {
    let shape = AttentionShape {
        n_head: 2,
        n_head_kv: 1,
        head_dim: 320,
        rope: RopeKind::Neox,
    };
    for head_dim in [320, 100] {
        let shape = AttentionShape { head_dim, ..shape };
        let e = gpu()
            .kv_cache(&kv_layout(&shape, KvTypes::default(), 1, 16))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(&head_dim.to_string()), "{e}");
    }
}

/// q8_0 caches need heads of whole 32-value blocks; both backends refuse others by name.
#[test]
fn q8_0_caches_need_heads_of_whole_blocks() {
    let shape = AttentionShape {
        n_head: 2,
        n_head_kv: 1,
        head_dim: 80,
        rope: RopeKind::Neox,
    };
    let q8 = CacheType::Q8_0;
    for (types, flag) in [
        (
            KvTypes {
                k: q8,
                ..KvTypes::default()
            },
            "--cache-type-k",
        ),
        (
            KvTypes {
                v: q8,
                ..KvTypes::default()
            },
            "--cache-type-v",
        ),
    ] {
        let errors = [
            gpu().kv_cache(&kv_layout(&shape, types, 1, 16)).err(),
            cpu().kv_cache(&kv_layout(&shape, types, 1, 16)).err(),
        ];
        for e in errors {
            let e = e.expect("refused").to_string();
            assert!(
                e.contains("80") && e.contains("q8_0") && e.contains(flag),
                "{e}"
            );
        }
    }
}

/// Per step: q as rotated, and the attention output, from `[q | k | v]` products written by
/// the host in the heads' own order (the generic op, which the forward pass reaches through
/// the default bodies of the fused ops).
fn rope_store_then_attend<B: Load>(
    b: &mut B,
    shape: &AttentionShape,
    types: KvTypes,
    products: &[f32],
    sizes: &[usize],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let (qw, width) = (shape.q_width(), shape.q_width() + 2 * shape.kv_width());
    let n_ctx: usize = sizes.iter().sum();
    let table = upload_vector(b, &rope_table(n_ctx, shape.head_dim));
    let cache = b
        .kv_cache(&kv_layout(shape, types, 1, n_ctx))
        .expect("cache");
    let rope = Rope {
        cos_sin: &table,
        qk_norm: None,
    };
    let mut pos = 0;
    sizes
        .iter()
        .map(|&n| {
            let qkv = b.load("qkv", n, width, &products[pos * width..(pos + n) * width]);
            let q = b.load("q", n, qw, &vec![f32::NAN; n * qw]);
            let out = b.load("out", n, qw, &vec![f32::NAN; n * qw]);
            let batch = Batch::one(0, pos, n);
            let at = CacheLayer {
                cache: &cache,
                layer: 0,
                batch: &batch,
            };
            b.rope_store_kv(&qkv, &rope, &q, at);
            b.attention(&q, at, &AttentionOpts::causal(shape.head_dim), &out);
            pos += n;
            (read(b, &q, n), read(b, &out, n))
        })
        .collect()
}

/// The generic RoPE-and-store op, which reads q and k heads in their own order (the fused
/// path reads them in the device's pair order): NeoX and adjacent pairs, f16 and q8_0 caches,
/// steps of 9 (prompt attention), 1 and 3 tokens.
#[test]
fn rope_store_of_products_in_head_order_matches_the_cpu() {
    let mut rng = rng(43);
    let mut gpu = gpu();
    let q8 = CacheType::Q8_0;
    for (rope, types) in [
        (RopeKind::Neox, KvTypes::default()),
        (RopeKind::Normal, KvTypes::default()),
        (RopeKind::Neox, KvTypes { k: q8, v: q8 }),
    ] {
        let shape = AttentionShape {
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            rope,
        };
        let sizes = [9, 1, 3];
        let width = shape.q_width() + 2 * shape.kv_width();
        let products = random_values(&mut rng, 13 * width, 2.0);
        let got = rope_store_then_attend(&mut gpu, &shape, types, &products, &sizes);
        let want = rope_store_then_attend(&mut cpu(), &shape, types, &products, &sizes);
        let qw = shape.q_width();
        for (i, ((gq, go), (cq, co))) in got.iter().zip(&want).enumerate() {
            let what = format!("{rope:?} {types} step {i}");
            // As in the fused path's test: the same f32 rotation, an ulp apart where a fused
            // multiply-add rounds differently; the cache's rounding beside it (3.2e-4 seen on
            // the H100's tensor cores).
            assert_close(&format!("q, {what}"), gq, &to_f64(cq), qw, |_| 2.0, 2e-6);
            let tol = attention_tol(&gpu, types, sizes[i]);
            assert_close(
                &format!("attention, {what}"),
                go,
                &to_f64(co),
                qw,
                |_| 2.0,
                tol,
            );
        }
    }
}

/// A step with a sequence the cache has no slot for is refused by name at the next wait, and
/// every wait after it says so (the refused work never ran); another backend on the same
/// device is untouched by the refusal.
#[test]
fn a_step_past_the_caches_slots_is_refused_by_name() {
    let shape = AttentionShape {
        n_head: 2,
        n_head_kv: 1,
        head_dim: 64,
        rope: RopeKind::Neox,
    };
    let layout = KvLayout {
        slots: 2,
        ..kv_layout(&shape, KvTypes::default(), 2, 16)
    };
    let causal = AttentionOpts::causal(64);
    let mut gpu = gpu();
    let cache = gpu.kv_cache(&layout).expect("cache");
    let q = gpu.load("q", 2, shape.q_width(), &[0.0; 256]);
    let out = gpu.tensor("out", 2, shape.q_width()).expect("out");
    let span = |slot| Span {
        slot,
        pos: 3,
        len: 1,
    };
    let batch = Batch::new(vec![span(1), span(2)]);
    let at = CacheLayer {
        cache: &cache,
        layer: 0,
        batch: &batch,
    };
    gpu.attention(&q, at, &causal, &out);
    let mut other = common::gpu();
    let t = other.load("t", 1, 4, &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(read(&mut other, &t, 1), [1.0, 2.0, 3.0, 4.0]);
    let e = gpu.sync().expect_err("refused").to_string();
    assert!(
        e.contains("slot 2") && e.contains("holds 2 sequences"),
        "{e}"
    );
    let e = gpu.read(&out, 1).expect_err("still refused").to_string();
    assert!(e.contains("slot 2"), "{e}");
}

/// `w`'s rows as the [`MatrixUse::Experts`] matrix of `n_expert` equal blocks, each expert's
/// rows a part of their own (as the loader slices the rows of 3-D tensors).
fn upload_experts<B: Backend>(b: &mut B, w: &Weights, n_expert: usize) -> B::Matrix {
    let block = w.rows / n_expert;
    let bytes = w.ty.row_bytes(w.cols).expect("whole blocks") * block;
    let data = WeightBytes::owned(w.bytes.clone());
    let parts = (0..n_expert)
        .map(|e| WeightRows::new(w.ty, block, data.slice(e * bytes, bytes)))
        .collect();
    b.upload_matrix("experts", w.cols, parts, MatrixUse::Experts(n_expert))
        .unwrap_or_else(|e| panic!("{}: uploading experts: {e}", b.describe()))
}

/// matmul_id of `n` rows on a backend, into an output prefilled with NaN (a row it never
/// writes fails the comparison).
fn run_matmul_id<B: Load>(
    b: &mut B,
    m: &B::Matrix,
    x: &[f32],
    routes: &[f32],
    input: ExpertInput,
    (n, k, block): (usize, usize, usize),
) -> Vec<f32> {
    let xt = b.load("x", x.len() / m.cols(), m.cols(), x);
    let rt = b.load("routes", n, 2 * k, routes);
    let out = b.load("out", n * k, block, &vec![f32::NAN; n * k * block]);
    b.matmul_id(&xt, m, &rt, input, &out, n);
    read(b, &out, n * k)
}

/// The products of each row's chosen experts in float64, and their scales |w_r|·|x|.
fn matmul_id_reference(
    w: &[f32],
    x: &[f32],
    routes: &[f32],
    input: ExpertInput,
    (n, k, block, cols): (usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let (mut want, mut scale) = (Vec::new(), Vec::new());
    for c in 0..n * k {
        let (t, j) = (c / k, c % k);
        let e = routes[t * 2 * k + j] as usize;
        let xr = match input {
            ExpertInput::Token => t,
            ExpertInput::Choice => c,
        };
        let (xs, ws) = (
            &x[xr * cols..][..cols],
            &w[e * block * cols..][..block * cols],
        );
        let (row_want, row_scale) = matmul_reference(ws, xs, None, block, cols);
        want.extend(row_want);
        scale.extend(row_scale);
    }
    (want, scale)
}

/// The mixture-of-experts ops on the GPU: routing against the host's (the same experts, the
/// weights to f32 rounding), the chosen experts' products (on the GPU and the exact CPU)
/// against a float64 reference for row and choice inputs, and the weighted mix. Awkward
/// shapes: 3, 5, 8 and 10 experts, 2 and 8 a token, blocks of 67 rows, several weight types;
/// 1 to 7 tokens decode, 20 and 150 go through the experts' lists and tiles (150 tokens over
/// 3 experts: lists past one 256-choice scan and one 64-choice tile).
#[test]
fn mixture_of_experts_ops_match_the_reference() {
    let (mut gpu, mut cpu) = (gpu(), CpuBackend::exact(0).unwrap());
    let mut rng = rng(12);
    let block = ROWS;
    for (n_expert, k, n) in [
        (5, 2, 1),
        (10, 8, 3),
        (8, 2, 7),
        (10, 8, 20),
        (3, 2, 150),
        (128, 8, 20),
    ] {
        // Logits spread ±3: top-k sets apart by more than f32's rounding of exp.
        let logits = random_values(&mut rng, n * n_expert, 3.0);
        let mut routes = Vec::new();
        for normalize in [false, true] {
            let routing = Routing { k, normalize };
            routes = host_routes(&logits, n_expert, routing);
            let lt = gpu.load("logits", n, n_expert, &logits);
            let rt = gpu.load("routes", n, 2 * k, &vec![f32::NAN; n * 2 * k]);
            gpu.moe_route(&lt, routing, &rt, n);
            let got = read(&mut gpu, &rt, n);
            let what = format!("moe_route {n_expert} experts, k={k}, normalize={normalize}");
            assert_close(&what, &got, &to_f64(&routes), 2 * k, |_| 1.0, 1e-6);
            let ids =
                |r: &[f32]| -> Vec<f32> { r.chunks(2 * k).flat_map(|r| r[..k].to_vec()).collect() };
            assert_eq!(ids(&got), ids(&routes), "{what}: the experts chosen");
        }
        for ty in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16] {
            let cols = widths(ty)[1];
            let w = Weights::random(&mut rng, ty, n_expert * block, cols);
            let decoded = w.decoded();
            let (gm, cm) = (
                upload_experts(&mut gpu, &w, n_expert),
                upload_experts(&mut cpu, &w, n_expert),
            );
            for input in [ExpertInput::Token, ExpertInput::Choice] {
                let rows = if input == ExpertInput::Token {
                    n
                } else {
                    n * k
                };
                let x = random_values(&mut rng, rows * cols, 1.0);
                let shape = (n, k, block, cols);
                let (want, scale) = matmul_id_reference(&decoded, &x, &routes, input, shape);
                let what = format!(
                    "matmul_id {} {n_expert} experts k={k} n={n} {input:?}",
                    w.label()
                );
                let got = run_matmul_id(&mut gpu, &gm, &x, &routes, input, (n, k, block));
                assert_close(
                    &format!("GPU {what}"),
                    &got,
                    &want,
                    block,
                    |i| scale[i],
                    GPU_MATMUL_TOL,
                );
                let got = run_matmul_id(&mut cpu, &cm, &x, &routes, input, (n, k, block));
                assert_close(
                    &format!("CPU {what}"),
                    &got,
                    &want,
                    block,
                    |i| scale[i],
                    GPU_MATMUL_TOL,
                );
            }
        }
        let d = 131;
        let y = random_values(&mut rng, n * k * d, 1.0);
        let acc = random_values(&mut rng, n * d, 1.0);
        let mut want = to_f64(&acc);
        for (i, want) in want.iter_mut().enumerate() {
            let (t, col) = (i / d, i % d);
            *want += (0..k)
                .map(|j| routes[t * 2 * k + k + j] as f64 * y[(t * k + j) * d + col] as f64)
                .sum::<f64>();
        }
        let (yt, rt, at) = (
            gpu.load("y", n * k, d, &y),
            gpu.load("routes", n, 2 * k, &routes),
            gpu.load("acc", n, d, &acc),
        );
        gpu.moe_combine_add(&yt, &rt, &at, n);
        let got = read(&mut gpu, &at, n);
        // Sums of k + 1 terms of f32 products: within a few ulps of the terms' scale.
        assert_close(
            &format!("moe_combine_add k={k} n={n}"),
            &got,
            &want,
            d,
            |_| 1.0,
            1e-5,
        );
    }
}

/// Expert matrices split between binding-sized parts, two and a half experts a part (so
/// whole experts: two per part): each choice is computed by the part holding its expert.
#[test]
fn split_expert_matrices_give_the_same_products() {
    let ty = GgmlType::Q8_0;
    let (n_expert, k, n, block, cols) = (8, 2, 40, ROWS, widths(GgmlType::Q8_0)[0]);
    let expert_bytes = ty.row_bytes(cols).unwrap() * block;
    let mut gpu = gpu_with(GpuOptions {
        max_weight_part: Some((5 * expert_bytes / 2) as u64),
        ..gpu_options()
    });
    let mut rng = rng(13);
    let w = Weights::random(&mut rng, ty, n_expert * block, cols);
    let m = upload_experts(&mut gpu, &w, n_expert);
    assert_eq!(m.parts(), 4, "two experts a part");
    // Every expert chosen by some row.
    let routes: Vec<f32> = (0..n)
        .flat_map(|t| {
            let (a, b) = ((2 * t) % n_expert, (2 * t + 1) % n_expert);
            [a as f32, b as f32, 0.5, 0.5]
        })
        .collect();
    // Decoded (5 tokens) and through the lists and tiles (40).
    for n in [5, n] {
        let routes = &routes[..n * 2 * k];
        let x = random_values(&mut rng, n * cols, 1.0);
        let input = ExpertInput::Token;
        let shape = (n, k, block, cols);
        let (want, scale) = matmul_id_reference(&w.decoded(), &x, routes, input, shape);
        let got = run_matmul_id(&mut gpu, &m, &x, routes, input, (n, k, block));
        let what = format!("split matmul_id n={n}");
        assert_close(&what, &got, &want, block, |i| scale[i], GPU_MATMUL_TOL);
    }
}
