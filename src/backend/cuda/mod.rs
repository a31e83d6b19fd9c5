//! The CUDA backend (`--features cuda`): the transformer's ops as CUDA C kernels (the
//! top-level `cuda/` folder, one file per op family), compiled at run time by NVRTC for the
//! device and driven through cudarc's driver API with its libraries loaded at run time, so
//! that the crate builds without CUDA.
//!
//! Weights stay in device memory as the file encodes them (ggml's block layouts), decoded
//! inside the kernels. The cache holds f16 or q8_0 keys and values, `slots × n_ctx` rows per layer,
//! each row at its span's slot and position. All work goes on one stream; every wait polls an
//! event against `--gpu-timeout`, and a failure is kept and reported at every wait after it.
//!
//! Split by concern: [`device`] (libraries, context, stream, memory, bounded waits),
//! `compile` (NVRTC and the on-disk kernel cache), `kernels` (modules and launches),
//! `backend_impl` (the trait's ops), `picks` (token picks kept on the device), `graph` (a decode
//! step as one CUDA graph), `staging` (copies of small host arrays that never wait), `pinned`
//! (the pinned host memory of both), `profile` (kernel timing).

mod backend_impl;
pub mod compile;
pub mod device;
mod graph;
mod kernels;
mod picks;
mod pinned;
mod profile;
mod staging;

pub use device::{driver_present, list_devices, missing_libraries, CudaDeviceSummary, CudaOptions};

use super::{AttentionShape, BackendError, Batch, Dims, HostTokens, KvTypes, Result, Scratch};
use crate::quant::GgmlType;
use device::{Device, DeviceBuffer};
use kernels::Kernels;
use std::collections::HashMap;
use std::rc::Rc;

/// Longest attention head the kernels take (a multiple of 64: each lane of a warp holds two
/// values per 64).
pub const MAX_HEAD_DIM: usize = 256;
/// Threads per block of cuda/attention.cu.
const ATT_THREADS: usize = 128;
/// Tokens per block of cuda/matmul.cu's products.
const MM_TOKENS: usize = 8;
/// Weight rows per block of cuda/matmul.cu's chunked products, a warp each; and warps per
/// block of cuda/matmul_q8.cu's 8-bit products, whose warps take Q8_ROWS rows each (on an
/// H100, 2 and 4 rows a warp, sharing its loads of the activations, decoded 8% and 40%
/// slower than 1; blocks of 2 and 8 warps slower than 4).
const MV_WARPS: usize = 4;
const Q8_ROWS: usize = 1;
/// Tokens and weight rows per block of cuda/matmul.cu's tensor-core products: eight warps of
/// 32 tokens by 32 rows (the kernel's warp tiling needs MMA_TOKENS = 64).
const MMA_TOKENS: usize = 64;
const MMA_ROWS: usize = 128;
/// Products of this many tokens or more take the tensor cores (on compute capability 8.0 and
/// up), fewer the warp-per-row kernel, which reads each weight once per MM_TOKENS tokens.
const MMA_MIN_TOKENS: usize = 32;
/// cuda/attention.cu's prompt attention on tensor cores: query rows per block (four warps of
/// 16), the longest head it takes (heads a multiple of 16), and the fewest rows it is used for.
const FA_ROWS: usize = 64;
const FA_MAX_HD: usize = 128;
const FA_MIN_ROWS: usize = 16;
/// Threads of cuda/tokens.cu's argmax (one block).
const PICK_THREADS: usize = 1024;
/// The u64 arguments of cuda/tokens.cu's fill_ints: arrays of up to twice as many ints are
/// written from kernel arguments rather than copied from the host.
const FILL_SLOTS: usize = 16;
const _: () = assert!(
    MMA_TOKENS == 64
        && MMA_ROWS.is_multiple_of(32)
        && MAX_HEAD_DIM.is_multiple_of(64)
        && FA_ROWS == 64
        && MV_WARPS.is_power_of_two()
        && ATT_GROUP == 8
        && ATT_GROUP_HEAD_DIM == 128
        && SHARE_SLOTS >= MAX_SHARES
);
/// Split attention: below this many (row, head) blocks the GPU is not full, and each block's
/// keys are shared among up to MAX_SHARES blocks of at least KEYS_PER_SHARE keys each, whose
/// outputs (SHARE_SLOTS of them at most) are then merged.
const SPLIT_BELOW_BLOCKS: usize = 256;
const MAX_SHARES: usize = 128;
const KEYS_PER_SHARE: usize = 64;
const SHARE_SLOTS: usize = 16384;
/// cuda/attention.cu's attention_grouped, which decodes every query head of a key/value head
/// in one block of GQ_WARPS warps, each taking runs of GQ_KEYS keys: the most query heads a
/// key/value head may have, and the longest head. Its shares are of GQ_KEYS_PER_WARP keys a
/// warp at least, and as many as give the GPU about GQ_FILL_WARPS warps.
const ATT_GROUP: usize = 8;
const ATT_GROUP_HEAD_DIM: usize = 128;
const GQ_WARPS: usize = 8;
const GQ_KEYS: usize = 8;
const GQ_KEYS_PER_WARP: usize = 8;
const GQ_FILL_WARPS: usize = 2048;

