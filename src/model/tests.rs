//! The forward pass against a float64 reference written out as the math, on a tiny model
//! whose spec turns on what llama and qwen2 leave off: post-norms after both sub-blocks, RoPE
//! of another base in one layer, GELU, scaled embeddings and soft-capped logits; and, where
//! the backend takes them (the CPU), QK-norm and a sliding window with soft-capped scores in
//! the other layer.

use super::arch::Spec;
use super::{LoadOptions, SeqChunk, Transformer};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::{GpuOptions, WgpuBackend};
use crate::backend::{
    Activation, AttentionOpts, Backend, CacheLayer, ExpertInput, HostTokens, KvLayout, MatrixUse,
    Result as BackendResult, RmsNorm, Rope, Scratch, WeightRows,
};
use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::quant::GgmlType;
use crate::rng::SplitMix64;
use half::f16;
use std::collections::HashMap;
use std::sync::Arc;

const EMBD: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const FF: usize = 48;
const VOCAB: usize = 40;
const LAYERS: usize = 2;
const EPS: f32 = 1e-5;

/// Tensors by name: row length and values.
type Tensors = HashMap<String, (usize, Vec<f32>)>;

/// The tiny model's tensors and its file.
fn tiny_model() -> (Tensors, Arc<GgufFile>) {
    let mut rng = SplitMix64::for_stream(11, "tiny model");
    let mut tensors = HashMap::new();
    let mut add = |name: String, rows: usize, cols: usize, centre: f32, spread: f32| {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| centre + spread * rng.next_normal())
            .collect();
        tensors.insert(name, (cols, values));
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    add("token_embd.weight".into(), VOCAB, EMBD, 0.0, 0.5);
    add("output.weight".into(), VOCAB, EMBD, 0.0, 0.3);
    add("output_norm.weight".into(), 1, EMBD, 1.0, 0.2);
    for i in 0..LAYERS {
        let t = |role: &str| format!("blk.{i}.{role}.weight");
        for norm in [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        ] {
            add(t(norm), 1, EMBD, 1.0, 0.2);
        }
        for norm in ["attn_q_norm", "attn_k_norm"] {
            add(t(norm), 1, HEAD_DIM, 1.0, 0.2);
        }
        add(t("attn_q"), q, EMBD, 0.0, 0.3);
        add(t("attn_k"), kv, EMBD, 0.0, 0.3);
        add(t("attn_v"), kv, EMBD, 0.0, 0.3);
        add(t("attn_output"), EMBD, q, 0.0, 0.3);
        add(t("ffn_gate"), FF, EMBD, 0.0, 0.3);
        add(t("ffn_up"), FF, EMBD, 0.0, 0.3);
        add(t("ffn_down"), EMBD, FF, 0.0, 0.3);
    }
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    for (key, value) in [
        ("embedding_length", EMBD),
        ("attention.head_count", HEADS),
        ("attention.head_count_kv", KV_HEADS),
        ("block_count", LAYERS),
        ("feed_forward_length", FF),
        ("context_length", 64),
    ] {
        w.set(format!("llama.{key}"), Value::U32(value as u32));
    }
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(EPS));
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let (cols, values) = &tensors[name];
        let rows = values.len() / cols;
        let dims: Vec<u64> = match rows {
            1 => vec![*cols as u64],
            _ => vec![*cols as u64, rows as u64],
        };
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor(name.as_str(), &dims, GgmlType::F32, bytes);
    }
    let mut bytes = Vec::new();
    w.write(&mut bytes).expect("written");
    let file = GgufFile::from_bytes("tiny.gguf", bytes).expect("parsed");
    (tensors, Arc::new(file))
}

