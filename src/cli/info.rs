//! `info` and `models`: what a model file holds and which models are at hand.

use super::GlobalArgs;
use anyhow::Result;
use vibrant::catalog;
use vibrant::chat::ChatTemplate;
use vibrant::gguf::GgufFile;
use vibrant::model::{type_histogram, Config};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn info(_g: &GlobalArgs, model: &str) -> Result<()> {
    let path = catalog::resolve(model)?;
    let file = GgufFile::open(&path)?;
    let config = Config::from_gguf(&file)?;
    let a = &config.attention;
    let tied = file.tensor("output.weight").is_none();
    println!("file:           {}", path.display());
    println!("name:           {}", config.name);
    println!("GGUF version:   {}", file.version);
    println!("architecture:   {}", config.arch.name());
    println!("file size:      {}", mib(file.file_size()));
    println!(
        "parameters:     {:.3} B ({} tensors)",
        config.n_params(tied) as f64 / 1e9,
        file.tensors.len()
    );
    println!("layers:         {}", config.n_layer);
    println!(
        "width:          {} (feed-forward {})",
        config.n_embd, config.n_ff
    );
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
    let template = ChatTemplate::from_gguf(&file)?;
    println!(
        "chat template:  {}",
        if template.is_builtin_fallback() {
            "none in file (built-in fallback)"
        } else {
            "from file"
        }
    );
    println!("tensor types:");
    for (ty, count, bytes) in type_histogram(&file) {
        println!(
            "  {:<6} {:>4} tensors  {:>12}",
            ty.name(),
            count,
            mib(bytes)
        );
    }
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
