//! Command-line interface: argument parsing and the subcommands.

mod args;
mod argv;
mod bench;
mod info;
mod line_input;
mod perplexity;
mod run;
mod serve;
mod verify;

use args::{DeviceArgs, DeviceChoice};

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;
use vibrant::backend::cpu::CpuBackend;
use vibrant::backend::gpu::{GpuOptions, WgpuBackend};

#[derive(Parser)]
#[command(
    name = "vibrant",
    version,
    about = "Run quantized LLMs (GGUF) on any GPU through wgpu, or on the CPU",
    after_help = "Options may also be written before the command (vibrant --device gpu ask ...); \
                  each command's --help lists the options it takes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the answer.
    Ask(run::AskArgs),
    /// Serve the model over HTTP: OpenAI's and Ollama's APIs, requests batched together.
    Serve(serve::ServeArgs),
    /// Interactive multi-turn chat (/reset, /exit; Ctrl-C stops an answer).
    Chat(run::ChatArgs),
    /// Describe a model file.
    Info(info::InfoArgs),
    /// List installed and fetchable models.
    Models,
    /// List the GPU adapters wgpu finds, with their limits and features.
    Devices {
        /// List only the adapters of one graphics API: vulkan, metal, dx12 or gl.
        #[arg(long)]
        backend: Option<String>,
    },
    /// Measure prompt-processing and generation speed (like llama-bench).
    Bench(bench::BenchArgs),
    /// Perplexity of a model over a text, and KL divergence from a saved base run (as
    /// llama-perplexity).
    Perplexity(perplexity::PerplexityArgs),
    /// Check that the GPU computes what the CPU reference computes for a model.
    Verify(verify::VerifyArgs),
    /// Write a synthetic model: a real architecture's shape with random valid weights.
    Synth {
        /// Architecture shape (qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, qwen2.5-14b, qwen2.5-32b, llama3.2-1b, llama3.2-3b, llama3.1-8b, llama3.1-70b, gemma3-270m, gemma3-1b, gemma3-4b, qwen3-0.6b, qwen3-8b, qwen3-30b-a3b, phi3-mini, mixtral-8x7b, olmoe-1b-7b; tiny ones for tests: llama-tiny, gemma3-tiny, qwen3-tiny, qwen3moe-tiny, phi3-tiny, mixtral-tiny).
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
    #[cfg(feature = "cuda")]
    Cuda(Box<vibrant::backend::cuda::CudaBackend>),
}