/// The constants the kernels are compiled with (as `-D` options): Rust is their one source.
pub(crate) const KERNEL_CONSTANTS: [(&str, usize); 16] = [
    ("MAX_HEAD_DIM", MAX_HEAD_DIM),
    ("ATT_THREADS", ATT_THREADS),
    ("ATT_GROUP", ATT_GROUP),
    ("ATT_GROUP_HEAD_DIM", ATT_GROUP_HEAD_DIM),
    ("GQ_WARPS", GQ_WARPS),
    ("GQ_KEYS", GQ_KEYS),
    ("MAX_SHARES", MAX_SHARES),
    ("MM_TOKENS", MM_TOKENS),
    ("MV_WARPS", MV_WARPS),
    ("Q8_ROWS", Q8_ROWS),
    ("MMA_TOKENS", MMA_TOKENS),
    ("MMA_ROWS", MMA_ROWS),
    ("PICK_THREADS", PICK_THREADS),
    ("FILL_SLOTS", FILL_SLOTS),
    ("FA_ROWS", FA_ROWS),
    ("FA_MAX_HD", FA_MAX_HD),
];

/// Every kernel the backend launches, as (file in `cuda/`, function): each must be an entry
/// of its file's PTX (tests/cuda_nvrtc.rs).
pub fn entry_points() -> Vec<(&'static str, &'static str)> {
    kernels::Kernel::all().map(|k| k.place()).collect()
}

/// A `[rows, cols]` f32 tensor; scratch tensors share their buffer with the backend.
#[derive(Clone)]
pub struct CudaTensor {
    buf: Rc<DeviceBuffer>,
    rows: usize,
    cols: usize,
}

impl Dims for CudaTensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

/// Rows of one weight type, as the file stores them.
struct CudaPart {
    ggml_type: GgmlType,
    /// The first row's index in the matrix.
    first: usize,
    rows: usize,
    row_bytes: usize,
    buf: DeviceBuffer,
}

pub struct CudaMatrix {
    name: String,
    rows: usize,
    cols: usize,
    parts: Vec<CudaPart>,
    bias: Option<DeviceBuffer>,
    /// Blocks of rows, one per expert ([`super::MatrixUse::Experts`]); 1 for other matrices.
    experts: usize,
}

impl CudaMatrix {
    /// The device address of a part's share of the bias (its first row's), or null.
    fn part_bias(&self, part: &CudaPart) -> u64 {
        self.bias
            .as_ref()
            .map_or(0, |b| b.ptr + 4 * part.first as u64)
    }
}

impl Dims for CudaMatrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

pub struct CudaVector {
    buf: DeviceBuffer,
    len: usize,
}

/// Per layer, `[slots × n_ctx, kv_width]` keys and values encoded as `types` says (f16, or
/// ggml's q8_0 blocks), row after row (slot s's position p at row s × n_ctx + p).
pub struct CudaKvCache {
    k: Vec<DeviceBuffer>,
    v: Vec<DeviceBuffer>,
    slots: usize,
    n_ctx: usize,
    shape: AttentionShape,
    types: KvTypes,
}

/// The cache rows of the last batch, on the device: `[slot × n_ctx, position]` per row, as the
/// RoPE and attention kernels read them; kept while the batch and the cache's shape stay the
/// same (every layer of a step), checked against `slots` and `n_ctx`.
struct BatchRows {
    batch: Batch,
    slots: usize,
    n_ctx: usize,
    buf: Rc<DeviceBuffer>,
}

pub struct CudaBackend {
    device: Rc<Device>,
    kernels: Kernels,
    /// The first error of recorded work: nothing more is launched, and every wait reports it.
    failed: Option<BackendError>,
    /// The last kernel launched, which a wait's error names.
    last_kernel: &'static str,
    bytes_held: u64,
    scratch: HashMap<Scratch, Rc<DeviceBuffer>>,
    /// Stands in for a tensor that could not be allocated (the failure is recorded, so no
    /// kernel reads it).
    placeholder: Rc<DeviceBuffer>,
    batch_rows: Option<BatchRows>,
    /// Whether decode products take 8-bit activations, and the buffer they are quantized
    /// into (grown to the widest product seen).
    int8_activations: bool,
    acts_q8: Option<Rc<DeviceBuffer>>,
    /// The tensor whose rows the last launch also wrote into `acts_q8` rounded to 8 bits (the
    /// GLU's and attention's outputs, for the product after them), so that the product need
    /// not quantize them again: its buffer, rows and columns. Any other launch clears it.
    acts_q8_of: Option<(u64, usize, usize)>,
    /// The shares of split attention (cuda/attention.cu's attention_split), made at first use.
    attention_shares: Option<Rc<DeviceBuffer>>,
    /// Argmax picks, kept on the device for the next step's embedding.
    picks: picks::DevicePicks,
    /// Pinned host memory for the copies of step-sized arrays.
    staging: staging::Staging,
    /// Kernel timing, while `bench --profile` asks for it; and what the next launch moves and
    /// computes (bytes, flops), for its line in the profile.
    profile: Option<profile::Profile>,
    cost: (u64, u64),
    /// Whether decode steps run as graphs, and the graph of the last one.
    graphs: bool,
    step_graph: Option<graph::StepGraph>,
    /// The cache rows of batches of up to FILL_SLOTS rows, in one buffer (so that a step's
    /// graph finds them at the same address every step).
    small_batch_rows: Rc<DeviceBuffer>,
    /// Sampled picks: drawn on the host from the logits, then written into `picks`.
    tokens: HostTokens,
}

