//! The CUDA backend's kernels against the CPU reference (and a float64 one for products), on
//! random inputs of awkward shapes, as tests/gpu_kernels.rs checks the wgpu backend: every
//! weight type, embeddings, norms, element-wise ops, RoPE with the cache write and
//! attention over prefill and decode (per-head norms, windows, soft caps), batches of several
//! sequences in their own cache slots, f16 and q8_0 caches, token picks, and the
//! mixture-of-experts ops. They need
//! a CUDA device: without one they fail.
#![cfg(feature = "cuda")]

// The wgpu helpers there are not used here.
#[allow(dead_code)]
mod common;

use common::cuda::cuda;
use common::ops::*;
use common::*;
use rand::rngs::StdRng;
use vibrant::backend::cuda::CudaBackend;
use vibrant::backend::{
    Activation, AttentionOpts, AttentionShape, Backend, BackendError, Batch, CacheLayer, CacheType,
    ExpertInput, KvLayout, KvTypes, MatrixUse, Pointwise, QkNorm, RmsNorm, Rope, RopeKind, Routing,
    Span,
};
use vibrant::quant::{GgmlType, ALL_TYPES};
use vibrant::sampling::{Sampler, SamplerConfig};

/// CUDA products multiply f32 weights (decoded as the host decodes them) by f32 activations:
/// only the order of the f32 sums differs from the float64 reference, near 1e-7 of the scale
/// |w_r|·|x_t| + |b_r|; one weight read from a wrong index moves a result by about 1/K of it.
const MATMUL_TOL: f64 = 1e-5;

/// Prompt-sized products of block-quantized weights on tensor cores round each weight and
/// activation to f16 (2^-11 relative): the dot errs by at most ~1e-3 of the scale. One
/// misplaced element still costs about 1/sqrt(K) of it, over 3e-2 at these widths.
const TENSOR_CORE_TOL: f64 = 2e-3;

/// Decode products with 8-bit activations (cuda/matmul_q8.cu) round each activation to 1/254
/// of its block's largest: on these uniform inputs the dot errs by about 3e-4 of the scale,
/// under 2e-3 at worst. One misplaced element still costs about 1/sqrt(K) of it.
const INT8_TOL: f64 = 5e-3;

fn matmul_tol(b: &CudaBackend, ty: GgmlType, n: usize) -> f64 {
    if b.uses_int8_activations(ty, n) {
        INT8_TOL
    } else if ty.block_size() > 1 && b.uses_tensor_cores(n) {
        TENSOR_CORE_TOL
    } else {
        MATMUL_TOL
    }
}

fn matmul_reference(
    w: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
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
    (want, scale)
}

/// matmul of `w` against the float64 reference for 1, 5 and 13 tokens (13: two of the
/// warp-per-row kernel's groups of 8, the second partly empty) and 70 (a prompt: two of the
/// tensor-core kernel's tiles of 64 tokens, the second partly empty), with and without a bias.
fn check_matmul(b: &mut CudaBackend, rng: &mut StdRng, w: &Weights, what: &str) {
    let (rows, cols) = (w.rows, w.cols);
    let decoded = w.decoded();
    let bias = random_values(rng, rows, 1.0);
    let mats = [w.upload(b, "w"), w.upload_with_bias(b, "w", Some(&bias))];
    for n in [1, 5, 13, 70] {
        let x = random_values(rng, n * cols, 1.0);
        for with_bias in [false, true] {
            let bs = with_bias.then_some(&bias[..]);
            let label = format!("{what}: matmul {}, n={n}, bias={with_bias}", w.label());
            let (want, scale) = matmul_reference(&decoded, &x, bs, cols);
            let got = run_matmul(b, &mats[with_bias as usize], &x, n, rows);
            let tol = matmul_tol(b, w.ty, n);
            assert_close(&label, &got, &want, rows, |i| scale[i], tol);
        }
    }
}

#[test]
fn matmul_matches_a_float64_reference_for_every_type() {
    let mut b = cuda();
    let mut rng = rng(1);
    // Every type is checked, and the failures reported together: a device session is too
    // rare to learn of one type per run.
    let mut failures = Vec::new();
    for ty in ALL_TYPES {
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for cols in widths(ty) {
                let w = Weights::random(&mut rng, ty, ROWS, cols);
                check_matmul(&mut b, &mut rng, &w, "random blocks");
            }
            let w = Weights::quantized(&mut rng, ty, ROWS, widths(ty)[1]);
            check_matmul(&mut b, &mut rng, &w, "quantized");
        }));
        if checked.is_err() {
            failures.push(ty);
        }
    }
    assert!(
        failures.is_empty(),
        "products failed for {failures:?} (messages above)"
    );
    // Several tiles of weight rows (the tensor-core kernel's are 128 rows).
    let w = Weights::random(&mut rng, GgmlType::Q4K, 300, 512);
    check_matmul(&mut b, &mut rng, &w, "300 rows");
}

/// A matrix of parts of different types (a fused tensor's rows, or q/k/v of their own types)
/// gives each part's products in its columns, with its share of the bias; consecutive parts of
/// one type (q and k, gate and up) share a buffer and a launch.
#[test]
fn matrices_of_parts_of_several_types_match_the_reference() {
    let mut b = cuda();
    let mut rng = rng(2);
    let cols = 512;
    let parts = [
        Weights::random(&mut rng, GgmlType::Q8_0, 40, cols),
        Weights::random(&mut rng, GgmlType::Q4K, 9, cols),
        Weights::random(&mut rng, GgmlType::Q4K, 21, cols),
        Weights::random(&mut rng, GgmlType::F16, 33, cols),
        Weights::random(&mut rng, GgmlType::F16, 2, cols),
        Weights::random(&mut rng, GgmlType::Q4K, 5, cols),
    ];
    let rows: usize = parts.iter().map(|p| p.rows).sum();
    let bias = random_values(&mut rng, rows, 1.0);
    let mut first = 0;
    let weight_rows = parts
        .iter()
        .map(|p| {
            let r = p.rows_of(Some(&bias[first..first + p.rows]));
            first += p.rows;
            r
        })
        .collect();
    let m = b
        .upload_matrix("mixed", cols, weight_rows, MatrixUse::Plain)
        .expect("mixed matrix");
    let decoded: Vec<f32> = parts.iter().flat_map(|p| p.decoded()).collect();
    for n in [1, 11, 70] {
        let x = random_values(&mut rng, n * cols, 1.0);
        let (want, scale) = matmul_reference(&decoded, &x, Some(&bias), cols);
        let got = run_matmul(&mut b, &m, &x, n, rows);
        let what = format!("six parts of three types, n={n}");
        let tol = matmul_tol(&b, GgmlType::Q8_0, n);
        assert_close(&what, &got, &want, rows, |i| scale[i], tol);
    }
}

