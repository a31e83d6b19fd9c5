//! Attention's side of the backend: the kernels' limits and the options they refuse, the
//! prompt kernel's choice, RoPE and the cache write after the products, q8_0 caches'
//! quantization.

use super::*;

/// Largest head size the attention kernels hold in workgroup memory.
pub(super) const MAX_HEAD_DIM: usize = 256;

/// Keys per workgroup of decode attention (shaders/attention.wgsl CHUNK).
pub(super) const ATTENTION_CHUNK: usize = 128;

/// Most queries per step that attend through the decode kernel; more use the prompt kernel.
pub(super) const DECODE_ATTENTION_MAX_TOKENS: usize = 4;

/// shaders/attention.wgsl holds a query head in workgroup memory sized for heads of up to 256
/// values, and the kernels read cache rows 8 values at a time.
pub(super) fn check_head_dim(shape: &AttentionShape) -> Result<()> {
    if shape.head_dim > MAX_HEAD_DIM || !shape.head_dim.is_multiple_of(8) {
        return Err(BackendError::Unsupported(format!(
            "attention heads of {} values: the GPU kernels take multiples of 8 up to {MAX_HEAD_DIM}",
            shape.head_dim
        )));
    }
    Ok(())
}

/// Keys and values read by attention for n queries at `pos..`, and its multiply-adds.
pub(super) fn attention_cost(shape: &AttentionShape, types: KvTypes, pos: usize, n: usize) -> Cost {
    let keys: usize = (0..n).map(|t| pos + t + 1).sum();
    let per_key = types.k.bytes_for(shape.head_dim) + types.v.bytes_for(shape.head_dim);
    Cost {
        bytes: (keys * shape.n_head * per_key) as u64,
        flops: (keys * shape.n_head * shape.head_dim * 4) as u64,
    }
}

/// Where a step's keys and values go: the caches, or for a q8_0 one its staging rows.
pub(super) struct KvDestinations {
    pub(super) k: Arc<GpuBuf>,
    pub(super) v: Arc<GpuBuf>,
    /// The staging rows of q8_0 caches, for [`WgpuBackend::quantize_staged`].
    pub(super) staging: Option<[Arc<GpuBuf>; 2]>,
}

