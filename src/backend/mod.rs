//! Backends execute the transformer's operations: the CPU reference and the wgpu GPU path
//! implement the same small trait, so the model's forward pass is written once.
//!
//! Tensors are row-major f32 activations of `[rows, cols]`; an op works on the first `n` rows.
//! Matrices are weights of `[out_features rows, in_features cols]`, kept in their GGUF encoding.

pub mod cpu;
pub mod gpu;

use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::GgmlType;
use crate::sampling::Sampler;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Unsupported(String),
    #[error("out of memory on {device}: {what}")]
    OutOfMemory { device: String, what: String },
    #[error("GPU error during {stage}: {message}")]
    Gpu { stage: String, message: String },
    #[error("GPU timed out after {seconds:.1} s waiting for {stage} (raise --gpu-timeout if the device is just slow)")]
    Timeout { stage: String, seconds: f64 },
    #[error("GPU device lost during {stage}: {reason}")]
    DeviceLost { stage: String, reason: String },
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs (x[2i], x[2i+1]): llama.
    Normal,
    /// Halves (x[i], x[i + d/2]): GPT-NeoX, qwen2.
    Neox,
}

/// Shape of the attention of one layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope: RopeKind,
}

impl AttentionShape {
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// How the KV cache stores keys or values: `f16` (the default), or `q8_0` as ggml lays it out
/// (blocks of 32 values: an f16 scale, max |x| / 127, and 32 rounded 8-bit quants), 34 bytes
/// per 32 values instead of 64. Named as llama.cpp's `--cache-type-k` / `--cache-type-v` name
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CacheType {
    #[default]
    F16,
    Q8_0,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown KV cache type '{0}' (expected f16 or q8_0)")]
pub struct UnknownCacheType(String);

impl CacheType {
    pub const ALL: [CacheType; 2] = [CacheType::F16, CacheType::Q8_0];

    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The ggml type of a cache row.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// Bytes of `n` values (a whole number of blocks).
    pub fn bytes_for(self, n: usize) -> usize {
        self.ggml_type()
            .row_bytes(n)
            .expect("cache rows are whole blocks, checked at load")
    }
}

impl std::fmt::Display for CacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CacheType {
    type Err = UnknownCacheType;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownCacheType(s.to_string()))
    }
}

impl clap::ValueEnum for CacheType {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// The types of a KV cache's keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvTypes {
    pub k: CacheType,
    pub v: CacheType,
}

impl KvTypes {
    /// Refuses heads that do not split into whole blocks of a quantized type: a row of the
    /// cache (one head) must be whole blocks, so that each head's values have scales of
    /// their own.
    pub fn check(&self, shape: &AttentionShape) -> Result<()> {
        for (what, ty) in [("key", self.k), ("value", self.v)] {
            let block = ty.ggml_type().block_size();
            if !shape.head_dim.is_multiple_of(block) {
                return Err(BackendError::Unsupported(format!(
                    "a {ty} {what} cache (--cache-type-{}) needs attention heads of a multiple of {block} values; this model's heads have {}",
                    &what[..1],
                    shape.head_dim
                )));
            }
        }
        Ok(())
    }

    /// Bytes of one position's keys and values for one layer of attention shaped `shape`.
    pub fn bytes_per_position(&self, shape: &AttentionShape) -> usize {
        self.k.bytes_for(shape.kv_width()) + self.v.bytes_for(shape.kv_width())
    }
}

impl std::fmt::Display for KvTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K {}, V {}", self.k, self.v)
    }
}

/// The encoded bytes of one weight tensor: still inside its (memory-mapped) file, so that a
/// backend that computes from host memory keeps them without copying, or owned (tests,
/// generated weights).
/// One of a layer's q, k and v projections as stored in the file.
pub struct QkvPart {
    pub ggml_type: GgmlType,
    pub data: WeightBytes,
    pub rows: usize,
    pub bias: Option<Vec<f32>>,
}

#[derive(Clone)]
pub struct WeightBytes(WeightSource);

#[derive(Clone)]
enum WeightSource {
    File {
        file: Arc<GgufFile>,
        start: usize,
        len: usize,
    },
    Owned(Arc<[u8]>),
}

impl WeightBytes {
    pub fn new(file: &Arc<GgufFile>, info: &TensorInfo) -> Self {
        Self(WeightSource::File {
            file: Arc::clone(file),
            start: (file.data_offset + info.offset) as usize,
            len: info.n_bytes as usize,
        })
    }