fn awkward_tokens(rows: usize) -> Vec<u32> {
    let last = rows as u32 - 1;
    vec![0, last, 3, 3, last + 5, 1]
}

/// Embedding rows decode as the host decodes them: the same f32 formula per value (a fused
/// multiply-add may round differently, a few ulps of the largest value).
#[test]
fn embed_matches_the_cpu_for_every_type() {
    let (mut b, mut c) = (cuda(), cpu());
    let mut rng = rng(4);
    for ty in ALL_TYPES {
        let cols = widths(ty)[1];
        let w = Weights::random(&mut rng, ty, ROWS, cols);
        let tokens = awkward_tokens(ROWS);
        let (gt, ct) = (w.upload(&mut b, "table"), w.upload(&mut c, "table"));
        let got = embed_rows(&mut b, &gt, &tokens, cols);
        let want = embed_rows(&mut c, &ct, &tokens, cols);
        let scale = max_abs(&want);
        let what = format!("embed {}", w.label());
        assert_close(&what, &got, &to_f64(&want), cols, |_| scale, 1e-6);
    }
}

#[test]
fn rms_norm_matches_the_cpu() {
    let mut rng = rng(5);
    for cols in [37, 300, 600, 4099] {
        for n in [1, 5] {
            let x = random_values(&mut rng, 6 * cols, 2.0);
            let w = random_values(&mut rng, cols, 1.0);
            let got = rms_norm_rows(&mut cuda(), &x, &w, n, 6);
            let want = rms_norm_rows(&mut cpu(), &x, &w, n, 6);
            // Only the order of the f32 sum of squares differs.
            let scale = max_abs(&want);
            let what = format!("rms_norm [{n}x{cols}]");
            assert_close(&what, &got, &to_f64(&want), cols, |_| scale, 1e-5);
        }
    }
}

#[test]
fn elementwise_ops_match_the_cpu() {
    let mut rng = rng(6);
    let cols = 100;
    for spread in [4.0, 16.0] {
        let inputs: [Vec<f32>; 3] =
            std::array::from_fn(|_| random_values(&mut rng, 6 * cols, spread));
        let ops = [
            Elementwise::Add,
            Elementwise::Glu(Activation::Silu),
            Elementwise::Glu(Activation::GeluTanh),
            Elementwise::CopyRow,
            Elementwise::Pointwise(Pointwise::Scale(-1.7)),
            Elementwise::Pointwise(Pointwise::SoftCap(3.0)),
        ];
        for op in ops {
            let got = elementwise(&mut cuda(), op, &inputs, 5, cols);
            let want = elementwise(&mut cpu(), op, &inputs, 5, cols);
            // add, copy_row and scaling are exact; exp and tanh may differ by a few ulps.
            let tol = match op {
                Elementwise::Glu(_) | Elementwise::Pointwise(Pointwise::SoftCap(_)) => 1e-6,
                _ => 0.0,
            };
            let scale = max_abs(&want);
            let what = format!("{op:?}, values within ±{spread}");
            assert_close(&what, &got, &to_f64(&want), cols, |_| scale, tol);
        }
    }
}

/// How the attention tests run: the cache's slots and positions, the layers' options and
/// whether heads are normalised (weights of `[head_dim]` for q and k).
struct AttentionCase {
    shape: AttentionShape,
    opts: AttentionOpts,
    slots: usize,
    n_ctx: usize,
    types: KvTypes,
    qk_norm: Option<[Vec<f32>; 2]>,
}

/// A case's RoPE table, per-head norms and a two-layer cache: each step's keys and values are
/// stored in layer 1 (layer 0 gets other values, which must not leak).
struct AttentionRig<B: Backend> {
    shape: AttentionShape,
    table: B::Vector,
    norms: Option<(B::Vector, B::Vector)>,
    cache: B::KvCache,
}

impl<B: Load> AttentionRig<B> {
    fn new(b: &mut B, case: &AttentionCase) -> Self {
        let table = b
            .upload_vector("rope", &rope_table(case.n_ctx, case.shape.head_dim))
            .expect("rope table");
        let layout = KvLayout {
            slots: case.slots,
            n_ctx: case.n_ctx,
            shape: case.shape,
            types: case.types,
            layers: vec![case.opts; 2],
            qk_norm: case.qk_norm.is_some(),
        };
        let cache = b.kv_cache(&layout).expect("cache");
        let norms = case.qk_norm.as_ref().map(|[q, k]| {
            let q = b.upload_vector("q norm", q).expect("q norm");
            let k = b.upload_vector("k norm", k).expect("k norm");
            (q, k)
        });
        Self {
            shape: case.shape,
            table,
            norms,
            cache,
        }
    }

    /// Where attention reads a step's keys and values.
    fn layer<'a>(&'a self, batch: &'a Batch) -> CacheLayer<'a, B::KvCache> {
        CacheLayer {
            cache: &self.cache,
            layer: 1,
            batch,
        }
    }

