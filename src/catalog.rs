//! Where models live on disk and the short names they go by.

use std::path::{Path, PathBuf};

/// The models `scripts/fetch_model.py` knows how to fetch, with what they are.
pub const KNOWN_MODELS: &[(&str, &str)] = &[
    ("smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 (98 MB)"),
    (
        "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct, mostly Q5_0 (491 MB)",
    ),
    (
        "qwen2.5-coder-1.5b-q4",
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1.1 GB)",
    ),
    (
        "gemma3-270m",
        "Gemma 3 270M, base model (no chat template), Q4_K_M (253 MB)",
    ),
];

pub const DEFAULT_MODEL: &str = "qwen2.5-coder-1.5b-q4";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("model file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("model '{name}' is not installed in {dir}: fetch it with `python3 scripts/fetch_model.py {name}`")]
    NotInstalled { name: String, dir: PathBuf },
    #[error("no model named '{name}' in {dir} (installed: {installed}; known: {known}); pass a path to a .gguf file or a known name")]
    Unknown {
        name: String,
        dir: PathBuf,
        installed: String,
        known: String,
    },
}

/// `$VIBRANT_MODELS`, else `$XDG_DATA_HOME/vibrant/models`, else `~/.local/share/vibrant/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIBRANT_MODELS") {
        return PathBuf::from(dir);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("vibrant").join("models")
}

/// The `.gguf` files in the models directory, by name.
pub fn installed() -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(models_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
        .collect();
    found.sort();
    found
}

/// A path to an existing file, or a short name resolved in the models directory.
pub fn resolve(model: &str) -> Result<PathBuf, CatalogError> {
    let as_path = Path::new(model);
    let looks_like_path = model.contains(std::path::MAIN_SEPARATOR) || model.ends_with(".gguf");
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    if looks_like_path {
        return Err(CatalogError::MissingFile(as_path.to_path_buf()));
    }
    let dir = models_dir();
    let candidate = dir.join(format!("{model}.gguf"));
    if candidate.is_file() {
        return Ok(candidate);
    }
    if KNOWN_MODELS.iter().any(|(n, _)| *n == model) {
        return Err(CatalogError::NotInstalled {
            name: model.to_string(),
            dir,
        });
    }
    let names = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Err(CatalogError::Unknown {
        name: model.to_string(),
        dir,
        installed: names(installed().into_iter().map(|(n, _)| n).collect()),
        known: names(KNOWN_MODELS.iter().map(|(n, _)| n.to_string()).collect()),
    })
}