/// The llama spec of the tiny model with the options this test covers turned on, the
/// attention options (QK-norm, window, soft-capped scores) where `attention_options`.
fn spec_with_options(file: &GgufFile, attention_options: bool) -> Spec {
    let mut spec = Spec::from_gguf(file).expect("spec");
    spec.embedding_scale = Some((EMBD as f32).sqrt());
    spec.final_logit_softcap = Some(4.0);
    for (i, layer) in spec.layers.iter_mut().enumerate() {
        let a = &mut layer.attention;
        a.norms.post = Some("post_attention_norm");
        if attention_options {
            a.qk_norm = Some(("attn_q_norm", "attn_k_norm"));
        }
        let super::arch::Ffn::Dense(ffn) = &mut layer.ffn else {
            panic!("the tiny llama file is dense");
        };
        ffn.norms.post = Some("post_ffw_norm");
        ffn.activation = Activation::GeluTanh;
        match i {
            0 if attention_options => {
                a.opts.window = Some(3);
                a.opts.softcap = Some(2.5);
            }
            0 => {}
            _ => a.rope_base = 500.0,
        }
    }
    spec
}

fn rms_norm(x: &[f64], w: &[f32]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + EPS as f64).sqrt();
    x.iter().zip(w).map(|(v, w)| v * s * *w as f64).collect()
}