    /// Stores a step's keys and values from its `[rows, q | k | v]` products; its rotated
    /// queries.
    fn rotate_and_store(&self, b: &mut B, batch: &Batch, qkv: &[f32]) -> B::Tensor {
        let (qw, kvw) = (self.shape.q_width(), self.shape.kv_width());
        let n = batch.rows();
        let rope = Rope {
            cos_sin: &self.table,
            qk_norm: self.norms.as_ref().map(|(q, k)| QkNorm { q, k, eps: 1e-6 }),
        };
        let q = b.load("q", n, qw, &vec![f32::NAN; n * qw]);
        let other: Vec<f32> = qkv.iter().map(|v| -0.5 * v).collect();
        for (values, layer) in [(&other[..], 0), (qkv, 1)] {
            let x = b.load("qkv", n, qw + 2 * kvw, values);
            let at = CacheLayer {
                cache: &self.cache,
                layer,
                batch,
            };
            b.rope_store_kv(&x, &rope, &q, at);
        }
        q
    }
}

/// Per step (a batch, and its `[rows, q | k | v]` products): the rotated queries and the
/// attention output, read from layer 1 of [`AttentionRig`]'s cache.
fn run_attention<B: Load>(
    b: &mut B,
    case: &AttentionCase,
    steps: &[(Batch, Vec<f32>)],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let rig = AttentionRig::new(b, case);
    let qw = case.shape.q_width();
    steps
        .iter()
        .map(|(batch, qkv)| {
            let n = batch.rows();
            let q = rig.rotate_and_store(b, batch, qkv);
            let out = b.load("attention out", n, qw, &vec![f32::NAN; n * qw]);
            b.attention(&q, rig.layer(batch), &case.opts, &out);
            (read(b, &q, n), read(b, &out, n))
        })
        .collect()
}

/// Random `[n, q | k | v]` rows: queries scaled by 3 (so that the softmax has favourites).
fn random_qkv(rng: &mut StdRng, shape: &AttentionShape, n: usize) -> Vec<f32> {
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    (0..n)
        .flat_map(|_| {
            let mut row = random_values(rng, qw, 3.0);
            row.extend(random_values(rng, 2 * kvw, 1.0));
            row
        })
        .collect()
}

/// Each batch with random `[q | k | v]` rows of its own.
fn with_random_qkv<const N: usize>(
    rng: &mut StdRng,
    shape: &AttentionShape,
    batches: [Batch; N],
) -> Vec<(Batch, Vec<f32>)> {
    batches
        .into_iter()
        .map(|b| {
            let qkv = random_qkv(rng, shape, b.rows());
            (b, qkv)
        })
        .collect()
}

/// One sequence in slot 0: steps of `sizes` rows from position 0.
fn one_sequence(
    rng: &mut StdRng,
    shape: &AttentionShape,
    sizes: &[usize],
) -> Vec<(Batch, Vec<f32>)> {
    let mut pos = 0;
    sizes
        .iter()
        .map(|&n| {
            let step = (Batch::one(0, pos, n), random_qkv(rng, shape, n));
            pos += n;
            step
        })
        .collect()
}

/// CUDA against the CPU step by step: queries after RoPE (the same f32 rotation; a fused
/// multiply-add may round by an ulp), and attention outputs (the softmax sums in another
/// order, and a key an ulp apart may round to the neighbouring f16 in the cache: ~1e-5 of the
/// values' scale; prompts on tensor cores also round the queries and the softmax weights to
/// f16: ~5e-4; a key left out or another head read costs ~1e-2).
fn check_attention(case: &AttentionCase, steps: &[(Batch, Vec<f32>)], what: &str) {
    let mut b = cuda();
    let flash: Vec<bool> = steps
        .iter()
        .map(|(batch, _)| b.uses_flash_attention(batch, case.shape.head_dim))
        .collect();
    let got = run_attention(&mut b, case, steps);
    let want = run_attention(&mut cpu(), case, steps);
    let qw = case.shape.q_width();
    let q_scale = match &case.qk_norm {
        Some(_) => 1.5,
        None => 3.0,
    };
    let q_tol = if case.qk_norm.is_some() { 1e-5 } else { 2e-6 };
    for (((batch, _), ((gq, go), (cq, co))), flash) in
        steps.iter().zip(got.iter().zip(&want)).zip(flash)
    {
        let what = format!("{what}, {:?}", batch.spans());
        assert_close(
            &format!("q, {what}"),
            gq,
            &to_f64(cq),
            qw,
            |_| q_scale,
            q_tol,
        );
        let tol = match (case.types == KvTypes::default(), case.qk_norm.is_some()) {
            (false, _) => 3e-3,
            _ if flash => 5e-4,
            (true, true) => 2e-4,
            (true, false) => 1e-4,
        };
        assert_close(
            &format!("attention, {what}"),
            go,
            &to_f64(co),
            qw,
            |_| 1.0,
            tol,
        );
    }
}

fn shape(head_dim: usize, rope: RopeKind) -> AttentionShape {
    // Grouped-query attention: three query heads per key/value head.
    AttentionShape {
        n_head: 6,
        n_head_kv: 2,
        head_dim,
        rope,
    }
}

/// A prompt, one token, three, then a second prompt of 300 (queries over both prompts'
/// keys, past the kernel's chunks of 128 keys); heads of 80 and 168 leave threads idle, 256 is
/// the kernels' limit.
#[test]
fn rope_and_attention_match_the_cpu_over_prefill_and_decode() {
    let mut rng = rng(7);
    let cases = [
        (64, RopeKind::Normal, 70),
        (128, RopeKind::Neox, 126),
        (80, RopeKind::Neox, 126),
        (128, RopeKind::Neox, 1030),
        (168, RopeKind::Normal, 70),
        (256, RopeKind::Neox, 130),
    ];
    for (head_dim, rope, prefill) in cases {
        let shape = shape(head_dim, rope);
        let steps = one_sequence(&mut rng, &shape, &[prefill, 1, 3, 300]);
        let case = AttentionCase {
            shape,
            opts: AttentionOpts::causal(head_dim),
            slots: 1,
            n_ctx: prefill + 304,
            types: KvTypes::default(),
            qk_norm: None,
        };
        check_attention(&case, &steps, &format!("head_dim {head_dim} {rope:?}"));
    }
}

