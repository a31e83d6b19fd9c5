//! `perplexity`: a model's perplexity over a text file, and its KL divergence from a base
//! run, as llama.cpp's `llama-perplexity` computes and prints them.

use super::args::{CacheArgs, DeviceArgs, ModelArgs};
use super::Device;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use vibrant::backend::cpu::CpuBackend;
use vibrant::backend::Backend;
use vibrant::gguf::GgufFile;
use vibrant::model::{LoadOptions, Transformer};
use vibrant::perplexity::{self, KlStats, KlSummary, LogProbReader, LogProbWriter, NllStats};
use vibrant::tokenizer::Tokenizer;

#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    /// The text to score (plain UTF-8).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Tokens per chunk: each chunk runs from an empty cache and its second half is scored.
    #[arg(long, short = 'c', default_value_t = 512)]
    pub ctx_size: usize,
    /// Most tokens run through the model in one step.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch_size: usize,
    /// Score at most this many chunks (default: all the text holds).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Without --kl-divergence: also save every scored position's log-probabilities to this
    /// file. With it: the saved file to compare this run with.
    #[arg(long, value_name = "FILE")]
    pub kl_divergence_base: Option<PathBuf>,
    /// Compare with the log-probabilities of --kl-divergence-base (its tokens, its context).
    #[arg(long, requires = "kl_divergence_base")]
    pub kl_divergence: bool,
    /// On the CPU, use the exact reference (weights dequantized, f64 products) instead of
    /// the fast 8-bit path: the base other paths are measured against.
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn perplexity(args: &PerplexityArgs) -> Result<()> {
    let path = vibrant::catalog::resolve(&args.model.model)?;
    let file = Arc::new(GgufFile::open(&path)?);
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let bos = tokenizer.prompt_bos();
    let job = if args.kl_divergence {
        let base = args.kl_divergence_base.as_ref().expect("clap requires it");
        if args.file.is_some() {
            bail!("--kl-divergence scores the tokens saved in --kl-divergence-base; leave out -f");
        }
        Job::Compare(LogProbReader::open(base)?)
    } else {
        let text_path = args
            .file
            .as_ref()
            .context("give the text to score with -f FILE")?;
        let text = std::fs::read_to_string(text_path)
            .with_context(|| format!("reading {}", text_path.display()))?;
        eprintln!("perplexity: tokenizing the input ..");
        let tokens = perplexity::tokenize(&tokenizer, &text)?;
        let name = text_path.display().to_string();
        let chunks = perplexity::chunk_count(&name, tokens.len(), args.ctx_size, args.chunks)?;
        Job::Score { tokens, chunks }
    };
    let n_ctx = match &job {
        Job::Compare(base) => base.n_ctx,
        Job::Score { .. } => args.ctx_size,
    };
    let options = LoadOptions {
        n_ctx,
        n_batch: args.batch_size,
        kv_types: args.cache.kv_types(),
        ..LoadOptions::default()
    };
    let device: &DeviceArgs = &args.device;
    match (super::open_device(device)?, args.exact) {
        (Device::Cpu(_), true) => {
            let threads = device.cpu.threads;
            let model = Transformer::load(&file, CpuBackend::exact(threads)?, &options)?;
            run(model, job, args, bos)
        }
        (Device::Gpu(_), true) => bail!("--exact is the CPU's reference mode: use --device cpu"),
        (Device::Cpu(b), false) => run(Transformer::load(&file, b, &options)?, job, args, bos),
        (Device::Gpu(b), false) => run(Transformer::load(&file, *b, &options)?, job, args, bos),
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), true) => bail!("--exact is the CPU's reference mode: use --device cpu"),
        #[cfg(feature = "cuda")]
        (Device::Cuda(b), false) => run(Transformer::load(&file, *b, &options)?, job, args, bos),
    }
}

enum Job {
    Score { tokens: Vec<u32>, chunks: usize },
    Compare(LogProbReader),
}

fn run<B: Backend>(
    mut model: Transformer<B>,
    job: Job,
    args: &PerplexityArgs,
    bos: Option<u32>,
) -> Result<()> {
    eprintln!("perplexity: running on {}", model.backend.describe());
    match job {
        Job::Score { tokens, chunks } => score(&mut model, &tokens, chunks, args, bos),
        Job::Compare(mut base) => compare(&mut model, &mut base, args, bos),
    }
}

