//! Model hyper-parameters, read from a GGUF file's `{arch}.*` metadata keys: the keys every
//! family shares, read once here for the family files of [`super::arch`].

use crate::backend::{AttentionShape, RopeKind};
use crate::gguf::{GgufError, GgufFile};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: architecture '{arch}' is not supported (vibrant runs {supported})")]
    UnsupportedArch {
        path: String,
        arch: String,
        supported: String,
    },
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
    /// A [`super::Transformer::step`] the cache or the activations cannot take.
    #[error("step over several sequences: {0}")]
    Step(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Clone, Debug)]
pub struct Config {
    /// The family's name, as `general.architecture` gives it.
    pub arch: &'static str,
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
    /// The hyper-parameters of a file of a family vibrant runs.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Ok(super::arch::Spec::from_gguf(file)?.config)
    }
}

/// A file's metadata as one family reads it: keys under the family's name.
pub struct Meta<'a> {
    pub file: &'a GgufFile,
    pub arch: &'static str,
}

impl Meta<'_> {
    pub fn path(&self) -> String {
        self.file.path().display().to_string()
    }

    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    pub fn invalid(&self, what: String) -> ModelError {
        ModelError::Invalid {
            path: self.path(),
            what,
        }
    }

    /// The hyper-parameters every family has, under their usual keys, with RoPE pairing
    /// dimensions as `rope` says.
    pub fn config(&self, rope: RopeKind) -> Result<Config> {
        let file = self.file;
        let key = |k: &str| self.key(k);
        let n_embd = file.u64(&key("embedding_length"))? as usize;
        let n_head = file.u64(&key("attention.head_count"))? as usize;
        let n_head_kv = file.u64_or(&key("attention.head_count_kv"), n_head as u64)? as usize;
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(self.invalid(format!(
                "{n_head} attention heads cannot be grouped over {n_head_kv} key/value heads"
            )));
        }
        if n_embd == 0 || !n_embd.is_multiple_of(n_head) {
            return Err(self.invalid(format!(
                "embedding width {n_embd} is not a multiple of the {n_head} heads"
            )));
        }
        let head_dim =
            file.u64_or(&key("attention.key_length"), (n_embd / n_head) as u64)? as usize;
        let rope_dim = file.u64_or(&key("rope.dimension_count"), head_dim as u64)? as usize;
        if !head_dim.is_multiple_of(2) || rope_dim != head_dim {
            return Err(self.invalid(format!(
                "head size {head_dim} with {rope_dim} rotated dimensions is not supported (RoPE must cover whole, even-sized heads)"
            )));
        }
        let rope_linear_scale = match file.str_opt(&key("rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => file.f32_or(&key("rope.scaling.factor"), 1.0)?,
            Some(other) => {
                return Err(self.invalid(format!(
                    "RoPE scaling '{other}' is not supported (vibrant supports none and linear)"
                )))
            }
        };
        if !(rope_linear_scale.is_finite() && rope_linear_scale > 0.0) {
            return Err(self.invalid(format!(
                "RoPE scaling factor {rope_linear_scale} is not positive"
            )));
        }
        let config = Config {
            arch: self.arch,
            name: file
                .str_opt("general.name")
                .unwrap_or(self.arch)
                .to_string(),
            n_vocab: self.n_vocab(n_embd)?,
            n_embd,
            n_layer: file.u64(&key("block_count"))? as usize,
            n_ff: file.u64(&key("feed_forward_length"))? as usize,
            n_ctx_train: file.u64_or(&key("context_length"), 2048)? as usize,
            attention: AttentionShape {
                n_head,
                n_head_kv,
                head_dim,
                rope,
            },
            rms_eps: file.f32_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope_base: file.f32_or(&key("rope.freq_base"), 10000.0)?,
            rope_linear_scale,
        };
        if config.n_layer == 0 || config.n_ff == 0 || config.n_layer > 1024 {
            return Err(self.invalid(format!(
                "{} layers with feed-forward width {} is not a usable model",
                config.n_layer, config.n_ff
            )));
        }
        Ok(config)
    }

    /// The vocabulary size, from the token embeddings' shape.
    fn n_vocab(&self, n_embd: usize) -> Result<usize> {
        let name = "token_embd.weight";
        let tensor_error = |what: String| ModelError::Tensor {
            path: self.path(),
            tensor: name.into(),
            what,
        };
        let embd = self
            .file
            .tensor(name)
            .ok_or_else(|| tensor_error("is missing".into()))?;
        match embd.dims.as_slice() {
            [w, v] if *w as usize == n_embd => Ok(*v as usize),
            dims => Err(tensor_error(format!(
                "has shape {dims:?}, expected [{n_embd}, n_vocab]"
            ))),
        }
    }
}