/// Per-head norms of queries and keys (Qwen3, Gemma 3) before RoPE.
#[test]
fn qk_norm_matches_the_cpu_over_prefill_and_decode() {
    let mut rng = rng(8);
    for (head_dim, rope) in [
        (64, RopeKind::Neox),
        (80, RopeKind::Neox),
        (168, RopeKind::Normal),
        (256, RopeKind::Neox),
    ] {
        let shape = shape(head_dim, rope);
        // Uneven weights (0.5 to 1.5), so that a weight read at the wrong dimension shows.
        let mut weights = || -> Vec<f32> {
            random_values(&mut rng, head_dim, 0.5)
                .into_iter()
                .map(|w| 1.0 + w)
                .collect()
        };
        let qk_norm = Some([weights(), weights()]);
        let steps = one_sequence(&mut rng, &shape, &[70, 1, 3, 300]);
        let case = AttentionCase {
            shape,
            opts: AttentionOpts::causal(head_dim),
            slots: 1,
            n_ctx: 374,
            types: KvTypes::default(),
            qk_norm,
        };
        check_attention(
            &case,
            &steps,
            &format!("qk norm, head_dim {head_dim} {rope:?}"),
        );
    }
}

/// Sliding windows and soft-capped scores (Gemma's attention).
#[test]
fn windowed_and_soft_capped_attention_match_the_cpu() {
    let mut rng = rng(9);
    for head_dim in [64, 128, 168] {
        let causal = AttentionOpts::causal(head_dim);
        let options = [
            AttentionOpts {
                window: Some(50),
                ..causal
            },
            AttentionOpts {
                softcap: Some(2.0),
                ..causal
            },
            AttentionOpts {
                window: Some(200),
                softcap: Some(5.0),
                ..causal
            },
        ];
        for opts in options {
            let shape = shape(head_dim, RopeKind::Neox);
            let steps = one_sequence(&mut rng, &shape, &[300, 1, 3, 300]);
            let case = AttentionCase {
                shape,
                opts,
                slots: 1,
                n_ctx: 604,
                types: KvTypes::default(),
                qk_norm: None,
            };
            check_attention(&case, &steps, &format!("{opts:?} head_dim {head_dim}"));
        }
    }
}

/// Several sequences in one step, each in its own slot at its own position: two prompts
/// prefilled alone (slots 2 and 0), then steps that decode both together with a third
/// sequence's prompt (slot 1), in either order of spans.
#[test]
fn batches_of_sequences_in_their_own_slots_match_the_cpu() {
    let mut rng = rng(10);
    let shape = shape(64, RopeKind::Neox);
    let span = |slot, pos, len| Span { slot, pos, len };
    let batches = [
        Batch::one(2, 0, 9),
        Batch::one(0, 0, 5),
        Batch::new(vec![span(2, 9, 1), span(0, 5, 2), span(1, 0, 7)]),
        Batch::new(vec![span(1, 7, 1), span(2, 10, 1), span(0, 7, 1)]),
        Batch::new(vec![span(0, 8, 140), span(2, 11, 3)]),
    ];
    let steps = with_random_qkv(&mut rng, &shape, batches);
    for window in [None, Some(6)] {
        let case = AttentionCase {
            shape,
            opts: AttentionOpts {
                window,
                ..AttentionOpts::causal(64)
            },
            slots: 3,
            n_ctx: 160,
            types: KvTypes::default(),
            qk_norm: None,
        };
        check_attention(&case, &steps, &format!("three slots, window {window:?}"));
    }
}

/// A batch past the cache's slots or positions is an error at the next wait, never a write
/// outside the cache.
#[test]
fn a_row_outside_the_cache_is_an_error_at_the_next_wait() {
    let mut b = cuda();
    let shape = shape(64, RopeKind::Neox);
    let mut rng = rng(11);
    let case = AttentionCase {
        shape,
        opts: AttentionOpts::causal(64),
        slots: 2,
        n_ctx: 8,
        types: KvTypes::default(),
        qk_norm: None,
    };
    let steps = [(Batch::one(2, 0, 1), random_qkv(&mut rng, &shape, 1))];
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_attention(&mut b, &case, &steps)
    }));
    let message = match outcome {
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
        Ok(_) => panic!("a row in slot 2 of a cache of 2 slots was accepted"),
    };
    assert!(message.contains("slot 2"), "{message}");
}

/// q8_0 caches of keys, values or both (ggml's blocks, rounded as the CPU rounds them) over
/// prefill and decode, with per-head norms and a window: a key rounded to the neighbouring
/// quant where the rotation differs by an ulp moves the output by ~1e-3 of the values' scale
/// (the CPU's q8_0 cache moves it by 1.5e-2 from an f16 one); a block read with another's
/// scale moves it by tens of percent.
#[test]
fn q8_0_caches_match_the_cpu() {
    let mut rng = rng(14);
    let q8 = CacheType::Q8_0;
    let cases = [
        KvTypes {
            k: q8,
            v: CacheType::F16,
        },
        KvTypes {
            k: CacheType::F16,
            v: q8,
        },
        KvTypes { k: q8, v: q8 },
    ];
    for (types, head_dim) in cases.into_iter().zip([64, 128, 256]) {
        let shape = shape(head_dim, RopeKind::Neox);
        let steps = one_sequence(&mut rng, &shape, &[70, 1, 3, 300]);
        for (qk_norm, window) in [(false, None), (true, Some(40))] {
            let mut weights = || -> Vec<f32> {
                random_values(&mut rng, head_dim, 0.5)
                    .into_iter()
                    .map(|w| 1.0 + w)
                    .collect()
            };
            let case = AttentionCase {
                shape,
                opts: AttentionOpts {
                    window,
                    ..AttentionOpts::causal(head_dim)
                },
                slots: 1,
                n_ctx: 374,
                types,
                qk_norm: qk_norm.then(|| [weights(), weights()]),
            };
            let what =
                format!("{types}, head_dim {head_dim}, qk norm {qk_norm}, window {window:?}");
            check_attention(&case, &steps, &what);
        }
    }
}

