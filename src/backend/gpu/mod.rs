//! The GPU backend: the transformer's ops as WGSL compute kernels on any wgpu adapter.
//!
//! Weights are uploaded once, still quantized (see [`layout`]). Each forward step records all
//! its dispatches into one command encoder and one compute pass; pipelines are built once and
//! bind groups are cached, so a decode step only records. Kernel parameters travel in one
//! uniform buffer per submission, one 256-byte slot per dispatch (dynamic offsets). Only what
//! the host asks for (a token id, or the logits) is read back, and every wait is bounded; greedy
//! decoding queues a token's step before waiting for the id of the one before it.

pub mod device;
pub mod kernels;
pub mod layout;
pub mod pipeline_cache;
mod profile;
mod sampling;

pub use device::{list_adapters, AdapterSummary, Gpu, GpuFeatures, GpuOptions};
pub use kernels::Kernel;

use super::{
    Activation, AttentionOpts, AttentionShape, Backend, BackendError, Batch, CacheLayer, CacheType,
    Dims, KernelTiming, KvLayout, KvTypes, MatrixUse, Pointwise, QkNorm, Result, RmsNorm, Rope,
    RopeKind, Scratch, Span, WeightRows, ARGMAX_SLOTS,
};
use crate::quant::GgmlType;
use crate::sampling::Sampler;
use bytemuck::{Pod, Zeroable};
use kernels::{activation_code, MatvecForm, MatvecOutput, Pipeline};
use layout::WeightLayout;
use profile::Cost;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

/// Most workgroups along one grid dimension (the WebGPU minimum every adapter offers).
const MAX_GROUPS: u32 = 65535;
/// Parameter slots per submission before recording flushes.
const PARAM_SLOTS: u64 = 4096;

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
    k: Vec<Arc<GpuBuf>>,
    v: Vec<Arc<GpuBuf>>,
    kv_width: usize,
    n_ctx: usize,
    shape: AttentionShape,
    types: KvTypes,
    scales: u32,
}

/// Workgroups of the first argmax step (shaders/reduce.wgsl ARGMAX_GROUPS).
const ARGMAX_GROUPS: u32 = 64;
/// Largest head size the attention kernels hold in workgroup memory.
const MAX_HEAD_DIM: usize = 256;
/// Keys per workgroup of decode attention (shaders/attention.wgsl CHUNK).
const ATTENTION_CHUNK: usize = 128;
/// Most queries per step that attend through the decode kernel; more use the prompt kernel.
const DECODE_ATTENTION_MAX_TOKENS: usize = 4;
/// Steps of this many tokens or more multiply through tiles; fewer stream the weights per token.
const TILED_MIN_TOKENS: usize = 8;
/// The tensor-core matmul's step along a row (shaders/matmul_coop.wgsl BK): rows of other
/// lengths go to the FMA kernel.
const COOP_K_STEP: usize = 32;
/// Weight rows per tensor-core workgroup (shaders/matmul_coop.wgsl BN).
const COOP_TILE_ROWS: u32 = 128;
/// Tensor-core products use tiles of 128 tokens where at least this many of them cover the
/// product (about one per core of an H100), else tiles of 64 (shaders/matmul_coop.wgsl BM):
/// the taller tiles are 35% faster on the 3B feed-forward input, but 25% slower where the
/// 2,048-row products get only 64 of them. With 128 rather than 256, the 8B shape's 4,096-row
/// products take them too: its pp512 +19% on the H100, the 3B shape's unchanged.
const COOP_TALL_MIN_GROUPS: u32 = 128;
/// The most f16 weight bytes decoded at a time for a tensor-core product: a bound on the
/// scratch memory. Slices should be whole matrices where possible: a slice of a few row tiles
/// launches too few workgroups to fill the card (48 MB slices cost the 8B shape's prompts 26%
/// on the H100, for the 3B shape 256 MB gains nothing over 128; at 128 MB the 14B and 32B
/// shapes' down projections ended in slices of 384 and 512 rows, 24 and 32 workgroups).
/// 512 MB holds every matrix of a 70B model but its gate/up pairs whole.
const COOP_SLICE_BYTES: u64 = 512 << 20;

/// Weight bytes repacked into staging memory and sent to the device at a time.
const UPLOAD_CHUNK_BYTES: usize = 32 << 20;
/// Staging buffers weight uploads cycle through: the device copies from one or two while the
/// host repacks into the next. Fresh staging memory for every chunk cost a page fault per
/// 4 KiB (on lavapipe, most of a load's host time) and the driver's mapping of new memory.
const UPLOADS_IN_FLIGHT: usize = 3;

/// A staging buffer for weight uploads and the submission that last copied from it.
struct Staging {
    buffer: wgpu::Buffer,
    /// Mapped for writing again (set by the map callback).
    mapped: Arc<AtomicBool>,
    copied_by: Option<wgpu::SubmissionIndex>,
}

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

/// Identifies a bind group: the kernel and the buffers bound to it, in order.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    kernel: Kernel,
    buffers: Vec<u64>,
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
    /// Set once recording hit an error: nothing more is recorded, the next wait reports it.
    failed: bool,
    profiler: Option<profile::Profiler>,
    tuning: kernels::Tuning,
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
    load_times: LoadTimes,
    /// A step's keys and values in f32 on their way into q8_0 caches (shaders/kv_store.wgsl).
    kv_staging: Option<[Arc<GpuBuf>; 2]>,
    /// The types of the last cache made: the kernels that write a cache, which uploads of
    /// query/key/value matrices build ahead, are built for these (a model makes its cache
    /// before its weights).
    kv_types: KvTypes,
}

/// A storage buffer the kernels read and write, and the host copies to and from.
fn storage_buffer(gpu: &Gpu, id: u64, label: &str, size: u64) -> Result<Arc<GpuBuf>> {
    let buffer = gpu.scoped(&format!("allocating {label}"), || {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })?;
    Ok(Arc::new(GpuBuf { id, buffer }))
}

/// How a weight product is finished (besides the matrix's bias).
#[derive(Clone, Copy, Default)]
struct Product<'a> {
    /// Add to the output instead of overwriting it (the residual).
    accumulate: bool,
    /// RMS-normalise x (weight, epsilon) inside the decode kernel.
    norm: Option<(&'a GpuVector, f32)>,
    /// Rows interleave gate and up; write this GLU of each pair.
    glu: Option<Activation>,
    /// Rows are `[q | k | v]` in pair order: decode finishes them with RoPE and the cache
    /// write; prompts write them to the output.
    qkv: Option<QkvRows<'a>>,
}

/// Where a query/key/value product goes.
#[derive(Clone, Copy)]
struct QkvRows<'a> {
    rope_cos_sin: &'a GpuVector,
    q: &'a GpuTensor,
    /// The caches, or for a q8_0 one its staging rows.
    k_cache: &'a Arc<GpuBuf>,
    v_cache: &'a Arc<GpuBuf>,
    types: KvTypes,
    pos: usize,
    shape: &'a AttentionShape,
}

/// Query or key rows (`rows`, heads of `head_dim`) in the order shaders/qkv.wgsl takes them:
/// per head, the two rotation pairs of frequencies 2j and 2j + 1 in slots 4j..4j + 3.
fn pair_order(rows: usize, head_dim: usize, neox: bool) -> Vec<usize> {
    let half = head_dim / 2;
    let mut order = Vec::with_capacity(rows);
    for head in (0..rows).step_by(head_dim) {
        for j in 0..head_dim / 4 {
            let (f, g) = (2 * j, 2 * j + 1);
            let pairs = match neox {
                true => [f, f + half, g, g + half],
                false => [2 * f, 2 * f + 1, 2 * g, 2 * g + 1],
            };
            order.extend(pairs.map(|d| head + d));
        }
    }
    order
}

/// Rows of `[q | k | v]` in the order the device holds them: each query and key head in pair
/// order, values as they are.
fn qkv_order(shape: &AttentionShape) -> Vec<usize> {
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    let neox = shape.rope == RopeKind::Neox;
    let mut order = pair_order(qw, shape.head_dim, neox);
    order.extend(pair_order(kvw, shape.head_dim, neox).iter().map(|r| qw + r));
    order.extend(qw + kvw..qw + 2 * kvw);
    order
}

/// One row of a weight matrix as stored: its type and bytes.
type StoredRow<'a> = (GgmlType, &'a [u8]);

/// Every row of `parts` as stored, and every row's bias (0 where its part has none),
/// checking the parts' sizes.
fn stored_rows<'a>(
    name: &str,
    cols: usize,
    parts: &'a [WeightRows],
) -> Result<(Vec<StoredRow<'a>>, Vec<f32>)> {
    let mut rows = Vec::new();
    let mut bias = Vec::new();
    for part in parts {
        let invalid = |what: String| BackendError::Unsupported(format!("{name}: {what}"));
        let row_bytes = part
            .ggml_type
            .row_bytes(cols)
            .map_err(|e| invalid(format!("rows of {cols} values: {e}")))?;
        let data = part.data.bytes();
        if data.len() != row_bytes * part.rows {
            return Err(invalid(format!(
                "{} bytes are not {} rows of {row_bytes}",
                data.len(),
                part.rows
            )));
        }
        rows.extend(data.chunks_exact(row_bytes).map(|r| (part.ggml_type, r)));
        match &part.bias {
            Some(b) if b.len() == part.rows => bias.extend_from_slice(b),
            Some(b) => {
                return Err(invalid(format!(
                    "a bias of {} values for {} rows",
                    b.len(),
                    part.rows
                )))
            }
            None => bias.resize(bias.len() + part.rows, 0.0),
        }
    }
    Ok((rows, bias))
}

