//! The GPU backend: the transformer's ops as WGSL compute kernels on any wgpu adapter.
//!
//! Weights are uploaded once, still quantized (see [`layout`]). Each forward step records all
//! its dispatches into one command encoder and one compute pass; pipelines are built once and
//! bind groups are cached, so a decode step only records. Kernel parameters travel in one
//! uniform buffer per submission, one 256-byte slot per dispatch (dynamic offsets). Only what
//! the host asks for (a token id, or the logits) is read back, and every wait is bounded; greedy
//! decoding queues a token's step before waiting for the id of the one before it.
//!
//! This file holds the backend's state and the device-side types; the rest is split by
//! concern: [`device`] (adapters and waits), `record` (dispatches, submissions, readback),
//! `buffers` (allocation and scratch), `upload` (weights into the layouts the kernels read),
//! `products` (weight products and their kernel choice), `attention` (its kernels' limits,
//! RoPE and the cache write), `params` (the kernels' parameter structs), `backend_impl` (the
//! trait's ops), [`kernels`] (the kernel set and its WGSL), [`tuning`] (per-device choices),
//! `inspect` (tests' and tools' views of the device), `sampling`, `profile`.

mod attention;
mod backend_impl;
mod buffers;
pub mod device;
mod experts;
mod inspect;
pub mod kernels;
pub mod layout;
mod params;
pub mod pipeline_cache;
mod products;
mod profile;
mod record;
mod sampling;
pub mod switches;
pub mod tuning;
mod upload;

pub use device::{list_adapters, AdapterSummary, Gpu, GpuFeatures, GpuOptions};
pub use kernels::Kernel;

use super::{
    Activation, AttentionOpts, AttentionShape, Backend, BackendError, Batch, CacheLayer, CacheType,
    Dims, ExpertInput, HostTokens, KernelTiming, KvLayout, KvTypes, MatrixUse, Pointwise, QkNorm,
    Result, RmsNorm, Rope, RopeKind, Routing, Scratch, Span, WeightRows, ARGMAX_SLOTS,
};
use crate::quant::GgmlType;
use crate::sampling::Sampler;
use kernels::{activation_code, MatvecOutput, Pipeline};
use layout::WeightLayout;
use profile::Cost;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

use attention::check_head_dim;
use buffers::storage_buffer;
use params::{
    AttentionParams, DequantParams, ElementParams, KernelParams, KvStoreParams, NormParams,
    ProductParams, QkNormParams, ReduceParams, RopeParams,
};
use products::{Product, QkvRows, TILED_MIN_TOKENS};
use record::{grid, BindKey, PARAM_SLOTS};
use upload::Staging;

/// Most workgroups along one grid dimension (the WebGPU minimum every adapter offers).
const MAX_GROUPS: u32 = 65535;

/// A device buffer with an identity for the bind-group cache.
pub struct GpuBuf {
    id: u64,
    buffer: wgpu::Buffer,
}

#[derive(Clone)]
pub struct GpuTensor {
    buf: Arc<GpuBuf>,
    rows: usize,
    cols: usize,
}

impl Dims for GpuTensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

/// A row range of a weight run small enough for one binding.
struct MatrixPart {
    buf: Arc<GpuBuf>,
    /// The first row within its run.
    row_start: u32,
    rows: u32,
    layout: WeightLayout,
}

/// Consecutive rows of a matrix of one weight type, in parts that each fit one binding.
struct WeightRun {
    ggml_type: GgmlType,
    /// The run's first row among the matrix's rows as the device holds them.
    offset: usize,
    rows: usize,
    parts: Vec<MatrixPart>,
}

/// How the device orders a matrix's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowOrder {
    /// As given: products in row order.
    Given,
    /// Gate and up rows interleaved (row 2i gate i, row 2i + 1 up i), of one weight type: one
    /// pass computes both and the GLU.
    GatePairs,
    /// `[q | k | v]` with each query and key head in the pair order of shaders/qkv.wgsl, so
    /// that a decode product finishes with RoPE and the cache write.
    QkvPairs,
}

