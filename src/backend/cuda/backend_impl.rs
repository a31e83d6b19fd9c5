//! The trait's ops on CUDA: each checks its shapes, then launches its kernel. Ops return at
//! once; the first failure is kept and reported by every wait after it (nothing more is
//! launched, since work after a refused op would compute from what it never wrote).

use super::kernels::{has_q8_products, int, ArgBits, Kernel};
use super::{
    graph, BatchRows, CudaBackend, CudaKvCache, CudaMatrix, CudaPart, CudaTensor, CudaVector,
    DeviceBuffer, ATT_GROUP, ATT_GROUP_HEAD_DIM, ATT_THREADS, FA_ROWS, FILL_SLOTS, GQ_FILL_WARPS,
    GQ_KEYS_PER_WARP, GQ_WARPS, KEYS_PER_SHARE, MAX_HEAD_DIM, MAX_SHARES, MMA_ROWS, MMA_TOKENS,
    MM_TOKENS, MV_WARPS, PICK_THREADS, Q8_ROWS, SHARE_SLOTS, SPLIT_BELOW_BLOCKS,
};
use crate::backend::weights::{check_parts, expert_count};
use crate::backend::{
    Activation, AttentionOpts, AttentionShape, Backend, BackendError, Batch, CacheLayer, CacheType,
    ExpertInput, HostTokens, KernelTiming, KvLayout, KvTypes, MatrixUse, Pointwise, Result,
    RmsNorm, Rope, Routing, Scratch, WeightRows,
};
use std::rc::Rc;

/// Threads per block of the row kernels (matmul, norms, RoPE): four warps.
const ROW_THREADS: u32 = 128;
/// Threads per block of the element-wise kernels.
const ELEMENT_THREADS: u32 = 256;
/// Warps per block of cuda/matmul_q8.cu's quantize_acts (a warp per block of 32).
const QUANTIZE_WARPS: usize = 8;
/// Warps in all that a decode product spreads its rows over: about 32 per multiprocessor of
/// an H100. Measured there (BENCHMARKS.md, eighth session): 4096 beat 1 (a warp per row),
/// 8192, 16384 and 32768 at 0.5B, 3B and 8B.
const Q8_WARPS: usize = 4096;

/// Activations quantized by quantize_acts: the device addresses of their bytes and of their
/// blocks' (scale, scale · sum).
#[derive(Clone, Copy)]
struct QuantizedActs {
    bytes: u64,
    scales: u64,
}

/// A cache type as cuda/kv.cuh names it: its ggml type id.
fn cache_type(ty: CacheType) -> u64 {
    ty.ggml_type().id() as u64
}

/// The most keys any row of the batch sees.
fn longest_visible(batch: &Batch, window: Option<usize>) -> usize {
    let visible = |pos: usize| window.map_or(pos + 1, |w| w.min(pos + 1));
    batch
        .positions()
        .map(|(_, p)| visible(p))
        .max()
        .unwrap_or(0)
}

/// Shares of each (row, head)'s keys for `blocks` of them: one where they fill the GPU or the
/// longest row sees few keys, else enough that each share has about KEYS_PER_SHARE keys.
fn attention_shares(batch: &Batch, window: Option<usize>, blocks: usize) -> usize {
    if blocks >= SPLIT_BELOW_BLOCKS {
        return 1;
    }
    longest_visible(batch, window)
        .div_ceil(KEYS_PER_SHARE)
        .clamp(1, MAX_SHARES)
}

/// Shares of each (row, key/value head)'s keys for attention_grouped's `blocks` of them: as
/// many as give the GPU about GQ_FILL_WARPS warps, each with GQ_KEYS_PER_WARP keys or more.
fn grouped_shares(batch: &Batch, window: Option<usize>, blocks: usize) -> usize {
    let by_keys = longest_visible(batch, window).div_ceil(GQ_WARPS * GQ_KEYS_PER_WARP);
    let to_fill = GQ_FILL_WARPS / (blocks * GQ_WARPS);
    by_keys.min(to_fill).clamp(1, MAX_SHARES)
}

/// Whether decode attention takes every query head of a key/value head in one block
/// (attention_grouped), reading its keys and values once for all of them.
fn decodes_groups(shape: &AttentionShape, types: KvTypes) -> bool {
    shape.n_head / shape.n_head_kv <= ATT_GROUP
        && shape.head_dim <= ATT_GROUP_HEAD_DIM
        && shape.head_dim.is_multiple_of(4)
        && types == KvTypes::default()
}

/// Warps per Q8_ROWS weight rows of cuda/matmul_q8.cu's products: the fewest (a power of two
/// up to MV_WARPS) that give the product Q8_WARPS warps in all, since a short matrix with a
/// warp per row or two has too few loads in flight to keep the memory busy.
fn q8_row_warps(rows: usize) -> usize {
    let mut warps = 1;
    while warps < MV_WARPS && rows.div_ceil(Q8_ROWS) * warps < Q8_WARPS {
        warps *= 2;
    }
    warps
}

/// The arguments of cuda/matmul.cu's and cuda/matmul_q8.cu's products of a part: its rows,
/// the activations (`inputs`), then where the products go and their shape.
fn part_args(
    part: &CudaPart,
    inputs: &[u64],
    out: &CudaTensor,
    bias: u64,
    (n, cols, out_first): (usize, usize, usize),
) -> Vec<u64> {
    let rows = [part.buf.ptr, int(part.row_bytes)];
    let shape = [
        out.buf.ptr,
        bias,
        int(part.rows),
        int(cols),
        int(n),
        int(out.cols),
        int(out_first),
    ];
    [&rows[..], inputs, &shape[..]].concat()
}

/// Threads of a norm's block: one for every one or two values, since one row (decoding) is a
/// single block, and its latency is what a step waits for.
fn norm_threads(cols: usize) -> u32 {
    (cols.div_ceil(64) * 32).clamp(32, 1024) as u32
}

fn elements(len: usize) -> (u32, u32, u32) {
    (len.div_ceil(ELEMENT_THREADS as usize).max(1) as u32, 1, 1)
}

