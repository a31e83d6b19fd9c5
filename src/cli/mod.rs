//! Command-line interface: argument parsing and the subcommands.

mod bench;
mod info;
mod perplexity;
mod run;
mod verify;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;
use vibrant::backend::cpu::CpuBackend;
use vibrant::backend::gpu::{GpuOptions, WgpuBackend};

#[derive(Parser)]
#[command(
    name = "vibrant",
    version,
    about = "Run quantized LLMs (GGUF) on any GPU through wgpu, or on the CPU"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    Cpu,
    Gpu,
    Auto,
}

#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Model: a path to a .gguf file or a name in the models directory ($VIBRANT_MODELS).
    #[arg(long, short, global = true, default_value = vibrant::catalog::DEFAULT_MODEL)]
    pub model: String,
    /// Where to run the model [default: cpu, or gpu where --backend or --adapter picks one].
    #[arg(long, global = true, value_enum)]
    pub device: Option<DeviceChoice>,
    /// Restrict the GPU choice to one graphics API: vulkan, metal, dx12 or gl.
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Pick a GPU by its index in `vibrant devices`.
    #[arg(long, global = true)]
    pub adapter: Option<usize>,
    /// CPU threads (0: one per core).
    #[arg(long, short = 't', global = true, default_value_t = 0)]
    pub threads: usize,
    /// Context window in tokens (0: the model's trained context).
    #[arg(long, short = 'c', global = true, default_value_t = 4096)]
    pub ctx_size: usize,
    /// Most tokens run through the model in one step while reading the prompt.
    #[arg(long, short = 'b', global = true, default_value_t = 256)]
    pub batch_size: usize,
    /// Most tokens to generate per answer.
    #[arg(long, short = 'n', global = true, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, global = true, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, global = true, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability (1: all).
    #[arg(long, global = true, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0: none).
    #[arg(long, global = true, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64 (1: none).
    #[arg(long, global = true, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed for sampling (default: from the clock).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// System message for the chat template.
    #[arg(long, global = true)]
    pub system: Option<String>,
    /// Stop when the answer produces this text (repeatable).
    #[arg(long, global = true)]
    pub stop: Vec<String>,
    /// Seconds any single wait on the GPU may take before it is reported as a hang.
    #[arg(long, global = true, default_value_t = 60.0)]
    pub gpu_timeout: f64,
    /// Print load details and speed after each answer.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the answer.
    Ask {
        /// The prompt ("-" or absent: read standard input).
        prompt: Option<String>,
        /// Send the prompt as it is, without the chat template.
        #[arg(long)]
        raw: bool,
    },
    /// Interactive multi-turn chat (/reset, /exit; Ctrl-C stops an answer).
    Chat,
    /// Describe a model file.
    Info {
        /// Model path or name (default: --model).
        model: Option<String>,
    },
    /// List installed and fetchable models.
    Models,
    /// List the GPU adapters wgpu finds, with their limits and features.
    Devices,
    /// Measure prompt-processing and generation speed (like llama-bench).
    Bench(bench::BenchArgs),
    /// Perplexity of a model over a text, and KL divergence from a saved base run (as
    /// llama-perplexity).
    Perplexity(perplexity::PerplexityArgs),
    /// Check that the GPU computes what the CPU reference computes for a model.
    Verify(verify::VerifyArgs),
    /// Write a synthetic model: a real architecture's shape with random valid weights.
    Synth {
        /// Architecture shape (qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, llama3.2-1b, llama3.2-3b, llama3.1-8b).
        #[arg(long)]
        preset: String,
        /// Tensor-type mix: q4_k_m, q8_0, q4_0 or f16.
        #[arg(long, default_value = "q4_k_m")]
        mix: String,
        /// Random seed: the same seed writes the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file.
        #[arg(long, short)]
        out: std::path::PathBuf,
    },
}

/// The backend a command runs on.
pub enum Device {
    Cpu(CpuBackend),
    Gpu(Box<WgpuBackend>),
}

pub fn gpu_options(g: &GlobalArgs) -> Result<GpuOptions> {
    if !(g.gpu_timeout.is_finite() && g.gpu_timeout > 0.0) {
        anyhow::bail!("--gpu-timeout must be a positive number of seconds");
    }
    Ok(GpuOptions {
        api: g.backend.clone(),
        adapter: g.adapter,
        timeout: Duration::from_secs_f64(g.gpu_timeout),
        ..GpuOptions::default()
    })
}

impl GlobalArgs {
    /// Where to run: `--device`, else the GPU where `--backend` or `--adapter` names one
    /// (they would otherwise be ignored), else the CPU.
    pub fn device(&self) -> Result<DeviceChoice> {
        let picks_gpu = self.backend.is_some() || self.adapter.is_some();
        match self.device {
            Some(DeviceChoice::Cpu) if picks_gpu => {
                anyhow::bail!(
                    "--backend and --adapter choose a GPU: they do not go with --device cpu"
                )
            }
            Some(choice) => Ok(choice),
            None if picks_gpu => Ok(DeviceChoice::Gpu),
            None => Ok(DeviceChoice::Cpu),
        }
    }
}

/// Opens the device `--device` asks for; `auto` takes a hardware GPU when there is one.
pub fn open_device(g: &GlobalArgs) -> Result<Device> {
    let cpu = || -> Result<Device> { Ok(Device::Cpu(CpuBackend::new(g.threads)?)) };
    match g.device()? {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Gpu => Ok(Device::Gpu(Box::new(WgpuBackend::new(gpu_options(g)?)?))),
        DeviceChoice::Auto => {
            let hardware = vibrant::backend::gpu::list_adapters(g.backend.as_deref())?
                .into_iter()
                .find(|a| a.device_type != "Cpu");
            match hardware {
                Some(a) => {
                    eprintln!("--device auto: using GPU {} ({})", a.name, a.api);
                    let options = GpuOptions {
                        adapter: Some(a.index),
                        ..gpu_options(g)?
                    };
                    Ok(Device::Gpu(Box::new(WgpuBackend::new(options)?)))
                }
                None => {
                    eprintln!("--device auto: no hardware GPU found, using the CPU");
                    cpu()
                }
            }
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_vulkan_loader();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Ask { prompt, raw } => run::ask(g, prompt, raw),
        Command::Chat => run::chat(g),
        Command::Info { model } => info::info(g, model.as_deref().unwrap_or(&g.model)),
        Command::Models => info::models(),
        Command::Devices => info::devices(g),
        Command::Bench(args) => bench::bench(g, &args),
        Command::Verify(args) => verify::verify(g, &args),
        Command::Perplexity(args) => perplexity::perplexity(g, &args),
        Command::Synth {
            preset,
            mix,
            seed,
            out,
        } => info::synth(&preset, &mix, seed, &out),
    }
}

/// Mesa's Vulkan drivers complain on stderr when XDG_RUNTIME_DIR is unset (as on servers and in
/// CI); vibrant draws nothing on screen, so any writable directory will do.
fn quiet_vulkan_loader() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Called first thing in main, before any thread exists.
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}