pub struct GpuMatrix {
    name: String,
    rows: usize,
    cols: usize,
    runs: Vec<WeightRun>,
    /// The bias of every row, in the device's order.
    bias: Option<GpuVector>,
    order: RowOrder,
    /// Blocks of rows, one per expert ([`MatrixUse::Experts`]), each within one part; 1 for
    /// other matrices.
    experts: usize,
}

impl GpuMatrix {
    /// Row ranges the matrix is held in, each within one binding.
    pub fn parts(&self) -> usize {
        self.runs.iter().map(|r| r.parts.len()).sum()
    }
}

impl Dims for GpuMatrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

pub struct GpuVector {
    buf: Arc<GpuBuf>,
}

/// Per layer, a key and a value buffer of `[rows, kv_width]` values: f16, or q8_0 with the
/// quants of all rows first and the blocks' f16 scales after them, from word `scales` on
/// (shaders/kv_q8_0.wgsl), the 34 bytes per 32 values of ggml's blocks. One sequence (slot
/// 0): the attention kernels read keys from row 0 on.
pub struct GpuKvCache {
    /// Keys and values of sequence s, layer l at `s * n_layers + l`.
    k: Vec<Arc<GpuBuf>>,
    v: Vec<Arc<GpuBuf>>,
    n_layers: usize,
    slots: usize,
    kv_width: usize,
    n_ctx: usize,
    shape: AttentionShape,
    types: KvTypes,
    scales: u32,
}

/// Workgroups of the first argmax step (ARGMAX_GROUPS in shaders/reduce.wgsl).
const ARGMAX_GROUPS: u32 = 64;

/// Where [`Backend::queue_argmax`] copies an id for the host, and the submission that does.
struct ArgmaxSlot {
    buffer: wgpu::Buffer,
    written_by: Option<wgpu::SubmissionIndex>,
}

/// Where the backend's share of loading a model went, for `--verbose`. Repacking is host work,
/// the same on any GPU; uploads are host copies into the device's staging memory plus the
/// driver's buffer creation.
#[derive(Clone, Debug, Default)]
pub struct LoadTimes {
    /// Moving scale fields aside and interleaving rows, summed over the threads doing it.
    pub repack: Duration,
    /// Creating weight buffers and copying the repacked bytes into them.
    pub upload: Duration,
    /// Building kernels: the time the loading thread spent on them or waited for them.
    pub kernels: Duration,
    pub kernels_built: usize,
    /// Weight bytes uploaded.
    pub bytes: u64,
}

impl LoadTimes {
    pub fn describe(&self) -> String {
        format!(
            "weights {:.0} MiB: repack {:.2} s, upload {:.2} s; {} kernels {:.2} s",
            self.bytes as f64 / (1024.0 * 1024.0),
            self.repack.as_secs_f64(),
            self.upload.as_secs_f64(),
            self.kernels_built,
            self.kernels.as_secs_f64(),
        )
    }
}