/// shaders/attention.wgsl holds a query head in workgroup memory sized for heads of up to 256
/// values, and the kernels read cache rows 8 values at a time.
fn check_head_dim(shape: &AttentionShape) -> Result<()> {
    if shape.head_dim > MAX_HEAD_DIM || !shape.head_dim.is_multiple_of(8) {
        return Err(BackendError::Unsupported(format!(
            "attention heads of {} values: the GPU kernels take multiples of 8 up to {MAX_HEAD_DIM}",
            shape.head_dim
        )));
    }
    Ok(())
}

/// Keys and values read by attention for n queries at `pos..`, and its multiply-adds.
fn attention_cost(shape: &AttentionShape, types: KvTypes, pos: usize, n: usize) -> Cost {
    let keys: usize = (0..n).map(|t| pos + t + 1).sum();
    let per_key = types.k.bytes_for(shape.head_dim) + types.v.bytes_for(shape.head_dim);
    Cost {
        bytes: (keys * shape.n_head * per_key) as u64,
        flops: (keys * shape.n_head * shape.head_dim * 4) as u64,
    }
}

/// Where a step's keys and values go: the caches, or for a q8_0 one its staging rows.
struct KvDestinations {
    k: Arc<GpuBuf>,
    v: Arc<GpuBuf>,
    /// The staging rows of q8_0 caches, for [`WgpuBackend::quantize_staged`].
    staging: Option<[Arc<GpuBuf>; 2]>,
}

/// Refuses a cache the GPU kernels cannot serve, naming what they lack.
fn check_layout(layout: &KvLayout) -> Result<()> {
    if layout.slots != 1 {
        return Err(BackendError::Unsupported(format!(
            "the GPU backend keeps the cache of one sequence, not {} (batches of sequences run on the CPU backend for now)",
            layout.slots
        )));
    }
    Ok(())
}

