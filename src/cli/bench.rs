//! `bench`: prompt processing and generation speed, measured and spelled as llama-bench does
//! (`-p -n -d -b -ub` take lists and every combination runs, one row per test), plus a
//! per-kernel profile from GPU timestamps.
//!
//! A pp test runs a prompt of P tokens, a tg test generates N tokens one at a time, each after
//! D tokens already in the KV cache (`-d`). `-b` is how many tokens go to the model in one call
//! (llama.cpp's logical batch) and `-ub` how many one forward step takes (its physical batch,
//! vibrant's load-time batch size).

use super::args::{DeviceArgs, GpuArgs, ModelArgs};
use super::Device;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use vibrant::backend::gpu::WgpuBackend;
use vibrant::backend::{Backend, CacheType, KernelTiming, KvTypes};
use vibrant::generate::{Sampler, SamplerConfig};
use vibrant::gguf::GgufFile;
use vibrant::model::{type_histogram, LoadOptions, Transformer};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    // Own arguments first: see AskArgs.
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Md)]
    pub output: Output,
    /// Generate with the sampler `vibrant ask` uses by default (temperature 0.8, top-k 40,
    /// top-p 0.95, min-p 0.05, run on the device as `ask` runs it) instead of greedy argmax.
    #[arg(long)]
    pub sampling: bool,
    /// Also time every kernel of one prompt step and one generated token (markdown only).
    #[arg(long)]
    pub profile: bool,
    /// Instead of a model, time the weight kernels alone on random matrices of 3B shapes.
    #[arg(long)]
    pub kernels: bool,
    /// Prompt lengths of the pp tests (0: none).
    #[arg(short = 'p', long = "n-prompt", default_value = "512", value_parser = parse_counts, help_heading = LISTS)]
    pub n_prompt: Vec<Counts>,
    /// Tokens generated in the tg tests (0: none).
    #[arg(short = 'n', long = "n-gen", default_value = "128", value_parser = parse_counts, help_heading = LISTS)]
    pub n_gen: Vec<Counts>,
    /// Tokens already in the KV cache when each test starts.
    #[arg(short = 'd', long = "n-depth", default_value = "0", value_parser = parse_counts, help_heading = LISTS)]
    pub n_depth: Vec<Counts>,
    /// Tokens handed to the model in one call.
    #[arg(short = 'b', long = "batch-size", default_value = "2048", value_parser = parse_counts, help_heading = LISTS)]
    pub n_batch: Vec<Counts>,
    /// Tokens per forward step (-ub, as llama-bench spells it).
    #[arg(long = "ubatch-size", alias = "ubatch", default_value = "512", value_parser = parse_counts, help_heading = LISTS)]
    pub n_ubatch: Vec<Counts>,
    /// KV cache types of the keys (-ctk, as llama-bench spells it).
    #[arg(long = "cache-type-k", value_enum, value_delimiter = ',', default_value = "f16", help_heading = LISTS)]
    pub type_k: Vec<CacheType>,
    /// KV cache types of the values (-ctv).
    #[arg(long = "cache-type-v", value_enum, value_delimiter = ',', default_value = "f16", help_heading = LISTS)]
    pub type_v: Vec<CacheType>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

const LISTS: &str =
    "Tests (comma-separated lists; ranges first-last, first-last+step, first-last*factor)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Md,
    Json,
}

/// Token counts from one list argument.
#[derive(Clone, Debug, PartialEq)]
pub struct Counts(Vec<usize>);

/// Parses `512`, `128,256`, `128-512+128` or `128-1024*2` (llama-bench's ranges).
fn parse_counts(list: &str) -> Result<Counts, String> {
    let mut counts = Vec::new();
    for item in list.split(',') {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' in '{list}' is not a token count"))
        };
        let Some((first, rest)) = item.split_once('-') else {
            counts.push(number(item)?);
            continue;
        };
        let (last, step, multiply) = match rest.find(['+', '*']) {
            Some(at) => (
                &rest[..at],
                number(&rest[at + 1..])?,
                &rest[at..at + 1] == "*",
            ),
            None => (rest, 1, false),
        };
        let (mut i, last) = (number(first)?, number(last)?);
        while i <= last {
            counts.push(i);
            let next = if multiply { i * step } else { i + step };
            if next <= i {
                return Err(format!("the range '{item}' does not grow"));
            }
            i = next;
        }
    }
    Ok(Counts(counts))
}

