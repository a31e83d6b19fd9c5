//! The model's step over several sequences on the real SmolLM2 (CPU and GPU): the same logits
//! as each sequence alone, through prefill chunks beside decoding rows and a slot reused for a
//! prompt sharing a prefix, as `vibrant serve` drives it. On the CPU in its exact mode: its
//! fast products take tiles of 8 rows through another kernel than single rows, whose rounding
//! differs enough (3% of the largest logit on SmolLM2 here) that a batch's answers depend on
//! its make-up. The GPU's products of several rows differ from one row's likewise (tiles, and
//! f16 where it has tensor cores), so its tolerance is that of its kernels, far below what a
//! row attending to another sequence's cache, or written into it, costs.

// Only the shared backends of common are used here.
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use vibrant::backend::cpu::CpuBackend;
use vibrant::backend::{argmax, Backend};
use vibrant::gguf::GgufFile;
use vibrant::model::{LoadOptions, SeqChunk, Transformer};
use vibrant::tokenizer::Tokenizer;

fn open() -> (Arc<GgufFile>, Tokenizer) {
    common::models::open("smollm2-135m")
}

fn load<B: Backend>(file: &Arc<GgufFile>, backend: B, n_seq: usize) -> Transformer<B> {
    let options = LoadOptions {
        n_ctx: 256,
        n_batch: 32,
        n_seq,
        ..LoadOptions::default()
    };
    Transformer::load(file, backend, &options).unwrap()
}

/// Largest difference over the largest logit.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
        / scale
}

#[test]
fn smollm2_steps_of_several_sequences_match_each_alone() {
    steps_of_several_sequences_match_each_alone(|| CpuBackend::exact(0).unwrap(), 1e-5);
}

#[test]
fn smollm2_steps_of_several_sequences_match_each_alone_on_the_gpu() {
    steps_of_several_sequences_match_each_alone(common::gpu, GPU_TOL);
}

/// Largest logit error a step of several sequences on the GPU may show against each sequence
/// alone, relative to the largest logit.
const GPU_TOL: f32 = 2e-2;

fn steps_of_several_sequences_match_each_alone<B: Backend>(backend: impl Fn() -> B, tol: f32) {
    let (file, tokenizer) = open();
    let texts = [
        "<|im_start|>user\nName 2 animals that live in rivers.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nName 4 animals that live in deserts.<|im_end|>\n<|im_start|>assistant\n",
        "The capital of France is Paris, and the capital of Italy is",
    ];
    let seqs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tokenizer.encode(t, true).unwrap())
        .collect();
    let alone: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| {
            let mut m = load(&file, backend(), 1);
            m.forward(s).unwrap();
            m.logits().unwrap()
        })
        .collect();
    let mut model = load(&file, backend(), 2);
    // Slot 0 reads the rivers prompt and decodes 3 tokens beside the prefill of the third
    // text in slot 1; then slot 0 is cut back to the prefix it shares with the deserts
    // prompt, which runs from there.
    let n = seqs[0].len();
    let mut rivers = seqs[0].clone();
    let first = model
        .step(&[SeqChunk {
            slot: 0,
            tokens: &seqs[0],
            want_logits: true,
        }])
        .unwrap();
    let err = relative_error(&first[0], &alone[0]);
    assert!(err < tol, "the first prompt in slot 0: {err}");
    rivers.push(argmax(&first[0]) as u32);
    let third = &seqs[2];
    for i in 0..3 {
        let chunk = &third[i * 4..(i * 4 + 4).min(third.len())];
        let last = i * 4 + 4 >= third.len();
        let out = model
            .step(&[
                SeqChunk {
                    slot: 0,
                    tokens: &rivers[rivers.len() - 1..],
                    want_logits: true,
                },
                SeqChunk {
                    slot: 1,
                    tokens: chunk,
                    want_logits: last,
                },
            ])
            .unwrap();
        rivers.push(argmax(&out[0]) as u32);
    }
    let rest = &third[12..];
    let out = model
        .step(&[SeqChunk {
            slot: 1,
            tokens: rest,
            want_logits: true,
        }])
        .unwrap();
    let err = relative_error(&out[0], &alone[2]);
    assert!(err < tol, "the third text beside a decoding one: {err}");
    assert_eq!(model.n_past_of(0), n + 3);

    let common = seqs[0]
        .iter()
        .zip(&seqs[1])
        .take_while(|(a, b)| a == b)
        .count();
    model.truncate_slot(0, common);
    let out = model
        .step(&[SeqChunk {
            slot: 0,
            tokens: &seqs[1][common..],
            want_logits: true,
        }])
        .unwrap();
    let err = relative_error(&out[0], &alone[1]);
    assert!(
        err < tol,
        "the deserts prompt after the rivers one, from their common prefix: {err}"
    );
    assert_eq!(argmax(&out[0]), argmax(&alone[1]));
}
