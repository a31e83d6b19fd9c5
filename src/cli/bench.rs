//! `bench`: prompt processing and generation speed, measured the way llama-bench measures
//! them (pp: one prompt of P tokens from an empty cache; tg: N tokens generated one at a time
//! from an empty cache), plus a per-kernel profile from GPU timestamps.

use super::{Device, GlobalArgs};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use vibrant::backend::{Backend, KernelTiming};
use vibrant::gguf::GgufFile;
use vibrant::model::{type_histogram, LoadOptions, Transformer};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Prompt tokens for the prompt-processing test (0: skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens to generate in the generation test (0: skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    pub repetitions: usize,
    /// Tokens per forward step while processing the prompt.
    #[arg(long, default_value_t = 512)]
    pub ubatch: usize,
    /// Output format: md or json.
    #[arg(short = 'o', long, default_value = "md")]
    pub output: String,
    /// Also time every kernel of one prompt step and one generated token.
    #[arg(long)]
    pub profile: bool,
    /// Instead of a model, time the weight kernels alone on random matrices of 3B shapes.
    #[arg(long)]
    pub kernels: bool,
}

struct Sample {
    test: String,
    tokens_per_second: Vec<f64>,
}

impl Sample {
    fn mean(&self) -> f64 {
        self.tokens_per_second.iter().sum::<f64>() / self.tokens_per_second.len() as f64
    }

    fn stddev(&self) -> f64 {
        let n = self.tokens_per_second.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self
            .tokens_per_second
            .iter()
            .map(|v| (v - m).powi(2))
            .sum::<f64>()
            / (n - 1) as f64)
            .sqrt()
    }
}

pub fn bench(g: &GlobalArgs, args: &BenchArgs) -> Result<()> {
    if args.kernels {
        return kernel_bench(g);
    }
    if args.output != "md" && args.output != "json" {
        anyhow::bail!("unknown output format '{}' (md or json)", args.output);
    }
    if args.repetitions == 0 {
        anyhow::bail!("-r must be at least 1");
    }
    let path = vibrant::catalog::resolve(&g.model)?;
    let file = Arc::new(GgufFile::open(&path)?);
    let options = LoadOptions {
        n_ctx: (args.n_prompt.max(args.n_gen) + 1).max(64),
        n_batch: args.ubatch.max(1),
    };
    match super::open_device(g)? {
        Device::Cpu(b) => run(&file, Transformer::load(&file, b, &options)?, args),
        Device::Gpu(b) => run(&file, Transformer::load(&file, *b, &options)?, args),
    }
}