fn flat(lists: &[Counts]) -> Vec<usize> {
    lists.iter().flat_map(|c| c.0.iter().copied()).collect()
}

/// One timed test, as llama-bench names it: `pp512`, `tg128`, `pp512 @ d4096`.
#[derive(Clone, Copy, Debug)]
struct Test {
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    n_batch: usize,
    n_ubatch: usize,
    kv_types: KvTypes,
}

impl Test {
    fn name(&self) -> String {
        let kind = if self.n_gen == 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        };
        match self.n_depth {
            0 => kind,
            d => format!("{kind} @ d{d}"),
        }
    }

    /// Positions the test fills: a tg test runs one token ahead of the last it reads.
    fn n_ctx(&self) -> usize {
        self.n_depth + self.n_prompt.max(self.n_gen + 1)
    }
}

/// Every test the lists ask for, in llama-bench's order but grouped by -ub and the cache
/// types (each needs the model loaded anew).
fn plan(args: &BenchArgs) -> Result<Vec<Test>> {
    if args.repetitions == 0 {
        bail!("-r must be at least 1");
    }
    let (batches, ubatches) = (flat(&args.n_batch), flat(&args.n_ubatch));
    if batches.contains(&0) || ubatches.contains(&0) {
        bail!("-b and -ub must be at least 1 token");
    }
    if args.profile && args.output == Output::Json {
        bail!("--profile prints tables: use it with -o md");
    }
    let kv_types: Vec<KvTypes> = (args.type_k.iter())
        .flat_map(|&k| args.type_v.iter().map(move |&v| KvTypes { k, v }))
        .collect();
    let mut tests = Vec::new();
    for &n_ubatch in &ubatches {
        for &kv_types in &kv_types {
            for &n_batch in &batches {
                for &n_depth in &flat(&args.n_depth) {
                    let test = |n_prompt, n_gen| Test {
                        n_prompt,
                        n_gen,
                        n_depth,
                        n_batch,
                        n_ubatch,
                        kv_types,
                    };
                    let pp = flat(&args.n_prompt).into_iter().filter(|&p| p > 0);
                    tests.extend(pp.map(|p| test(p, 0)));
                    let tg = flat(&args.n_gen).into_iter().filter(|&n| n > 0);
                    tests.extend(tg.map(|n| test(0, n)));
                }
            }
        }
    }
    if tests.is_empty() {
        bail!("nothing to run: every -p and -n is 0");
    }
    Ok(tests)
}

/// One row of results.
struct Row {
    test: Test,
    samples_ns: Vec<u64>,
    time: SystemTime,
}

