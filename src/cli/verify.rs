//! `verify`: runs a model on the GPU (the one `--device gpu` takes: CUDA where the build has
//! it and a device is there, else wgpu) and on the CPU reference and compares them:
//! first-step logits, then greedy tokens. The way to check a new GPU or driver computes what
//! it should.

use super::args::{CacheArgs, CpuArgs, DeviceArgs, DeviceChoice, GpuArgs, ModelArgs};
use super::{open_device, Device};
use anyhow::{bail, Result};
use std::sync::Arc;
use vibrant::backend::cpu::CpuBackend;
use vibrant::backend::Backend;
use vibrant::gguf::GgufFile;
use vibrant::model::{LoadOptions, Transformer};
use vibrant::tokenizer::Tokenizer;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Most tokens run through the model in one step while reading the prompt.
    #[arg(long, short = 'b', default_value_t = 256)]
    pub batch_size: usize,
    /// Greedy steps to compare.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Prompt, sent as it is (no chat template).
    #[arg(
        long,
        default_value = "The quick brown fox jumps over the lazy dog. Once upon a time"
    )]
    pub prompt: String,
    /// Largest relative error of the first-step logits that passes.
    #[arg(long, default_value_t = 1e-2)]
    pub tolerance: f64,
    // Both backends run with this cache.
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(flatten)]
    pub cpu: CpuArgs,
}

fn greedy<B: Backend>(model: &mut Transformer<B>, steps: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let next = model.argmax()?;
        out.push(next);
        model.forward(&[next])?;
    }
    Ok(out)
}

pub fn verify(args: &VerifyArgs) -> Result<()> {
    let path = vibrant::catalog::resolve(&args.model.model)?;
    let file = Arc::new(GgufFile::open(&path)?);
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let prompt = tokenizer.encode(&args.prompt, true)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let options = LoadOptions {
        n_ctx: prompt.len() + args.steps + 1,
        n_batch: args.batch_size,
        kv_types: args.cache.kv_types(),
        ..LoadOptions::default()
    };
    let device = DeviceArgs {
        device: Some(DeviceChoice::Gpu),
        gpu: args.gpu.clone(),
        cpu: args.cpu.clone(),
    };
    match open_device(&device)? {
        Device::Gpu(gpu) => compare(args, &file, &prompt, &options, *gpu),
        #[cfg(feature = "cuda")]
        Device::Cuda(gpu) => compare(args, &file, &prompt, &options, *gpu),
        Device::Cpu(_) => unreachable!("--device gpu opens a GPU or fails"),
    }
}

/// The comparison itself, on whichever GPU backend was opened.
fn compare<B: Backend>(
    args: &VerifyArgs,
    file: &Arc<GgufFile>,
    prompt: &[u32],
    options: &LoadOptions,
    gpu_backend: B,
) -> Result<()> {
    println!("GPU: {}", gpu_backend.describe());
    let mut gpu = Transformer::load(file, gpu_backend, options)?;
    let mut cpu = Transformer::load(file, CpuBackend::exact(args.cpu.threads)?, options)?;
    println!("CPU: {}", cpu.backend.describe());
    gpu.forward(prompt)?;
    cpu.forward(prompt)?;
    let (a, b) = (gpu.logits()?, cpu.logits()?);
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    let error = (diff / norm).sqrt();
    println!(
        "first-step logits: relative error {error:.3e} over {} values ({} prompt tokens)",
        a.len(),
        prompt.len()
    );
    let (want, got) = (greedy(&mut cpu, args.steps)?, greedy(&mut gpu, args.steps)?);
    let same = want.iter().zip(&got).take_while(|(x, y)| x == y).count();
    println!("greedy tokens: {same} of {} identical", args.steps);
    println!("  CPU: {want:?}\n  GPU: {got:?}");
    if !error.is_finite() || error > args.tolerance {
        bail!(
            "GPU logits differ from the CPU reference by {error:.3e} (tolerance {:.1e})",
            args.tolerance
        );
    }
    if same < args.steps {
        bail!("GPU and CPU greedy tokens diverge at step {same}");
    }
    println!("verify: GPU and CPU agree");
    Ok(())
}