/// Decoding over long caches, where too few (row, head) blocks fill the GPU and each one's
/// keys are shared among blocks (then merged): three sequences of 1,100, 300 and 20 keys
/// decoding together (the short one's shares of a handful of keys), then two rows of one,
/// with f16 and q8_0 caches, with and without a window of 280. With f16 caches, groups of up
/// to eight query heads per key/value head and heads of up to 128 take a block per group
/// (attention_grouped: groups of 3, 7 and 8, heads of 128, 96 and 64); the rest a block per
/// query head (attention_split: q8_0 caches, a group of 9, a head of 256).
#[test]
fn split_attention_over_long_caches_matches_the_cpu() {
    let mut rng = rng(15);
    let span = |slot, pos, len| Span { slot, pos, len };
    let q8 = CacheType::Q8_0;
    let shapes = [
        (6, 2, 128),
        (14, 2, 96),
        (8, 1, 64),
        (9, 1, 64),
        (4, 2, 256),
    ];
    let kinds = [
        (KvTypes::default(), None),
        (KvTypes { k: q8, v: q8 }, None),
        (KvTypes::default(), Some(280)),
    ];
    for ((n_head, n_head_kv, head_dim), (types, window)) in shapes
        .into_iter()
        .flat_map(|s| kinds.into_iter().map(move |k| (s, k)))
    {
        let shape = AttentionShape {
            n_head,
            n_head_kv,
            head_dim,
            rope: RopeKind::Neox,
        };
        let batches = [
            Batch::one(0, 0, 1100),
            Batch::one(1, 0, 300),
            Batch::one(2, 0, 20),
            Batch::new(vec![span(0, 1100, 1), span(1, 300, 1), span(2, 20, 1)]),
            Batch::one(0, 1101, 2),
        ];
        let steps = with_random_qkv(&mut rng, &shape, batches);
        let case = AttentionCase {
            shape,
            opts: AttentionOpts {
                window,
                softcap: window.map(|_| 5.0),
                ..AttentionOpts::causal(head_dim)
            },
            slots: 3,
            n_ctx: 1200,
            types,
            qk_norm: None,
        };
        let what =
            format!("split, {n_head}/{n_head_kv} heads of {head_dim}, {types}, window {window:?}");
        check_attention(&case, &steps, &what);
    }
}

/// A tensor past the device's memory is an error naming it and its size, at once.
#[test]
fn out_of_memory_names_what_did_not_fit() {
    let mut b = cuda();
    let e = b
        .tensor("huge", 1 << 20, 1 << 20)
        .err()
        .expect("4 TiB do not fit");
    let text = e.to_string();
    assert!(matches!(e, BackendError::OutOfMemory { .. }), "{e:?}");
    assert!(
        text.contains("huge") && text.contains("4398046511104"),
        "{text}"
    );
}

/// Token picks (argmax on the device): the first largest value, never a NaN, in the slot
/// they were queued to.
#[test]
fn argmax_takes_the_first_largest_and_never_a_nan() {
    let mut b = cuda();
    let mut rng = rng(12);
    let cols = 49153;
    for case in 0..4 {
        let mut x = random_values(&mut rng, cols, 10.0);
        match case {
            1 => x[cols - 1] = 100.0,
            2 => {
                x[7] = 50.0;
                x[9000] = 50.0;
            }
            3 => {
                x[3] = f32::NAN;
                x[4] = 80.0;
            }
            _ => {}
        }
        let want = vibrant::backend::argmax(&x) as u32;
        let t = b.load("logits", 1, cols, &x);
        b.queue_argmax(&t, case % 2);
        assert_eq!(
            b.read_argmax(case % 2).expect("argmax"),
            want,
            "case {case}"
        );
        assert_eq!(b.argmax(&t).expect("argmax"), want, "case {case}");
    }
}

/// `bench --profile`: every launch timed, in order, with what a product moves and computes.
#[test]
fn a_profile_times_each_launch() {
    let mut b = cuda();
    let mut rng = rng(14);
    let w = Weights::random(&mut rng, GgmlType::Q4K, ROWS, 512);
    let m = w.upload(&mut b, "w");
    let x = random_values(&mut rng, 2 * 512, 1.0);
    b.start_profile().expect("profile");
    let got = run_matmul(&mut b, &m, &x, 2, ROWS);
    let timings = b.take_profile().expect("timings");
    let (want, scale) = matmul_reference(&w.decoded(), &x, None, 512);
    let tol = matmul_tol(&b, GgmlType::Q4K, 2);
    assert_close("profiled matmul", &got, &want, ROWS, |i| scale[i], tol);
    let kernel = if b.uses_int8_activations(GgmlType::Q4K, 2) {
        "matmul_q8_q4_k"
    } else {
        "matmul_q4_k"
    };
    let product = timings
        .iter()
        .find(|t| t.kernel == kernel)
        .unwrap_or_else(|| panic!("no {kernel} in {timings:?}"));
    assert!(
        product.seconds > 0.0 && product.seconds < 1.0,
        "{product:?}"
    );
    assert_eq!(product.flops, 2 * 2 * ROWS as u64 * 512);
    assert!(b.take_profile().expect("no profile").is_empty());
}

/// What pipelined decoding relies on (as tests/gpu_kernels.rs checks it on wgpu): each id
/// waits in its slot while the next is computed, and the next token's embedding is looked up
/// on the device from the last id queued, argmax or a sampler's draw.
#[test]
fn queued_picks_keep_their_slots_and_embed_the_last_on_the_device() {
    let (mut b, mut cpu) = (cuda(), cpu());
    let mut rng = rng(13);
    let (w, _, got, want) = queued_argmaxes_beside_the_cpu(&mut b, &mut rng);
    assert_close(
        "embedded argmax",
        &got,
        &to_f64(&want),
        w.cols,
        |_| 1.0,
        1e-6,
    );
    let logits = [0, 1].map(|_| random_values(&mut rng, ROWS, 1.0));

    // Draws of a seeded sampler, each embedded from where the draw was put.
    let config = SamplerConfig {
        seed: 77,
        temperature: 1.5,
        ..SamplerConfig::default()
    };
    let mut host = Sampler::new(config.clone());
    b.start_sampling(&Sampler::new(config)).expect("sampling");
    let table = w.upload(&mut b, "table");
    let out = b.load("embedded", 1, w.cols, &vec![f32::NAN; w.cols]);
    let cpu_table = w.upload(&mut cpu, "table");
    for step in 0..6 {
        let x = b.load("logits", 1, ROWS, &logits[step % 2]);
        b.queue_sample(&x, step % 2);
        b.embed_argmax(&table, &out);
        let got = b.read_argmax(step % 2).expect("draw");
        let want = host.sample(&mut logits[step % 2].clone());
        host.accept(want);
        assert_eq!(got, want, "draw {step}");
        let row = embed_rows(&mut cpu, &cpu_table, &[want], w.cols);
        let what = format!("embedded draw {step}");
        assert_close(
            &what,
            &read(&mut b, &out, 1),
            &to_f64(&row),
            w.cols,
            |_| 1.0,
            1e-6,
        );
    }
}

