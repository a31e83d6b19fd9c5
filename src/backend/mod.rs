//! Backends execute the transformer's operations: the CPU reference and the wgpu GPU path
//! implement the same small trait of model-agnostic ops, so the model's forward pass is
//! written once. Architectures differ by the values the ops take (an [`Activation`],
//! [`AttentionOpts`], a [`Rope`] with or without per-head norms), not by ops of their own.
//!
//! Tensors are row-major f32 activations of `[rows, cols]`; an op works on the first `n` rows.
//! Matrices are weights of `[out_features rows, in_features cols]`, kept in their GGUF
//! encoding, each with its bias where it has one. The rows of a step may belong to several
//! sequences ([`Batch`]): row-wise ops do not care, the cache's ops place each row by its
//! span's slot and position.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod gpu;
mod host;
mod kv;
mod ops;
mod tokens;
mod weights;

pub use kv::{AttentionShape, CacheType, KvLayout, KvTypes, RopeKind, UnknownCacheType};
pub use ops::{
    Activation, AttentionOpts, Batch, CacheLayer, Dims, ExpertInput, Pointwise, QkNorm, RmsNorm,
    Rope, Routing, Scratch, Span,
};
pub use tokens::{argmax, HostTokens};
pub use weights::{MatrixUse, WeightBytes, WeightRows};

use crate::sampling::Sampler;

#[derive(Clone, Debug, thiserror::Error)]
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

/// Slots of [`Backend::queue_argmax`]: one token's id being read while the next one's is
/// computed.
pub const ARGMAX_SLOTS: usize = 2;

/// What the forward pass needs from a device. The required ops are model-agnostic; the fused
/// forms after them have default bodies made of those ops, which a backend overrides where it
/// has a faster kernel. Ops record work and return at once; errors of recorded work surface
/// at the next [`Backend::read`], [`Backend::sync`] or [`Backend::read_argmax`].
pub trait Backend {
    type Tensor: Dims;
    type Matrix: Dims;
    type Vector;
    type KvCache;