impl WgpuBackend {
    /// The prompt attention kernel for `shape` and caches of `types`, and its grid for `n`
    /// queries: tensor cores where the adapter has them and the caches are f16 (their loads
    /// take f16 straight from the cache), else tiles in workgroup memory where the head fits
    /// (up to 128 values, a multiple of 16).
    pub(super) fn prompt_attention(
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

    /// The scratch for split attention's partial results, grown to `bytes`.
    pub(super) fn attention_partials(&mut self, bytes: u64) -> Result<Arc<GpuBuf>> {
        match &self.partials {
            Some(p) if p.buffer.size() >= bytes => Ok(p.clone()),
            _ => {
                let p = self.storage("attention partials", bytes)?;
                self.partials = Some(p.clone());
                Ok(p)
            }
        }
    }

    /// Attention of one sequence's rows of q against its own cache.
    pub(super) fn attend_span(
        &mut self,
        q: &GpuTensor,
        cache: &GpuKvCache,
        layer: usize,
        opts: &AttentionOpts,
        out: &GpuTensor,
        at: PlacedSpan,
    ) {
        let Span { slot, pos, len: n } = at.span;
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
            first_row: at.first_row as u32,
        };
        let types = cache.types;
        let buffers = [&q.buf, cache.keys(slot, layer), cache.values(slot, layer)];
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

    /// The spans of a step, each with the step's row where it begins: the cache's kernels run
    /// one sequence at a time, each over its own rows and its own cache buffers. A span whose
    /// slot the cache lacks is refused.
    pub(super) fn placed_spans(&mut self, batch: &Batch, cache: &GpuKvCache) -> Vec<PlacedSpan> {
        let mut placed = Vec::with_capacity(batch.spans().len());
        let mut first_row = 0;
        for &span in batch.spans() {
            if span.slot >= cache.slots {
                self.refuse(format!(
                    "a step's sequence is in cache slot {}, but the cache holds {} sequences",
                    span.slot, cache.slots
                ));
                return Vec::new();
            }
            placed.push(PlacedSpan { first_row, span });
            first_row += span.len;
        }
        placed
    }

    /// Where a span's rows write layer `layer`'s keys and values: into its sequence's cache,
    /// or for a q8_0 one into f32 staging rows that [`Self::quantize_staged`] then quantizes.
    pub(super) fn kv_destinations(
        &mut self,
        cache: &GpuKvCache,
        layer: usize,
        span: Span,
    ) -> Option<KvDestinations> {
        let types = cache.types;
        let staging = match types == KvTypes::default() {
            true => None,
            false => {
                let staging = self.kv_staging((span.len * cache.kv_width * 4) as u64);
                Some(self.recorded(staging)?)
            }
        };
        let staged = |ty: CacheType, i: usize, cache: &Arc<GpuBuf>| match (ty, &staging) {
            (CacheType::Q8_0, Some(s)) => s[i].clone(),
            _ => cache.clone(),
        };
        Some(KvDestinations {
            k: staged(types.k, 0, cache.keys(span.slot, layer)),
            v: staged(types.v, 1, cache.values(span.slot, layer)),
            staging,
        })
    }

    /// Normalises each query and key head of `products` (`[n, q | k | v]`, heads in pair
    /// order where `pairs`) in place by its RMS and the norm's weights, before RoPE.
    pub(super) fn qk_norm(
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
        let groups = (heads, n as u32, 1);
        self.dispatch(Kernel::QkNorm, &params, &buffers, groups, cost);
    }

    /// RoPE over the q and k of a span's rows of `products` (`[rows, q | k | v]`, q and k
    /// heads in pair order where `pairs`), q to its rows of `q`, k and v to their
    /// destinations.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope_and_store(
        &mut self,
        products: &GpuTensor,
        cos_sin: &GpuVector,
        q: &GpuTensor,
        dst: &KvDestinations,
        cache: &GpuKvCache,
        at: PlacedSpan,
        pairs: bool,
    ) {
        let (shape, n) = (&cache.shape, at.span.len);
        let width = shape.q_width() + 2 * shape.kv_width();
        let params = RopeParams {
            pos: at.span.pos as u32,
            head_dim: shape.head_dim as u32,
            q_width: shape.q_width() as u32,
            kv_width: shape.kv_width() as u32,
            neox: (shape.rope == RopeKind::Neox) as u32,
            n: n as u32,
            pairs: pairs as u32,
            first_row: at.first_row as u32,
        };
        let quads = (width / 4) as u32;
        let buffers = [&products.buf, &cos_sin.buf, &q.buf, &dst.k, &dst.v];
        let cost = Cost::bytes((n * width * 4 * 2) as u64);
        let groups = (quads.div_ceil(64), n as u32, 1);
        let kernel = Kernel::RopeStoreQkv(cache.types);
        self.dispatch(kernel, &params, &buffers, groups, cost);
    }

    /// Quantizes a span's staged keys and values into its q8_0 caches (nothing for f16
    /// ones, which the RoPE epilogue wrote itself).
    pub(super) fn quantize_staged(
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
        let (k, v) = (cache.keys(span.slot, layer), cache.values(span.slot, layer));
        let buffers = [k_staged, v_staged, k, v];
        let cost = Cost::bytes((n * cache.kv_width * 2 * (4 + 1)) as u64);
        let kernel = Kernel::KvStore(cache.types);
        self.dispatch(kernel, &params, &buffers, (gx, gy, 2), cost);
    }
}

/// A sequence's rows in a step: its span, and the step's row where they begin.
#[derive(Clone, Copy, Debug)]
pub(super) struct PlacedSpan {
    pub(super) first_row: usize,
    pub(super) span: Span,
}

impl GpuKvCache {
    /// The key cache of sequence `slot`'s layer `layer`.
    pub(super) fn keys(&self, slot: usize, layer: usize) -> &Arc<GpuBuf> {
        &self.k[slot * self.n_layers + layer]
    }

    pub(super) fn values(&self, slot: usize, layer: usize) -> &Arc<GpuBuf> {
        &self.v[slot * self.n_layers + layer]
    }
}