/// Routing, the products with the chosen experts' rows (each choice's own input or its
/// token's), and the weighted mix into the residual, against the CPU; experts of two parts
/// of different types.
#[test]
fn mixture_of_experts_ops_match_the_cpu() {
    let mut rng = rng(13);
    let (n_expert, block, cols) = (8, 24, 256);
    for (k, normalize, n) in [(2, true, 1), (3, false, 7), (8, true, 5)] {
        let routing = Routing { k, normalize };
        let logits = random_values(&mut rng, n * n_expert, 2.0);
        let halves = [
            Weights::random(&mut rng, GgmlType::Q4K, 4 * block, cols),
            Weights::random(&mut rng, GgmlType::Q8_0, 4 * block, cols),
        ];
        let x = random_values(&mut rng, n * k * cols, 1.0);
        let y = random_values(&mut rng, n * k * block, 1.0);
        let acc = random_values(&mut rng, n * block, 1.0);
        let on = |be: &mut dyn MoeOps| -> Vec<Vec<f32>> {
            be.moe(
                &logits,
                routing,
                n_expert,
                &halves,
                &x,
                &y,
                &acc,
                (n, block, cols),
            )
        };
        let got = on(&mut cuda());
        let want = on(&mut cpu());
        let what = format!("k {k} normalize {normalize} n {n}");
        // Routes: the same ids; weights from the same f32 exp (an ulp apart at most).
        let ids =
            |r: &[f32]| -> Vec<f32> { r.chunks(2 * k).flat_map(|c| c[..k].to_vec()).collect() };
        assert_eq!(ids(&got[0]), ids(&want[0]), "{what}: routes");
        assert_close(
            &format!("{what}: route weights"),
            &got[0],
            &to_f64(&want[0]),
            2 * k,
            |_| 1.0,
            1e-6,
        );
        // The CPU's products quantize activations to 8 bits: its 5e-3 of the scale.
        for (i, name) in [(1, "matmul_id per token"), (2, "matmul_id per choice")] {
            let scale = max_abs(&want[i]);
            assert_close(
                &format!("{what}: {name}"),
                &got[i],
                &to_f64(&want[i]),
                block,
                |_| scale,
                5e-3,
            );
        }
        let scale = max_abs(&want[3]);
        assert_close(
            &format!("{what}: combine"),
            &got[3],
            &to_f64(&want[3]),
            block,
            |_| scale,
            1e-6,
        );
        // The routes the host computes are the ones both backends use.
        assert_eq!(
            ids(&want[0]),
            ids(&host_routes(&logits, n_expert, routing)),
            "{what}"
        );
    }
}

/// The mixture-of-experts ops on one backend: routes, products per token and per choice,
/// and the combined residual.
trait MoeOps {
    #[allow(clippy::too_many_arguments)]
    fn moe(
        &mut self,
        logits: &[f32],
        routing: Routing,
        n_expert: usize,
        halves: &[Weights; 2],
        x: &[f32],
        y: &[f32],
        acc: &[f32],
        dims: (usize, usize, usize),
    ) -> Vec<Vec<f32>>;
}

impl<B: Load> MoeOps for B {
    fn moe(
        &mut self,
        logits: &[f32],
        routing: Routing,
        n_expert: usize,
        halves: &[Weights; 2],
        x: &[f32],
        y: &[f32],
        acc: &[f32],
        (n, block, cols): (usize, usize, usize),
    ) -> Vec<Vec<f32>> {
        let k = routing.k;
        let l = self.load("logits", n, n_expert, logits);
        let routes = self.load("routes", n, 2 * k, &vec![f32::NAN; n * 2 * k]);
        self.moe_route(&l, routing, &routes, n);
        let parts = halves.iter().map(|h| h.rows_of(None)).collect();
        let w = self
            .upload_matrix("experts", cols, parts, MatrixUse::Experts(n_expert))
            .expect("experts");
        let xt = self.load("x", n * k, cols, x);
        let mut out = vec![read(self, &routes, n)];
        for input in [ExpertInput::Token, ExpertInput::Choice] {
            let o = self.load("out", n * k, block, &vec![f32::NAN; n * k * block]);
            self.matmul_id(&xt, &w, &routes, input, &o, n);
            out.push(read(self, &o, n * k));
        }
        let yt = self.load("y", n * k, block, y);
        let a = self.load("acc", n, block, acc);
        self.moe_combine_add(&yt, &routes, &a, n);
        out.push(read(self, &a, n));
        out
    }
}

/// rms_norm(x) · wᵀ in float64, for the fused products.
fn normed_rows(x: &[f32], norm_w: &[f32]) -> Vec<f32> {
    let cols = norm_w.len();
    x.chunks_exact(cols)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / cols as f64;
            let s = 1.0 / (ms + 1e-6).sqrt();
            row.iter()
                .zip(norm_w)
                .map(move |(v, w)| (*v as f64 * s * *w as f64) as f32)
        })
        .collect()
}