    /// A `[rows of all parts, cols]` matrix from the parts' rows in order, with their biases,
    /// for products that feed `usage`.
    fn upload_matrix(
        &mut self,
        name: &str,
        cols: usize,
        parts: Vec<WeightRows>,
        usage: MatrixUse,
    ) -> Result<Self::Matrix>;
    fn upload_vector(&mut self, name: &str, data: &[f32]) -> Result<Self::Vector>;
    fn tensor(&mut self, name: &str, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// The backend's own `[rows, cols]` scratch tensor `which`, grown as needed, for the
    /// default bodies of the fused ops. A backend that cannot grow it reports the error at
    /// the next wait.
    fn scratch(&mut self, which: Scratch, rows: usize, cols: usize) -> Self::Tensor;
    /// The KV cache of `layout`; a backend whose kernels cannot take the shape, the types or
    /// an option of some layer refuses it here, at load.
    fn kv_cache(&mut self, layout: &KvLayout) -> Result<Self::KvCache>;

    /// out[t] = row `tokens[t]` of `table`, dequantized.
    fn embed(&mut self, table: &Self::Matrix, tokens: &[u32], out: &Self::Tensor);
    /// out = rms_norm(x), per row.
    fn rms_norm(
        &mut self,
        x: &Self::Tensor,
        norm: RmsNorm<'_, Self::Vector>,
        out: &Self::Tensor,
        n: usize,
    );
    /// out = x · wᵀ (+ w's bias). `w` is a [`MatrixUse::Plain`] matrix.
    fn matmul(&mut self, x: &Self::Tensor, w: &Self::Matrix, out: &Self::Tensor, n: usize);
    /// From `qkv`, each row's `[q | k | v]` products: q and k normalised per head where
    /// `rope` says, rotated by RoPE at the row's position; q to `q`, k and v into the row's
    /// slot and position of the cache.
    fn rope_store_kv(
        &mut self,
        qkv: &Self::Tensor,
        rope: &Rope<'_, Self::Vector>,
        q: &Self::Tensor,
        at: CacheLayer<'_, Self::KvCache>,
    );
    /// Each row's query against the keys of its own slot at positions `opts` lets it see, up
    /// to its own: out = softmax(score(q · kᵀ)) · v, head by head (grouped-query heads share
    /// their key/value head).
    fn attention(
        &mut self,
        q: &Self::Tensor,
        at: CacheLayer<'_, Self::KvCache>,
        opts: &AttentionOpts,
        out: &Self::Tensor,
    );
    /// Products with the experts each row chose (ggml's `mul_mat_id`): for choice j of row t,
    /// expert e = `routes[t][j]`, out[t·k + j] = x[`input`'s row] · w_eᵀ, where `w` is a
    /// [`MatrixUse::Experts`] matrix of which w_e is the e-th block of rows.
    fn matmul_id(
        &mut self,
        x: &Self::Tensor,
        w: &Self::Matrix,
        routes: &Self::Tensor,
        input: ExpertInput,
        out: &Self::Tensor,
        n: usize,
    );
    /// Rows `0..n` of a tensor, brought to the host.
    fn read(&mut self, x: &Self::Tensor, n: usize) -> Result<Vec<f32>>;
    /// The first rows of a tensor from the host: `rows` holds whole rows, one after the
    /// other, and is written once all work recorded before it has read the tensor.
    fn write(&mut self, x: &Self::Tensor, rows: &[f32]);
    /// Waits until all recorded work has finished (bounded on GPUs).
    fn sync(&mut self) -> Result<()>;
    /// Device memory the backend holds, in bytes.
    fn memory_used(&self) -> u64;

    /// A one-line description of the device, for logs and `--verbose`.
    fn describe(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }

    // The next six ops have bodies that do their work on the host, between a `read` and a
    // `write`: right anywhere, slow on a device, which overrides them with kernels. Where the
    // read fails, the op is left undone and the backend reports the failure again at its
    // next wait, as it does for any failed recording.

    /// acc += x.
    fn add(&mut self, acc: &Self::Tensor, x: &Self::Tensor, n: usize) {
        if let (Ok(mut sums), Ok(x)) = (self.read(acc, n), self.read(x, n)) {
            sums.iter_mut().zip(&x).for_each(|(a, x)| *a += x);
            self.write(acc, &sums);
        }
    }

    /// `out[t][i] = act(gate_up[t][i]) · gate_up[t][w + i]`, w = out's width: the gate and up
    /// products of one row side by side, as the product of a `[gate | up]` matrix writes them.
    fn glu(&mut self, act: Activation, gate_up: &Self::Tensor, out: &Self::Tensor, n: usize) {
        let w = out.cols();
        assert_eq!(gate_up.cols(), 2 * w, "glu: gate and up of {w} values each");
        if let Ok(gate_up) = self.read(gate_up, n) {
            self.write(out, &host::glu(act, &gate_up, w));
        }
    }

    /// x = f(x), element by element.
    fn pointwise(&mut self, x: &Self::Tensor, f: Pointwise, n: usize) {
        if let Ok(mut values) = self.read(x, n) {
            values.iter_mut().for_each(|v| *v = f.apply(*v));
            self.write(x, &values);
        }
    }

    /// dst[0] = src[row].
    fn copy_row(&mut self, src: &Self::Tensor, row: usize, dst: &Self::Tensor) {
        if let Ok(rows) = self.read(src, row + 1) {
            self.write(dst, &rows[row * src.cols()..]);
        }
    }

    /// Each row's experts from its router logits (`[n, n_expert]`): `routes[t]` = the ids of
    /// the `routing.k` experts chosen, then their weights, as [`Routing::route`] computes them
    /// (`routes` is `[n, 2k]`).
    fn moe_route(
        &mut self,
        logits: &Self::Tensor,
        routing: Routing,
        routes: &Self::Tensor,
        n: usize,
    ) {
        assert_eq!(
            routes.cols(),
            2 * routing.k,
            "moe_route: ids and weights of k experts"
        );
        if let Ok(logits) = self.read(logits, n) {
            self.write(routes, &host::routes(routing, &logits, n));
        }
    }

    /// acc[t] += Σ_j weight[t][j] · y[t·k + j]: the chosen experts' outputs mixed by the
    /// weights of `routes` into the residual stream.
    fn moe_combine_add(
        &mut self,
        y: &Self::Tensor,
        routes: &Self::Tensor,
        acc: &Self::Tensor,
        n: usize,
    ) {
        let k = routes.cols() / 2;
        let read = (self.read(y, n * k), self.read(routes, n), self.read(acc, n));
        if let (Ok(y), Ok(routes), Ok(mut sums)) = read {
            host::combine_experts_add(&y, &routes, &mut sums, k);
            self.write(acc, &sums);
        }
    }

    /// out = rms_norm(x) · wᵀ (+ bias).
    fn norm_matmul(
        &mut self,
        x: &Self::Tensor,
        norm: RmsNorm<'_, Self::Vector>,
        w: &Self::Matrix,
        out: &Self::Tensor,
        n: usize,
    ) {
        let normed = self.scratch(Scratch::Normed, n, x.cols());
        self.rms_norm(x, norm, &normed, n);
        self.matmul(&normed, w, out, n);
    }

    /// out = act(rms_norm(x) · gateᵀ) · (rms_norm(x) · upᵀ): a gated feed-forward input, from
    /// a [`MatrixUse::GateUp`] matrix.
    fn norm_glu(
        &mut self,
        x: &Self::Tensor,
        norm: RmsNorm<'_, Self::Vector>,
        gate_up: &Self::Matrix,
        act: Activation,
        out: &Self::Tensor,
        n: usize,
    ) {
        let normed = self.scratch(Scratch::Normed, n, x.cols());
        let products = self.scratch(Scratch::Products, n, gate_up.rows());
        self.rms_norm(x, norm, &normed, n);
        self.matmul(&normed, gate_up, &products, n);
        self.glu(act, &products, out, n);
    }

    /// Attention's inputs for the step's rows: [`Backend::rope_store_kv`] of the products of
    /// rms_norm(x) with a [`MatrixUse::Qkv`] matrix (and its bias).
    fn attention_inputs(
        &mut self,
        x: &Self::Tensor,
        norm: RmsNorm<'_, Self::Vector>,
        qkv: &Self::Matrix,
        rope: &Rope<'_, Self::Vector>,
        q: &Self::Tensor,
        at: CacheLayer<'_, Self::KvCache>,
    ) {
        let n = at.batch.rows();
        let normed = self.scratch(Scratch::Normed, n, x.cols());
        let products = self.scratch(Scratch::Products, n, qkv.rows());
        self.rms_norm(x, norm, &normed, n);
        self.matmul(&normed, qkv, &products, n);
        self.rope_store_kv(&products, rope, q, at);
    }

    /// acc += x · wᵀ (+ bias): a residual connection.
    fn matmul_add(&mut self, x: &Self::Tensor, w: &Self::Matrix, acc: &Self::Tensor, n: usize) {
        let products = self.scratch(Scratch::Products, n, w.rows());
        self.matmul(x, w, &products, n);
        self.add(acc, &products, n);
    }

    /// Index of the largest value of row 0 (first one on ties), without reading the row back.
    fn argmax(&mut self, x: &Self::Tensor) -> Result<u32> {
        self.queue_argmax(x, 0);
        self.read_argmax(0)
    }
    /// Where the provided token ops below keep their picks: a backend that picks tokens on
    /// the host returns its [`HostTokens`]; one that overrides them all, an unused one.
    fn host_tokens(&mut self) -> &mut HostTokens;
    /// Sends all recorded work to the device, ending with the argmax of row 0 of `x` (as
    /// [`Backend::argmax`] takes it), and returns without waiting: the id stays on the device
    /// for [`Backend::embed_argmax`] and is read later from `slot` (below [`ARGMAX_SLOTS`]), so
    /// that the next token's step can be queued before this one's id reaches the host. By
    /// default the host reads the row and picks at once.
    fn queue_argmax(&mut self, x: &Self::Tensor, slot: usize) {
        let id = self.read(x, 1).map(|row| argmax(&row[..x.cols()]) as u32);
        self.host_tokens().put(slot, id);
    }
    /// Prepares [`Backend::queue_sample`] to draw as `sampler` would from here on: its
    /// settings, its draws so far and its recent tokens (settings for which
    /// `fits_device()` holds, where the device samples).
    fn start_sampling(&mut self, sampler: &Sampler) -> Result<()> {
        self.host_tokens().start(sampler);
        Ok(())
    }
    /// [`Backend::queue_argmax`] with the token that the sampler of
    /// [`Backend::start_sampling`] draws from row 0 of `x` (adjusted by its bias and
    /// penalties); that sampler then counts the draw and remembers the token, as the host's
    /// sampler does with [`Sampler::sample`] and [`Sampler::accept`].
    fn queue_sample(&mut self, x: &Self::Tensor, slot: usize) {
        let id = self.read(x, 1).map(|mut row| {
            let logits = &mut row[..x.cols()];
            self.host_tokens().sample(logits)
        });
        self.host_tokens().put(slot, id);
    }
    /// The id [`Backend::queue_argmax`] put in `slot`, waiting for it (bounded on GPUs).
    fn read_argmax(&mut self, slot: usize) -> Result<u32> {
        self.host_tokens().get(slot)
    }
    /// out[0] = row (the last queued argmax) of `table`: [`Backend::embed`] of a token the
    /// host has not seen yet.
    fn embed_argmax(&mut self, table: &Self::Matrix, out: &Self::Tensor) {
        let last = self.host_tokens().last();
        self.embed(table, &[last], out);
    }

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
