//! `info` and `models`: what a model file holds and which models are at hand.

use super::args::{DeviceChoice, LoadArgs};
use anyhow::Result;
use vibrant::catalog;
use vibrant::chat::{ChatError, ChatTemplate};
use vibrant::gguf::GgufFile;
use vibrant::model::arch::{Ffn, Spec};
use vibrant::model::{type_histogram, Config, ModelError};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Model path or name (default: --model).
    #[arg(id = "file", value_name = "MODEL")]
    pub file: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Describes the file (what any readable GGUF holds), then the model vibrant would run from
/// it, or why it cannot run it; a readable file is described even when it cannot run.
pub fn info(args: &InfoArgs) -> Result<()> {
    let path = catalog::resolve(args.file.as_deref().unwrap_or(&args.load.model.model))?;
    let file = std::sync::Arc::new(GgufFile::open(&path)?);
    describe_file(&file);
    let spec = match Spec::from_gguf(&file) {
        Ok(spec) => spec,
        Err(e) => {
            println!("runs in vibrant: no: {}", not_runnable(&e));
            describe_tensor_types(&file);
            if args.load.device.choice()? != DeviceChoice::Cpu {
                eprintln!("device memory: not measured, as vibrant cannot run this model");
            }
            describe_metadata(&file);
            return Ok(());
        }
    };
    println!("runs in vibrant: yes");
    let config = &spec.config;
    describe_model(&file, config)?;
    describe_blocks(&spec);
    describe_tensor_types(&file);
    if args.load.device.choice()? != DeviceChoice::Cpu {
        device_memory(&args.load, &file, config)?;
    }
    describe_metadata(&file);
    Ok(())
}

/// Why a file's model cannot run, without the path the file section already named.
fn not_runnable(e: &ModelError) -> String {
    match e {
        ModelError::UnsupportedArch {
            arch, supported, ..
        } => {
            format!("architecture '{arch}' is not supported (vibrant runs {supported})")
        }
        other => other.to_string(),
    }
}

fn describe_file(file: &GgufFile) {
    let n_params: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    println!("file:           {}", file.path().display());
    println!(
        "name:           {}",
        file.str_opt("general.name").unwrap_or("(none)")
    );
    println!("GGUF version:   {}", file.version);
    println!(
        "architecture:   {}",
        file.str_opt("general.architecture").unwrap_or("(none)")
    );
    println!("file size:      {}", mib(file.file_size()));
    println!(
        "parameters:     {:.3} B ({} tensors)",
        n_params as f64 / 1e9,
        file.tensors.len()
    );
}

fn describe_model(file: &GgufFile, config: &Config) -> Result<()> {
    let a = &config.attention;
    let tied = file.tensor("output.weight").is_none();
    println!("layers:         {}", config.n_layer);
    println!(
        "width:          {} (feed-forward {})",
        config.n_embd, config.n_ff
    );
    let spec = Spec::from_gguf(file)?;
    if let Some(Ffn::Moe(moe)) = spec.layers.first().map(|l| &l.ffn) {
        println!(
            "experts:        {}, {} a token, feed-forward {} each",
            moe.n_expert,
            moe.routing.k,
            moe.n_ff()
        );
    }
    println!(
        "heads:          {} query / {} key-value, head size {}, RoPE {:?} base {}",
        a.n_head, a.n_head_kv, a.head_dim, a.rope, config.rope_base
    );
    println!("vocabulary:     {}", config.n_vocab);
    println!("context length: {}", config.n_ctx_train);
    println!(
        "output:         {}",
        if tied {
            "tied to token embeddings"
        } else {
            "separate"
        }
    );
    let template = match ChatTemplate::from_gguf(file) {
        Ok(t) if t.is_builtin_fallback() => "none in file (built-in fallback)",
        Ok(_) => "from file",
        Err(ChatError::NoTemplate { .. }) => "none (a base model: `ask` completes plain prompts)",
        Err(e) => return Err(e.into()),
    };
    println!("chat template:  {template}");
    Ok(())
}

/// What the family's blocks do besides llama's pre-norm attention and feed-forward network.
fn describe_blocks(spec: &Spec) {
    let layers = &spec.layers;
    let mut features = Vec::new();
    if layers.iter().any(|l| l.attention.qkv.parts.len() == 1) {
        features.push("fused query/key/value matrix".to_string());
    }
    if layers.iter().any(|l| l.attention.qk_norm.is_some()) {
        features.push("per-head QK-norm".into());
    }
    if layers.iter().any(|l| l.attention.norms.post.is_some()) {
        features.push("post-norms".into());
    }
    let windowed: Vec<_> = layers
        .iter()
        .filter_map(|l| Some((l.attention.opts.window?, l.attention.rope_base)))
        .collect();
    if let Some((window, base)) = windowed.first() {
        features.push(format!(
            "sliding window {window} on {} of {} layers (RoPE base {base} there)",
            windowed.len(),
            layers.len()
        ));
    }
    if let Some(scale) = spec.embedding_scale {
        features.push(format!("embeddings scaled by {scale:.2}"));
    }
    if let Some(cap) = spec.final_logit_softcap {
        features.push(format!("logits soft-capped at {cap}"));
    }
    let blocks = match features.is_empty() {
        true => "pre-norm attention and feed-forward".to_string(),
        false => features.join(", "),
    };
    println!("blocks:         {}: {blocks}", spec.config.arch);
}

fn describe_tensor_types(file: &GgufFile) {
    println!("tensor types:");
    for (ty, count, bytes) in type_histogram(file) {
        println!(
            "  {:<6} {:>4} tensors  {:>12}",
            ty.name(),
            count,
            mib(bytes)
        );
    }
}