/// A product's float64 reference and scale (from `matmul_reference`) with a residual `acc0`
/// added: what `matmul_add` into `acc0` must give, and the scale of each value.
fn plus_residual((prod, scale): (Vec<f64>, Vec<f64>), acc0: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let want = prod.iter().zip(acc0).map(|(p, a)| p + *a as f64).collect();
    let scale = scale
        .iter()
        .zip(acc0)
        .map(|(s, a)| s + a.abs() as f64)
        .collect();
    (want, scale)
}

/// The fused forms decoding takes: the norm quantized by the kernel that computes it
/// (`norm_matmul`, `norm_glu`'s and `attention_inputs`' products) and the residual added by the
/// product (`matmul_add`), for every type with 8-bit products and one without, at 1 and 3
/// tokens (8-bit) and 9 (f32 activations), against float64 references.
#[test]
fn fused_norm_and_residual_products_match_the_reference() {
    let mut b = cuda();
    let mut rng = rng(23);
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
    ] {
        let cols = widths(ty)[1];
        let w = Weights::random(&mut rng, ty, ROWS, cols);
        let decoded = w.decoded();
        let m = w.upload(&mut b, "w");
        let norm_w = random_values(&mut rng, cols, 1.0);
        let g_norm = b.upload_vector("norm", &norm_w).expect("norm weight");
        for n in [1, 3, 9] {
            let tol = matmul_tol(&b, ty, n);
            let x = random_values(&mut rng, n * cols, 2.0);
            let (want, scale) = matmul_reference(&decoded, &normed_rows(&x, &norm_w), None, cols);
            let xt = b.load("x", n, cols, &x);
            let out = b.load("out", n, ROWS, &vec![f32::NAN; n * ROWS]);
            let norm = RmsNorm {
                weight: &g_norm,
                eps: 1e-6,
            };
            b.norm_matmul(&xt, norm, &m, &out, n);
            let what = format!("norm_matmul {} n={n}", w.label());
            assert_close(
                &what,
                &read(&mut b, &out, n),
                &want,
                ROWS,
                |i| scale[i],
                tol,
            );

            let acc0 = random_values(&mut rng, n * ROWS, 1.0);
            let (want, scale) = plus_residual(matmul_reference(&decoded, &x, None, cols), &acc0);
            let acc = b.load("acc", n, ROWS, &acc0);
            b.matmul_add(&xt, &m, &acc, n);
            let what = format!("matmul_add {} n={n}", w.label());
            assert_close(
                &what,
                &read(&mut b, &acc, n),
                &want,
                ROWS,
                |i| scale[i],
                tol,
            );
        }
    }
}

/// Runs `op`, which writes `n` rows of `x`, then acc += x · wᵀ (from `w`'s weights `m`), under
/// a profile; checks the sum against a float64 product of `x` as read back, that no
/// quantization of `x` was launched in between, and that the product took 8-bit activations
/// where decoding does.
fn check_product_after(
    b: &mut CudaBackend,
    rng: &mut StdRng,
    what: &str,
    (w, m): (&Weights, &vibrant::backend::cuda::CudaMatrix),
    x: &vibrant::backend::cuda::CudaTensor,
    n: usize,
    op: impl FnOnce(&mut CudaBackend),
) {
    let int8_product = b.uses_int8_activations(w.ty, n);
    let acc0 = random_values(rng, n * ROWS, 1.0);
    let acc = b.load("acc", n, ROWS, &acc0);
    b.start_profile().expect("profile");
    op(b);
    b.matmul_add(x, m, &acc, n);
    let timings = b.take_profile().expect("timings");
    let product = matmul_reference(&w.decoded(), &read(b, x, n), None, w.cols);
    let (want, scale) = plus_residual(product, &acc0);
    assert_close(what, &read(b, &acc, n), &want, ROWS, |i| scale[i], INT8_TOL);
    let launched = |name: &str| timings.iter().any(|t| t.kernel == name);
    assert!(!launched("quantize_acts"), "{what}: {timings:?}");
    // A single token's product has kernels of its own.
    let one = if n == 1 { "_1" } else { "" };
    let product = format!("matmul_q8_{}{one}", w.ty.to_string().to_lowercase());
    assert_eq!(launched(&product), int8_product, "{what}: {timings:?}");
}

/// The GLU and decode attention (whole and split over shares of the keys) round their outputs
/// to 8 bits as they write them, and the residual product after them reads those instead of
/// quantizing again: it must match a float64 product of the outputs as read back, with no
/// quantize_acts launched in between.
#[test]
fn outputs_rounded_to_8_bits_by_their_kernel_feed_the_next_product() {
    let mut b = cuda();
    let mut rng = rng(41);
    let width = 512;
    let down = Weights::random(&mut rng, GgmlType::Q4K, ROWS, width);
    let m = down.upload(&mut b, "down");
    for n in [1, 3] {
        for act in [Activation::Silu, Activation::GeluTanh] {
            let gate_up = b.load(
                "gate_up",
                n,
                2 * width,
                &random_values(&mut rng, n * 2 * width, 2.0),
            );
            let hidden = b.load("hidden", n, width, &vec![f32::NAN; n * width]);
            let what = format!("glu {act:?} then matmul_add, n={n}");
            let glu = |b: &mut CudaBackend| b.glu(act, &gate_up, &hidden, n);
            check_product_after(&mut b, &mut rng, &what, (&down, &m), &hidden, n, glu);
        }
    }

    // Six heads of 128: the output is as wide as the product's rows (768 values).
    let shape = shape(128, RopeKind::Neox);
    let qw = shape.q_width();
    let o = Weights::random(&mut rng, GgmlType::Q4K, ROWS, qw);
    let m = o.upload(&mut b, "o");
    for prefill in [40, 1030] {
        let steps = one_sequence(&mut rng, &shape, &[prefill, 1, 2]);
        let case = AttentionCase {
            shape,
            opts: AttentionOpts::causal(128),
            slots: 1,
            n_ctx: prefill + 3,
            types: KvTypes::default(),
            qk_norm: None,
        };
        let rig = AttentionRig::new(&mut b, &case);
        for (batch, qkv) in &steps {
            let n = batch.rows();
            let q = rig.rotate_and_store(&mut b, batch, qkv);
            let out = b.load("attention out", n, qw, &vec![f32::NAN; n * qw]);
            let what = format!("attention then matmul_add, {:?}", batch.spans());
            let attend = |b: &mut CudaBackend| b.attention(&q, rig.layer(batch), &case.opts, &out);
            check_product_after(&mut b, &mut rng, &what, (&o, &m), &out, n, attend);
        }
    }
}

