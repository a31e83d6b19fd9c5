//! End-to-end checks on the real models of `../shared/testdata/README.md`, fetched by
//! `scripts/fetch_model.py` (CI fetches them first). A missing model fails the test.

// The kernel tests' helpers there are not used here.
#[allow(dead_code)]
mod common;

use common::models::*;
use vibrant::backend::cpu::CpuBackend;
use vibrant::backend::gpu::{GpuOptions, WgpuBackend};
use vibrant::model::Transformer;
use vibrant::quant::GgmlType;

const CHATML_FRANCE: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn cpu_greedy(name: &str, prompt: &str, steps: usize) -> Vec<u32> {
    let (file, tokenizer) = open(name);
    let tokens = tokenizer.encode(prompt, true).unwrap();
    let mut model =
        Transformer::load(&file, CpuBackend::new(0).unwrap(), &short_context()).unwrap();
    greedy(&mut model, &tokens, steps)
}

#[test]
fn smollm2_greedy_answer_matches_the_reference_ids() {
    let ids = cpu_greedy("smollm2-135m", CHATML_FRANCE, 8);
    assert_eq!(ids, [504, 3575, 282, 4649, 314, 7042, 30, 2]);
}

#[test]
fn qwen_coder_1_5b_greedy_answer_matches_the_reference_ids() {
    let ids = cpu_greedy("qwen2.5-coder-1.5b-q4", CHATML_FRANCE, 8);
    assert_eq!(ids, [785, 6722, 315, 9625, 374, 12095, 13, 151645]);
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// The GPU path (lavapipe in CI) and the CPU reference give the same greedy tokens and
/// first-step logits. Against the exact CPU mode (f32 activations, f16 KV cache, as the GPU)
/// only summation order differs, but a different rounding of a value stored in the f16 cache is
/// amplified over the layers: 1e-3 (an indexing bug gives errors of order 1). Where the GPU's
/// decode products of K-quant rows take 8-bit activations (per 16 values; the first step's
/// output projection is one), 1e-2: 6.3e-3 was seen for Qwen2.5-Coder-1.5B. Against the fast
/// CPU mode, which quantizes activations to 8 bits (per 32 or 256) for its integer dot
/// products: 5e-2. With ggml-cpu's rounding of those activations SmolLM2 measures 2.1e-2 and
/// 3.9e-2 on its prompts (C's `roundf` gave under 3e-2): one position's logits swing with how
/// ties round; activations truncated instead of rounded give 9.7e-2.
fn gpu_matches_cpu(name: &str, prompts: &[&str], steps: usize) {
    let (file, tokenizer) = open(name);
    let mut cpu =
        Transformer::load(&file, CpuBackend::exact(0).unwrap(), &short_context()).unwrap();
    let mut fast = Transformer::load(&file, CpuBackend::new(0).unwrap(), &short_context()).unwrap();
    // Lavapipe on a busy 2-core machine can take minutes for a 1.5B prompt step.
    let gpu_options = GpuOptions {
        timeout: std::time::Duration::from_secs(900),
        ..GpuOptions::default()
    };
    let gpu_backend = WgpuBackend::new(gpu_options)
        .expect("no GPU adapter: install mesa-vulkan-drivers (lavapipe) to run GPU tests");
    let mut gpu = Transformer::load(&file, gpu_backend, &short_context()).unwrap();
    for prompt in prompts {
        let text = format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n");
        let tokens = tokenizer.encode(&text, true).unwrap();
        cpu.truncate(0);
        gpu.truncate(0);
        fast.truncate(0);
        cpu.forward(&tokens).unwrap();
        gpu.forward(&tokens).unwrap();
        fast.forward(&tokens).unwrap();
        let gpu_logits = gpu.logits().unwrap();
        let error = relative_error(&gpu_logits, &cpu.logits().unwrap());
        eprintln!("{prompt:?}: GPU vs exact CPU logits {error:.2e}");
        let int8 = [GgmlType::Q4K, GgmlType::Q6K]
            .iter()
            .any(|&ty| gpu.backend.int8_activations(ty, gpu.config.n_embd));
        let tolerance = if int8 { 1e-2 } else { 1e-3 };
        assert!(
            error < tolerance,
            "{prompt:?}: GPU and exact CPU logits differ by {error:.2e}"
        );
        let error = relative_error(&gpu_logits, &fast.logits().unwrap());
        eprintln!("{prompt:?}: GPU vs fast CPU logits {error:.2e}");
        assert!(
            error < 5e-2,
            "{prompt:?}: GPU and fast CPU logits differ by {error:.2e}"
        );
        cpu.truncate(0);
        gpu.truncate(0);
        let want = greedy(&mut cpu, &tokens, steps);
        let got = greedy(&mut gpu, &tokens, steps);
        assert_eq!(
            got,
            want,
            "{prompt:?}: GPU said {:?}, CPU said {:?}",
            tokenizer.decode(&got),
            tokenizer.decode(&want)
        );
    }
}

#[test]
fn smollm2_on_the_gpu_matches_the_cpu() {
    gpu_matches_cpu(
        "smollm2-135m",
        &[
            "What is the capital of France?",
            "Write a haiku about the sea.",
            "List three prime numbers.",
        ],
        12,
    );
}

const CODER_PROMPTS: [&str; 3] = [
    "What is the capital of France?",
    "Write a Python function that returns the factorial of n.",
    "Explain what a hash map is in one sentence.",
];

/// Qwen2.5-Coder 0.5B (mostly Q5_0): 32 greedy tokens of three prompts, GPU against CPU.
/// Minutes on lavapipe, so outside the default run:
/// `cargo test --release --test real_models -- --ignored`.
#[test]
#[ignore = "slow on lavapipe; run with --ignored"]
fn qwen_coder_0_5b_on_the_gpu_matches_the_cpu() {
    gpu_matches_cpu("qwen2.5-coder-0.5b", &CODER_PROMPTS, 32);
}

/// Qwen2.5-Coder 1.5B (Q4_K/Q6_K), likewise.
#[test]
#[ignore = "slow on lavapipe; run with --ignored"]
fn qwen_coder_1_5b_on_the_gpu_matches_the_cpu() {
    gpu_matches_cpu("qwen2.5-coder-1.5b-q4", &CODER_PROMPTS, 32);
}

/// The fast CPU path (8-bit activations, batched kernels) against the exact one on a prompt
/// long enough to cross every tile and attention boundary. Over 30 layers the activation
/// quantization moves this prompt's logits by about 8% (already before the batched kernels),
/// enough to change a close greedy choice, so only the distance is checked: an indexing bug
/// moves them by more than 50%.
#[test]
fn fast_cpu_matches_exact_cpu_on_a_long_prompt() {
    let (file, tokenizer) = open("smollm2-135m");
    let text = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let tokens = tokenizer.encode(text, true).unwrap();
    assert!(tokens.len() > 32, "{} tokens", tokens.len());
    let mut exact =
        Transformer::load(&file, CpuBackend::exact(0).unwrap(), &short_context()).unwrap();
    let mut fast = Transformer::load(&file, CpuBackend::new(0).unwrap(), &short_context()).unwrap();
    exact.forward(&tokens).unwrap();
    fast.forward(&tokens).unwrap();
    let error = relative_error(&fast.logits().unwrap(), &exact.logits().unwrap());
    assert!(
        error < 0.15,
        "fast and exact CPU logits differ by {error:.2e}"
    );
}