    pub fn owned(bytes: Vec<u8>) -> Self {
        Self(WeightSource::Owned(bytes.into()))
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.0 {
            WeightSource::File { file, start, len } => &file.bytes()[*start..start + len],
            WeightSource::Owned(bytes) => bytes,
        }
    }
}

/// Slots of [`Backend::queue_argmax`]: one token's id being read while the next one's is
/// computed.
pub const ARGMAX_SLOTS: usize = 2;

/// What the forward pass needs from a device.
pub trait Backend {
    type Tensor;
    type Matrix;
    type Vector;
    type KvCache;
    /// The gate and up projections of a SwiGLU feed-forward block.
    type GateUp;
    /// A layer's query, key and value projections, as [`Backend::attention_inputs`] takes them.
    type Qkv;

    /// A one-line description of the device, for logs and `--verbose`.
    fn describe(&self) -> String;

    fn upload_matrix(
        &mut self,
        name: &str,
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        data: WeightBytes,
    ) -> Result<Self::Matrix>;
    fn upload_vector(&mut self, name: &str, data: &[f32]) -> Result<Self::Vector>;
    /// Gate and up projections (`[rows, cols]` each), uploaded together so that a backend may
    /// compute both in one pass.
    fn upload_gate_up(
        &mut self,
        name: &str,
        gate: (GgmlType, WeightBytes),
        up: (GgmlType, WeightBytes),
        rows: usize,
        cols: usize,
    ) -> Result<Self::GateUp>;
    /// Uploads a layer's query, key and value projections (`[rows, cols]` each, with their
    /// biases) for a model with attention heads of `shape`.
    fn upload_qkv(
        &mut self,
        name: &str,
        parts: [QkvPart; 3],
        cols: usize,
        shape: &AttentionShape,
    ) -> Result<Self::Qkv>;
    fn tensor(&mut self, name: &str, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// K and V for `n_layers` layers of attention shaped `shape`, for `n_ctx` positions,
    /// stored as `types` says; a backend whose kernels cannot take the shape (or the shape
    /// the types) refuses it here, at load.
    fn kv_cache(
        &mut self,
        n_layers: usize,
        n_ctx: usize,
        shape: &AttentionShape,
        types: KvTypes,
    ) -> Result<Self::KvCache>;

    /// out[t] = row `tokens[t]` of `table`, dequantized.
    fn embed(&mut self, table: &Self::Matrix, tokens: &[u32], out: &Self::Tensor);
    /// out = x / rms(x) * weight, per row.
    fn rms_norm(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Vector,
        eps: f32,
        out: &Self::Tensor,
        n: usize,
    );
    /// out = x · wᵀ (+ bias).
    fn matmul(
        &mut self,
        x: &Self::Tensor,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
        out: &Self::Tensor,
        n: usize,
    );
    /// out_i = rms_norm(x) · w_iᵀ (+ bias_i) for each (w_i, bias_i, out_i); backends that
    /// cannot fuse the normalisation into the products write it to `normed` first.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn norm_matmuls(
        &mut self,
        x: &Self::Tensor,
        norm: &Self::Vector,
        eps: f32,
        normed: &Self::Tensor,
        products: &[(&Self::Matrix, Option<&Self::Vector>, &Self::Tensor)],
        n: usize,
    ) {
        self.rms_norm(x, norm, eps, normed, n);
        for (w, bias, out) in products {
            self.matmul(normed, w, *bias, out, n);
        }
    }
    /// out = silu(rms_norm(x) · gateᵀ) * (rms_norm(x) · upᵀ): the feed-forward input. Backends
    /// that cannot fuse go through `normed`, `gate_out` and `up_out`.
    #[allow(clippy::too_many_arguments)]
    fn norm_gate_up_swiglu(
        &mut self,
        x: &Self::Tensor,
        norm: &Self::Vector,
        eps: f32,
        normed: &Self::Tensor,
        gate_up: &Self::GateUp,
        gate_out: &Self::Tensor,
        up_out: &Self::Tensor,
        out: &Self::Tensor,
        n: usize,
    );
    /// acc += x · wᵀ; backends that cannot fuse the add go through `scratch`.
    fn matmul_add(
        &mut self,
        x: &Self::Tensor,
        w: &Self::Matrix,
        acc: &Self::Tensor,
        scratch: &Self::Tensor,
        n: usize,
    ) {
        self.matmul(x, w, None, scratch, n);
        self.add(acc, scratch, n);
    }
    /// acc += x.
    fn add(&mut self, acc: &Self::Tensor, x: &Self::Tensor, n: usize);
    /// out = silu(gate) * up.
    fn swiglu(&mut self, gate: &Self::Tensor, up: &Self::Tensor, out: &Self::Tensor, n: usize);
    /// The inputs of attention for the n tokens at `pos..pos + n`: x is RMS-normalised, then
    /// q = rope(Wq·x + bq) is written to `q`, and rope(Wk·x + bk) and Wv·x + bv go into the
    /// cache of `layer` (rotations from the `[n_ctx, head_dim / 2]` cos/sin table). `normed`,
    /// `k` and `v` are scratch.
    #[allow(clippy::too_many_arguments)]
    fn attention_inputs(
        &mut self,
        x: &Self::Tensor,
        norm: (&Self::Vector, f32),
        qkv: &Self::Qkv,
        scratch: [&Self::Tensor; 3],
        q: &Self::Tensor,
        rope_cos_sin: &Self::Vector,
        cache: &Self::KvCache,
        layer: usize,
        pos: usize,
        n: usize,
        shape: &AttentionShape,
    );
    /// Causal attention of the n queries at `pos..pos + n` over cache positions `0..pos + n`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        pos: usize,
        n: usize,
        out: &Self::Tensor,
        shape: &AttentionShape,
    );
    /// dst[0] = src[row].
    fn copy_row(&mut self, src: &Self::Tensor, row: usize, dst: &Self::Tensor);

    /// Rows `0..n` of a tensor, brought to the host.
    fn read(&mut self, x: &Self::Tensor, n: usize) -> Result<Vec<f32>>;
    /// Index of the largest value of row 0 (first one on ties), without reading the row back.
    fn argmax(&mut self, x: &Self::Tensor) -> Result<u32> {
        self.queue_argmax(x, 0);
        self.read_argmax(0)
    }
    /// Sends all recorded work to the device, ending with the argmax of row 0 of `x` (as
    /// [`Backend::argmax`] takes it), and returns without waiting: the id stays on the device
    /// for [`Backend::embed_argmax`] and is read later from `slot` (below [`ARGMAX_SLOTS`]), so
    /// that the next token's step can be queued before this one's id reaches the host.
    fn queue_argmax(&mut self, x: &Self::Tensor, slot: usize);
    /// Prepares [`Backend::queue_sample`] to draw as `sampler` would from here on: its
    /// settings, its draws so far and its recent tokens (settings for which
    /// `fits_device()` holds).
    fn start_sampling(&mut self, sampler: &Sampler) -> Result<()>;
    /// [`Backend::queue_argmax`] with the token that the sampler of
    /// [`Backend::start_sampling`] draws from row 0 of `x` (which it adjusts in place by its
    /// bias and penalties); that sampler then counts the draw and remembers the token, as the
    /// host's sampler does with [`Sampler::sample`] and [`Sampler::accept`].
    fn queue_sample(&mut self, x: &Self::Tensor, slot: usize);
    /// The id [`Backend::queue_argmax`] put in `slot`, waiting for it (bounded on GPUs).
    fn read_argmax(&mut self, slot: usize) -> Result<u32>;
    /// out[0] = row (the last queued argmax) of `table`: [`Backend::embed`] of a token the
    /// host has not seen yet.
    fn embed_argmax(&mut self, table: &Self::Matrix, out: &Self::Tensor);
    /// Waits until all recorded work has finished (bounded on GPUs).
    fn sync(&mut self) -> Result<()>;
    /// Device memory the backend holds, in bytes.
    fn memory_used(&self) -> u64;

    /// Starts timing every kernel launch (where the device can); see [`Backend::take_profile`].
    fn start_profile(&mut self) -> Result<()> {
        Err(BackendError::Unsupported(format!(
            "{} cannot time its kernels",
            self.describe()
        )))
    }

    /// The kernel launches since [`Backend::start_profile`], in order, and stops timing.
    fn take_profile(&mut self) -> Result<Vec<KernelTiming>> {
        Ok(Vec::new())
    }

    /// Where loading went inside the backend (repacking, uploads, kernels), for `--verbose`;
    /// `None` where it only maps the file.
    fn load_report(&self) -> Option<String> {
        None
    }
}

/// One timed kernel launch, with what it had to move and compute.
#[derive(Clone, Debug)]
pub struct KernelTiming {
    pub kernel: String,
    pub seconds: f64,
    pub bytes: u64,
    pub flops: u64,
}