/// W · x for a `[rows, cols]` tensor.
fn product(t: &Tensors, name: &str, x: &[f64]) -> Vec<f64> {
    let (cols, w) = &t[name];
    w.chunks(*cols)
        .map(|row| row.iter().zip(x).map(|(w, x)| *w as f64 * x).sum())
        .collect()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// Rotates adjacent pairs of each head by `pos · base^(-2i/d)` (llama's RoPE).
fn rope(x: &mut [f64], pos: usize, base: f64) {
    for head in x.chunks_mut(HEAD_DIM) {
        for i in 0..HEAD_DIM / 2 {
            let theta = pos as f64 * base.powf(-2.0 * i as f64 / HEAD_DIM as f64);
            let (sin, cos) = theta.sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos - b * sin;
            head[2 * i + 1] = a * sin + b * cos;
        }
    }
}

/// The logits of every token, computed as the math says (keys and values rounded to f16, as
/// the cache holds them), of [`spec_with_options`].
fn reference_logits(t: &Tensors, tokens: &[u32], attention_options: bool) -> Vec<Vec<f64>> {
    let v = |name: &str| &t[name].1;
    let f16_round = |x: f64| f16::from_f64(x).to_f64();
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tok| {
            let row = &v("token_embd.weight")[tok as usize * EMBD..][..EMBD];
            row.iter()
                .map(|e| *e as f64 * (EMBD as f64).sqrt())
                .collect()
        })
        .collect();
    for l in 0..LAYERS {
        let name = |role: &str| format!("blk.{l}.{role}.weight");
        let (window, softcap, base) = match l {
            0 if attention_options => (3, Some(2.5), 10000.0),
            0 => (usize::MAX, None, 10000.0),
            _ => (usize::MAX, None, 500.0),
        };
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut queries = Vec::new();
        for (pos, xt) in x.iter().enumerate() {
            let h = rms_norm(xt, v(&name("attn_norm")));
            let mut q = product(t, &name("attn_q"), &h);
            let mut k = product(t, &name("attn_k"), &h);
            let vv = product(t, &name("attn_v"), &h);
            let per_head = |x: &mut Vec<f64>, w: &[f32]| {
                *x = x.chunks(HEAD_DIM).flat_map(|hd| rms_norm(hd, w)).collect();
            };
            if attention_options {
                per_head(&mut q, v(&name("attn_q_norm")));
                per_head(&mut k, v(&name("attn_k_norm")));
            }
            rope(&mut q, pos, base);
            rope(&mut k, pos, base);
            keys.push(k.into_iter().map(f16_round).collect::<Vec<_>>());
            values.push(vv.into_iter().map(f16_round).collect::<Vec<_>>());
            queries.push(q);
        }
        for (pos, xt) in x.iter_mut().enumerate() {
            let first = (pos + 1).saturating_sub(window);
            let mut attn = vec![0.0; HEADS * HEAD_DIM];
            for head in 0..HEADS {
                let kv = head / (HEADS / KV_HEADS) * HEAD_DIM;
                let q = &queries[pos][head * HEAD_DIM..][..HEAD_DIM];
                let scores: Vec<f64> = (first..=pos)
                    .map(|p| {
                        let dot: f64 = q
                            .iter()
                            .zip(&keys[p][kv..kv + HEAD_DIM])
                            .map(|(a, b)| a * b)
                            .sum();
                        let s = dot / (HEAD_DIM as f64).sqrt();
                        softcap.map_or(s, |c| c * (s / c).tanh())
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (s, p) in scores.iter().zip(first..=pos) {
                    let weight = (s - max).exp() / sum;
                    for d in 0..HEAD_DIM {
                        attn[head * HEAD_DIM + d] += weight * values[p][kv + d];
                    }
                }
            }
            let out = rms_norm(
                &product(t, &name("attn_output"), &attn),
                v(&name("post_attention_norm")),
            );
            xt.iter_mut().zip(out).for_each(|(x, o)| *x += o);
            let h = rms_norm(xt, v(&name("ffn_norm")));
            let (gate, up) = (
                product(t, &name("ffn_gate"), &h),
                product(t, &name("ffn_up"), &h),
            );
            let hidden: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| gelu(*g) * u).collect();
            let out = rms_norm(
                &product(t, &name("ffn_down"), &hidden),
                v(&name("post_ffw_norm")),
            );
            xt.iter_mut().zip(out).for_each(|(x, o)| *x += o);
        }
    }
    x.iter()
        .map(|xt| {
            let h = rms_norm(xt, v("output_norm.weight"));
            let logits = product(t, "output.weight", &h);
            logits.into_iter().map(|l| 4.0 * (l / 4.0).tanh()).collect()
        })
        .collect()
}

/// The forward pass of `backend` over a prompt scored at once and over the same prompt as a
/// prefill then single tokens (the cache's path), against the reference: within `tol` of the
/// logits' scale (the cap, 4).
fn check_forward<B: Backend>(backend: impl Fn() -> B, attention_options: bool, tol: f64) {
    let (tensors, file) = tiny_model();
    let tokens = [3u32, 17, 39, 0, 8, 8, 21, 5, 30, 1];
    let want = reference_logits(&tensors, &tokens, attention_options);
    let options = LoadOptions {
        n_ctx: 16,
        n_batch: 8,
        ..LoadOptions::default()
    };
    let load = || {
        let spec = spec_with_options(&file, attention_options);
        Transformer::load_spec(&file, spec, backend(), &options).expect("load")
    };
    let check = |what: &str, got: &[f32], want: &[f64]| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() < tol * 4.0,
                "{what}: logit {i}: {g} vs {w}"
            );
        }
    };
    let all = load().forward_all_logits(&tokens).expect("logits");
    for (t, want) in want.iter().enumerate() {
        check(
            &format!("scored at once, token {t}"),
            &all[t * VOCAB..][..VOCAB],
            want,
        );
    }
    let mut model = load();
    model.forward(&tokens[..8]).expect("prefill");
    check("after the prefill", &model.logits().unwrap(), &want[7]);
    for (t, &tok) in tokens.iter().enumerate().skip(8) {
        model.forward(&[tok]).expect("decode");
        check(
            &format!("decoded token {t}"),
            &model.logits().unwrap(),
            &want[t],
        );
    }
}

/// On the CPU, every option. Exact products leave f32 rounding: 2e-5. A post-norm, QK-norm,
/// window, soft-cap, RoPE base or embedding scale left out or off by 0.1% moves logits by
/// more (an embedding scale 0.1% off, by 7e-5).
#[test]
fn the_forward_pass_of_every_spec_option_matches_the_math() {
    check_forward(|| CpuBackend::exact(1).expect("cpu"), true, 2e-5);
}