impl CudaBackend {
    /// Opens CUDA device `options.ordinal` and builds the kernels for it; a missing driver or
    /// NVRTC library is an error saying which, never a panic.
    pub fn new(options: CudaOptions) -> Result<Self> {
        if let Some(why) = missing_libraries() {
            return Err(BackendError::Unsupported(format!(
                "CUDA is not usable: {why}"
            )));
        }
        let device = Device::open(&options)?;
        let kernels = Kernels::load(&device, options.kernel_cache)?;
        let placeholder = Rc::new(DeviceBuffer::new(&device, 16, "a placeholder tensor")?);
        let picks = picks::DevicePicks::new(&device)?;
        let staging = staging::Staging::new(&device)?;
        let small_batch_rows = Rc::new(DeviceBuffer::new(
            &device,
            8 * FILL_SLOTS,
            "the cache rows of small batches",
        )?);
        let bytes_held = [&placeholder, &picks.ids, &small_batch_rows]
            .map(|b| b.bytes as u64)
            .iter()
            .sum();
        Ok(Self {
            device,
            kernels,
            failed: None,
            last_kernel: "none yet",
            bytes_held,
            scratch: HashMap::new(),
            placeholder,
            batch_rows: None,
            int8_activations: options.int8_activations,
            acts_q8: None,
            acts_q8_of: None,
            attention_shares: None,
            picks,
            staging,
            profile: None,
            cost: (0, 0),
            graphs: options.graphs,
            step_graph: None,
            small_batch_rows,
            tokens: HostTokens::default(),
        })
    }

    pub fn summary(&self) -> &CudaDeviceSummary {
        &self.device.summary
    }

    /// Whether products of `n` tokens with weights of type `ty` round the activations to 8
    /// bits (cuda/matmul_q8.cu).
    pub fn uses_int8_activations(&self, ty: GgmlType, n: usize) -> bool {
        self.int8_activations && n <= MM_TOKENS && kernels::has_q8_products(ty)
    }

    /// Whether products of `n` tokens with block-quantized weights take the tensor cores
    /// (which round both operands to f16).
    pub fn uses_tensor_cores(&self, n: usize) -> bool {
        n >= MMA_MIN_TOKENS && self.device.summary.compute_capability.0 >= 8
    }

    /// Whether attention over `batch` with heads of `head_dim` takes the tensor cores (which
    /// round the queries and the softmax weights to f16): a prompt of one sequence.
    pub fn uses_flash_attention(&self, batch: &Batch, head_dim: usize) -> bool {
        batch.spans().len() == 1
            && batch.rows() >= FA_MIN_ROWS
            && head_dim.is_multiple_of(16)
            && head_dim <= FA_MAX_HD
            && self.device.summary.compute_capability.0 >= 8
    }

    /// Writes host values into the first rows of `t` (tests load their inputs this way).
    pub fn write(&mut self, t: &CudaTensor, data: &[f32]) -> Result<()> {
        if data.len() > t.rows * t.cols {
            return Err(BackendError::Unsupported(format!(
                "{} values do not fit a [{}, {}] tensor",
                data.len(),
                t.rows,
                t.cols
            )));
        }
        t.buf.write(data, "a tensor's values")
    }

    /// Launches a kernel that never ends (a test's planted hang): the next wait must end in a
    /// [`BackendError::Timeout`] within the timeout, and the process must still be able to exit.
    #[doc(hidden)]
    pub fn plant_hang(&mut self) -> Result<()> {
        let flag = DeviceBuffer::new(&self.device, 4, "the planted hang's flag")?;
        flag.zero("the planted hang's flag")?;
        self.launch(kernels::Kernel::Hang, (1, 1, 1), 1, &[flag.ptr]);
        // The kernel reads the flag forever: its memory must never be freed.
        std::mem::forget(flag);
        self.failed.clone().map_or(Ok(()), Err)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        self.kernels.unload(&self.device);
    }
}