/// Opens the device `--device` asks for; `auto` takes a hardware GPU when there is one.
pub fn open_device(d: &DeviceArgs) -> Result<Device> {
    let cpu = || -> Result<Device> { Ok(Device::Cpu(CpuBackend::new(d.cpu.threads)?)) };
    let choice = d.choice()?;
    if d.gpu.backend.as_deref() == Some("cuda") {
        return open_cuda(d);
    }
    let explicit = d.gpu.backend.is_some() || d.gpu.adapter.is_some();
    if cfg!(feature = "cuda") && choice != DeviceChoice::Cpu && !explicit {
        if !has_fast_wgpu_adapter()? {
            if let Some(device) = cuda_instead(d, choice)? {
                return Ok(device);
            }
        } else {
            say_cuda_is_there(choice);
        }
    }
    match choice {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Gpu => Ok(Device::Gpu(Box::new(WgpuBackend::new(d.gpu.options()?)?))),
        DeviceChoice::Auto => {
            let hardware = vibrant::backend::gpu::list_adapters(d.gpu.backend.as_deref())?
                .into_iter()
                .find(|a| a.device_type != "Cpu");
            match hardware {
                Some(a) => {
                    eprintln!("--device auto: using GPU {} ({})", a.name, a.api);
                    let options = GpuOptions {
                        adapter: Some(a.index),
                        ..d.gpu.options()?
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

/// `--backend cuda`: the CUDA backend on device `--adapter` (0 by default) of the CUDA list.
#[cfg(feature = "cuda")]
fn open_cuda(d: &DeviceArgs) -> Result<Device> {
    let backend = vibrant::backend::cuda::CudaBackend::new(d.gpu.cuda_options()?)?;
    Ok(Device::Cuda(Box::new(backend)))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_: &DeviceArgs) -> Result<Device> {
    anyhow::bail!("this vibrant was built without the CUDA backend: build it with --features cuda")
}

/// Whether wgpu finds a hardware GPU through Vulkan, Metal or DX12 (not GL, not a CPU
/// driver): the path `--device gpu` and `auto` take first. On an H100 the wgpu path (Vulkan)
/// decodes and reads prompts faster than the CUDA backend still (BENCHMARKS.md, eighth
/// session), which runs where wgpu finds no such GPU.
fn has_fast_wgpu_adapter() -> Result<bool> {
    let adapters = vibrant::backend::gpu::list_adapters(None)?;
    Ok(adapters
        .iter()
        .any(|a| a.device_type != "Cpu" && !a.api.eq_ignore_ascii_case("gl")))
}

/// `--device gpu` or `auto` where wgpu has no fast path: the CUDA backend where this build
/// has it and a CUDA device is there (said on stderr); `None` for wgpu's own choice (no CUDA
/// device, or CUDA that does not open, which is said too).
#[cfg(feature = "cuda")]
fn cuda_instead(d: &DeviceArgs, choice: DeviceChoice) -> Result<Option<Device>> {
    use vibrant::backend::cuda::{driver_present, list_devices, missing_libraries, CudaBackend};
    let flag = device_flag(choice);
    // No NVIDIA driver: the wgpu path, as in builds without CUDA. A driver without the rest
    // of CUDA is worth a word.
    if let Some(why) = missing_libraries() {
        if driver_present() {
            eprintln!("{flag}: CUDA is not usable ({why}); using wgpu");
        }
        return Ok(None);
    }
    let first = match list_devices() {
        Ok(list) => list.into_iter().next(),
        Err(e) => {
            eprintln!("{flag}: CUDA devices cannot be listed ({e}); using wgpu");
            None
        }
    };
    let Some(first) = first else {
        return Ok(None);
    };
    match CudaBackend::new(d.gpu.cuda_options()?) {
        Ok(backend) => {
            eprintln!(
                "{flag}: using CUDA on {} (wgpu finds no Vulkan, Metal or DX12 GPU)",
                first.name
            );
            Ok(Some(Device::Cuda(Box::new(backend))))
        }
        Err(e) => {
            eprintln!(
                "{flag}: CUDA on {} did not open ({e}); using wgpu",
                first.name
            );
            Ok(None)
        }
    }
}

/// `--device gpu` or `auto` taking wgpu where a CUDA device is there too: said on stderr, with
/// how to pick CUDA.
#[cfg(feature = "cuda")]
fn say_cuda_is_there(choice: DeviceChoice) {
    use vibrant::backend::cuda::{list_devices, missing_libraries};
    if missing_libraries().is_some() {
        return;
    }
    if let Some(first) = list_devices().ok().and_then(|l| l.into_iter().next()) {
        let flag = device_flag(choice);
        eprintln!(
            "{flag}: using wgpu, faster than the CUDA backend on {} for now (--backend cuda \
             picks it)",
            first.name
        );
    }
}

#[cfg(not(feature = "cuda"))]
fn say_cuda_is_there(_: DeviceChoice) {}

/// How the user asked for a GPU, for what stderr says of the choice.
#[cfg(feature = "cuda")]
fn device_flag(choice: DeviceChoice) -> &'static str {
    match choice {
        DeviceChoice::Auto => "--device auto",
        _ => "--device gpu",
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_instead(_: &DeviceArgs, _: DeviceChoice) -> Result<Option<Device>> {
    Ok(None)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse_from(argv::normalize(&Cli::command(), std::env::args_os()));
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
    match cli.command {
        Command::Ask(args) => run::ask(&args),
        Command::Chat(args) => run::chat(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Info(args) => info::info(&args),
        Command::Models => info::models(),
        Command::Devices { backend } => info::devices(backend.as_deref()),
        Command::Bench(args) => bench::bench(&args),
        Command::Verify(args) => verify::verify(&args),
        Command::Perplexity(args) => perplexity::perplexity(&args),
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