pub struct WgpuBackend {
    gpu: Arc<Gpu>,
    pipelines: HashMap<Kernel, Pipeline>,
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    params_buf: wgpu::Buffer,
    param_stride: u64,
    params: Vec<u8>,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    tokens: Arc<GpuBuf>,
    token_capacity: usize,
    result: Arc<GpuBuf>,
    argmax_slots: [ArgmaxSlot; ARGMAX_SLOTS],
    readback: Option<wgpu::Buffer>,
    /// Stands in for an absent optional input (a matmul without bias).
    dummy: Arc<GpuBuf>,
    next_id: u64,
    bytes_allocated: u64,
    /// What the recorded work is doing, for error messages.
    stage: String,
    /// This backend's first recording error: nothing more is recorded, and every wait after
    /// it reports it. Kept here, not in the device's error sink, which the backends sharing
    /// a device share: one backend's refusal is not another's error.
    failed: Option<BackendError>,
    profiler: Option<profile::Profiler>,
    tuning: tuning::Tuning,
    partials: Option<Arc<GpuBuf>>,
    /// The buffers of [`Backend::scratch`].
    scratch: HashMap<Scratch, Arc<GpuBuf>>,
    /// Staging buffers that weight uploads go through, reused in turn while loading.
    staging: Vec<Staging>,
    next_staging: usize,
    /// Rows of the weight matrix in hand decoded to f16 for the tensor-core matmul.
    f16_rows: Option<Arc<GpuBuf>>,
    /// Activations quantized to 8 bits once (Kernel::QuantizeActs), grown as needed.
    acts_q8: Option<Arc<GpuBuf>>,
    /// The sampler of [`Backend::start_sampling`].
    sampler: Option<sampling::DeviceSampler>,
    /// Unused: the device picks every token (the token ops are all overridden).
    host_tokens: HostTokens,
    load_times: LoadTimes,
    /// A step's keys and values in f32 on their way into q8_0 caches (shaders/kv_store.wgsl).
    kv_staging: Option<[Arc<GpuBuf>; 2]>,
    /// The types of the last cache made: the kernels that write a cache, which uploads of
    /// query/key/value matrices build ahead, are built for these (a model makes its cache
    /// before its weights).
    kv_types: KvTypes,
}

impl WgpuBackend {
    pub fn new(options: GpuOptions) -> Result<Self> {
        Self::on(Arc::new(Gpu::open(options)?))
    }

    /// A backend on a device already open. Several may share one device, each with its own
    /// buffers, kernels and command stream (the GPU tests do: opening and destroying a device
    /// per test, many at once, crashed the H100's driver now and then). Not on GL from several
    /// threads: wgpu holds a GL device's context through each submission and panics in a
    /// thread that waits 6 s for it.
    pub fn on(gpu: Arc<Gpu>) -> Result<Self> {
        let param_stride = (gpu.limits.min_uniform_buffer_offset_alignment as u64).max(64);
        let params_buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel parameters"),
            size: param_stride * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let small = |id: u64, label: &str, size: u64| storage_buffer(&gpu, id, label, size);
        const FIRST_TOKENS: usize = 256;
        let tokens = small(1, "tokens", 4 * FIRST_TOKENS as u64)?;
        let result = small(2, "argmax result", 8 * (ARGMAX_GROUPS as u64 + 1))?;
        let dummy = small(3, "absent input", 16)?;
        let argmax_slots = std::array::from_fn(|_| ArgmaxSlot {
            buffer: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("argmax readback"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            written_by: None,
        });
        let tuning = tuning::Tuning::for_device(&gpu);
        Ok(Self {
            gpu,
            pipelines: HashMap::new(),
            bind_groups: HashMap::new(),
            params_buf,
            param_stride,
            params: Vec::new(),
            encoder: None,
            pass: None,
            tokens,
            token_capacity: FIRST_TOKENS,
            result,
            argmax_slots,
            readback: None,
            dummy,
            next_id: 3,
            bytes_allocated: param_stride * PARAM_SLOTS + 4 * FIRST_TOKENS as u64 + 32,
            stage: "setup".into(),
            failed: None,
            profiler: None,
            tuning,
            partials: None,
            scratch: HashMap::new(),
            staging: Vec::new(),
            next_staging: 0,
            f16_rows: None,
            acts_q8: None,
            sampler: None,
            host_tokens: HostTokens::default(),
            load_times: LoadTimes::default(),
            kv_staging: None,
            kv_types: KvTypes::default(),
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Whether decode products (fewer than 8 tokens) over rows `cols` long of type `ty`
    /// quantize their activations to 8 bits per group of 16 (shaders/matvec_int8.wgsl).
    pub fn int8_activations(&self, ty: GgmlType, cols: usize) -> bool {
        self.tuning.int8_cols_for(ty, cols) > 0
    }

    /// Whether prompt matmuls run on tensor cores (f16 inputs, f32 accumulation).
    pub fn uses_tensor_cores(&self) -> bool {
        self.tuning.coop
    }
}