/// Decode products of model-sized matrices, whose rows take one, two or four warps each
/// (short matrices spread a row over several), and the largest widths of real models.
#[test]
fn decode_products_of_model_shapes_match_the_reference() {
    let mut b = cuda();
    let mut rng = rng(37);
    for (ty, rows, cols) in [
        (GgmlType::Q4K, 256, 2048),
        (GgmlType::Q4K, 4100, 512),
        (GgmlType::Q6K, 9000, 256),
        (GgmlType::Q5_0, 600, 4864),
        (GgmlType::Q6K, 300, 14336),
    ] {
        let w = Weights::random(&mut rng, ty, rows, cols);
        let m = w.upload(&mut b, "w");
        for n in [1, 2] {
            let x = random_values(&mut rng, n * cols, 1.0);
            let (want, scale) = matmul_reference(&w.decoded(), &x, None, cols);
            let got = run_matmul(&mut b, &m, &x, n, rows);
            let what = format!("{} [{rows}, {cols}] n={n}", w.label());
            assert_close(
                &what,
                &got,
                &want,
                rows,
                |i| scale[i],
                matmul_tol(&b, ty, n),
            );
        }
    }
}

/// One step's `attention_inputs` with RoPE and the cache write done by the [q | k | v]
/// products themselves (cuda/matmul_q8.cu's matmul_q8_rope) against the same step as
/// `norm_matmul` then `rope_store_kv`: queries and attention over the stored keys and values
/// agree to the f32 sums' order (the two spread a row over other warps) and an f16 step of the
/// cache, over decode-sized steps of 3, 1 and 8 rows, for parts of several types (q and k
/// apart from v), a bias, both RoPE pairings and heads of 64, 80 and 128.
#[test]
fn rope_in_the_qkv_products_matches_rope_apart() {
    let mut rng = rng(31);
    let cases = [
        (128, RopeKind::Neox, [GgmlType::Q4K, GgmlType::Q6K], 256),
        (64, RopeKind::Normal, [GgmlType::Q8_0, GgmlType::Q8_0], 416),
        (80, RopeKind::Neox, [GgmlType::Q4_0, GgmlType::Q5K], 256),
    ];
    for (head_dim, rope_kind, [qk_type, v_type], cols) in cases {
        let shape = shape(head_dim, rope_kind);
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let case = AttentionCase {
            shape,
            opts: AttentionOpts::causal(head_dim),
            slots: 1,
            n_ctx: 16,
            types: KvTypes::default(),
            qk_norm: None,
        };
        let mut b = cuda();
        let qk = Weights::random(&mut rng, qk_type, qw + kvw, cols);
        let v = Weights::random(&mut rng, v_type, kvw, cols);
        let bias = random_values(&mut rng, qw + 2 * kvw, 1.0);
        let parts = vec![
            qk.rows_of(Some(&bias[..qw + kvw])),
            v.rows_of(Some(&bias[qw + kvw..])),
        ];
        let m = b
            .upload_matrix("qkv", cols, parts, MatrixUse::Plain)
            .expect("qkv");
        let norm_w = random_values(&mut rng, cols, 1.0);
        let g_norm = b.upload_vector("norm", &norm_w).expect("norm weight");
        let norm = RmsNorm {
            weight: &g_norm,
            eps: 1e-6,
        };
        let [fused, apart] = [(); 2].map(|()| AttentionRig::new(&mut b, &case));
        let mut pos = 0;
        for n in [3, 1, 8] {
            let what = format!("head_dim {head_dim} {rope_kind:?} {qk_type}/{v_type}, {n} rows");
            let batch = Batch::one(0, pos, n);
            pos += n;
            let x = b.load("x", n, cols, &random_values(&mut rng, n * cols, 2.0));
            let mut outputs = Vec::new();
            for (rig, in_products) in [(&fused, true), (&apart, false)] {
                let rope = Rope {
                    cos_sin: &rig.table,
                    qk_norm: None,
                };
                let q = b.load("q", n, qw, &vec![f32::NAN; n * qw]);
                b.start_profile().expect("profile");
                if in_products {
                    b.attention_inputs(&x, norm, &m, &rope, &q, rig.layer(&batch));
                } else {
                    let products =
                        b.load("qkv", n, qw + 2 * kvw, &vec![f32::NAN; n * (qw + 2 * kvw)]);
                    b.norm_matmul(&x, norm, &m, &products, n);
                    b.rope_store_kv(&products, &rope, &q, rig.layer(&batch));
                }
                let timings = b.take_profile().expect("timings");
                let launched = |name: &str| timings.iter().any(|t| t.kernel.starts_with(name));
                assert_eq!(
                    launched("matmul_q8_rope"),
                    in_products,
                    "{what}: {timings:?}"
                );
                assert_eq!(
                    launched("rope_store_kv"),
                    !in_products,
                    "{what}: {timings:?}"
                );
                let out = b.load("out", n, qw, &vec![f32::NAN; n * qw]);
                b.attention(&q, rig.layer(&batch), &case.opts, &out);
                outputs.push((read(&mut b, &q, n), read(&mut b, &out, n)));
            }
            let [(fq, fo), (aq, ao)] = [outputs.remove(0), outputs.remove(0)];
            let scale = fq.iter().chain(&aq).fold(0f32, |m, v| m.max(v.abs())) as f64;
            assert_close(
                &format!("q, {what}"),
                &fq,
                &to_f64(&aq),
                qw,
                |_| scale,
                1e-5,
            );
            assert_close(
                &format!("attention, {what}"),
                &fo,
                &to_f64(&ao),
                qw,
                |_| 1.0,
                2e-3,
            );
        }
    }
}