fn run<B: Backend>(file: &GgufFile, mut model: Transformer<B>, args: &BenchArgs) -> Result<()> {
    let vocab = model.config.n_vocab as u32;
    // Token ids spread over the vocabulary, fixed so that runs compare.
    let prompt: Vec<u32> = (0..args.n_prompt as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut samples = Vec::new();
    if args.n_prompt > 0 {
        time_prompt(&mut model, &prompt)?; // warm-up: pipelines, caches, clocks
        let mut s = Sample {
            test: format!("pp{}", args.n_prompt),
            tokens_per_second: Vec::new(),
        };
        for _ in 0..args.repetitions {
            s.tokens_per_second
                .push(args.n_prompt as f64 / time_prompt(&mut model, &prompt)?);
        }
        samples.push(s);
    }
    if args.n_gen > 0 {
        time_generation(&mut model, args.n_gen.min(8))?;
        let mut s = Sample {
            test: format!("tg{}", args.n_gen),
            tokens_per_second: Vec::new(),
        };
        for _ in 0..args.repetitions {
            s.tokens_per_second
                .push(args.n_gen as f64 / time_generation(&mut model, args.n_gen)?);
        }
        samples.push(s);
    }
    report(file, &model, &samples, args)?;
    if args.profile {
        host_split(&mut model, args.n_gen.max(16))?;
        profile(&mut model, &prompt)?;
    }
    Ok(())
}

/// Where a generated token's wall time goes on the host, decoding one token at a time (not a
/// token ahead, as generation does): recording the step (forward) and submitting it then
/// waiting for the token id (argmax).
fn host_split<B: Backend>(model: &mut Transformer<B>, n: usize) -> Result<()> {
    model.truncate(0);
    let (mut record, mut wait) = (0.0, 0.0);
    let started = Instant::now();
    let mut token = 1;
    for _ in 0..n {
        let t0 = Instant::now();
        model.forward(&[token])?;
        let t1 = Instant::now();
        token = model.argmax()?;
        record += (t1 - t0).as_secs_f64();
        wait += t1.elapsed().as_secs_f64();
    }
    let per = |s: f64| s / n as f64 * 1e6;
    println!(
        "\nhost time per generated token ({n} tokens): {:.0} µs wall = {:.0} µs recording + {:.0} µs submit and wait",
        per(started.elapsed().as_secs_f64()),
        per(record),
        per(wait)
    );
    Ok(())
}

fn time_prompt<B: Backend>(model: &mut Transformer<B>, prompt: &[u32]) -> Result<f64> {
    model.truncate(0);
    model.backend.sync()?;
    let started = Instant::now();
    model.forward(prompt)?;
    model.backend.sync()?;
    Ok(started.elapsed().as_secs_f64())
}

/// Generates `n` tokens greedily from an empty cache, reading each token id back as a real
/// decode loop must (one token late, as generation does: see [`vibrant::model::Greedy`]).
fn time_generation<B: Backend>(model: &mut Transformer<B>, n: usize) -> Result<f64> {
    model.truncate(0);
    model.backend.sync()?;
    let started = Instant::now();
    model.forward(&[1])?;
    let mut greedy = model.greedy();
    for _ in 0..n {
        greedy.next_token()?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn report<B: Backend>(
    file: &GgufFile,
    model: &Transformer<B>,
    samples: &[Sample],
    args: &BenchArgs,
) -> Result<()> {
    let c = &model.config;
    let size: u64 = file.tensors.iter().map(|t| t.n_bytes).sum();
    let types: Vec<String> = type_histogram(file)
        .iter()
        .map(|(t, n, _)| format!("{t}×{n}"))
        .collect();
    let device = model.backend.describe();
    let params = c.n_params(file.tensor("output.weight").is_none()) as f64 / 1e9;
    let build = format!(
        "vibrant {} ({} build)",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    if args.output == "json" {
        let rows: Vec<serde_json::Value> = samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "model": c.name, "model_size_bytes": size, "params_billion": params,
                    "tensor_types": types, "device": device, "build": build, "test": s.test,
                    "n_batch": args.ubatch, "repetitions": s.tokens_per_second.len(),
                    "tokens_per_second": s.tokens_per_second, "mean": s.mean(), "stddev": s.stddev(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{build}");
    println!("device: {device}");
    println!("model: {} ({})\n", c.name, types.join(", "));
    println!("| model | size | params | device | test | t/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: |");
    for s in samples {
        println!(
            "| {} | {:.2} GiB | {:.2} B | {} | {} | {:.2} ± {:.2} |",
            c.name,
            size as f64 / (1u64 << 30) as f64,
            params,
            device.split(" (").next().unwrap_or(&device),
            s.test,
            s.mean(),
            s.stddev()
        );
    }
    Ok(())
}

/// Times every kernel of one prompt step and of one generated token, and prints a table.
fn profile<B: Backend>(model: &mut Transformer<B>, prompt: &[u32]) -> Result<()> {
    let steps: [(&str, &[u32]); 2] = [("prompt step", prompt), ("generated token", &prompt[..1])];
    for (what, tokens) in steps {
        if tokens.is_empty() {
            continue;
        }
        model.truncate(0);
        if what == "generated token" {
            // Decode a token at the end of the prompt, as generation does.
            model.forward(&prompt[..prompt.len().saturating_sub(1)])?;
        }
        model.backend.start_profile().context("--profile")?;
        model.forward(tokens)?;
        model.argmax()?;
        let timings = model.backend.take_profile()?;
        print_profile(what, tokens.len(), &timings);
    }
    Ok(())
}

fn print_profile(what: &str, n_tokens: usize, timings: &[KernelTiming]) {
    let total: f64 = timings.iter().map(|t| t.seconds).sum();
    println!(
        "\nprofile of one {what} ({n_tokens} tokens): {} dispatches, {:.3} ms of kernel time",
        timings.len(),
        total * 1e3
    );
    let mut by_kernel: BTreeMap<&str, (usize, f64, u64, u64)> = BTreeMap::new();
    for t in timings {
        let e = by_kernel.entry(&t.kernel).or_default();
        e.0 += 1;
        e.1 += t.seconds;
        e.2 += t.bytes;
        e.3 += t.flops;
    }
    let mut rows: Vec<_> = by_kernel.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    println!("| kernel | dispatches | time (µs) | share | GB/s | TFLOP/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (kernel, (count, seconds, bytes, flops)) in rows {
        println!(
            "| {kernel} | {count} | {:.1} | {:.1}% | {:.0} | {:.2} |",
            seconds * 1e6,
            100.0 * seconds / total,
            bytes as f64 / seconds / 1e9,
            flops as f64 / seconds / 1e12
        );
    }
}

/// Times matrix products alone: each shape back to back many times in one submission, so
/// the figure is the kernel plus its share of launch cost (the 64-row line shows that floor).
fn kernel_bench(g: &GlobalArgs) -> Result<()> {
    use vibrant::backend::gpu::WgpuBackend;
    use vibrant::backend::WeightBytes;
    use vibrant::quant::GgmlType;
    let mut b = WgpuBackend::new(super::gpu_options(g)?)?;
    println!("device: {}", b.describe());
    println!(
        "| matrix | type | rows × cols | decode µs | decode GB/s | pp512 ms | pp512 TFLOP/s |"
    );
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    let shapes = [
        ("launch floor", GgmlType::Q4K, 64, 2048),
        ("launch floor, short rows", GgmlType::Q4K, 64, 256),
        ("attn_q", GgmlType::Q4K, 2048, 2048),
        ("ffn_up", GgmlType::Q4K, 11008, 2048),
        ("ffn_down", GgmlType::Q6K, 2048, 11008),
        ("ffn_down", GgmlType::Q4K, 2048, 11008),
        ("output", GgmlType::Q6K, 151936, 2048),
        ("ffn_up", GgmlType::Q8_0, 11008, 2048),
        ("ffn_up", GgmlType::Q4_0, 11008, 2048),
        ("ffn_up", GgmlType::F16, 11008, 2048),
    ];
    // The floor of a launch that does almost nothing: a 2048-wide vector add, each launch
    // depending on the one before (as the steps of a forward pass do).
    let acc = b.tensor("acc", 1, 2048)?;
    let addend = b.tensor("addend", 1, 2048)?;
    b.add(&acc, &addend, 1);
    b.sync()?;
    let started = Instant::now();
    for _ in 0..300 {
        b.add(&acc, &addend, 1);
    }
    b.sync()?;
    let add = started.elapsed().as_secs_f64() / 300.0;
    println!(
        "| 2048-wide add (launch floor) | F32 | 1 × 2048 | {:.1} | | | |",
        add * 1e6
    );
    let mut rng = vibrant::rng::SplitMix64(7);
    for (label, ty, rows, cols) in shapes {
        let data =
            vibrant::synth::random_tensor(ty, rows * cols, 1.0 / (cols as f32).sqrt(), &mut rng);
        let bytes = data.len() as f64;
        let w = b.upload_matrix(label, ty, rows, cols, WeightBytes::owned(data))?;
        let x = b.tensor("x", 512, cols)?;
        let input: Vec<f32> = (0..512 * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        b.write(&x, &input);
        let y = b.tensor("y", 512, rows)?;
        let time = |b: &mut WgpuBackend, n: usize, reps: usize| -> Result<f64> {
            b.matmul(&x, &w, None, &y, n);
            b.sync()?;
            let started = Instant::now();
            for _ in 0..reps {
                b.matmul(&x, &w, None, &y, n);
            }
            b.sync()?;
            Ok(started.elapsed().as_secs_f64() / reps as f64)
        };
        let decode = time(&mut b, 1, 300)?;
        let prompt = time(&mut b, 512, 10)?;
        println!(
            "| {label} | {ty} | {rows} × {cols} | {:.1} | {:.0} | {:.2} | {:.1} |",
            decode * 1e6,
            bytes / decode / 1e9,
            prompt * 1e3,
            2.0 * 512.0 * rows as f64 * cols as f64 / prompt / 1e12
        );
    }
    Ok(())
}