fn grid(groups: u64) -> (u32, u32) {
    let x = groups.min(MAX_GROUPS as u64) as u32;
    (x.max(1), groups.div_ceil(MAX_GROUPS as u64) as u32)
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
        let tuning = kernels::Tuning::for_device(&gpu);
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
            failed: false,
            profiler: None,
            tuning,
            partials: None,
            scratch: HashMap::new(),
            staging: Vec::new(),
            next_staging: 0,
            f16_rows: None,
            acts_q8: None,
            sampler: None,
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

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn storage(&mut self, label: &str, size: u64) -> Result<Arc<GpuBuf>> {
        self.check_size(label, size)?;
        let size = size.next_multiple_of(4).max(16);
        let id = self.new_id();
        let buf = storage_buffer(&self.gpu, id, label, size)?;
        self.bytes_allocated += size;
        Ok(buf)
    }

    fn storage_init(&mut self, label: &str, contents: &[u8]) -> Result<Arc<GpuBuf>> {
        self.check_size(label, contents.len() as u64)?;
        let buffer = self.gpu.scoped(&format!("uploading {label}"), || {
            self.gpu
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                })
        })?;
        self.bytes_allocated += contents.len() as u64;
        Ok(Arc::new(GpuBuf {
            id: self.new_id(),
            buffer,
        }))
    }

    fn max_binding(&self) -> u64 {
        self.gpu
            .limits
            .max_storage_buffer_binding_size
            .min(self.gpu.limits.max_buffer_size)
    }

    fn check_size(&self, label: &str, size: u64) -> Result<()> {
        if size > self.max_binding() {
            return Err(BackendError::Unsupported(format!(
                "{label} needs a {} MiB buffer, but {} binds at most {} MiB: use a smaller --ctx-size or --batch-size, or another device",
                size >> 20,
                self.gpu.info.name,
                self.max_binding() >> 20
            )));
        }
        Ok(())
    }

    fn pipeline(&mut self, kernel: Kernel) -> Result<()> {
        if !self.pipelines.contains_key(&kernel) {
            let started = Instant::now();
            let built = kernels::build(&self.gpu, &self.tuning, kernel)?;
            self.pipelines.insert(kernel, built);
            self.load_times.kernels += started.elapsed();
            self.load_times.kernels_built += 1;
        }
        Ok(())
    }

    /// The value of `result`; or `None` after marking recording as failed, with the error
    /// kept for the next wait to report (as every recording error is).
    fn recorded<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.failed = true;
                self.gpu.report(e);
                None
            }
        }
    }

    /// Records one dispatch. Recording errors (a failed pipeline) surface at the next wait.
    fn dispatch<P: Pod>(
        &mut self,
        kernel: Kernel,
        params: &P,
        buffers: &[&Arc<GpuBuf>],
        groups: (u32, u32, u32),
        cost: Cost,
    ) {
        if self.failed {
            return;
        }
        let built = self.pipeline(kernel);
        if self.recorded(built).is_none() {
            return;
        }
        if self.params.len() as u64 >= self.param_stride * PARAM_SLOTS {
            self.submit();
        }
        let offset = self.params.len() as u64;
        let bytes = bytemuck::bytes_of(params);
        self.params.extend_from_slice(bytes);
        self.params.resize((offset + self.param_stride) as usize, 0);

        let key = BindKey {
            kernel,
            buffers: buffers.iter().map(|b| b.id).collect(),
        };
        if !self.bind_groups.contains_key(&key) {
            let pipeline = &self.pipelines[&kernel];
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.params_buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(self.param_stride),
                }),
            }];
            for ((binding, _), buf) in kernel.bindings().into_iter().zip(buffers) {
                entries.push(wgpu::BindGroupEntry {
                    binding,
                    resource: buf.buffer.as_entire_binding(),
                });
            }
            let group = self
                .gpu
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.layout,
                    entries: &entries,
                });
            self.bind_groups.insert(key.clone(), group);
        }
        if self.gpu.options.trace {
            eprintln!(
                "[vibrant trace] dispatch {} groups {:?} params {:?}",
                kernel.name(),
                groups,
                &bytes[..bytes.len().min(32)]
            );
        }
        self.pass();
        let pass = self.pass.as_mut().expect("pass opened above");
        let pipeline = &self.pipelines[&kernel];
        let slot = self
            .profiler
            .as_mut()
            .and_then(|p| p.begin(pass, kernel, cost));
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_groups[&key], &[offset as u32]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        if let (Some(p), Some(slot)) = (self.profiler.as_mut(), slot) {
            p.end(pass, slot);
        }
        if self.gpu.options.trace {
            // Finish each dispatch on its own, so a kernel that never ends is the last named.
            self.stage = format!("kernel {}", kernel.name());
            if let Err(e) = self.flush_and_wait() {
                eprintln!("[vibrant trace] {e}");
            }
        }
    }

    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let encoder = self.encoder.get_or_insert_with(|| {
                self.gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("step"),
                    })
            });
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().expect("just created")
    }

    /// Ends the pass so that copies can be recorded on the encoder.
    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        // Recording starts once the weights are in: their staging memory is no longer needed.
        self.staging.clear();
        self.encoder.get_or_insert_with(|| {
            self.gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        })
    }

    /// Sends everything recorded so far to the GPU.
    fn submit(&mut self) -> Option<wgpu::SubmissionIndex> {
        self.pass = None;
        let encoder = self.encoder.take()?;
        // The queue orders this write after the work already submitted, which may still be
        // running (greedy decoding submits a step while the one before runs): wgpu puts a
        // barrier between that work's reads of the parameters and the copy.
        if !self.params.is_empty() {
            self.gpu
                .queue
                .write_buffer(&self.params_buf, 0, &self.params);
            self.params.clear();
        }
        Some(self.gpu.submit(&self.stage, encoder.finish()))
    }

    fn flush_and_wait(&mut self) -> Result<()> {
        self.submit();
        let stage = self.stage.clone();
        self.gpu.wait(&stage)
    }

    /// Copies `size` bytes from the start of `src` to the host.
    fn read_bytes(&mut self, src: &Arc<GpuBuf>, size: u64) -> Result<Vec<u8>> {
        let size = size.next_multiple_of(4);
        if self.readback.as_ref().is_none_or(|b| b.size() < size) {
            self.readback = Some(self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let readback = self.readback.clone().expect("allocated above");
        self.encoder()
            .copy_buffer_to_buffer(&src.buffer, 0, &readback, 0, size);
        self.flush_and_wait()?;
        self.map_read(&readback, size, None, "mapping the readback buffer")
    }

    /// The first `size` bytes of a MAP_READ buffer, once `submission` (all if `None`) is done.
    fn map_read(
        &self,
        readback: &wgpu::Buffer,
        size: u64,
        submission: Option<&wgpu::SubmissionIndex>,
        stage: &str,
    ) -> Result<Vec<u8>> {
        let slice = readback.slice(..size);
        let mapped = Arc::new(std::sync::Mutex::new(None));
        let sink = mapped.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        let lock = || mapped.lock().unwrap_or_else(|p| p.into_inner());
        self.gpu
            .wait_until(stage, submission, || lock().is_some())?;
        if let Some(Err(e)) = lock().take() {
            return Err(BackendError::Gpu {
                stage: "reading results back".into(),
                message: e.to_string(),
            });
        }
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| BackendError::Gpu {
                stage: "reading results back".into(),
                message: e.to_string(),
            })?
            .to_vec();
        readback.unmap();
        Ok(bytes)
    }

    /// out[t] = row `ids[t]` of `table` for the first `n` ids, which are on the device.
    /// Sends the recorded work, ending with a copy of the picked id (result[0]) to `slot`.
    fn send_pick(&mut self, slot: usize) {
        self.stage = "forward step".into();
        let (result, copy) = (self.result.clone(), self.argmax_slots[slot].buffer.clone());
        self.encoder()
            .copy_buffer_to_buffer(&result.buffer, 0, &copy, 0, 4);
        self.argmax_slots[slot].written_by = self.submit();
    }

    fn get_rows(&mut self, table: &GpuMatrix, ids: &Arc<GpuBuf>, n: usize, out: &GpuTensor) {
        self.stage = "forward step".into();
        for run in &table.runs {
            for part in &run.parts {
                let params = DequantParams::new(run, part, table.cols, n as u32);
                let groups = (table.cols as u32).div_ceil(8).div_ceil(64);
                self.dispatch(
                    Kernel::GetRows(run.ggml_type),
                    &params,
                    &[&part.buf, ids, &out.buf],
                    (groups, n as u32, 1),
                    Cost::bytes((n * table.cols * 4) as u64),
                );
            }
        }
    }

    /// Each part of an uploaded matrix as the device holds it: its rows, and its buffer's
    /// bytes (tests compare them with the file's).
    pub fn weight_parts(&mut self, m: &GpuMatrix) -> Result<Vec<(usize, Vec<u8>)>> {
        self.stage = format!("reading {}", m.name);
        m.runs
            .iter()
            .flat_map(|run| &run.parts)
            .map(|p| {
                Ok((
                    p.rows as usize,
                    self.read_bytes(&p.buf, p.buf.buffer.size())?,
                ))
            })
            .collect()
    }

    /// Dequantizes a whole matrix on the device (the standalone dequant kernel), its rows in
    /// the device's order.
    pub fn dequantize(&mut self, m: &GpuMatrix) -> Result<Vec<f32>> {
        let out = self.storage("dequantized", (m.rows * m.cols * 4) as u64)?;
        for run in &m.runs {
            for part in &run.parts {
                let params = DequantParams::new(run, part, m.cols, part.rows);
                let groups = (m.cols as u32).div_ceil(8).div_ceil(64);
                let (y, z) = (part.rows.min(MAX_GROUPS), part.rows.div_ceil(MAX_GROUPS));
                let bytes = part.buf.buffer.size() + (part.rows as usize * m.cols * 4) as u64;
                // Bound to the kernel's bindings 1 and 3: it has no token list.
                self.dispatch(
                    Kernel::Dequant(run.ggml_type),
                    &params,
                    &[&part.buf, &out],
                    (groups, y, z),
                    Cost::bytes(bytes),
                );
            }
        }
        self.stage = format!("dequantizing {}", m.name);
        let bytes = self.read_bytes(&out, (m.rows * m.cols * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Whether an `n`-token product over rows `cols` long normalises its input itself: decode
    /// steps do (saving a launch), where the fused kernel's 32-wide reads fit the rows.
    fn fuses_norm(&self, n: usize, cols: usize) -> bool {
        n < TILED_MIN_TOKENS && self.tuning.fuse_norm && cols.is_multiple_of(32)
    }

    /// The scratch tensor `which` as `[n, width]`, its buffer grown as needed: the normalised
    /// input of unfused products, or a prompt's intermediate products (interleaved gate/up,
    /// or `[q | k | v]` before RoPE).
    fn scratch_tensor(&mut self, which: Scratch, n: usize, width: usize) -> Result<GpuTensor> {
        let bytes = (n * width * 4) as u64;
        let buf = match self.scratch.get(&which) {
            Some(b) if b.buffer.size() >= bytes => b.clone(),
            _ => {
                let label = match which {
                    Scratch::Normed => "normalised activations",
                    Scratch::Products => "prompt products",
                };
                let b = self.storage(label, bytes)?;
                self.scratch.insert(which, b.clone());
                b
            }
        };
        Ok(GpuTensor {
            buf,
            rows: n,
            cols: width,
        })
    }

    /// out = x · mᵀ (+ m's bias), as `how` says: added to out, with x RMS-normalised inside
    /// the decode kernel, a GLU over interleaved gate/up rows, or RoPE and the cache write
    /// after query/key/value rows.
    fn linear(&mut self, x: &GpuTensor, m: &GpuMatrix, out: &GpuTensor, n: usize, how: Product) {
        for run in &m.runs {
            self.linear_run(x, m, run, out, n, how);
        }
    }

    /// [`Self::linear`] over the rows of one run.
    fn linear_run(
        &mut self,
        x: &GpuTensor,
        m: &GpuMatrix,
        run: &WeightRun,
        out: &GpuTensor,
        n: usize,
        how: Product,
    ) {
        let out_cols = match (how.glu, how.qkv) {
            (Some(_), _) => m.rows / 2,
            // Decoded query/key/value rows go to q and the cache, not to `out`.
            (_, Some(_)) if n < TILED_MIN_TOKENS => out.cols,
            _ => m.rows,
        };
        assert_eq!((x.cols, out.cols), (m.cols, out_cols), "{}: shape", m.name);
        let bias_buf = m
            .bias
            .as_ref()
            .map_or_else(|| self.dummy.clone(), |b| b.buf.clone());
        let norm_buf = how
            .norm
            .map_or_else(|| self.dummy.clone(), |(v, _)| v.buf.clone());
        // Decoding streams the weights once per token; prompts go through tiles.
        let tiled = n >= TILED_MIN_TOKENS;
        let on_tensor_cores = self.coop_takes(m);
        assert!(
            !(tiled && (how.norm.is_some() || how.glu.is_some() && !on_tensor_cores)),
            "{}: fused prompt product",
            m.name
        );
        let ty = run.ggml_type;
        let output = match (how.glu, how.qkv) {
            (Some(_), _) => MatvecOutput::Glu,
            (_, Some(_)) => MatvecOutput::Qkv,
            _ => MatvecOutput::Plain,
        };
        let form = self.tuning.matvec_form(ty, run.rows, m.cols, output);
        let global_acts = match !tiled && form.global_acts {
            true => self.quantize_acts(x, n, how.norm),
            false => None,
        };
        for part in &run.parts {
            let shape = how.qkv.map(|q| q.shape);
            let params = ProductParams {
                w_k: m.cols as u32,
                w_bpr: part.layout.blocks_per_row,
                w_scales: part.layout.scales_offset,
                rows: part.rows,
                row_start: (run.offset as u32) + part.row_start,
                y_stride: match (how.qkv, tiled) {
                    (Some(q), false) => q.shape.q_width() as u32,
                    _ => out_cols as u32,
                },
                has_bias: m.bias.is_some() as u32,
                n_tokens: n as u32,
                accumulate: how.accumulate as u32,
                norm: how.norm.is_some() as u32,
                eps: how.norm.map_or(0.0, |(_, eps)| eps),
                pos: how.qkv.map_or(0, |q| q.pos as u32),
                head_dim: shape.map_or(0, |s| s.head_dim as u32),
                kv_width: shape.map_or(0, |s| s.kv_width() as u32),
                neox: shape.is_some_and(|s| s.rope == RopeKind::Neox) as u32,
                glu: how.glu.map_or(0, activation_code),
            };
            let cost = Cost {
                bytes: part.buf.buffer.size() + (n * (m.cols + run.rows) * 4) as u64,
                flops: 2 * (n * part.rows as usize * m.cols) as u64,
            };
            if tiled && on_tensor_cores {
                self.coop_product(part, m, run, x, &bias_buf, out, params);
            } else if tiled {
                // Tiles of 64 tokens × 64 rows.
                let groups = (part.rows.div_ceil(64), (n as u32).div_ceil(64), 1);
                let buffers = [&part.buf, &x.buf, &bias_buf, &out.buf];
                self.dispatch(Kernel::Matmul(ty), &params, &buffers, groups, cost);
            } else if let Some(qkv) = how.qkv {
                let form =
                    self.tuning
                        .matvec_form(ty, part.rows as usize, m.cols, MatvecOutput::Qkv);
                let form = MatvecForm {
                    global_acts: global_acts.is_some(),
                    ..form
                };
                let rows_per_group = self.tuning.matvec_wg / form.team * form.rows;
                let (gx, gy) = grid(part.rows.div_ceil(rows_per_group) as u64);
                let buffers = [
                    &part.buf,
                    &x.buf,
                    &bias_buf,
                    &norm_buf,
                    &qkv.rope_cos_sin.buf,
                    &qkv.q.buf,
                    qkv.k_cache,
                    qkv.v_cache,
                    // Read as vectors by the 8-bit path, then the activations quantized
                    // once, where they are (Kernel::bindings).
                    &part.buf,
                ];
                let buffers: Vec<_> = buffers.into_iter().chain(&global_acts).collect();
                let kernel = Kernel::MatvecQkv(ty, form, qkv.types);
                self.dispatch(kernel, &params, &buffers, (gx, gy, n as u32), cost);
            } else {
                let form = self
                    .tuning
                    .matvec_form(ty, part.rows as usize, m.cols, output);
                let form = MatvecForm {
                    global_acts: global_acts.is_some(),
                    ..form
                };
                let rows_per_group = self.tuning.matvec_wg / form.team * form.rows;
                let (gx, gy) = grid(part.rows.div_ceil(rows_per_group) as u64);
                // The weights once more: read as vectors by the 8-bit path, then the
                // activations quantized once, where they are (Kernel::bindings).
                let mut buffers =
                    vec![&part.buf, &x.buf, &bias_buf, &out.buf, &norm_buf, &part.buf];
                buffers.extend(&global_acts);
                let groups = (gx, gy, n as u32);
                let kernel = match how.glu {
                    Some(_) => Kernel::MatvecGlu(ty, form),
                    None => Kernel::Matvec(ty, form),
                };
                self.dispatch(kernel, &params, &buffers, groups, cost);
            }
        }
    }

    /// Whether tensor-core `kernels` (an experimental wgpu feature) build on this device;
    /// where they do not, a warning naming `what` says that the FMA kernel stands in.
    fn tensor_core_kernels_build(&mut self, kernels: &[Kernel], what: &str) -> bool {
        match kernels.iter().try_for_each(|&k| self.pipeline(k)) {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "warning: tensor-core {what} unavailable on {} ({e}); using the FMA kernel",
                    self.gpu.info.name
                );
                false
            }
        }
    }

    /// Whether prompt products of `m` run on tensor cores.
    fn coop_takes(&self, m: &GpuMatrix) -> bool {
        self.tuning.coop && m.cols.is_multiple_of(COOP_K_STEP)
    }

    /// A prompt product on tensor cores: the part's rows are decoded to f16, in slices of at
    /// most [`COOP_SLICE_BYTES`], then multiplied. `params` describe the whole part.
    #[allow(clippy::too_many_arguments)]
    fn coop_product(
        &mut self,
        part: &MatrixPart,
        w: &GpuMatrix,
        run: &WeightRun,
        x: &GpuTensor,
        bias: &Arc<GpuBuf>,
        out: &GpuTensor,
        params: ProductParams,
    ) {
        let row_bytes = 2 * w.cols as u64;
        let limit = self.gpu.options.max_weight_part.unwrap_or(u64::MAX);
        let limit = limit.min(self.max_binding());
        // Whole tiles of rows, or fewer rows where the tests split matrices small; always
        // whole (gate, up) pairs.
        let fit = (COOP_SLICE_BYTES.min(limit) / row_bytes).max(2) as u32;
        let slice = match fit >= COOP_TILE_ROWS {
            true => fit / COOP_TILE_ROWS * COOP_TILE_ROWS,
            false => fit & !1,
        }
        .min(part.rows);
        let bytes = slice as u64 * row_bytes;
        if self
            .f16_rows
            .as_ref()
            .is_none_or(|b| b.buffer.size() < bytes)
        {
            let grown = self.storage("f16 weight rows", bytes);
            let Some(buf) = self.recorded(grown) else {
                return;
            };
            self.f16_rows = Some(buf);
        }
        let f16_rows = self.f16_rows.clone().expect("allocated above");
        let n = params.n_tokens;
        for first in (0..part.rows).step_by(slice as usize) {
            let rows = slice.min(part.rows - first);
            let decode = DequantParams {
                rows,
                n: first,
                ..DequantParams::new(run, part, w.cols, 0)
            };
            let groups = (w.cols as u32).div_ceil(8).div_ceil(256);
            let decoded = rows as u64 * row_bytes;
            let quantized = part.buf.buffer.size() * rows as u64 / part.rows as u64;
            self.dispatch(
                Kernel::DequantF16(run.ggml_type),
                &decode,
                &[&part.buf, &f16_rows],
                (groups, rows.min(MAX_GROUPS), rows.div_ceil(MAX_GROUPS)),
                Cost::bytes(quantized + decoded),
            );
            let product = ProductParams {
                rows,
                row_start: params.row_start + first,
                ..params
            };
            let cost = Cost {
                bytes: decoded + (n as u64 * (w.cols as u64 + rows as u64)) * 4,
                flops: 2 * n as u64 * rows as u64 * w.cols as u64,
            };
            let row_tiles = rows.div_ceil(COOP_TILE_ROWS);
            let tokens = match n.div_ceil(128) * row_tiles >= COOP_TALL_MIN_GROUPS {
                true => 128,
                false => 64,
            };
            let groups = (n.div_ceil(tokens), row_tiles, 1);
            let buffers = [&f16_rows, &x.buf, bias, &out.buf];
            // GLU pairs always leave through workgroup memory: no kernel of their own width.
            let y_stride = if product.glu != 0 {
                0
            } else {
                product.y_stride
            };
            let kernel = Kernel::MatmulCoop(tokens, y_stride);
            self.dispatch(kernel, &product, &buffers, groups, cost);
        }
    }

    /// Uploads `rows` rows of a weight matrix (`row(r)`: row r as stored), in parts that fit
    /// one binding each; a part boundary falls on a multiple of `row_multiple` rows
    /// (interleaved pairs stay together).
    fn upload_rows<'a>(
        &mut self,
        name: &str,
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        row: &(dyn Fn(usize) -> &'a [u8] + Sync),
        row_multiple: usize,
    ) -> Result<WeightRun> {
        let repack = layout::Repack::new(ggml_type, cols);
        let row_bytes = repack.row_bytes();
        let limit = self.gpu.options.max_weight_part.unwrap_or(u64::MAX);
        let max_rows = (self.max_binding().min(limit) / row_bytes as u64) as usize / row_multiple
            * row_multiple;
        if max_rows == 0 {
            return Err(BackendError::Unsupported(format!(
                "{name}: one row takes {row_bytes} bytes, more than {} can bind",
                self.gpu.info.name
            )));
        }
        let mut parts = Vec::new();
        for row_start in (0..rows).step_by(max_rows) {
            let n = max_rows.min(rows - row_start);
            let (layout, size) = repack.layout(n);
            let buf = self.storage(name, size)?;
            self.write_rows(name, &buf, &repack, n, &|r| row(row_start + r))?;
            self.load_times.bytes += (n * row_bytes) as u64;
            parts.push(MatrixPart {
                buf,
                row_start: row_start as u32,
                rows: n as u32,
                layout,
            });
        }
        let form = self
            .tuning
            .matvec_form(ggml_type, rows, cols, MatvecOutput::Plain);
        let kernels = [
            Kernel::Matvec(ggml_type, form),
            Kernel::Matmul(ggml_type),
            Kernel::GetRows(ggml_type),
        ];
        for k in kernels {
            self.pipeline(k)?;
        }
        if form.global_acts {
            self.pipeline(Kernel::QuantizeActs(false))?;
        }
        if self.tuning.coop {
            // The GLU product's kernel stands for its variants (the same source).
            let kernels = [Kernel::MatmulCoop(128, 0), Kernel::DequantF16(ggml_type)];
            self.tuning.coop = self.tensor_core_kernels_build(&kernels, "matmul");
        }
        Ok(WeightRun {
            ggml_type,
            offset: 0,
            rows,
            parts,
        })
    }

    /// Writes `n` rows repacked into `buf` a chunk of about [`UPLOAD_CHUNK_BYTES`] at a time:
    /// rows go from the file straight into reused staging memory on rayon's threads (no copy
    /// of their own), and each chunk's copy to the device is sent as soon as it is written,
    /// so that the device copies one chunk while the host repacks the next.
    fn write_rows<'a>(
        &mut self,
        name: &str,
        buf: &GpuBuf,
        repack: &layout::Repack,
        n: usize,
        row: &(dyn Fn(usize) -> &'a [u8] + Sync),
    ) -> Result<()> {
        let stage = format!("uploading {name}");
        let chunk = (UPLOAD_CHUNK_BYTES / repack.row_bytes().max(1) / 4).max(1) * 4;
        for first in (0..n).step_by(chunk) {
            let k = chunk.min(n - first);
            let started = Instant::now();
            let [bodies, scales] = repack.ranges(n, first, k);
            let (b_len, s_len) = (bodies.end - bodies.start, scales.end - scales.start);
            let slot = self.staging_slot(&stage, b_len + s_len)?;
            let staging = &self.staging[slot];
            let waited = Instant::now();
            let mut view = staging
                .buffer
                .get_mapped_range_mut(..b_len + s_len)
                .map_err(|e| BackendError::Gpu {
                    stage: stage.clone(),
                    message: e.to_string(),
                })?;
            let (bodies_view, scales_view) = view.slice(..).split_at(b_len as usize);
            repack.write(k, &|r| row(first + r), bodies_view, scales_view);
            drop(view);
            let repacked = Instant::now();
            staging.buffer.unmap();
            let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&staging.buffer, 0, &buf.buffer, bodies.start, b_len);
            if s_len > 0 {
                encoder.copy_buffer_to_buffer(
                    &staging.buffer,
                    b_len,
                    &buf.buffer,
                    scales.start,
                    s_len,
                );
            }
            let index = self.gpu.submit(&stage, encoder.finish());
            let staging = &mut self.staging[slot];
            staging.copied_by = Some(index);
            staging.mapped.store(false, Ordering::Release);
            let mapped = staging.mapped.clone();
            staging
                .buffer
                .map_async(wgpu::MapMode::Write, .., move |r| {
                    mapped.store(r.is_ok(), Ordering::Release);
                });
            self.load_times.repack += repacked - waited;
            self.load_times.upload += (waited - started) + repacked.elapsed();
        }
        Ok(())
    }

    /// A staging buffer of at least `size` bytes, mapped for writing: the next of the ring,
    /// once the device has copied what it held last and it is mapped again.
    fn staging_slot(&mut self, stage: &str, size: u64) -> Result<usize> {
        let slot = match self.staging.len() {
            n if n < UPLOADS_IN_FLIGHT => n,
            _ => self.next_staging % UPLOADS_IN_FLIGHT,
        };
        self.next_staging = slot + 1;
        if let Some(s) = self.staging.get(slot) {
            let mapped = s.mapped.clone();
            self.gpu.wait_until(stage, s.copied_by.as_ref(), || {
                mapped.load(Ordering::Acquire)
            })?;
            if s.buffer.size() >= size {
                return Ok(slot);
            }
        }
        let buffer = self.gpu.scoped(stage, || {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("weight staging"),
                size: size.max(UPLOAD_CHUNK_BYTES as u64),
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            })
        })?;
        let fresh = Staging {
            buffer,
            mapped: Arc::new(AtomicBool::new(true)),
            copied_by: None,
        };
        match self.staging.get_mut(slot) {
            Some(s) => *s = fresh,
            None => self.staging.push(fresh),
        }
        Ok(slot)
    }

    /// Uploads `parts`' rows as one matrix for `usage`: in the order its fused kernels read
    /// them, in runs of one weight type whose parts split on whole groups of the rows those
    /// kernels finish together (gate/up pairs, four query/key/value rows). Builds the kernels
    /// its products take.
    fn upload_parts(
        &mut self,
        name: &str,
        cols: usize,
        parts: &[WeightRows],
        usage: MatrixUse,
    ) -> Result<GpuMatrix> {
        let (rows, bias) = stored_rows(name, cols, parts)?;
        let one_type = rows.windows(2).all(|w| w[0].0 == w[1].0);
        let (order, sequence, multiple) = match usage {
            MatrixUse::GateUp if one_type && rows.len().is_multiple_of(2) => {
                let half = rows.len() / 2;
                let interleaved = (0..half).flat_map(|i| [i, half + i]).collect();
                (RowOrder::GatePairs, interleaved, 2)
            }
            MatrixUse::Qkv(shape) => {
                check_head_dim(&shape)?;
                if rows.len() != shape.q_width() + 2 * shape.kv_width() {
                    return Err(BackendError::Unsupported(format!(
                        "{name}: {} rows are not the queries, keys and values of {} + 2 × {} heads of {}",
                        rows.len(),
                        shape.n_head,
                        shape.n_head_kv,
                        shape.head_dim
                    )));
                }
                (RowOrder::QkvPairs, qkv_order(&shape), 4)
            }
            // Gate and up rows of two types stay as given: their products go through
            // scratch to the GLU.
            MatrixUse::Plain | MatrixUse::GateUp => (RowOrder::Given, (0..rows.len()).collect(), 1),
        };
        let mut runs = Vec::new();
        let mut first = 0;
        while first < sequence.len() {
            let ty = rows[sequence[first]].0;
            let len = sequence[first..]
                .iter()
                .take_while(|&&r| rows[r].0 == ty)
                .count();
            let run_rows = &sequence[first..first + len];
            let row = |r: usize| rows[run_rows[r]].1;
            let run = self.upload_rows(name, ty, len, cols, &row, multiple)?;
            runs.push(WeightRun {
                offset: first,
                ..run
            });
            first += len;
        }
        let bias = match bias.iter().any(|b| *b != 0.0) {
            true => {
                let ordered: Vec<f32> = sequence.iter().map(|&r| bias[r]).collect();
                Some(self.upload_vector(&format!("{name} bias"), &ordered)?)
            }
            false => None,
        };
        let matrix = GpuMatrix {
            name: name.to_string(),
            rows: rows.len(),
            cols,
            runs,
            bias,
            order,
        };
        self.build_products_of(&matrix)?;
        Ok(matrix)
    }

    /// Builds the fused kernels a matrix's products take, ahead of its first step.
    fn build_products_of(&mut self, m: &GpuMatrix) -> Result<()> {
        for run in &m.runs {
            let ty = run.ggml_type;
            match m.order {
                RowOrder::Given => {}
                RowOrder::GatePairs => {
                    let form = self
                        .tuning
                        .matvec_form(ty, run.rows, m.cols, MatvecOutput::Glu);
                    self.pipeline(Kernel::MatvecGlu(ty, form))?;
                    self.pipeline(Kernel::GluPairs)?;
                    if form.global_acts {
                        self.pipeline(Kernel::QuantizeActs(true))?;
                    }
                }
                RowOrder::QkvPairs => {
                    let form = self
                        .tuning
                        .matvec_form(ty, run.rows, m.cols, MatvecOutput::Qkv);
                    self.pipeline(Kernel::MatvecQkv(ty, form, self.kv_types))?;
                    self.pipeline(Kernel::RopeStoreQkv(self.kv_types))?;
                    if form.global_acts {
                        self.pipeline(Kernel::QuantizeActs(true))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The key and value staging rows of q8_0 caches, grown to `bytes` each.
    fn kv_staging(&mut self, bytes: u64) -> Result<[Arc<GpuBuf>; 2]> {
        match &self.kv_staging {
            Some(s) if s[0].buffer.size() >= bytes => Ok(s.clone()),
            _ => {
                let staging = [
                    self.storage("staged keys", bytes)?,
                    self.storage("staged values", bytes)?,
                ];
                self.kv_staging = Some(staging.clone());
                Ok(staging)
            }
        }
    }

    /// The scratch for split attention's partial results, grown to `bytes`.
    /// The prompt attention kernel for `shape` and caches of `types`, and its grid for `n`
    /// queries: tensor cores where the adapter has them and the caches are f16 (their loads
    /// take f16 straight from the cache), else tiles in workgroup memory where the head fits
    /// (up to 128 values, a multiple of 16).
    fn prompt_attention(
        &self,
        shape: &AttentionShape,
        types: KvTypes,
        n: usize,
    ) -> (Kernel, (u32, u32, u32)) {
        let tiles = shape.head_dim <= 128 && shape.head_dim.is_multiple_of(16);
        let heads = shape.n_head as u32;
        match tiles {
            true if self.tuning.coop_attention && types == KvTypes::default() => {
                (Kernel::AttentionCoop, (heads, (n as u32).div_ceil(64), 1))
            }
            true if self.tuning.attention_keys > 0 => (
                Kernel::AttentionTiled(types),
                (heads, (n as u32).div_ceil(32), 1),
            ),
            _ => (Kernel::Attention(types), (heads, n as u32, 1)),
        }
    }

    /// x quantized to 8 bits once for the products that read it so
    /// ([`MatvecForm::global_acts`]): its buffer, or `None` where that failed (recorded).
    fn quantize_acts(
        &mut self,
        x: &GpuTensor,
        n: usize,
        norm: Option<(&GpuVector, f32)>,
    ) -> Option<Arc<GpuBuf>> {
        // Per 16 values: 16 bytes, a scale and a sum (shaders/acts_q8.wgsl).
        let bytes = (n * x.cols / 16 * 24) as u64;
        let buf = match &self.acts_q8 {
            Some(b) if b.buffer.size() >= bytes => Ok(b.clone()),
            _ => self.storage("8-bit activations", bytes),
        };
        let buf = self.recorded(buf)?;
        self.acts_q8 = Some(buf.clone());
        let params = ActsParams {
            cols: x.cols as u32,
            n: n as u32,
            eps: norm.map_or(0.0, |(_, eps)| eps),
        };
        let cost = Cost::bytes((n * x.cols * 4) as u64 + bytes);
        match norm {
            Some((weight, _)) => {
                let buffers = [&x.buf, &buf, &weight.buf];
                let kernel = Kernel::QuantizeActs(true);
                self.dispatch(kernel, &params, &buffers, (1, n as u32, 1), cost);
            }
            None => {
                let groups = ((x.cols / 16).div_ceil(256) as u32, n as u32, 1);
                let kernel = Kernel::QuantizeActs(false);
                self.dispatch(kernel, &params, &[&x.buf, &buf], groups, cost);
            }
        }
        Some(buf)
    }

    fn attention_partials(&mut self, bytes: u64) -> Result<Arc<GpuBuf>> {
        match &self.partials {
            Some(p) if p.buffer.size() >= bytes => Ok(p.clone()),
            _ => {
                let p = self.storage("attention partials", bytes)?;
                self.partials = Some(p.clone());
                Ok(p)
            }
        }
    }

    /// Records `what` as an Unsupported error, reported at the next wait.
    fn refuse(&mut self, what: String) {
        self.recorded::<()>(Err(BackendError::Unsupported(what)));
    }

    /// The one span of a step: the GPU kernels run one sequence (cache slot 0) per step;
    /// batches of several sequences are the server's, and are refused here until its
    /// kernels land.
    fn one_span(&mut self, batch: &Batch) -> Option<Span> {
        match batch.spans() {
            [span] if span.slot == 0 => Some(*span),
            [] => None,
            spans => {
                self.refuse(format!(
                    "the GPU backend runs one sequence (cache slot 0) per step; this step has {} spans, the first in slot {}",
                    spans.len(),
                    spans[0].slot
                ));
                None
            }
        }
    }

    /// Whether `m`'s products are in row order; else records why not.
    fn plain_products(&mut self, m: &GpuMatrix) -> bool {
        if m.order != RowOrder::Given {
            self.refuse(format!(
                "{}: its rows are ordered for the GPU's fused kernels ({:?}); only the op it was uploaded for takes it",
                m.name, m.order
            ));
        }
        m.order == RowOrder::Given
    }

    /// The input of a product over x: x itself where the product normalises it (`fused`),
    /// else rms_norm(x) in scratch.
    fn product_input(
        &mut self,
        x: &GpuTensor,
        norm: RmsNorm<'_, GpuVector>,
        fused: bool,
        n: usize,
    ) -> GpuTensor {
        if fused {
            return x.clone();
        }
        let normed = self.scratch(Scratch::Normed, n, x.cols);
        self.rms_norm(x, norm, &normed, n);
        normed
    }

    /// Where a step of `n` rows writes layer `layer`'s keys and values: into the cache, or
    /// for a q8_0 one into f32 staging rows that [`Self::quantize_staged`] then quantizes.
    fn kv_destinations(
        &mut self,
        cache: &GpuKvCache,
        layer: usize,
        n: usize,
    ) -> Option<KvDestinations> {
        let types = cache.types;
        let staging = match types == KvTypes::default() {
            true => None,
            false => {
                let staging = self.kv_staging((n * cache.kv_width * 4) as u64);
                Some(self.recorded(staging)?)
            }
        };
        let staged = |ty: CacheType, i: usize, cache: &Arc<GpuBuf>| match (ty, &staging) {
            (CacheType::Q8_0, Some(s)) => s[i].clone(),
            _ => cache.clone(),
        };
        Some(KvDestinations {
            k: staged(types.k, 0, &cache.k[layer]),
            v: staged(types.v, 1, &cache.v[layer]),
            staging,
        })
    }

    /// RoPE over the q and k of `products` (`[n, q | k | v]`, q and k heads in pair order
    /// where `pairs`), q to `q`, k and v to their destinations.
    #[allow(clippy::too_many_arguments)]
    fn rope_and_store(
        &mut self,
        products: &GpuTensor,
        cos_sin: &GpuVector,
        q: &GpuTensor,
        dst: &KvDestinations,
        cache: &GpuKvCache,
        span: Span,
        pairs: bool,
    ) {
        let (shape, n) = (&cache.shape, span.len);
        let width = shape.q_width() + 2 * shape.kv_width();
        let params = RopeParams {
            pos: span.pos as u32,
            head_dim: shape.head_dim as u32,
            q_width: shape.q_width() as u32,
            kv_width: shape.kv_width() as u32,
            neox: (shape.rope == RopeKind::Neox) as u32,
            n: n as u32,
            pairs: pairs as u32,
        };
        let quads = (width / 4) as u32;
        let buffers = [&products.buf, &cos_sin.buf, &q.buf, &dst.k, &dst.v];
        let cost = Cost::bytes((n * width * 4 * 2) as u64);
        let groups = (quads.div_ceil(64), n as u32, 1);
        let kernel = Kernel::RopeStoreQkv(cache.types);
        self.dispatch(kernel, &params, &buffers, groups, cost);
    }

    /// Normalises each query and key head of `products` (`[n, q | k | v]`, heads in pair
    /// order where `pairs`) in place by its RMS and the norm's weights, before RoPE.
    fn qk_norm(
        &mut self,
        products: &GpuTensor,
        norm: &QkNorm<'_, GpuVector>,
        shape: &AttentionShape,
        n: usize,
        pairs: bool,
    ) {
        let width = shape.q_width() + 2 * shape.kv_width();
        let params = QkNormParams {
            head_dim: shape.head_dim as u32,
            q_heads: shape.n_head as u32,
            width: width as u32,
            neox: (shape.rope == RopeKind::Neox) as u32,
            pairs: pairs as u32,
            eps: norm.eps,
        };
        let heads = (shape.n_head + shape.n_head_kv) as u32;
        let buffers = [&products.buf, &norm.q.buf, &norm.k.buf];
        let cost = Cost::bytes((n * (shape.q_width() + shape.kv_width()) * 4 * 2) as u64);
        self.dispatch(
            Kernel::QkNorm,
            &params,
            &buffers,
            (heads, n as u32, 1),
            cost,
        );
    }

    /// Quantizes the step's staged keys and values into q8_0 caches (nothing for f16 ones,
    /// which the RoPE epilogue wrote itself).
    fn quantize_staged(
        &mut self,
        dst: &KvDestinations,
        cache: &GpuKvCache,
        layer: usize,
        span: Span,
    ) {
        let Some([k_staged, v_staged]) = &dst.staging else {
            return;
        };
        let (pos, n) = (span.pos, span.len);
        let params = KvStoreParams {
            pos: pos as u32,
            kv_width: cache.kv_width as u32,
            n: n as u32,
            scales: cache.scales,
        };
        // A thread per word of scales (two blocks of 32), over this step's blocks.
        let blocks_per_row = cache.kv_width / 32;
        let (first, end) = (pos * blocks_per_row, (pos + n) * blocks_per_row);
        let words = end.div_ceil(2) - first / 2;
        let (gx, gy) = grid(words.div_ceil(64) as u64);
        let buffers = [k_staged, v_staged, &cache.k[layer], &cache.v[layer]];
        let cost = Cost::bytes((n * cache.kv_width * 2 * (4 + 1)) as u64);
        let kernel = Kernel::KvStore(cache.types);
        self.dispatch(kernel, &params, &buffers, (gx, gy, 2), cost);
    }

    /// Softmax of row 0 of `x` at a temperature, in place.
    pub fn softmax(&mut self, x: &GpuTensor, temperature: f32) {
        let params = ReduceParams {
            len: x.cols as u32,
            temperature,
        };
        let result = self.result.clone();
        self.dispatch(
            Kernel::Softmax,
            &params,
            &[&x.buf, &result],
            (1, 1, 1),
            Cost::bytes(8 * x.cols as u64),
        );
    }

    /// Uploads host data into a tensor's first rows (tests and tools).
    pub fn write(&mut self, x: &GpuTensor, data: &[f32]) {
        assert!(
            data.len() <= x.rows * x.cols,
            "write past the end of a tensor"
        );
        self.submit();
        self.gpu
            .queue
            .write_buffer(&x.buf.buffer, 0, bytemuck::cast_slice(data));
    }

    fn elementwise(&mut self, kernel: Kernel, params: ElementParams, buffers: &[&Arc<GpuBuf>]) {
        let len = params.len;
        let (x, y) = grid((len as u64).div_ceil(256));
        let bytes = 4 * len as u64 * buffers.len() as u64;
        self.dispatch(kernel, &params, buffers, (x, y, 1), Cost::bytes(bytes));
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DequantParams {
    w_k: u32,
    w_bpr: u32,
    w_scales: u32,
    rows: u32,
    row_start: u32,
    n: u32,
}

impl DequantParams {
    fn new(run: &WeightRun, part: &MatrixPart, cols: usize, n: u32) -> Self {
        Self {
            w_k: cols as u32,
            w_bpr: part.layout.blocks_per_row,
            w_scales: part.layout.scales_offset,
            rows: part.rows,
            row_start: run.offset as u32 + part.row_start,
            n,
        }
    }
}

/// shaders/common.wgsl's ProductParams, field for field.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ProductParams {
    w_k: u32,
    w_bpr: u32,
    w_scales: u32,
    rows: u32,
    row_start: u32,
    y_stride: u32,
    has_bias: u32,
    n_tokens: u32,
    accumulate: u32,
    norm: u32,
    eps: f32,
    pos: u32,
    head_dim: u32,
    kv_width: u32,
    neox: u32,
    glu: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    cols: u32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    pos: u32,
    head_dim: u32,
    q_width: u32,
    kv_width: u32,
    neox: u32,
    n: u32,
    /// 1: q and k heads in pair order, as the device's own `[q | k | v]` matrices leave them;
    /// 0: in the heads' own order.
    pairs: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct QkNormParams {
    head_dim: u32,
    q_heads: u32,
    width: u32,
    neox: u32,
    pairs: u32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    pos: u32,
    kv_width: u32,
    q_width: u32,
    scale: f32,
    n_chunks: u32,
    n: u32,
    scales: u32,
    window: u32,
    softcap: f32,
}

/// shaders/quantize_acts.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ActsParams {
    cols: u32,
    n: u32,
    eps: f32,
}

/// shaders/kv_store.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvStoreParams {
    pos: u32,
    kv_width: u32,
    n: u32,
    scales: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ElementParams {
    len: u32,
    offset: u32,
    /// glu, glu_pairs: the activation (`activation_code`); pointwise: 1 scale, 2 soft-cap.
    kind: u32,
    /// pointwise: the scale or the cap.
    value: f32,
}

impl ElementParams {
    /// The first `len` elements, with nothing else to say.
    fn over(len: usize) -> Self {
        Self {
            len: len as u32,
            offset: 0,
            kind: 0,
            value: 0.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    len: u32,
    temperature: f32,
}

impl Backend for WgpuBackend {
    type Tensor = GpuTensor;
    type Matrix = GpuMatrix;
    type Vector = GpuVector;
    type KvCache = GpuKvCache;

    fn describe(&self) -> String {
        format!("{}; {}", self.gpu.describe(), self.tuning.describe())
    }

    /// Query/key/value rows go in pair order, and gate and up rows of one type interleave,
    /// for the fused kernels of [`Backend::attention_inputs`] and [`Backend::norm_glu`]: such
    /// matrices go only to those ops.
    fn upload_matrix(
        &mut self,
        name: &str,
        cols: usize,
        parts: Vec<WeightRows>,
        usage: MatrixUse,
    ) -> Result<GpuMatrix> {
        self.upload_parts(name, cols, &parts, usage)
    }

    fn upload_vector(&mut self, name: &str, data: &[f32]) -> Result<GpuVector> {
        Ok(GpuVector {
            buf: self.storage_init(name, bytemuck::cast_slice(data))?,
        })
    }

    fn tensor(&mut self, name: &str, rows: usize, cols: usize) -> Result<GpuTensor> {
        Ok(GpuTensor {
            buf: self.storage(name, (rows * cols * 4) as u64)?,
            rows,
            cols,
        })
    }

    fn scratch(&mut self, which: Scratch, rows: usize, cols: usize) -> GpuTensor {
        let tensor = self.scratch_tensor(which, rows, cols);
        self.recorded(tensor).unwrap_or_else(|| GpuTensor {
            buf: self.dummy.clone(),
            rows,
            cols,
        })
    }

    /// One sequence (slot): a cache of several is refused by name.
    fn kv_cache(&mut self, layout: &KvLayout) -> Result<GpuKvCache> {
        check_layout(layout)?;
        let (shape, types, n_ctx) = (&layout.shape, layout.types, layout.n_ctx);
        let n_layers = layout.layers.len();
        check_head_dim(shape)?;
        types.check(shape)?;
        self.kv_types = types;
        if self.tuning.coop_attention && types == KvTypes::default() {
            self.tuning.coop_attention =
                self.tensor_core_kernels_build(&[Kernel::AttentionCoop], "attention");
        }
        let kv_width = shape.kv_width();
        // The tensor-core attention reads keys and values 64 rows at a time, past the last
        // key in use, and 128 values per row whatever the head size: whole tiles of zeros
        // there, and 128 more values after the last row (its loads are not bounds-checked).
        // It reads f16 caches only.
        let rows = n_ctx.next_multiple_of(64);
        let bytes = |ty: CacheType| match ty {
            CacheType::F16 => (rows * kv_width * 2 + 256) as u64,
            CacheType::Q8_0 => ty.bytes_for(rows * kv_width) as u64,
        };
        let mut k = Vec::with_capacity(n_layers);
        let mut v = Vec::with_capacity(n_layers);
        for layer in 0..n_layers {
            k.push(self.storage(&format!("layer {layer} key cache"), bytes(types.k))?);
            v.push(self.storage(&format!("layer {layer} value cache"), bytes(types.v))?);
        }
        // The cache comes last in a model's load: the kernels every answer's first steps
        // use are built now rather than in the first prompt's time, and whatever the driver
        // compiled is saved for the next run.
        let (prompt_attention, _) = self.prompt_attention(shape, types, 1);
        if layout.qk_norm {
            self.pipeline(Kernel::QkNorm)?;
        }
        for kernel in [
            Kernel::RmsNorm,
            prompt_attention,
            Kernel::AttentionDecode(types),
            Kernel::CopyRow,
            Kernel::ArgmaxPartial,
            Kernel::ArgmaxFinal,
            Kernel::SampleSlices,
            Kernel::Sample,
        ] {
            self.pipeline(kernel)?;
        }
        self.gpu.save_pipeline_cache();
        Ok(GpuKvCache {
            k,
            v,
            kv_width,
            n_ctx,
            shape: *shape,
            types,
            // The quants of all rows, a byte each, come first.
            scales: (rows * kv_width / 4) as u32,
        })
    }

    fn embed(&mut self, table: &GpuMatrix, tokens: &[u32], out: &GpuTensor) {
        // The token buffer is rewritten per step: work recorded against it goes first.
        self.submit();
        if tokens.len() > self.token_capacity {
            let grown = self.storage("tokens", 4 * tokens.len() as u64);
            let Some(buf) = self.recorded(grown) else {
                return;
            };
            self.tokens = buf;
            self.token_capacity = tokens.len();
        }
        let clamped: Vec<u32> = tokens
            .iter()
            .map(|&t| t.min(table.rows as u32 - 1))
            .collect();
        self.gpu
            .queue
            .write_buffer(&self.tokens.buffer, 0, bytemuck::cast_slice(&clamped));
        let tokens_buf = self.tokens.clone();
        self.get_rows(table, &tokens_buf, tokens.len(), out);
    }

    fn embed_argmax(&mut self, table: &GpuMatrix, out: &GpuTensor) {
        // argmax_final leaves the id in slot 0, below the vocabulary size (table.rows).
        let result = self.result.clone();
        self.get_rows(table, &result, 1, out);
    }

    fn rms_norm(&mut self, x: &GpuTensor, norm: RmsNorm<'_, GpuVector>, out: &GpuTensor, n: usize) {
        let params = NormParams {
            cols: x.cols as u32,
            eps: norm.eps,
        };
        self.dispatch(
            Kernel::RmsNorm,
            &params,
            &[&x.buf, &norm.weight.buf, &out.buf],
            (n as u32, 1, 1),
            Cost::bytes((2 * n * x.cols * 4) as u64),
        );
    }

    fn matmul(&mut self, x: &GpuTensor, w: &GpuMatrix, out: &GpuTensor, n: usize) {
        if self.plain_products(w) {
            self.linear(x, w, out, n, Product::default());
        }
    }

    fn add(&mut self, acc: &GpuTensor, x: &GpuTensor, n: usize) {
        let params = ElementParams::over(n * acc.cols);
        self.elementwise(Kernel::Add, params, &[&acc.buf, &x.buf]);
    }

    fn pointwise(&mut self, x: &GpuTensor, f: Pointwise, n: usize) {
        let (kind, value) = match f {
            Pointwise::Scale(s) => (1, s),
            Pointwise::SoftCap(cap) => (2, cap),
        };
        let params = ElementParams {
            kind,
            value,
            ..ElementParams::over(n * x.cols)
        };
        self.elementwise(Kernel::Pointwise, params, &[&x.buf]);
    }

    fn glu(&mut self, act: Activation, gate_up: &GpuTensor, out: &GpuTensor, n: usize) {
        assert_eq!(
            gate_up.cols,
            2 * out.cols,
            "glu: gate and up of {} values each",
            out.cols
        );
        let params = ElementParams {
            offset: out.cols as u32,
            kind: activation_code(act),
            ..ElementParams::over(n * out.cols)
        };
        self.elementwise(Kernel::Glu, params, &[&out.buf, &gate_up.buf]);
    }

    fn rope_store_kv(
        &mut self,
        qkv: &GpuTensor,
        rope: &Rope<'_, GpuVector>,
        q: &GpuTensor,
        at: CacheLayer<'_, GpuKvCache>,
    ) {
        let Some(span) = self.one_span(at.batch) else {
            return;
        };
        let Some(dst) = self.kv_destinations(at.cache, at.layer, span.len) else {
            return;
        };
        if let Some(norm) = &rope.qk_norm {
            self.qk_norm(qkv, norm, &at.cache.shape, span.len, false);
        }
        self.rope_and_store(qkv, rope.cos_sin, q, &dst, at.cache, span, false);
        self.quantize_staged(&dst, at.cache, at.layer, span);
    }

    fn attention(
        &mut self,
        q: &GpuTensor,
        at: CacheLayer<'_, GpuKvCache>,
        opts: &AttentionOpts,
        out: &GpuTensor,
    ) {
        let Some(Span { pos, len: n, .. }) = self.one_span(at.batch) else {
            return;
        };
        let (cache, layer) = (at.cache, at.layer);
        let shape = &cache.shape;
        let n_chunks = cache.n_ctx.div_ceil(ATTENTION_CHUNK);
        let params = AttentionParams {
            n_head: shape.n_head as u32,
            n_head_kv: shape.n_head_kv as u32,
            head_dim: shape.head_dim as u32,
            pos: pos as u32,
            kv_width: cache.kv_width as u32,
            q_width: shape.q_width() as u32,
            scale: opts.scale,
            n_chunks: n_chunks as u32,
            n: n as u32,
            scales: cache.scales,
            window: opts.window.map_or(0, |w| w as u32),
            softcap: opts.softcap.unwrap_or(0.0),
        };
        let types = cache.types;
        let buffers = [&q.buf, &cache.k[layer], &cache.v[layer]];
        if n > DECODE_ATTENTION_MAX_TOKENS {
            let all = [buffers[0], buffers[1], buffers[2], &out.buf];
            let cost = attention_cost(shape, types, pos, n);
            let (kernel, groups) = self.prompt_attention(shape, types, n);
            self.dispatch(kernel, &params, &all, groups, cost);
            return;
        }
        let floats = DECODE_ATTENTION_MAX_TOKENS * shape.n_head * n_chunks * (shape.head_dim + 2);
        let partials = self.attention_partials(4 * floats as u64);
        let Some(partials) = self.recorded(partials) else {
            return;
        };
        // Only chunks that hold keys for some query of this step are launched.
        let used = (pos + n).div_ceil(ATTENTION_CHUNK) as u32;
        let decode = [buffers[0], buffers[1], buffers[2], &out.buf, &partials];
        let groups = (shape.n_head as u32, used, n as u32);
        let cost = attention_cost(shape, types, pos, n);
        self.dispatch(
            Kernel::AttentionDecode(types),
            &params,
            &decode,
            groups,
            cost,
        );
        if used > 1 {
            let groups = (shape.n_head as u32, n as u32, 1);
            let cost =
                Cost::bytes((n * shape.n_head * used as usize * (shape.head_dim + 2) * 4) as u64);
            self.dispatch(
                Kernel::AttentionCombine,
                &params,
                &[&out.buf, &partials],
                groups,
                cost,
            );
        }
    }

    fn copy_row(&mut self, src: &GpuTensor, row: usize, dst: &GpuTensor) {
        let params = ElementParams {
            offset: (row * src.cols) as u32,
            ..ElementParams::over(src.cols)
        };
        self.elementwise(Kernel::CopyRow, params, &[&dst.buf, &src.buf]);
    }

    fn norm_matmul(
        &mut self,
        x: &GpuTensor,
        norm: RmsNorm<'_, GpuVector>,
        w: &GpuMatrix,
        out: &GpuTensor,
        n: usize,
    ) {
        if !self.plain_products(w) {
            return;
        }
        // Decode steps normalise inside the product (saving a dispatch).
        let fuse = self.fuses_norm(n, w.cols);
        let input = self.product_input(x, norm, fuse, n);
        let how = Product {
            norm: fuse.then_some((norm.weight, norm.eps)),
            ..Product::default()
        };
        self.linear(&input, w, out, n, how);
    }

    fn norm_glu(
        &mut self,
        x: &GpuTensor,
        norm: RmsNorm<'_, GpuVector>,
        gate_up: &GpuMatrix,
        act: Activation,
        out: &GpuTensor,
        n: usize,
    ) {
        if gate_up.order != RowOrder::GatePairs {
            // Gate and up of two types: both products, then the GLU over their halves.
            let products = self.scratch(Scratch::Products, n, gate_up.rows);
            self.norm_matmul(x, norm, gate_up, &products, n);
            return self.glu(act, &products, out, n);
        }
        let glu = Product {
            glu: Some(act),
            ..Product::default()
        };
        if n < TILED_MIN_TOKENS {
            let fuse = self.fuses_norm(n, gate_up.cols);
            let input = self.product_input(x, norm, fuse, n);
            let how = Product {
                norm: fuse.then_some((norm.weight, norm.eps)),
                ..glu
            };
            return self.linear(&input, gate_up, out, n, how);
        }
        let normed = self.product_input(x, norm, false, n);
        if self.coop_takes(gate_up) {
            // The tensor-core product writes the GLU of the pairs itself.
            return self.linear(&normed, gate_up, out, n, glu);
        }
        // Else all products into a scratch twice as wide, then the GLU over the pairs.
        let pairs = self.scratch(Scratch::Products, n, gate_up.rows);
        self.linear(&normed, gate_up, &pairs, n, Product::default());
        let params = ElementParams {
            kind: activation_code(act),
            ..ElementParams::over(n * out.cols)
        };
        self.elementwise(Kernel::GluPairs, params, &[&out.buf, &pairs.buf]);
    }

    fn attention_inputs(
        &mut self,
        x: &GpuTensor,
        norm: RmsNorm<'_, GpuVector>,
        qkv: &GpuMatrix,
        rope: &Rope<'_, GpuVector>,
        q: &GpuTensor,
        at: CacheLayer<'_, GpuKvCache>,
    ) {
        let Some(span) = self.one_span(at.batch) else {
            return;
        };
        let (cache, n) = (at.cache, span.len);
        let tiled = n >= TILED_MIN_TOKENS;
        let fuse = self.fuses_norm(n, x.cols);
        let input = self.product_input(x, norm, fuse, n);
        let Some(dst) = self.kv_destinations(cache, at.layer, n) else {
            return;
        };
        // A head's norm needs all its products, which the decode epilogue's workgroups do not
        // share: with QK-norm, decoded rows go through the products and the RoPE kernel too.
        if let Some(qk_norm) = &rope.qk_norm {
            let products = self.scratch(Scratch::Products, n, qkv.rows);
            let how = Product {
                norm: fuse.then_some((norm.weight, norm.eps)),
                ..Product::default()
            };
            self.linear(&input, qkv, &products, n, how);
            self.qk_norm(&products, qk_norm, &cache.shape, n, true);
            self.rope_and_store(&products, rope.cos_sin, q, &dst, cache, span, true);
            return self.quantize_staged(&dst, cache, at.layer, span);
        }
        // Prompts: the tiled products into a scratch row of [q | k | v] per token first.
        // Decoded rows go to q and the cache; `products` is not written.
        let products = match tiled {
            true => self.scratch(Scratch::Products, n, qkv.rows),
            false => q.clone(),
        };
        let rows = QkvRows {
            rope_cos_sin: rope.cos_sin,
            q,
            k_cache: &dst.k,
            v_cache: &dst.v,
            types: cache.types,
            pos: span.pos,
            shape: &cache.shape,
        };
        let how = Product {
            norm: fuse.then_some((norm.weight, norm.eps)),
            qkv: Some(rows),
            ..Product::default()
        };
        self.linear(&input, qkv, &products, n, how);
        if tiled {
            self.rope_and_store(&products, rope.cos_sin, q, &dst, cache, span, true);
        }
        self.quantize_staged(&dst, cache, at.layer, span);
    }

    fn matmul_add(&mut self, x: &GpuTensor, w: &GpuMatrix, acc: &GpuTensor, n: usize) {
        if self.plain_products(w) {
            let how = Product {
                accumulate: true,
                ..Product::default()
            };
            self.linear(x, w, acc, n, how);
        }
    }

    fn read(&mut self, x: &GpuTensor, n: usize) -> Result<Vec<f32>> {
        self.stage = "forward step".into();
        let bytes = self.read_bytes(&x.buf.clone(), (n * x.cols * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    fn queue_argmax(&mut self, x: &GpuTensor, slot: usize) {
        let params = ReduceParams {
            len: x.cols as u32,
            temperature: 1.0,
        };
        let result = self.result.clone();
        let buffers = [&x.buf, &result];
        let cost = Cost::bytes(4 * x.cols as u64);
        self.dispatch(
            Kernel::ArgmaxPartial,
            &params,
            &buffers,
            (ARGMAX_GROUPS, 1, 1),
            cost,
        );
        self.dispatch(
            Kernel::ArgmaxFinal,
            &params,
            &buffers,
            (1, 1, 1),
            Cost::default(),
        );
        self.send_pick(slot);
    }

    fn start_sampling(&mut self, sampler: &Sampler) -> Result<()> {
        self.start_device_sampling(sampler)
    }

    fn queue_sample(&mut self, x: &GpuTensor, slot: usize) {
        self.record_sample(x);
        self.send_pick(slot);
    }

    fn read_argmax(&mut self, slot: usize) -> Result<u32> {
        let ArgmaxSlot { buffer, written_by } = &self.argmax_slots[slot];
        let bytes = self.map_read(buffer, 4, written_by.as_ref(), &self.stage)?;
        Ok(u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")))
    }

    fn sync(&mut self) -> Result<()> {
        self.flush_and_wait()
    }

    fn memory_used(&self) -> u64 {
        self.bytes_allocated
    }

    fn start_profile(&mut self) -> Result<()> {
        if !self.gpu.features.timestamps {
            return Err(BackendError::Unsupported(format!(
                "{} has no timestamp queries inside compute passes",
                self.gpu.info.name
            )));
        }
        self.submit();
        self.profiler = Some(profile::Profiler::new(&self.gpu.device));
        Ok(())
    }

    fn load_report(&self) -> Option<String> {
        Some(self.load_times.describe())
    }

    fn take_profile(&mut self) -> Result<Vec<KernelTiming>> {
        self.sync()?;
        let Some(profiler) = self.profiler.take() else {
            return Ok(Vec::new());
        };
        let ticks = profiler.ticks_needed();
        if ticks == 0 {
            return Ok(Vec::new());
        }
        let resolve = profiler.resolve_buffer(&self.gpu.device);
        profiler.resolve(self.encoder(), &resolve);
        let resolved = Arc::new(GpuBuf {
            id: self.new_id(),
            buffer: resolve,
        });
        let raw = self.read_bytes(&resolved, ticks * 8)?;
        let period = self.gpu.queue.get_timestamp_period() as f64;
        Ok(profiler.timings(bytemuck::cast_slice(&raw), period))
    }
}