impl Row {
    fn samples_ts(&self) -> Vec<f64> {
        let n = (self.test.n_prompt + self.test.n_gen) as f64;
        self.samples_ns
            .iter()
            .map(|&ns| 1e9 * n / ns as f64)
            .collect()
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (0 for one sample), as llama-bench reports it.
fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// What every row says about the model and the machine.
struct Subject {
    filename: String,
    name: String,
    model_type: String,
    types: String,
    size: u64,
    n_params: u64,
    /// The backend as llama-bench's `backends` names it: CPU, or the GPU's API.
    backends: String,
    gpu_info: String,
    n_threads: usize,
    device: String,
}

impl Subject {
    fn new(file: &GgufFile, name: &str, device: &Device) -> Self {
        let size = file.tensors.iter().map(|t| t.n_bytes).sum();
        let n_params = file.tensors.iter().map(|t| t.n_elements()).sum();
        let histogram = type_histogram(file);
        let main_type = histogram
            .iter()
            .max_by_key(|(_, _, bytes)| *bytes)
            .map_or("?".to_string(), |(t, _, _)| t.to_string());
        let arch = file.str_opt("general.architecture").unwrap_or("?");
        let (backends, gpu_info, n_threads) = match device {
            Device::Cpu(b) => ("CPU".to_string(), String::new(), b.threads()),
            // One host thread drives the GPU.
            Device::Gpu(b) => {
                let info = &b.gpu().info;
                (format!("{:?}", info.backend), info.name.clone(), 1)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => ("CUDA".to_string(), b.summary().name.clone(), 1),
        };
        Self {
            filename: file.path().display().to_string(),
            name: name.to_string(),
            model_type: format!("{arch} {} {main_type}", params_label(n_params)),
            types: histogram
                .iter()
                .map(|(t, n, _)| format!("{t}×{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            size,
            n_params,
            backends,
            gpu_info,
            n_threads,
            device: String::new(),
        }
    }
}

fn params_label(n: u64) -> String {
    if n < 1_000_000_000 {
        format!("{:.0}M", n as f64 / 1e6)
    } else {
        format!("{:.1}B", n as f64 / 1e9)
    }
}

fn build() -> String {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!("vibrant {} ({profile} build)", env!("CARGO_PKG_VERSION"))
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if args.kernels {
        return kernel_bench(&args.device.gpu);
    }
    let tests = plan(args)?;
    let path = vibrant::catalog::resolve(&args.model.model)?;
    let file = Arc::new(GgufFile::open(&path)?);
    let name = vibrant::model::Config::from_gguf(&file)?.name;
    let mut n_ctx = tests.iter().map(Test::n_ctx).max().unwrap_or(1);
    if args.profile {
        // The profile decodes a token after the first prompt, and times the host's share
        // of HOST_SPLIT_TOKENS tokens at least.
        let tokens = first_nonzero(&args.n_gen).max(HOST_SPLIT_TOKENS);
        n_ctx = n_ctx.max(first_nonzero(&args.n_prompt) + 1).max(tokens);
    }
    let mut report = Report::new(args);
    let mut profiled = !args.profile;
    for group in tests.chunk_by(|a, b| (a.n_ubatch, a.kv_types) == (b.n_ubatch, b.kv_types)) {
        let options = LoadOptions {
            n_ctx,
            n_batch: group[0].n_ubatch,
            kv_types: group[0].kv_types,
            ..LoadOptions::default()
        };
        let device = super::open_device(&args.device)?;
        let subject = Subject::new(&file, &name, &device);
        let profile = !std::mem::replace(&mut profiled, true);
        match device {
            Device::Cpu(b) => run(
                &file,
                b,
                &options,
                subject,
                group,
                profile,
                &mut report,
                args,
            )?,
            Device::Gpu(b) => run(
                &file,
                *b,
                &options,
                subject,
                group,
                profile,
                &mut report,
                args,
            )?,
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => run(
                &file,
                *b,
                &options,
                subject,
                group,
                profile,
                &mut report,
                args,
            )?,
        }
    }
    report.finish()
}

#[allow(clippy::too_many_arguments)]
fn run<B: Backend>(
    file: &Arc<GgufFile>,
    backend: B,
    options: &LoadOptions,
    mut subject: Subject,
    tests: &[Test],
    with_profile: bool,
    report: &mut Report,
    args: &BenchArgs,
) -> Result<()> {
    let model = Transformer::load(file, backend, options)?;
    subject.device = model.backend.describe();
    let vocab = model.config.n_vocab as u32;
    // Token ids spread over the vocabulary, fixed so that runs compare.
    let filler = (0..options.n_ctx as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut bench = Runner {
        model,
        filler,
        cached: 0,
        sampling: args.sampling,
    };
    for &test in tests {
        bench.time(Test {
            n_gen: test.n_gen.min(8),
            ..test
        })?; // warm-up: pipelines, caches, clocks
        let samples_ns = (0..args.repetitions)
            .map(|_| bench.time(test))
            .collect::<Result<_>>()?;
        report.row(
            &subject,
            Row {
                test,
                samples_ns,
                time: SystemTime::now(),
            },
        )?;
    }
    if with_profile {
        let tokens = first_nonzero(&args.n_gen).max(HOST_SPLIT_TOKENS);
        host_split(&mut bench.model, tokens)?;
        let prompt = bench.filler[..first_nonzero(&args.n_prompt)].to_vec();
        profile(&mut bench.model, &prompt, bench.filler[0])?;
    }
    Ok(())
}

/// Runs tests on one loaded model.
struct Runner<B: Backend> {
    model: Transformer<B>,
    /// The tokens every test reads: the depth, then the prompt or the first generated token.
    filler: Vec<u32>,
    /// How many filler tokens the KV cache holds: each test writes only past its depth, so
    /// the depth is kept between tests (as llama-bench restores a saved state).
    cached: usize,
    sampling: bool,
}

impl<B: Backend> Runner<B> {
    /// Runs a test once from its depth and returns its time in nanoseconds.
    fn time(&mut self, test: Test) -> Result<u64> {
        let d = test.n_depth;
        if self.cached < d {
            self.model.truncate(self.cached);
            self.forward(self.cached..d, test.n_batch)?;
        }
        self.model.truncate(d);
        self.cached = d;
        self.model.backend.sync()?;
        let started = Instant::now();
        if test.n_prompt > 0 {
            self.forward(d..d + test.n_prompt, test.n_batch)?;
            self.model.backend.sync()?;
        }
        if test.n_gen > 0 {
            self.generate(self.filler[d], test.n_gen)?;
        }
        Ok(started.elapsed().as_nanos() as u64)
    }

    /// Runs filler tokens through the model, at most `n_batch` to a call.
    fn forward(&mut self, range: std::ops::Range<usize>, n_batch: usize) -> Result<()> {
        for chunk in self.filler[range].chunks(n_batch) {
            self.model.forward(chunk)?;
        }
        Ok(())
    }

    /// Generates `n` tokens after `first`, reading each token id back as a real decode loop
    /// must, one token ahead as generation does (see [`vibrant::model::Decoder`]): the
    /// device's argmax, or with `--sampling` the sampler `vibrant ask` uses by default (on
    /// the device, as generation runs it).
    fn generate(&mut self, first: u32, n: usize) -> Result<()> {
        self.model.forward(&[first])?;
        let mut decoder = if self.sampling {
            let sampler = Sampler::new(SamplerConfig::default());
            self.model.backend.start_sampling(&sampler)?;
            self.model.sampled()
        } else {
            self.model.greedy()
        };
        for _ in 0..n {
            decoder.next_token()?;
        }
        Ok(())
    }
}

/// Prints rows as they come (markdown) or all at the end (JSON, one array).
struct Report {
    output: Output,
    /// Whether the n_batch and n_ubatch columns show: where they are not llama-bench's
    /// defaults, as llama-bench shows them.
    batch_columns: (bool, bool),
    /// Whether the type_k and type_v columns show (likewise).
    type_columns: (bool, bool),
    sampling: bool,
    json: Vec<serde_json::Value>,
    header_printed: bool,
}

impl Report {
    fn new(args: &BenchArgs) -> Self {
        let non_default = |v: &[Counts], default| flat(v) != [default];
        Self {
            output: args.output,
            batch_columns: (
                non_default(&args.n_batch, 2048),
                non_default(&args.n_ubatch, 512),
            ),
            type_columns: (
                args.type_k != [CacheType::F16],
                args.type_v != [CacheType::F16],
            ),
            sampling: args.sampling,
            json: Vec::new(),
            header_printed: false,
        }
    }

    fn row(&mut self, s: &Subject, row: Row) -> Result<()> {
        let ts = row.samples_ts();
        let ns: Vec<f64> = row.samples_ns.iter().map(|&n| n as f64).collect();
        if self.output == Output::Json {
            let t = &row.test;
            self.json.push(serde_json::json!({
                "build": build(),
                "backends": s.backends,
                "gpu_info": s.gpu_info,
                "device": s.device,
                "model_filename": s.filename,
                "model_type": s.model_type,
                "model_size": s.size,
                "model_n_params": s.n_params,
                "n_batch": t.n_batch,
                "n_ubatch": t.n_ubatch,
                "type_k": t.kv_types.k.name(),
                "type_v": t.kv_types.v.name(),
                "n_threads": s.n_threads,
                "n_prompt": t.n_prompt,
                "n_gen": t.n_gen,
                "n_depth": t.n_depth,
                "sampling": self.sampling,
                "test": t.name(),
                "test_time": rfc3339(row.time),
                "avg_ns": mean(&ns).round() as u64,
                "stddev_ns": stddev(&ns).round() as u64,
                "avg_ts": mean(&ts),
                "stddev_ts": stddev(&ts),
                "samples_ns": row.samples_ns,
                "samples_ts": ts,
            }));
            return Ok(());
        }
        let cpu = s.backends == "CPU";
        let (batch, ubatch) = self.batch_columns;
        let (type_k, type_v) = self.type_columns;
        if !self.header_printed {
            self.header_printed = true;
            println!("build: {}", build());
            println!("device: {}", s.device);
            println!("model: {} ({})", s.name, s.types);
            if self.sampling {
                println!("tg: sampled as `vibrant ask` samples by default");
            }
            println!();
            let mut columns = vec!["model", "size", "params", "backend"];
            let optional = [
                (cpu, "threads"),
                (batch, "n_batch"),
                (ubatch, "n_ubatch"),
                (type_k, "type_k"),
                (type_v, "type_v"),
            ];
            columns.extend(optional.iter().filter(|(on, _)| *on).map(|(_, c)| *c));
            columns.extend(["test", "t/s"]);
            println!("| {} |", columns.join(" | "));
            let rules: Vec<&str> = columns
                .iter()
                .map(|&c| {
                    if c == "model" || c == "backend" {
                        "---"
                    } else {
                        "---:"
                    }
                })
                .collect();
            println!("| {} |", rules.join(" | "));
        }
        let mut cells = vec![
            s.model_type.clone(),
            size_label(s.size),
            params_cell(s.n_params),
            s.backends.clone(),
        ];
        let t = &row.test;
        let optional = [
            (cpu, s.n_threads.to_string()),
            (batch, t.n_batch.to_string()),
            (ubatch, t.n_ubatch.to_string()),
            (type_k, t.kv_types.k.to_string()),
            (type_v, t.kv_types.v.to_string()),
        ];
        cells.extend(optional.into_iter().filter(|(on, _)| *on).map(|(_, v)| v));
        cells.push(t.name());
        cells.push(format!("{:.2} ± {:.2}", mean(&ts), stddev(&ts)));
        println!("| {} |", cells.join(" | "));
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&self.json)?);
        }
        Ok(())
    }
}

fn size_label(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib < 1024.0 {
        format!("{mib:.2} MiB")
    } else {
        format!("{:.2} GiB", mib / 1024.0)
    }
}

fn params_cell(n: u64) -> String {
    if n < 1_000_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        format!("{:.2} B", n as f64 / 1e9)
    }
}

/// `2026-12-04T18:21:39Z`, as llama-bench's test_time.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Where a generated token's wall time goes on the host, decoding one token at a time (not a
/// token ahead, as generation does): recording the step (forward) and submitting it then
/// waiting for the token id (argmax).
/// The fewest generated tokens the host's share of a token is averaged over.
const HOST_SPLIT_TOKENS: usize = 16;

/// The first count of a list flag that is not 0 (0 where all are).
fn first_nonzero(v: &[Counts]) -> usize {
    flat(v).into_iter().find(|&n| n > 0).unwrap_or(0)
}

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

/// Times every kernel of one prompt step (none for an empty prompt) and of one generated
/// token, `token` at the prompt's end, and prints a table.
fn profile<B: Backend>(model: &mut Transformer<B>, prompt: &[u32], token: u32) -> Result<()> {
    let steps: [(&str, &[u32]); 2] = [("prompt step", prompt), ("generated token", &[token])];
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
    // Launches of one kernel on matrices of one size together: a layer's q and o products
    // apart from its gate and up.
    let mut by_kernel: BTreeMap<(&str, u64), (usize, f64, u64, u64)> = BTreeMap::new();
    for t in timings {
        let e = by_kernel.entry((&t.kernel, t.bytes)).or_default();
        e.0 += 1;
        e.1 += t.seconds;
        e.2 += t.bytes;
        e.3 += t.flops;
    }
    let mut rows: Vec<_> = by_kernel.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    println!("| kernel | MB a dispatch | dispatches | time (µs) | share | GB/s | TFLOP/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((kernel, size), (count, seconds, bytes, flops)) in rows {
        println!(
            "| {kernel} | {:.2} | {count} | {:.1} | {:.1}% | {:.0} | {:.2} |",
            size as f64 / 1e6,
            seconds * 1e6,
            100.0 * seconds / total,
            bytes as f64 / seconds / 1e9,
            flops as f64 / seconds / 1e12
        );
    }
}

/// Times matrix products alone: each shape back to back many times in one submission, so
/// the figure is the kernel plus its share of launch cost (the 64-row line shows that floor).
fn kernel_bench(gpu: &GpuArgs) -> Result<()> {
    use vibrant::backend::{MatrixUse, WeightBytes, WeightRows};
    use vibrant::quant::GgmlType;
    let mut b = WgpuBackend::new(gpu.options()?)?;
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
        let rows_of = WeightRows::new(ty, rows, WeightBytes::owned(data));
        let w = b.upload_matrix(label, cols, vec![rows_of], MatrixUse::Plain)?;
        let x = b.tensor("x", 512, cols)?;
        let input: Vec<f32> = (0..512 * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        b.write(&x, &input);
        let y = b.tensor("y", 512, rows)?;
        let time = |b: &mut WgpuBackend, n: usize, reps: usize| -> Result<f64> {
            b.matmul(&x, &w, &y, n);
            b.sync()?;
            let started = Instant::now();
            for _ in 0..reps {
                b.matmul(&x, &w, &y, n);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_as_llama_bench_reads_them() {
        assert_eq!(parse_counts("512"), Ok(Counts(vec![512])));
        assert_eq!(parse_counts("0,128,256"), Ok(Counts(vec![0, 128, 256])));
        assert_eq!(parse_counts("1-4"), Ok(Counts(vec![1, 2, 3, 4])));
        assert_eq!(
            parse_counts("128-512+128"),
            Ok(Counts(vec![128, 256, 384, 512]))
        );
        assert_eq!(
            parse_counts("64-512*2,7"),
            Ok(Counts(vec![64, 128, 256, 512, 7]))
        );
        assert!(parse_counts("12a").is_err());
        assert!(parse_counts("").is_err());
        assert!(parse_counts("0-8*2").unwrap_err().contains("does not grow"));
    }

    #[test]
    fn tests_are_named_as_llama_bench_names_them() {
        let t = Test {
            n_prompt: 512,
            n_gen: 0,
            n_depth: 0,
            n_batch: 2048,
            n_ubatch: 512,
            kv_types: KvTypes::default(),
        };
        assert_eq!(t.name(), "pp512");
        assert_eq!(Test { n_depth: 4096, ..t }.name(), "pp512 @ d4096");
        let tg = Test {
            n_prompt: 0,
            n_gen: 128,
            ..t
        };
        assert_eq!(tg.name(), "tg128");
        assert_eq!(tg.n_ctx(), 129);
    }

    #[test]
    fn test_time_is_rfc3339_utc() {
        let at = |s| rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_408_499), "2026-12-04T18:21:39Z");
    }
}