fn score<B: Backend>(
    model: &mut Transformer<B>,
    tokens: &[u32],
    chunks: usize,
    args: &PerplexityArgs,
    bos: Option<u32>,
) -> Result<()> {
    let n_ctx = model.n_ctx();
    let mut writer = match &args.kl_divergence_base {
        Some(path) => {
            eprintln!(
                "perplexity: saving all log-probabilities to {}",
                path.display()
            );
            let n_vocab = model.config.n_vocab;
            Some(LogProbWriter::create(path, n_ctx, n_vocab, chunks, tokens)?)
        }
        None => None,
    };
    eprintln!(
        "perplexity: {} tokens, calculating perplexity over {chunks} chunks, n_ctx={n_ctx}",
        tokens.len()
    );
    let progress = |i: usize, stats: &NllStats| {
        print!("[{}]{:.4},", i + 1, stats.perplexity());
        flush();
    };
    let stats =
        perplexity::score_text(model, tokens, n_ctx, chunks, bos, writer.as_mut(), progress)?;
    println!();
    if let Some(writer) = writer {
        writer.finish()?;
    }
    match stats.estimate() {
        Some((ppl, error)) => println!("Final estimate: PPL = {ppl:.4} +/- {error:.5}"),
        None => bail!("the scored tokens' log-likelihoods have no spread: no estimate"),
    }
    Ok(())
}

fn compare<B: Backend>(
    model: &mut Transformer<B>,
    base: &mut LogProbReader,
    args: &PerplexityArgs,
    bos: Option<u32>,
) -> Result<()> {
    eprintln!(
        "kl_divergence: comparing with {} ({} chunks, n_ctx={})",
        base.path().display(),
        base.n_chunk,
        base.n_ctx
    );
    println!("chunk        PPL     PPL(base)   mean KLD   same top p");
    let progress = |i: usize, stats: &KlStats| {
        let (ppl, ppl_base) = stats.perplexities();
        println!(
            "{:4}  {ppl:10.4}  {ppl_base:10.4}  {:9.6}  {:7.3} %",
            i + 1,
            stats.mean_kld(),
            100.0 * stats.same_top_fraction()
        );
    };
    let stats = perplexity::kl_divergence(model, base, args.chunks, bos, progress)?;
    let summary = stats
        .summary()
        .context("no position was compared: the base file holds no chunk")?;
    print_summary(&summary);
    Ok(())
}

fn print_summary(s: &KlSummary) {
    println!(
        "\n====== Perplexity statistics ({} positions) ======",
        s.count
    );
    println!(
        "Mean PPL(Q)                   : {:10.6} ± {:10.6}",
        s.ppl.value, s.ppl.error
    );
    println!(
        "Mean PPL(base)                : {:10.6} ± {:10.6}",
        s.ppl_base.value, s.ppl_base.error
    );
    println!(
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
        100.0 * s.ppl_correlation
    );
    println!(
        "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}",
        s.ln_ppl_ratio.value, s.ln_ppl_ratio.error
    );
    println!("\n====== KL divergence statistics ======");
    println!(
        "Mean    KLD: {:10.6} ± {:10.6}",
        s.kld_mean.value, s.kld_mean.error
    );
    println!("Maximum KLD: {:10.6}", s.kld_max);
    println!("99.9%   KLD: {:10.6}", s.kld_p999);
    println!("99.0%   KLD: {:10.6}", s.kld_p99);
    println!("Median  KLD: {:10.6}", s.kld_median);
    println!("\n====== Token probability statistics ======");
    println!(
        "Mean    Δp: {:6.3} ± {:5.3} %",
        100.0 * s.p_diff_mean.value,
        100.0 * s.p_diff_mean.error
    );
    println!("Maximum |Δp|: {:6.3}%", 100.0 * s.p_diff_max_abs);
    println!(
        "RMS Δp    : {:6.3} ± {:5.3} %",
        100.0 * s.p_diff_rms.value,
        100.0 * s.p_diff_rms.error
    );
    println!(
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * s.same_top.value,
        100.0 * s.same_top.error
    );
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