impl CudaBackend {
    /// Records the first failure; later ones are its consequences.
    fn fail(&mut self, e: BackendError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    /// Launches unless an earlier op failed; a refused launch becomes the failure. Timed
    /// where a profile is being taken, with the cost set by [`Self::costs`].
    pub(super) fn launch(
        &mut self,
        kernel: Kernel,
        grid: (u32, u32, u32),
        block: u32,
        args: &[u64],
    ) {
        let (bytes, flops) = std::mem::take(&mut self.cost);
        self.acts_q8_of = None;
        if self.failed.is_some() {
            return;
        }
        self.last_kernel = kernel.place().1;
        let timed = match self.profile.as_mut() {
            Some(p) => p.before(self.last_kernel, bytes, flops),
            None => Ok(()),
        };
        let launched = timed
            .and_then(|()| self.kernels.launch(&self.device, kernel, grid, block, args))
            .and_then(|()| self.profile.as_mut().map_or(Ok(()), |p| p.after()));
        if let Err(e) = launched {
            self.fail(e);
        }
    }

    /// What the next launch moves and computes, for the profile.
    fn costs(&mut self, bytes: usize, flops: usize) {
        self.cost = (bytes as u64, flops as u64);
    }

    /// Fails the op `what` unless `ok`.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.fail(BackendError::Unsupported(what()));
        }
        ok && self.failed.is_none()
    }

    /// The failure so far, or the outcome of a bounded wait for the recorded work.
    fn wait(&mut self, what: &str) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let stage = format!("{what} (the last kernel launched: {})", self.last_kernel);
        self.device
            .wait(&stage)
            .inspect_err(|e| self.fail(e.clone()))
    }

    /// Queues the step recorded since [`Backend::embed_argmax`] as a graph: the last step's,
    /// with the arguments that changed set in place, where it has the same kernels on the same
    /// grids; else a new one.
    fn launch_step_graph(&mut self) {
        let Some(launches) = self.device.take_recording() else {
            return;
        };
        if self.failed.is_some() {
            return;
        }
        let queued = match &mut self.step_graph {
            Some(g) if g.fits(&launches) => g.update(launches),
            _ => graph::StepGraph::build(launches, self.device.programmatic).map(|g| {
                self.step_graph = Some(g);
            }),
        };
        let launched = queued.and_then(|()| {
            let g = self
                .step_graph
                .as_ref()
                .expect("a step graph was just made");
            g.launch(self.device.stream)
        });
        if let Err(e) = launched {
            self.fail(e);
        }
    }

    /// Queues the copy of pick slot `slot` to the host (after the step's graph, if one was
    /// recorded).
    fn send_pick(&mut self, slot: usize) {
        self.launch_step_graph();
        if self.failed.is_none() {
            if let Err(e) = self.picks.send(slot) {
                self.fail(e);
            }
        }
    }

    /// Writes up to 2 × FILL_SLOTS ints at `dst` in stream order, from a kernel's arguments:
    /// no host copy, so the host never waits for the stream.
    fn fill_ints(&mut self, dst: u64, values: &[i32]) {
        debug_assert!(values.len() <= 2 * FILL_SLOTS);
        let mut args = vec![dst, int(values.len())];
        args.extend((0..FILL_SLOTS).map(|i| {
            let at = |j: usize| values.get(j).map_or(0, |&v| v as u32 as u64);
            at(2 * i) | (at(2 * i + 1) << 32)
        }));
        self.launch(Kernel::FillInts, (1, 1, 1), 2 * FILL_SLOTS as u32, &args);
    }

    /// A new device array of `values` for the kernels queued next.
    fn device_ints(&mut self, values: &[i32], what: &str) -> Option<DeviceBuffer> {
        match DeviceBuffer::new(&self.device, 4 * values.len(), what) {
            Ok(buf) => {
                // A decode step's arrays are short: written by a kernel (which a step's graph
                // can hold). Longer ones go through pinned memory, and only arrays past its
                // slots (long prompts') are copied after a bounded wait for the stream to drain
                // (see DeviceBuffer::write).
                if values.len() <= 2 * FILL_SLOTS {
                    self.fill_ints(buf.ptr, values);
                    return Some(buf);
                }
                let copied = match self.staging.copy(buf.ptr, values, what) {
                    Ok(true) => Ok(()),
                    Ok(false) => buf.write(values, what),
                    Err(e) => Err(e),
                };
                if let Err(e) = copied {
                    self.fail(e);
                }
                Some(buf)
            }
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// The device copy of `batch`'s cache rows (`[slot × n_ctx, position]` each), checked
    /// against the cache's slots and positions.
    fn batch_rows(&mut self, batch: &Batch, cache: &CudaKvCache) -> Option<Rc<DeviceBuffer>> {
        if let Some(b) = &self.batch_rows {
            if b.batch == *batch && (b.slots, b.n_ctx) == (cache.slots, cache.n_ctx) {
                return Some(b.buf.clone());
            }
        }
        let mut rows = Vec::with_capacity(2 * batch.rows());
        for (slot, pos) in batch.positions() {
            if slot >= cache.slots || pos >= cache.n_ctx {
                self.fail(BackendError::Unsupported(format!(
                    "slot {slot} position {pos} is outside a KV cache of {} slots of {} positions",
                    cache.slots, cache.n_ctx
                )));
                return None;
            }
            rows.extend([(slot * cache.n_ctx) as i32, pos as i32]);
        }
        let buf = if rows.len() <= 2 * FILL_SLOTS {
            let buf = self.small_batch_rows.clone();
            self.fill_ints(buf.ptr, &rows);
            buf
        } else {
            Rc::new(self.device_ints(&rows, "a batch's cache rows")?)
        };
        self.batch_rows = Some(BatchRows {
            batch: batch.clone(),
            slots: cache.slots,
            n_ctx: cache.n_ctx,
            buf: buf.clone(),
        });
        Some(buf)
    }

    /// The buffer of split attention's shares: SHARE_SLOTS (row, head, share) outputs.
    fn shares_buffer(&mut self, head_dim: usize) -> Option<Rc<DeviceBuffer>> {
        if let Some(b) = &self.attention_shares {
            return Some(b.clone());
        }
        let bytes = 4 * SHARE_SLOTS * (MAX_HEAD_DIM.max(head_dim) + 2);
        match DeviceBuffer::new(&self.device, bytes, "split attention's shares") {
            Ok(buf) => {
                self.bytes_held += buf.bytes as u64;
                let buf = Rc::new(buf);
                self.attention_shares = Some(buf.clone());
                Some(buf)
            }
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    fn alloc_tensor(&mut self, what: &str, rows: usize, cols: usize) -> Result<CudaTensor> {
        let buf = DeviceBuffer::new(&self.device, 4 * rows * cols, what)?;
        buf.zero(what)?;
        self.bytes_held += buf.bytes as u64;
        Ok(CudaTensor {
            buf: Rc::new(buf),
            rows,
            cols,
        })
    }

    /// Whether `n` rows of `x` times `w` into `out` is a product of fitting shapes (else the
    /// failure is recorded), and not empty.
    fn product_fits(&mut self, x: &CudaTensor, w: &CudaMatrix, out: &CudaTensor, n: usize) -> bool {
        let ok = x.cols == w.cols && out.cols == w.rows && n <= x.rows.min(out.rows);
        n > 0
            && self.check(ok, || {
                format!(
                    "matmul {}: {n} rows of [{}, {}] by [{}, {}] into [{}, {}]",
                    w.name, x.rows, x.cols, w.rows, w.cols, out.rows, out.cols
                )
            })
    }

    /// Whether every part of `w` takes 8-bit activations for `n` tokens (cuda/matmul_q8.cu).
    fn int8_products(&self, w: &CudaMatrix, n: usize) -> bool {
        self.int8_activations
            && n <= MM_TOKENS
            && w.cols.is_multiple_of(32)
            && w.parts.iter().all(|p| has_q8_products(p.ggml_type))
    }

    /// out = rms_norm(x) · wᵀ (+ bias): with 8-bit products, the norm's output is quantized
    /// by the same kernel.
    fn normed_products(
        &mut self,
        x: &CudaTensor,
        norm: RmsNorm<'_, CudaVector>,
        w: &CudaMatrix,
        out: &CudaTensor,
        n: usize,
    ) {
        if !self.int8_products(w, n) {
            let normed = self.scratch(Scratch::Normed, n, x.cols);
            self.rms_norm(x, norm, &normed, n);
            self.matmul(&normed, w, out, n);
            return;
        }
        if self.product_fits(x, w, out, n) {
            if let Some(acts) = self.normed_acts(x, norm, w, n) {
                self.q8_products(acts, w, out, n, false);
            }
        }
    }

    /// rms_norm(x) rounded to 8 bits for the products with `w` after it, in one launch.
    fn normed_acts(
        &mut self,
        x: &CudaTensor,
        norm: RmsNorm<'_, CudaVector>,
        w: &CudaMatrix,
        n: usize,
    ) -> Option<QuantizedActs> {
        let ok = norm.weight.len == x.cols;
        if !self.check(ok, || {
            format!(
                "rms_norm before {}: a weight of {} for rows of {}",
                w.name, norm.weight.len, x.cols
            )
        }) {
            return None;
        }
        let acts = self.acts_buffer(n, x.cols)?;
        self.costs(4 * n * x.cols, 0);
        let args = [
            x.buf.ptr,
            norm.weight.buf.ptr,
            acts.bytes,
            acts.scales,
            int(x.cols),
            norm.eps.bits(),
        ];
        let threads = norm_threads(x.cols);
        self.launch(Kernel::RmsNormQuantize, (n as u32, 1, 1), threads, &args);
        Some(acts)
    }

    /// Whether a step's `qkv_width` products fit the cache, q and the RoPE table (else the
    /// failure is recorded).
    fn rope_fits(
        &mut self,
        qkv_width: usize,
        rope: &Rope<'_, CudaVector>,
        q: &CudaTensor,
        at: CacheLayer<'_, CudaKvCache>,
    ) -> bool {
        let shape = at.cache.shape;
        let (qw, kvw, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        let n = at.batch.rows();
        let last_pos = at.batch.positions().map(|(_, p)| p).max().unwrap_or(0);
        let norms_fit = rope
            .qk_norm
            .as_ref()
            .is_none_or(|nm| nm.q.len == hd && nm.k.len == hd);
        let ok = qkv_width == qw + 2 * kvw
            && q.cols == qw
            && n <= q.rows
            && at.layer < at.cache.k.len()
            && (last_pos + 1) * hd <= rope.cos_sin.len
            && norms_fit;
        self.check(ok, || {
            format!(
                "rope_store_kv layer {}: {n} rows of [q | k | v] ({qkv_width} values, want {}) \
                 into q of {} (want {qw}), positions up to {last_pos} of a RoPE table of {} \
                 values, per-head norms {}",
                at.layer,
                qw + 2 * kvw,
                q.cols,
                rope.cos_sin.len,
                if norms_fit {
                    "fit"
                } else {
                    "of the wrong size"
                }
            )
        })
    }

    /// Whether a step's [q | k | v] products can rotate and store themselves
    /// (cuda/matmul_q8.cu's matmul_q8_rope): 8-bit products whose parts each hold whole heads,
    /// f16 caches and no per-head norms.
    fn rope_in_products(
        &self,
        qkv: &CudaMatrix,
        rope: &Rope<'_, CudaVector>,
        at: CacheLayer<'_, CudaKvCache>,
    ) -> bool {
        let hd = at.cache.shape.head_dim;
        let f16 = CacheType::F16;
        self.int8_products(qkv, at.batch.rows())
            && rope.qk_norm.is_none()
            && at.cache.types.k == f16
            && at.cache.types.v == f16
            && hd.is_multiple_of(2)
            && qkv
                .parts
                .iter()
                .all(|p| p.first.is_multiple_of(hd) && p.rows.is_multiple_of(hd))
    }

    /// attention_inputs as rms_norm_quantize and a matmul_q8_rope launch per part of `qkv`.
    fn rope_products(
        &mut self,
        x: &CudaTensor,
        norm: RmsNorm<'_, CudaVector>,
        qkv: &CudaMatrix,
        rope: &Rope<'_, CudaVector>,
        q: &CudaTensor,
        at: CacheLayer<'_, CudaKvCache>,
    ) {
        let cache = at.cache;
        let shape = cache.shape;
        let n = at.batch.rows();
        let fits = x.cols == qkv.cols && n <= x.rows;
        if !self.check(fits, || {
            format!(
                "attention inputs {}: {n} rows of [{}, {}] by [{}, {}]",
                qkv.name, x.rows, x.cols, qkv.rows, qkv.cols
            )
        }) || !self.rope_fits(qkv.rows, rope, q, at)
        {
            return;
        }
        let Some(rows) = self.batch_rows(at.batch, cache) else {
            return;
        };
        let Some(acts) = self.normed_acts(x, norm, qkv, n) else {
            return;
        };
        let neox = matches!(shape.rope, crate::backend::RopeKind::Neox) as usize;
        let outputs = [
            q.buf.ptr,
            cache.k[at.layer].ptr,
            cache.v[at.layer].ptr,
            rope.cos_sin.buf.ptr,
            rows.ptr,
            int(shape.n_head),
            int(shape.n_head_kv),
            int(shape.head_dim),
            int(neox),
        ];
        for part in &qkv.parts {
            let bias = qkv.part_bias(part);
            self.q8_costs(part, n, qkv.cols);
            // The pairs of rows RoPE rotates together are warp slots of one block.
            let row_warps = q8_row_warps(part.rows).min(MV_WARPS / 2);
            let inputs = [
                part.buf.ptr,
                int(part.row_bytes),
                acts.bytes,
                acts.scales,
                bias,
                int(part.rows),
                int(qkv.cols),
                int(n),
                int(part.first),
                int(row_warps),
            ];
            let grid = (part.rows.div_ceil(MV_WARPS / row_warps) as u32, 1, 1);
            let args = [&inputs[..], &outputs[..]].concat();
            let kernel = Kernel::MatmulQ8 {
                ty: part.ggml_type,
                rope: true,
                one_token: n == 1,
            };
            self.launch(kernel, grid, 32 * MV_WARPS as u32, &args);
        }
    }

    /// The products of 8-bit activations with every part of `w`, written into `out` or, with
    /// `accumulate`, added to it.
    fn q8_products(
        &mut self,
        acts: QuantizedActs,
        w: &CudaMatrix,
        out: &CudaTensor,
        n: usize,
        accumulate: bool,
    ) {
        for part in &w.parts {
            let bias = w.part_bias(part);
            let shape = (n, w.cols, part.first);
            self.matmul_part_q8(part, acts, out, bias, shape, accumulate);
        }
    }

    /// The device buffer for `n` rows of `cols` activations quantized to 8 bits (grown to
    /// MM_TOKENS rows of the widest product seen): their bytes, then each block of 32's scale
    /// and sum.
    fn acts_buffer(&mut self, n: usize, cols: usize) -> Option<QuantizedActs> {
        let bytes_of = |len: usize| len + 8 * (len / 32);
        let len = n * cols;
        if self
            .acts_q8
            .as_ref()
            .is_none_or(|b| b.bytes < bytes_of(len))
        {
            let capacity = bytes_of(MM_TOKENS.max(n) * cols);
            match DeviceBuffer::new(&self.device, capacity, "8-bit activations") {
                Ok(buf) => {
                    self.bytes_held += buf.bytes as u64;
                    self.acts_q8 = Some(Rc::new(buf));
                }
                Err(e) => {
                    self.fail(e);
                    return None;
                }
            }
        }
        let buf = self.acts_q8.as_ref()?;
        Some(QuantizedActs {
            bytes: buf.ptr,
            scales: buf.ptr + len as u64,
        })
    }

    /// Where a kernel writing `n` rows of `out` also rounds them to 8 bits for the product
    /// after it ([`Self::wrote_acts_q8`] then): the activations buffer, else null pointers.
    /// Only decode-sized rows of whole blocks of 32 are.
    fn fused_acts_q8(&mut self, out: &CudaTensor, n: usize, fits: bool) -> [u64; 2] {
        let wanted = self.int8_activations && n <= MM_TOKENS && fits;
        match wanted.then(|| self.acts_buffer(n, out.cols)).flatten() {
            Some(acts) => [acts.bytes, acts.scales],
            None => [0, 0],
        }
    }

    /// Records that the kernel just launched rounded `n` rows of `out` to 8 bits (its
    /// [`Self::fused_acts_q8`] were not null).
    fn wrote_acts_q8(&mut self, out: &CudaTensor, n: usize, acts: [u64; 2]) {
        if acts[0] != 0 && self.failed.is_none() {
            self.acts_q8_of = Some((out.buf.ptr, n, out.cols));
        }
    }

    /// `n` rows of `x` quantized to 8 bits for cuda/matmul_q8.cu's products (unless the kernel
    /// that wrote them just did).
    fn quantized_acts(&mut self, x: &CudaTensor, n: usize) -> Option<QuantizedActs> {
        let len = n * x.cols;
        let acts = self.acts_buffer(n, x.cols)?;
        if self.acts_q8_of == Some((x.buf.ptr, n, x.cols)) {
            return Some(acts);
        }
        self.costs(4 * len, 0);
        let blocks = len / 32;
        // A warp per block of 32.
        let grid = (blocks.div_ceil(QUANTIZE_WARPS) as u32, 1, 1);
        let args = [x.buf.ptr, acts.bytes, acts.scales, int(blocks)];
        self.launch(
            Kernel::QuantizeActs,
            grid,
            32 * QUANTIZE_WARPS as u32,
            &args,
        );
        Some(acts)
    }

    /// The products of 8-bit activations with a part's rows, as matmul_part's.
    fn matmul_part_q8(
        &mut self,
        part: &CudaPart,
        acts: QuantizedActs,
        out: &CudaTensor,
        bias: u64,
        (n, cols, out_first): (usize, usize, usize),
        accumulate: bool,
    ) {
        self.q8_costs(part, n, cols);
        let row_warps = q8_row_warps(part.rows);
        let mut args = part_args(
            part,
            &[acts.bytes, acts.scales],
            out,
            bias,
            (n, cols, out_first),
        );
        args.extend([int(row_warps), int(accumulate as usize)]);
        let grid = (
            part.rows.div_ceil(Q8_ROWS * MV_WARPS / row_warps) as u32,
            1,
            1,
        );
        let threads = 32 * MV_WARPS as u32;
        let kernel = Kernel::MatmulQ8 {
            ty: part.ggml_type,
            rope: false,
            one_token: n == 1,
        };
        self.launch(kernel, grid, threads, &args);
    }

    /// What an 8-bit product of `n` tokens with a part moves and computes, for the profile:
    /// the weights, the activations' bytes and block scales, and the f32 outputs.
    fn q8_costs(&mut self, part: &CudaPart, n: usize, cols: usize) {
        self.costs(
            part.rows * part.row_bytes + n * (cols + cols / 4) + 4 * n * part.rows,
            2 * n * part.rows * cols,
        );
    }

    /// The products of `n` rows of `x` with a part's rows (`rows` of them, from row
    /// `first` of the part), into `out`'s columns from `out_first`. Block-quantized parts take
    /// the tensor-core kernel of their type for prompts, else the warp-per-row one; float rows
    /// (of any width) the generic one.
    fn matmul_part(
        &mut self,
        part: &CudaPart,
        x: &CudaTensor,
        out: &CudaTensor,
        bias: u64,
        (n, cols, out_first): (usize, usize, usize),
    ) {
        let token_groups = n.div_ceil(MM_TOKENS) as u32;
        self.costs(
            part.rows * part.row_bytes + 4 * n * (cols + part.rows),
            2 * n * part.rows * cols,
        );
        if part.ggml_type.block_size() > 1 {
            let args = part_args(part, &[x.buf.ptr], out, bias, (n, cols, out_first));
            if self.uses_tensor_cores(n) {
                let grid = (
                    part.rows.div_ceil(MMA_ROWS) as u32,
                    n.div_ceil(MMA_TOKENS) as u32,
                    1,
                );
                let threads = 2 * MMA_ROWS as u32;
                self.launch(Kernel::MatmulMma(part.ggml_type), grid, threads, &args);
            } else {
                let grid = (part.rows.div_ceil(MV_WARPS) as u32, token_groups, 1);
                let threads = 32 * MV_WARPS as u32;
                self.launch(Kernel::MatmulChunks(part.ggml_type), grid, threads, &args);
            }
            return;
        }
        self.launch(
            Kernel::Matmul,
            (part.rows as u32, token_groups, 1),
            ROW_THREADS,
            &[
                part.buf.ptr,
                part.ggml_type.id() as i32 as u64,
                int(part.row_bytes),
                x.buf.ptr,
                out.buf.ptr,
                bias,
                int(cols),
                int(n),
                int(out.cols),
                int(out_first),
            ],
        );
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;

    fn describe(&self) -> String {
        let s = &self.device.summary;
        format!(
            "CUDA {} (compute {}.{}, {:.1} GiB, driver {})",
            s.name,
            s.compute_capability.0,
            s.compute_capability.1,
            s.memory as f64 / (1u64 << 30) as f64,
            s.driver()
        )
    }

    /// The parts stay as the file encodes them, in the order given, whatever they feed (the
    /// kernels decode every ggml type vibrant reads: cuda/common.cuh's weight_at); consecutive
    /// parts of one type are one buffer.
    fn upload_matrix(
        &mut self,
        name: &str,
        cols: usize,
        parts: Vec<WeightRows>,
        usage: MatrixUse,
    ) -> Result<CudaMatrix> {
        let (row_bytes, bias) = check_parts(name, cols, &parts)?;
        let total: usize = parts.iter().map(|p| p.rows).sum();
        let experts = expert_count(name, total, usage, bias.is_some())?;
        let mut kept = Vec::with_capacity(parts.len());
        let mut first = 0;
        let mut index = 0;
        // Consecutive parts of one type (gate and up, often q and k) share a buffer, so that
        // one launch covers them.
        for run in parts.chunk_by(|a, b| a.ggml_type == b.ggml_type) {
            let (ggml_type, row_bytes) = (run[0].ggml_type, row_bytes[index]);
            index += run.len();
            let rows: usize = run.iter().map(|p| p.rows).sum();
            let what = format!("{name} (rows {first}.. of {total}, {ggml_type})");
            let buf = match run {
                [one] => DeviceBuffer::from_host(&self.device, one.data.bytes(), &what)?,
                _ => {
                    let bytes: Vec<u8> = run.iter().flat_map(|p| p.data.bytes()).copied().collect();
                    DeviceBuffer::from_host(&self.device, &bytes, &what)?
                }
            };
            self.bytes_held += buf.bytes as u64;
            kept.push(CudaPart {
                ggml_type,
                first,
                rows,
                row_bytes,
                buf,
            });
            first += rows;
        }
        let bias = match bias {
            Some(b) => {
                let buf = DeviceBuffer::from_host(&self.device, &b, &format!("{name}'s bias"))?;
                self.bytes_held += buf.bytes as u64;
                Some(buf)
            }
            None => None,
        };
        Ok(CudaMatrix {
            name: name.to_string(),
            rows: total,
            cols,
            parts: kept,
            bias,
            experts,
        })
    }

    fn upload_vector(&mut self, name: &str, data: &[f32]) -> Result<CudaVector> {
        let buf = DeviceBuffer::from_host(&self.device, data, name)?;
        self.bytes_held += buf.bytes as u64;
        Ok(CudaVector {
            buf,
            len: data.len(),
        })
    }

    fn tensor(&mut self, name: &str, rows: usize, cols: usize) -> Result<CudaTensor> {
        self.alloc_tensor(&format!("tensor {name} [{rows}, {cols}]"), rows, cols)
    }

    fn scratch(&mut self, which: Scratch, rows: usize, cols: usize) -> CudaTensor {
        let bytes = 4 * rows * cols;
        let held = self
            .scratch
            .get(&which)
            .filter(|b| b.bytes >= bytes)
            .cloned();
        let buf = match held {
            Some(buf) => buf,
            None => {
                let what = format!("scratch {which:?} [{rows}, {cols}]");
                match self.alloc_tensor(&what, rows, cols) {
                    Ok(t) => {
                        self.scratch.insert(which, t.buf.clone());
                        t.buf
                    }
                    Err(e) => {
                        self.fail(e);
                        self.placeholder.clone()
                    }
                }
            }
        };
        CudaTensor { buf, rows, cols }
    }

    fn kv_cache(&mut self, layout: &KvLayout) -> Result<CudaKvCache> {
        let shape = layout.shape;
        let types = layout.types;
        types.check(&shape)?;
        let hd = shape.head_dim;
        if hd > MAX_HEAD_DIM || !hd.is_multiple_of(2) {
            return Err(BackendError::Unsupported(format!(
                "the CUDA attention kernels take heads of an even number of values up to \
                 {MAX_HEAD_DIM}; this model's have {hd}"
            )));
        }
        if shape.n_head_kv == 0 || !shape.n_head.is_multiple_of(shape.n_head_kv) {
            return Err(BackendError::Unsupported(format!(
                "{} query heads do not share {} key/value heads evenly",
                shape.n_head, shape.n_head_kv
            )));
        }
        let positions = layout.slots * layout.n_ctx;
        let mut layer = |l: usize, what: &str, ty: CacheType| -> Result<DeviceBuffer> {
            let bytes = positions * ty.bytes_for(shape.kv_width());
            let what = format!(
                "KV cache layer {l} {what} ({} slots × {} positions, {ty})",
                layout.slots, layout.n_ctx
            );
            let buf = DeviceBuffer::new(&self.device, bytes, &what)?;
            buf.zero(&what)?;
            self.bytes_held += bytes as u64;
            Ok(buf)
        };
        let n_layers = layout.layers.len();
        let mut k = Vec::with_capacity(n_layers);
        let mut v = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            k.push(layer(l, "keys", types.k)?);
            v.push(layer(l, "values", types.v)?);
        }
        Ok(CudaKvCache {
            k,
            v,
            slots: layout.slots,
            n_ctx: layout.n_ctx,
            shape,
            types,
        })
    }

    fn embed(&mut self, table: &CudaMatrix, tokens: &[u32], out: &CudaTensor) {
        if !self.check(out.cols == table.cols && tokens.len() <= out.rows, || {
            format!(
                "embed: {} tokens of {} rows of {} into a [{}, {}] tensor",
                tokens.len(),
                table.name,
                table.cols,
                out.rows,
                out.cols
            )
        }) {
            return;
        }
        for part in &table.parts {
            // (row of the part, output row) of the tokens this part holds; ids past the
            // table take its last row, as on the CPU.
            let pairs: Vec<i32> = tokens
                .iter()
                .enumerate()
                .map(|(t, &tok)| (t, (tok as usize).min(table.rows - 1)))
                .filter(|&(_, r)| r >= part.first && r < part.first + part.rows)
                .flat_map(|(t, r)| [(r - part.first) as i32, t as i32])
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let Some(pairs) = self.device_ints(&pairs, "embedded token ids") else {
                return;
            };
            self.launch(
                Kernel::Embed,
                ((pairs.bytes / 8) as u32, 1, 1),
                ROW_THREADS,
                &[
                    part.buf.ptr,
                    part.ggml_type.id() as i32 as u64,
                    int(part.row_bytes),
                    pairs.ptr,
                    out.buf.ptr,
                    int(out.cols),
                ],
            );
        }
    }

    fn rms_norm(
        &mut self,
        x: &CudaTensor,
        norm: RmsNorm<'_, CudaVector>,
        out: &CudaTensor,
        n: usize,
    ) {
        let ok = x.cols == out.cols && norm.weight.len == x.cols && n <= x.rows.min(out.rows);
        if n == 0
            || !self.check(ok, || {
                format!(
                    "rms_norm: {n} rows of [{}, {}] by a weight of {} into [{}, {}]",
                    x.rows, x.cols, norm.weight.len, out.rows, out.cols
                )
            })
        {
            return;
        }
        self.launch(
            Kernel::RmsNorm,
            (n as u32, 1, 1),
            norm_threads(x.cols),
            &[
                x.buf.ptr,
                norm.weight.buf.ptr,
                out.buf.ptr,
                int(x.cols),
                norm.eps.bits(),
            ],
        );
    }

    fn matmul(&mut self, x: &CudaTensor, w: &CudaMatrix, out: &CudaTensor, n: usize) {
        if !self.product_fits(x, w, out, n) {
            return;
        }
        if self.int8_products(w, n) {
            if let Some(acts) = self.quantized_acts(x, n) {
                self.q8_products(acts, w, out, n, false);
            }
            return;
        }
        for part in &w.parts {
            let bias = w.part_bias(part);
            self.matmul_part(part, x, out, bias, (n, w.cols, part.first));
        }
    }

    fn norm_matmul(
        &mut self,
        x: &CudaTensor,
        norm: RmsNorm<'_, CudaVector>,
        w: &CudaMatrix,
        out: &CudaTensor,
        n: usize,
    ) {
        self.normed_products(x, norm, w, out, n);
    }

    fn norm_glu(
        &mut self,
        x: &CudaTensor,
        norm: RmsNorm<'_, CudaVector>,
        gate_up: &CudaMatrix,
        act: Activation,
        out: &CudaTensor,
        n: usize,
    ) {
        let products = self.scratch(Scratch::Products, n, gate_up.rows);
        self.normed_products(x, norm, gate_up, &products, n);
        self.glu(act, &products, out, n);
    }

    fn attention_inputs(
        &mut self,
        x: &CudaTensor,
        norm: RmsNorm<'_, CudaVector>,
        qkv: &CudaMatrix,
        rope: &Rope<'_, CudaVector>,
        q: &CudaTensor,
        at: CacheLayer<'_, CudaKvCache>,
    ) {
        if self.rope_in_products(qkv, rope, at) {
            return self.rope_products(x, norm, qkv, rope, q, at);
        }
        let n = at.batch.rows();
        let products = self.scratch(Scratch::Products, n, qkv.rows);
        self.normed_products(x, norm, qkv, &products, n);
        self.rope_store_kv(&products, rope, q, at);
    }

    fn matmul_add(&mut self, x: &CudaTensor, w: &CudaMatrix, acc: &CudaTensor, n: usize) {
        if !self.int8_products(w, n) {
            let products = self.scratch(Scratch::Products, n, w.rows);
            self.matmul(x, w, &products, n);
            self.add(acc, &products, n);
            return;
        }
        if self.product_fits(x, w, acc, n) {
            if let Some(acts) = self.quantized_acts(x, n) {
                self.q8_products(acts, w, acc, n, true);
            }
        }
    }

    fn add(&mut self, acc: &CudaTensor, x: &CudaTensor, n: usize) {
        let len = n * acc.cols;
        if len == 0
            || !self.check(x.cols == acc.cols && n <= x.rows.min(acc.rows), || {
                format!(
                    "add: {n} rows of [{}, {}] to [{}, {}]",
                    x.rows, x.cols, acc.rows, acc.cols
                )
            })
        {
            return;
        }
        let args = [acc.buf.ptr, x.buf.ptr, len as u64];
        self.launch(Kernel::Add, elements(len), ELEMENT_THREADS, &args);
    }

    fn pointwise(&mut self, x: &CudaTensor, f: Pointwise, n: usize) {
        let len = n * x.cols;
        if len == 0 || !self.check(n <= x.rows, || format!("pointwise: {n} rows of {}", x.rows)) {
            return;
        }
        let (kernel, value) = match f {
            Pointwise::Scale(s) => (Kernel::Scale, s),
            Pointwise::SoftCap(cap) => (Kernel::SoftCap, cap),
        };
        let args = [x.buf.ptr, value.bits(), len as u64];
        self.launch(kernel, elements(len), ELEMENT_THREADS, &args);
    }

    fn glu(&mut self, act: Activation, gate_up: &CudaTensor, out: &CudaTensor, n: usize) {
        let w = out.cols;
        let len = n * w;
        if len == 0
            || !self.check(
                gate_up.cols == 2 * w && n <= gate_up.rows.min(out.rows),
                || {
                    format!(
                        "glu: gate and up of {w} values each from rows of {}",
                        gate_up.cols
                    )
                },
            )
        {
            return;
        }
        let code = match act {
            Activation::Silu => 0i32,
            Activation::GeluTanh => 1,
        };
        let acts = self.fused_acts_q8(out, n, w.is_multiple_of(32));
        let args = [
            code.bits(),
            gate_up.buf.ptr,
            out.buf.ptr,
            acts[0],
            acts[1],
            int(w),
            len as u64,
        ];
        self.launch(Kernel::Glu, elements(len), ELEMENT_THREADS, &args);
        self.wrote_acts_q8(out, n, acts);
    }

    fn rope_store_kv(
        &mut self,
        qkv: &CudaTensor,
        rope: &Rope<'_, CudaVector>,
        q: &CudaTensor,
        at: CacheLayer<'_, CudaKvCache>,
    ) {
        let cache = at.cache;
        let shape = cache.shape;
        let n = at.batch.rows();
        let fits = n <= qkv.rows;
        if n == 0
            || !self.check(fits, || {
                format!("rope_store_kv: {n} rows of [q | k | v] in {}", qkv.rows)
            })
            || !self.rope_fits(qkv.cols, rope, q, at)
        {
            return;
        }
        let Some(rows) = self.batch_rows(at.batch, cache) else {
            return;
        };
        let (q_norm, k_norm, eps) = match &rope.qk_norm {
            Some(nm) => (nm.q.buf.ptr, nm.k.buf.ptr, nm.eps),
            None => (0, 0, 0.0),
        };
        let neox = matches!(shape.rope, crate::backend::RopeKind::Neox) as i32;
        let grid = (n as u32, (shape.n_head + 2 * shape.n_head_kv) as u32, 1);
        self.launch(
            Kernel::RopeStoreKv,
            grid,
            ROW_THREADS,
            &[
                qkv.buf.ptr,
                q.buf.ptr,
                cache.k[at.layer].ptr,
                cache.v[at.layer].ptr,
                cache_type(cache.types.k),
                cache_type(cache.types.v),
                rope.cos_sin.buf.ptr,
                rows.ptr,
                q_norm,
                k_norm,
                eps.bits(),
                int(shape.n_head),
                int(shape.n_head_kv),
                int(shape.head_dim),
                neox.bits(),
            ],
        );
    }

    fn attention(
        &mut self,
        q: &CudaTensor,
        at: CacheLayer<'_, CudaKvCache>,
        opts: &AttentionOpts,
        out: &CudaTensor,
    ) {
        let cache = at.cache;
        let shape = cache.shape;
        let n = at.batch.rows();
        let qw = shape.q_width();
        let ok = q.cols == qw && out.cols == qw && n <= q.rows.min(out.rows);
        let ok = ok && at.layer < cache.k.len();
        if n == 0
            || !self.check(ok, || {
                format!(
                    "attention layer {}: {n} rows of q [{}, {}] into [{}, {}] (heads of {qw})",
                    at.layer, q.rows, q.cols, out.rows, out.cols
                )
            })
        {
            return;
        }
        let Some(rows) = self.batch_rows(at.batch, cache) else {
            return;
        };
        let window = opts.window.map_or(0, |w| w.min(i32::MAX as usize)) as i32;
        // Every attention kernel takes the query, caches and output, then where its rows' keys
        // are, then the heads and how scores are made.
        let args = |keys: &[u64]| {
            let tensors = [
                q.buf.ptr,
                cache.k[at.layer].ptr,
                cache.v[at.layer].ptr,
                cache_type(cache.types.k),
                cache_type(cache.types.v),
                out.buf.ptr,
            ];
            let heads = [
                int(shape.n_head),
                int(shape.n_head_kv),
                int(shape.head_dim),
                opts.scale.bits(),
                opts.softcap.unwrap_or(0.0).bits(),
                window.bits(),
            ];
            [&tensors[..], keys, &heads[..]].concat()
        };
        if self.uses_flash_attention(at.batch, shape.head_dim) {
            let span = at.batch.spans()[0];
            let args = args(&[int(span.slot * cache.n_ctx), int(span.pos), int(n)]);
            let grid = (n.div_ceil(FA_ROWS) as u32, shape.n_head as u32, 1);
            // Four warps of 16 rows.
            self.launch(Kernel::AttentionFlash, grid, 2 * FA_ROWS as u32, &args);
            return;
        }
        let acts = self.fused_acts_q8(out, n, shape.head_dim.is_multiple_of(32));
        let args = args(&[rows.ptr]);
        let grid = (n as u32, shape.n_head as u32, 1);
        let grouped = decodes_groups(&shape, cache.types);
        let shares = match grouped {
            true => grouped_shares(at.batch, opts.window, n * shape.n_head_kv),
            false => attention_shares(at.batch, opts.window, n * shape.n_head),
        };
        let shares = shares.min(SHARE_SLOTS / (n * shape.n_head)).max(1);
        if shares == 1 {
            self.launch(
                Kernel::Attention,
                grid,
                ATT_THREADS as u32,
                &[&args[..], &acts].concat(),
            );
            self.wrote_acts_q8(out, n, acts);
            return;
        }
        let Some(part) = self.shares_buffer(shape.head_dim) else {
            return;
        };
        let mut split_args = args;
        split_args[5] = part.ptr;
        split_args.push(int(shares));
        let (kernel, heads, threads) = match grouped {
            true => (Kernel::AttentionGrouped, shape.n_head_kv, 32 * GQ_WARPS),
            false => (Kernel::AttentionSplit, shape.n_head, ATT_THREADS),
        };
        let split_grid = (grid.0, heads as u32, shares as u32);
        self.launch(kernel, split_grid, threads as u32, &split_args);
        let merge_args = [
            part.ptr,
            out.buf.ptr,
            int(shape.n_head),
            int(shape.head_dim),
            int(shares),
            acts[0],
            acts[1],
        ];
        self.launch(
            Kernel::AttentionMerge,
            grid,
            ATT_THREADS as u32,
            &merge_args,
        );
        self.wrote_acts_q8(out, n, acts);
    }

    fn moe_route(&mut self, logits: &CudaTensor, routing: Routing, routes: &CudaTensor, n: usize) {
        let k = routing.k;
        let ok = routes.cols == 2 * k && k <= logits.cols && n <= logits.rows.min(routes.rows);
        if n == 0
            || !self.check(ok, || {
                format!(
                    "moe_route: {k} of {} experts into routes of {} values",
                    logits.cols, routes.cols
                )
            })
        {
            return;
        }
        const THREADS: u32 = 64;
        self.launch(
            Kernel::MoeRoute,
            (n.div_ceil(THREADS as usize) as u32, 1, 1),
            THREADS,
            &[
                logits.buf.ptr,
                routes.buf.ptr,
                int(logits.cols),
                int(k),
                (routing.normalize as i32).bits(),
                int(n),
            ],
        );
    }

    fn matmul_id(
        &mut self,
        x: &CudaTensor,
        w: &CudaMatrix,
        routes: &CudaTensor,
        input: ExpertInput,
        out: &CudaTensor,
        n: usize,
    ) {
        let k = routes.cols / 2;
        let block = w.rows / w.experts;
        let x_rows = match input {
            ExpertInput::Token => n,
            ExpertInput::Choice => n * k,
        };
        let ok = x.cols == w.cols
            && out.cols == block
            && x_rows <= x.rows
            && n * k <= out.rows
            && n <= routes.rows;
        if n == 0
            || !self.check(ok, || {
                format!(
                    "matmul_id {}: {n} rows of {k} choices, x [{}, {}], out [{}, {}], experts \
                     of {block} rows of {}",
                    w.name, x.rows, x.cols, out.rows, out.cols, w.cols
                )
            })
        {
            return;
        }
        let per_choice = matches!(input, ExpertInput::Choice) as i32;
        for part in &w.parts {
            self.launch(
                Kernel::MatmulId,
                (block as u32, (n * k) as u32, 1),
                ROW_THREADS,
                &[
                    part.buf.ptr,
                    part.ggml_type.id() as i32 as u64,
                    int(part.row_bytes),
                    x.buf.ptr,
                    out.buf.ptr,
                    routes.buf.ptr,
                    int(w.cols),
                    int(k),
                    int(block),
                    int(part.first),
                    int(part.rows),
                    per_choice.bits(),
                ],
            );
        }
    }

    fn moe_combine_add(&mut self, y: &CudaTensor, routes: &CudaTensor, acc: &CudaTensor, n: usize) {
        let k = routes.cols / 2;
        let d = acc.cols;
        let len = n * d;
        let ok = y.cols == d && n * k <= y.rows && n <= routes.rows.min(acc.rows);
        if len == 0
            || !self.check(ok, || {
                format!(
                    "moe_combine_add: {n} rows of {k} experts' outputs of {} values into {d}",
                    y.cols
                )
            })
        {
            return;
        }
        let args = [
            y.buf.ptr,
            routes.buf.ptr,
            acc.buf.ptr,
            int(k),
            int(d),
            len as u64,
        ];
        self.launch(Kernel::MoeCombineAdd, elements(len), ELEMENT_THREADS, &args);
    }

    fn copy_row(&mut self, src: &CudaTensor, row: usize, dst: &CudaTensor) {
        let ok = row < src.rows && dst.cols == src.cols && dst.rows >= 1;
        if !self.check(ok, || {
            format!(
                "copy_row: row {row} of [{}, {}] into [{}, {}]",
                src.rows, src.cols, dst.rows, dst.cols
            )
        }) {
            return;
        }
        let from = src.buf.ptr + 4 * (row * src.cols) as u64;
        let args = [dst.buf.ptr, from, src.cols as u64];
        self.launch(Kernel::Copy, elements(src.cols), ELEMENT_THREADS, &args);
    }

    fn read(&mut self, x: &CudaTensor, n: usize) -> Result<Vec<f32>> {
        self.wait("reading a tensor")?;
        if n > x.rows {
            return Err(BackendError::Unsupported(format!(
                "read: {n} rows of a tensor of {}",
                x.rows
            )));
        }
        let stage = format!("reading {n} rows of a tensor back");
        x.buf
            .read(n * x.cols, &stage)
            .inspect_err(|e| self.fail(e.clone()))
    }

    fn write(&mut self, x: &CudaTensor, rows: &[f32]) {
        self.acts_q8_of = None;
        let fits = rows.len() <= x.rows * x.cols;
        if self.check(fits, || {
            format!("write: {} values into [{}, {}]", rows.len(), x.rows, x.cols)
        }) {
            if let Err(e) = x.buf.write(rows, "a tensor's rows") {
                self.fail(e);
            }
        }
    }

    fn sync(&mut self) -> Result<()> {
        self.wait("sync")
    }

    fn memory_used(&self) -> u64 {
        self.bytes_held
    }

    fn host_tokens(&mut self) -> &mut HostTokens {
        &mut self.tokens
    }

    fn start_profile(&mut self) -> Result<()> {
        self.wait("starting a profile")?;
        self.profile = Some(super::profile::Profile::new(&self.device));
        Ok(())
    }

    fn take_profile(&mut self) -> Result<Vec<KernelTiming>> {
        match self.profile.take() {
            Some(p) => p.take().inspect_err(|e| self.fail(e.clone())),
            None => Ok(Vec::new()),
        }
    }

    fn queue_argmax(&mut self, x: &CudaTensor, slot: usize) {
        let args = [x.buf.ptr, int(x.cols), self.picks.slot_ptr(slot)];
        self.launch(Kernel::Argmax, (1, 1, 1), PICK_THREADS as u32, &args);
        self.send_pick(slot);
    }

    /// Draws on the host (from the logits read back), then puts the draw where an argmax
    /// would have put it.
    fn queue_sample(&mut self, x: &CudaTensor, slot: usize) {
        let drawn = self.read(x, 1).map(|mut row| {
            let logits = &mut row[..x.cols];
            self.tokens.sample(logits)
        });
        match drawn {
            Ok(id) => {
                self.fill_ints(self.picks.slot_ptr(slot), &[id as i32, 0]);
                self.send_pick(slot);
            }
            Err(e) => self.fail(e),
        }
    }

    fn read_argmax(&mut self, slot: usize) -> Result<u32> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.picks.read(slot).inspect_err(|e| self.fail(e.clone()))
    }

    fn embed_argmax(&mut self, table: &CudaMatrix, out: &CudaTensor) {
        let ok = out.cols == table.cols && out.rows >= 1;
        if !self.check(ok, || {
            format!(
                "embed_argmax: rows of {} ({} wide) into a [{}, {}] tensor",
                table.name, table.cols, out.rows, out.cols
            )
        }) {
            return;
        }
        if self.graphs && self.failed.is_none() {
            self.device.start_recording();
        }
        let picked = self.picks.slot_ptr(self.picks.last);
        for part in &table.parts {
            let args = [
                part.buf.ptr,
                part.ggml_type.id() as i32 as u64,
                int(part.row_bytes),
                picked,
                int(part.first),
                int(part.rows),
                int(table.rows - 1),
                out.buf.ptr,
                int(out.cols),
            ];
            self.launch(Kernel::EmbedPicked, (1, 1, 1), ROW_THREADS, &args);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Span;

    #[test]
    fn short_matrices_spread_their_rows_over_several_warps() {
        assert_eq!(q8_row_warps(256), MV_WARPS);
        assert_eq!(q8_row_warps(Q8_ROWS * Q8_WARPS / 4), MV_WARPS);
        assert_eq!(q8_row_warps(Q8_ROWS * Q8_WARPS / 2), 2.min(MV_WARPS));
        assert_eq!(q8_row_warps(Q8_ROWS * Q8_WARPS), 1);
        assert_eq!(q8_row_warps(151_936), 1);
    }

    #[test]
    fn grouped_attention_fills_the_gpu_with_warps_of_enough_keys() {
        let decode = Batch::one(0, 16383, 1);
        let most = GQ_FILL_WARPS / (2 * GQ_WARPS);
        assert_eq!(grouped_shares(&decode, None, 2), most.min(MAX_SHARES));
        let keys_per_share = GQ_WARPS * GQ_KEYS_PER_WARP;
        let short = Batch::one(0, 3 * keys_per_share - 1, 1);
        assert_eq!(grouped_shares(&short, None, 2), 3);
        assert_eq!(grouped_shares(&short, Some(keys_per_share), 2), 1);
        assert_eq!(grouped_shares(&decode, None, GQ_FILL_WARPS), 1);
        let shape = |n_head, head_dim| AttentionShape {
            n_head,
            n_head_kv: 2,
            head_dim,
            rope: crate::backend::RopeKind::Neox,
        };
        let f16 = KvTypes::default();
        assert!(decodes_groups(&shape(16, 128), f16));
        assert!(!decodes_groups(&shape(18, 128), f16));
        assert!(!decodes_groups(&shape(16, 256), f16));
        assert!(!decodes_groups(&shape(16, 126), f16));
        let q8 = CacheType::Q8_0;
        assert!(!decodes_groups(&shape(16, 128), KvTypes { k: q8, v: q8 }));
    }

    #[test]
    fn attention_is_split_only_where_few_blocks_see_many_keys() {
        let decode = Batch::one(0, 4095, 1);
        assert_eq!(attention_shares(&decode, None, 16), 4096 / KEYS_PER_SHARE);
        let short = Batch::one(0, KEYS_PER_SHARE - 1, 1);
        assert_eq!(attention_shares(&short, None, 16), 1);
        assert_eq!(
            attention_shares(&Batch::one(0, 100_000, 1), None, 16),
            MAX_SHARES
        );
        assert_eq!(
            attention_shares(&decode, Some(512), 16),
            512 / KEYS_PER_SHARE
        );
        assert_eq!(attention_shares(&decode, None, SPLIT_BELOW_BLOCKS), 1);
        let mixed = Batch::new(vec![
            Span {
                slot: 0,
                pos: 10,
                len: 1,
            },
            Span {
                slot: 1,
                pos: 1000,
                len: 1,
            },
        ]);
        assert_eq!(
            attention_shares(&mixed, None, 32),
            1001_usize.div_ceil(KEYS_PER_SHARE)
        );
    }
}
