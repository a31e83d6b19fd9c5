//! Model hyper-parameters, read from a GGUF file's `{arch}.*` metadata keys.

use crate::backend::{AttentionShape, RopeKind};
use crate::gguf::{GgufError, GgufFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: architecture '{arch}' is not supported (vibrant runs llama and qwen2)")]
    UnsupportedArch { path: String, arch: String },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
    #[error("{path}: tensor '{tensor}' {what}")]
    Tensor {
        path: String,
        tensor: String,
        what: String,
    },
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error(transparent)]
    ContextFull(#[from] super::ContextFull),
}

pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub name: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub attention: AttentionShape,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Positions are divided by this before rotation (linear RoPE scaling).
    pub rope_linear_scale: f32,
}

impl Config {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().display().to_string();
        let arch_name = file.str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(ModelError::UnsupportedArch {
                    path,
                    arch: other.to_string(),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let invalid = |what: String| ModelError::Invalid {
            path: path.clone(),
            what,
        };

        let n_embd = file.u64(&key("embedding_length"))? as usize;
        let n_head = file.u64(&key("attention.head_count"))? as usize;
        let n_head_kv = file.u64_or(&key("attention.head_count_kv"), n_head as u64)? as usize;
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(invalid(format!(
                "{n_head} attention heads cannot be grouped over {n_head_kv} key/value heads"
            )));
        }
        if n_embd == 0 || !n_embd.is_multiple_of(n_head) {
            return Err(invalid(format!(
                "embedding width {n_embd} is not a multiple of the {n_head} heads"
            )));
        }
        let head_dim =
            file.u64_or(&key("attention.key_length"), (n_embd / n_head) as u64)? as usize;
        let rope_dim = file.u64_or(&key("rope.dimension_count"), head_dim as u64)? as usize;
        if !head_dim.is_multiple_of(2) || rope_dim != head_dim {
            return Err(invalid(format!(
                "head size {head_dim} with {rope_dim} rotated dimensions is not supported (RoPE must cover whole, even-sized heads)"
            )));
        }
        let rope_linear_scale = match file.str_opt(&key("rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => file.f32_or(&key("rope.scaling.factor"), 1.0)?,
            Some(other) => {
                return Err(invalid(format!(
                    "RoPE scaling '{other}' is not supported (vibrant supports none and linear)"
                )))
            }
        };
        if !(rope_linear_scale.is_finite() && rope_linear_scale > 0.0) {
            return Err(invalid(format!(
                "RoPE scaling factor {rope_linear_scale} is not positive"
            )));
        }

        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::Tensor {
                path: path.clone(),
                tensor: "token_embd.weight".into(),
                what: "is missing".into(),
            })?;
        let n_vocab = match embd.dims.as_slice() {
            [w, v] if *w as usize == n_embd => *v as usize,
            dims => {
                return Err(ModelError::Tensor {
                    path: path.clone(),
                    tensor: "token_embd.weight".into(),
                    what: format!("has shape {dims:?}, expected [{n_embd}, n_vocab]"),
                })
            }
        };

        let config = Self {
            arch,
            name: file
                .str_opt("general.name")
                .unwrap_or(arch_name)
                .to_string(),
            n_vocab,
            n_embd,
            n_layer: file.u64(&key("block_count"))? as usize,
            n_ff: file.u64(&key("feed_forward_length"))? as usize,
            n_ctx_train: file.u64_or(&key("context_length"), 2048)? as usize,
            attention: AttentionShape {
                n_head,
                n_head_kv,
                head_dim,
                rope: match arch {
                    Arch::Llama => RopeKind::Normal,
                    Arch::Qwen2 => RopeKind::Neox,
                },
            },
            rms_eps: file.f32_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope_base: file.f32_or(&key("rope.freq_base"), 10000.0)?,
            rope_linear_scale,
        };
        if config.n_layer == 0 || config.n_ff == 0 || config.n_layer > 1024 {
            return Err(invalid(format!(
                "{} layers with feed-forward width {} is not a usable model",
                config.n_layer, config.n_ff
            )));
        }
        Ok(config)
    }

    /// Parameters in the weight matrices and embeddings (norms and biases excluded).
    pub fn n_params(&self, tied_output: bool) -> u64 {
        let a = &self.attention;
        let per_layer = self.n_embd * (a.q_width() + 2 * a.kv_width())
            + a.q_width() * self.n_embd
            + 3 * self.n_embd * self.n_ff;
        let embd = self.n_vocab * self.n_embd;
        (self.n_layer * per_layer + embd * if tied_output { 1 } else { 2 }) as u64
    }
}
