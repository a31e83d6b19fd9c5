//! `serve`: load a model with one cache slot per parallel request and answer HTTP requests
//! (OpenAI and Ollama APIs) until SIGTERM or Ctrl-C.

use super::args::{DeviceChoice, LoadArgs};
use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::Duration;
use vibrant::backend::cpu::CpuBackend;
use vibrant::chat::{ChatError, ChatTemplate};
use vibrant::gguf::GgufFile;
use vibrant::model::arch::Spec;
use vibrant::model::{LoadOptions, Transformer};
use vibrant::serve::{LoadModel, ModelInfo, ServeConfig, StepModel};
use vibrant::tokenizer::Tokenizer;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each parallel request has a context of --ctx-size tokens of its own \
                        (the KV cache holds --parallel of them). Routes: POST /v1/chat/completions, \
                        /v1/completions, GET /v1/models; Ollama's POST /api/chat, /api/generate, \
                        /api/show, GET /api/tags; GET /health, /metrics."
)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests answered at once, each in its own cache slot of --ctx-size tokens.
    #[arg(long, short = 'P', default_value_t = 4)]
    pub parallel: usize,
    /// Requests waiting for a slot beyond which new ones are refused (503, Retry-After).
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Seconds shutdown waits for running requests before cutting them.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// On the CPU, the exact reference (weights dequantized, f64 products): each row is
    /// computed alone, so an answer does not depend on what it was batched with; slow.
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if args.load.context.batch_size <= args.parallel {
        bail!(
            "--batch-size ({}) must exceed --parallel ({}): a step runs a token of every request and a chunk of a new prompt",
            args.load.context.batch_size,
            args.parallel
        );
    }
    if !(args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0) {
        bail!("--shutdown-grace must be a number of seconds ≥ 0");
    }
    if args.exact && args.load.device.choice()? != DeviceChoice::Cpu {
        bail!("--exact is the CPU's reference mode: use --device cpu");
    }
    let path = vibrant::catalog::resolve(&args.load.model.model)?;
    let file = Arc::new(GgufFile::open(&path)?);
    let info = model_info(&file, &path)?;
    let options = LoadOptions {
        n_seq: args.parallel,
        ..args.load.context.load_options()
    };
    let load = loader(file, args, options);
    let config = ServeConfig {
        host: args.host.clone(),
        port: args.port,
        queue: args.queue,
        api_key: args.api_key.clone(),
        max_body: args.max_body,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
    };
    vibrant::serve::serve(config, info, load)?;
    Ok(())
}

/// What the routes describe: the name clients use (the file's stem), tokenizer, template.
fn model_info(file: &GgufFile, path: &std::path::Path) -> Result<ModelInfo> {
    let template = match ChatTemplate::from_gguf(file) {
        Ok(t) => Some(t),
        Err(ChatError::NoTemplate { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let spec = Spec::from_gguf(file)?;
    let quantization = vibrant::model::type_histogram(file)
        .into_iter()
        .max_by_key(|&(_, _, bytes)| bytes)
        .map_or(String::new(), |(t, _, _)| t.name().to_uppercase());
    Ok(ModelInfo {
        name: path
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        tokenizer: Tokenizer::from_gguf(file)?,
        template,
        architecture: file
            .str_opt("general.architecture")
            .unwrap_or("")
            .to_string(),
        file_bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
        quantization,
        n_ctx_train: spec.config.n_ctx_train,
        n_vocab: spec.config.n_vocab,
    })
}

/// Opens the device and loads the model on the model's thread.
fn loader(file: Arc<GgufFile>, args: &ServeArgs, options: LoadOptions) -> LoadModel {
    let (device, exact) = (args.load.device.clone(), args.exact);
    Box::new(move || {
        let model: Box<dyn StepModel> = match super::open_device(&device)? {
            super::Device::Cpu(_) if exact => {
                let cpu = CpuBackend::exact(device.cpu.threads)?;
                Box::new(Transformer::load(&file, cpu, &options)?)
            }
            super::Device::Cpu(backend) => Box::new(Transformer::load(&file, backend, &options)?),
            super::Device::Gpu(backend) => Box::new(Transformer::load(&file, *backend, &options)?),
            #[cfg(feature = "cuda")]
            super::Device::Cuda(backend) => Box::new(Transformer::load(&file, *backend, &options)?),
        };
        Ok(model)
    })
}