/// On the GPU, the options its kernels take: the same f32 arithmetic in another order (2e-5),
/// the 8-token prefill through the tiled kernels, the rest through the decode ones. Tensor
/// cores round the prefill's inputs to f16 (2^-11 relative each): 3e-3.
#[test]
fn the_gpu_forward_pass_of_the_options_it_takes_matches_the_math() {
    let gpu = || WgpuBackend::new(GpuOptions::default()).expect("a GPU adapter (lavapipe will do)");
    let tol = match gpu().uses_tensor_cores() {
        true => 3e-3,
        false => 2e-5,
    };
    check_forward(gpu, false, tol);
}

/// Sequences of different lengths and positions stepped together, each in its own slot,
/// give the logits each gives alone, through prefill chunks beside decoding rows and a slot
/// truncated and run again. The exact CPU computes each row alone: 1e-5.
#[test]
fn a_step_over_several_sequences_matches_each_sequence_alone() {
    let (_, file) = tiny_model();
    let load = |n_seq| {
        let options = LoadOptions {
            n_ctx: 16,
            n_batch: 8,
            n_seq,
            ..LoadOptions::default()
        };
        let spec = spec_with_options(&file, true);
        let cpu = CpuBackend::exact(1).expect("cpu");
        Transformer::load_spec(&file, spec, cpu, &options).expect("load")
    };
    let seqs: [&[u32]; 3] = [
        &[3, 17, 39, 0, 8, 8],
        &[1, 2, 3, 4, 5, 6, 7],
        &[30, 1, 9, 9, 12, 33, 2, 25, 11],
    ];
    let alone: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| load(1).forward_all_logits(s).expect("alone"))
        .collect();
    let mut model = load(3);
    // (slot, first token, tokens) of each chunk, step by step.
    let steps: [&[(usize, usize, usize)]; 4] = [
        &[(0, 0, 3), (2, 0, 5)],
        &[(2, 5, 1), (1, 0, 4), (0, 3, 1)],
        &[(0, 4, 1), (1, 4, 1), (2, 6, 1)],
        &[(1, 5, 2), (0, 5, 1), (2, 5, 4)],
    ];
    for (n, step) in steps.iter().enumerate() {
        let chunks: Vec<SeqChunk> = step
            .iter()
            .map(|&(slot, from, len)| SeqChunk {
                slot,
                tokens: &seqs[slot][from..from + len],
                want_logits: true,
            })
            .collect();
        let logits = model.step(&chunks).expect("step");
        for (&(slot, from, len), got) in step.iter().zip(&logits) {
            let want = &alone[slot][(from + len - 1) * VOCAB..][..VOCAB];
            let worst = got
                .iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "step {n}, slot {slot}: off by {worst}");
        }
        if n == 2 {
            // Slot 2 goes back to 5 tokens, so the last step runs its 6th and 7th again.
            model.truncate_slot(2, 5);
        }
    }
    assert_eq!(
        (0..3).map(|s| model.n_past_of(s)).collect::<Vec<_>>(),
        [6, 7, 9]
    );
    let too_long = [SeqChunk {
        slot: 1,
        tokens: &[1; 10],
        want_logits: true,
    }];
    assert!(
        model.step(&too_long).is_err(),
        "10 tokens over a batch of 8"
    );
    let twice = [0, 0].map(|slot| SeqChunk {
        slot,
        tokens: &[1],
        want_logits: false,
    });
    assert!(model.step(&twice).is_err(), "one slot twice in a step");
}

/// The CPU's required ops alone: every provided op runs its default body, so the forward pass
/// checks those bodies (host adds and GLUs, the fused forms composed of required ops, host
/// token picks) against the math, as a new backend that implements only the required ops
/// would run them.
struct RequiredOpsOnly(CpuBackend);

impl Backend for RequiredOpsOnly {
    type Tensor = <CpuBackend as Backend>::Tensor;
    type Matrix = <CpuBackend as Backend>::Matrix;
    type Vector = <CpuBackend as Backend>::Vector;
    type KvCache = <CpuBackend as Backend>::KvCache;