fn describe_metadata(file: &GgufFile) {
    println!("metadata ({} keys):", file.metadata.len());
    for (key, value) in &file.metadata {
        println!("  {key} = {value}");
    }
}

/// Loads the model on the chosen device and reports what it holds there.
fn device_memory(args: &LoadArgs, file: &std::sync::Arc<GgufFile>, config: &Config) -> Result<()> {
    use vibrant::backend::Backend;
    use vibrant::model::Transformer;
    let options = args.context.load_options();
    let (describe, used, kv) = match super::open_device(&args.device)? {
        super::Device::Cpu(b) => {
            let m = Transformer::load(file, b, &options)?;
            (
                m.backend.describe(),
                m.backend.memory_used(),
                m.kv_cache_bytes(),
            )
        }
        super::Device::Gpu(b) => {
            let m = Transformer::load(file, *b, &options)?;
            (
                m.backend.describe(),
                m.backend.memory_used(),
                m.kv_cache_bytes(),
            )
        }
        #[cfg(feature = "cuda")]
        super::Device::Cuda(b) => {
            let m = Transformer::load(file, *b, &options)?;
            (
                m.backend.describe(),
                m.backend.memory_used(),
                m.kv_cache_bytes(),
            )
        }
    };
    let n_ctx = match options.n_ctx {
        0 => config.n_ctx_train,
        n => n,
    };
    let weights: u64 = file.tensors.iter().map(|t| t.n_bytes).sum();
    println!("device:         {describe}");
    println!(
        "device memory:  {} = weights {} + KV cache {} ({n_ctx} tokens, {}) + scratch {}",
        mib(used),
        mib(weights),
        mib(kv),
        options.kv_types,
        mib(used.saturating_sub(weights + kv))
    );
    println!(
        "                {:.1}% of file size + KV cache",
        100.0 * used as f64 / (file.file_size() + kv) as f64
    );
    Ok(())
}

pub fn models() -> Result<()> {
    let dir = catalog::models_dir();
    let installed = catalog::installed();
    println!("models directory: {}", dir.display());
    if installed.is_empty() {
        println!("installed: none");
    } else {
        println!("installed:");
        for (name, path) in &installed {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            println!("  {name:<24} {:>12}", mib(size));
        }
    }
    println!("fetchable with `python3 scripts/fetch_model.py NAME`:");
    for (name, what) in catalog::KNOWN_MODELS {
        let mark = if installed.iter().any(|(n, _)| n == name) {
            "installed"
        } else {
            ""
        };
        println!("  {name:<24} {what} {mark}");
    }
    Ok(())
}

pub fn devices(api: Option<&str>) -> Result<()> {
    if matches!(api, None | Some("cuda")) {
        cuda_devices(api.is_some())?;
    }
    if api == Some("cuda") {
        return Ok(());
    }
    let adapters = vibrant::backend::gpu::list_adapters(api)?;
    if adapters.is_empty() {
        println!("no GPU adapter with compute support found (the CPU backend is always available)");
    }
    for a in adapters {
        println!("[{}] {} ({}, {})", a.index, a.name, a.api, a.device_type);
        println!("    driver:            {}", a.driver);
        println!("    max buffer:        {}", mib(a.max_buffer_size));
        println!("    max binding:       {}", mib(a.max_binding_size));
        println!(
            "    workgroup storage: {} KiB, {} invocations",
            a.max_workgroup_storage / 1024,
            a.max_invocations
        );
        println!(
            "    subgroup sizes:    {}..{}",
            a.subgroup_sizes.0, a.subgroup_sizes.1
        );
        println!("    features:          {}", a.features.summary());
    }
    Ok(())
}

/// The CUDA devices, or why there are none (an error only where `--backend cuda` asked).
#[cfg(feature = "cuda")]
fn cuda_devices(asked: bool) -> Result<()> {
    match vibrant::backend::cuda::list_devices() {
        Ok(list) if list.is_empty() && asked => anyhow::bail!("no CUDA device found"),
        Ok(list) => {
            for d in list {
                println!("[cuda {}] {} (CUDA)", d.ordinal, d.name);
                println!(
                    "    compute capability: {}.{}",
                    d.compute_capability.0, d.compute_capability.1
                );
                println!("    memory:             {}", mib(d.memory));
                println!("    driver:             {}", d.driver());
            }
            Ok(())
        }
        Err(e) if asked => Err(e.into()),
        Err(e) => {
            println!("no CUDA device usable: {e}");
            Ok(())
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices(asked: bool) -> Result<()> {
    if asked {
        anyhow::bail!(
            "this vibrant was built without the CUDA backend: build it with --features cuda"
        );
    }
    Ok(())
}

pub fn synth(preset: &str, mix: &str, seed: u64, out: &std::path::Path) -> Result<()> {
    use vibrant::synth;
    let Some(p) = synth::preset(preset) else {
        let names: Vec<&str> = synth::PRESETS.iter().map(|p| p.name).collect();
        anyhow::bail!(
            "unknown preset '{preset}' (choose one of {})",
            names.join(", ")
        );
    };
    let Some(m) = synth::Mix::parse(mix) else {
        anyhow::bail!("unknown mix '{mix}' (choose one of {})", synth::Mix::NAMES);
    };
    let started = std::time::Instant::now();
    synth::write_model(p, m, seed, out)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({}, {mix}, seed {seed}): {} in {:.1} s",
        out.display(),
        p.name,
        mib(size),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
