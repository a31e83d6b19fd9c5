//! Argument groups that subcommands flatten: each subcommand takes exactly the groups it uses,
//! and a new model-loading subcommand reuses them ([`LoadArgs`], [`AnswerArgs`]).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::time::Duration;
use vibrant::backend::gpu::GpuOptions;
use vibrant::backend::{CacheType, KvTypes};
use vibrant::generate::{SamplerConfig, Setting};
use vibrant::model::LoadOptions;

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Model: a path to a .gguf file or a name in the models directory ($VIBRANT_MODELS).
    #[arg(long, short, default_value = vibrant::catalog::DEFAULT_MODEL)]
    pub model: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    Cpu,
    Gpu,
    Auto,
}

/// Where a model runs: the device, and the settings of the GPU or the CPU behind it.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// Where to run the model [default: cpu, or gpu where --backend or --adapter picks one].
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(flatten)]
    pub cpu: CpuArgs,
}

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Device")]
pub struct GpuArgs {
    /// Restrict the GPU choice to one graphics API: vulkan, metal, dx12 or gl; or cuda, the
    /// native NVIDIA backend of builds with `--features cuda` (which `--device gpu` takes where
    /// wgpu finds no Vulkan, Metal or DX12 GPU).
    #[arg(long)]
    pub backend: Option<String>,
    /// Pick a GPU by its index in `vibrant devices`.
    #[arg(long)]
    pub adapter: Option<usize>,
    /// Seconds any single wait on the GPU may take before it is reported as a hang.
    #[arg(long, default_value_t = 60.0)]
    pub gpu_timeout: f64,
}

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Device")]
pub struct CpuArgs {
    /// CPU threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

/// The context a model is loaded with.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Context")]
pub struct ContextArgs {
    /// Context window in tokens (0: the model's trained context).
    #[arg(long, short = 'c', default_value_t = 4096)]
    pub ctx_size: usize,
    /// Most tokens run through the model in one step while reading the prompt.
    #[arg(long, short = 'b', default_value_t = 256)]
    pub batch_size: usize,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// How the KV cache stores keys and values, spelled as llama.cpp spells it.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Context")]
pub struct CacheArgs {
    /// KV cache type of the keys (-ctk).
    #[arg(long, value_enum, default_value_t = CacheType::F16)]
    pub cache_type_k: CacheType,
    /// KV cache type of the values (-ctv).
    #[arg(long, value_enum, default_value_t = CacheType::F16)]
    pub cache_type_v: CacheType,
}

impl CacheArgs {
    pub fn kv_types(&self) -> KvTypes {
        KvTypes {
            k: self.cache_type_k,
            v: self.cache_type_v,
        }
    }
}

/// What a subcommand that loads a model to run it takes.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub context: ContextArgs,
}

#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Sampling")]
pub struct SamplingArgs {
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temp: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability, 0 to 1 (1: all).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one, 0 to 1 (0: none).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64, above 0 (1: none).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Subtracted from a recent token's logit once per time it appears (0: none).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Subtracted from a recent token's logit once (0: none).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Add BIAS to token ID's logit, as ID+BIAS or ID-BIAS (ID-inf bans it); repeatable.
    #[arg(long, value_name = "ID(+|-)BIAS", value_parser = parse_logit_bias, allow_hyphen_values = true)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Random seed for sampling (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// How answers are generated and shown: `ask`, `chat`.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Answer")]
pub struct AnswerArgs {
    /// Most tokens to generate per answer.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    /// System message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Stop when the answer produces this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print load details and speed after each answer.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

impl GpuArgs {
    pub fn options(&self) -> Result<GpuOptions> {
        if !(self.gpu_timeout.is_finite() && self.gpu_timeout > 0.0) {
            bail!("--gpu-timeout must be a positive number of seconds");
        }
        Ok(GpuOptions {
            api: self.backend.clone(),
            adapter: self.adapter,
            timeout: Duration::from_secs_f64(self.gpu_timeout),
            ..GpuOptions::default()
        })
    }
}

#[cfg(feature = "cuda")]
impl GpuArgs {
    /// The CUDA backend's options: device `--adapter` of the CUDA list, `--gpu-timeout`.
    pub fn cuda_options(&self) -> Result<vibrant::backend::cuda::CudaOptions> {
        let gpu = self.options()?;
        Ok(vibrant::backend::cuda::CudaOptions {
            ordinal: self.adapter.unwrap_or(0),
            timeout: gpu.timeout,
            ..Default::default()
        })
    }
}

impl DeviceArgs {
    /// Where to run: `--device`, else the GPU where `--backend` or `--adapter` names one
    /// (they would otherwise be ignored), else the CPU.
    pub fn choice(&self) -> Result<DeviceChoice> {
        let picks_gpu = self.gpu.backend.is_some() || self.gpu.adapter.is_some();
        match self.device {
            Some(DeviceChoice::Cpu) if picks_gpu => {
                bail!("--backend and --adapter choose a GPU: they do not go with --device cpu")
            }
            Some(choice) => Ok(choice),
            None if picks_gpu => Ok(DeviceChoice::Gpu),
            None => Ok(DeviceChoice::Cpu),
        }
    }
}

impl ContextArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            n_ctx: self.ctx_size,
            n_batch: self.batch_size,
            kv_types: self.cache.kv_types(),
            ..LoadOptions::default()
        }
    }
}

impl SamplingArgs {
    /// The sampler these flags ask for; an out-of-range value is an error naming its flag.
    pub fn config(&self) -> Result<SamplerConfig> {
        let config = SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repeat_last_n: self.repeat_last_n,
            logit_bias: self.logit_bias.clone(),
            seed: self.seed.unwrap_or_else(clock_seed),
        };
        if let Err(e) = config.validate() {
            let flag = match e.setting {
                Setting::Temperature => "--temp",
                Setting::TopP => "--top-p",
                Setting::MinP => "--min-p",
                Setting::RepeatPenalty => "--repeat-penalty",
                Setting::FrequencyPenalty => "--frequency-penalty",
                Setting::PresencePenalty => "--presence-penalty",
                Setting::LogitBias => "--logit-bias",
            };
            bail!("{flag} must be {}, got {}", e.expected, e.value);
        }
        Ok(config)
    }
}

/// `ID+BIAS` or `ID-BIAS`, as llama.cpp's `--logit-bias` takes it.
fn parse_logit_bias(s: &str) -> std::result::Result<(u32, f32), String> {
    let at = s
        .find(['+', '-'])
        .ok_or_else(|| format!("'{s}' is not ID+BIAS or ID-BIAS"))?;
    let id = s[..at]
        .parse()
        .map_err(|_| format!("'{}' in '{s}' is not a token id", &s[..at]))?;
    let bias: f32 = s[at..]
        .parse()
        .map_err(|_| format!("'{}' in '{s}' is not a number", &s[at..]))?;
    Ok((id, bias))
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