    fn upload_matrix(
        &mut self,
        name: &str,
        cols: usize,
        parts: Vec<WeightRows>,
        usage: MatrixUse,
    ) -> BackendResult<Self::Matrix> {
        self.0.upload_matrix(name, cols, parts, usage)
    }
    fn upload_vector(&mut self, name: &str, data: &[f32]) -> BackendResult<Self::Vector> {
        self.0.upload_vector(name, data)
    }
    fn tensor(&mut self, name: &str, rows: usize, cols: usize) -> BackendResult<Self::Tensor> {
        self.0.tensor(name, rows, cols)
    }
    fn scratch(&mut self, which: Scratch, rows: usize, cols: usize) -> Self::Tensor {
        self.0.scratch(which, rows, cols)
    }
    fn kv_cache(&mut self, layout: &KvLayout) -> BackendResult<Self::KvCache> {
        self.0.kv_cache(layout)
    }
    fn embed(&mut self, table: &Self::Matrix, tokens: &[u32], out: &Self::Tensor) {
        self.0.embed(table, tokens, out)
    }
    fn rms_norm(
        &mut self,
        x: &Self::Tensor,
        norm: RmsNorm<'_, Self::Vector>,
        out: &Self::Tensor,
        n: usize,
    ) {
        self.0.rms_norm(x, norm, out, n)
    }
    fn matmul(&mut self, x: &Self::Tensor, w: &Self::Matrix, out: &Self::Tensor, n: usize) {
        self.0.matmul(x, w, out, n)
    }
    fn rope_store_kv(
        &mut self,
        qkv: &Self::Tensor,
        rope: &Rope<'_, Self::Vector>,
        q: &Self::Tensor,
        at: CacheLayer<'_, Self::KvCache>,
    ) {
        self.0.rope_store_kv(qkv, rope, q, at)
    }
    fn attention(
        &mut self,
        q: &Self::Tensor,
        at: CacheLayer<'_, Self::KvCache>,
        opts: &AttentionOpts,
        out: &Self::Tensor,
    ) {
        self.0.attention(q, at, opts, out)
    }
    fn matmul_id(
        &mut self,
        x: &Self::Tensor,
        w: &Self::Matrix,
        routes: &Self::Tensor,
        input: ExpertInput,
        out: &Self::Tensor,
        n: usize,
    ) {
        self.0.matmul_id(x, w, routes, input, out, n)
    }
    fn read(&mut self, x: &Self::Tensor, n: usize) -> BackendResult<Vec<f32>> {
        self.0.read(x, n)
    }
    fn write(&mut self, x: &Self::Tensor, rows: &[f32]) {
        self.0.write(x, rows)
    }
    fn sync(&mut self) -> BackendResult<()> {
        self.0.sync()
    }
    fn memory_used(&self) -> u64 {
        self.0.memory_used()
    }
    fn host_tokens(&mut self) -> &mut HostTokens {
        self.0.host_tokens()
    }
}

/// Exact products, every provided op in its default body: the CPU's tolerance.
#[test]
fn the_default_bodies_of_the_provided_ops_match_the_math() {
    let required_only = || RequiredOpsOnly(CpuBackend::exact(1).expect("cpu"));
    check_forward(required_only, true, 2e-5);
    let (_, file) = tiny_model();
    let options = LoadOptions {
        n_ctx: 16,
        n_batch: 8,
        ..LoadOptions::default()
    };
    let spec = spec_with_options(&file, true);
    let mut model = Transformer::load_spec(&file, spec, required_only(), &options).expect("load");
    let spec = spec_with_options(&file, true);
    let mut cpu =
        Transformer::load_spec(&file, spec, CpuBackend::exact(1).unwrap(), &options).expect("load");
    let prompt = [3u32, 17, 39, 0];
    fn greedy<B: Backend>(m: &mut Transformer<B>, prompt: &[u32]) -> Vec<u32> {
        m.forward(prompt).expect("prompt");
        let mut decoder = m.greedy();
        (0..6)
            .map(|_| decoder.next_token().expect("token"))
            .collect()
    }
    let picks = greedy(&mut model, &prompt);
    assert_eq!(picks, greedy(&mut cpu, &prompt), "host token picks");
}
