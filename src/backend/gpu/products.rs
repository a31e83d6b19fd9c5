//! Weight products and their kernel choice: decode matvecs (norm, GLU or RoPE and the cache
//! write fused), tiled prompt matmuls, tensor-core products, row lookups.

use super::kernels::MatvecForm;
use super::params::ActsParams;
use super::*;

/// Weight rows and tokens per workgroup of the FMA prompt matmul (shaders/matmul.wgsl BM, BN).
pub(super) const MATMUL_TILE: u32 = 64;

/// Steps of this many tokens or more multiply through tiles; fewer stream the weights per token.
pub(super) const TILED_MIN_TOKENS: usize = 8;

/// The tensor-core matmul's step along a row (shaders/matmul_coop.wgsl BK): rows of other
/// lengths go to the FMA kernel.
pub(super) const COOP_K_STEP: usize = 32;

/// Weight rows per tensor-core workgroup (shaders/matmul_coop.wgsl BN).
pub(super) const COOP_TILE_ROWS: u32 = 128;

/// Tensor-core products use tiles of 128 tokens where at least this many of them cover the
/// product (about one per core of an H100), else tiles of 64 (shaders/matmul_coop.wgsl BM):
/// the taller tiles are 35% faster on the 3B feed-forward input, but 25% slower where the
/// 2,048-row products get only 64 of them. With 128 rather than 256, the 8B shape's 4,096-row
/// products take them too: its pp512 +19% on the H100, the 3B shape's unchanged.
pub(super) const COOP_TALL_MIN_GROUPS: u32 = 128;

/// The most f16 weight bytes decoded at a time for a tensor-core product: a bound on the
/// scratch memory. Slices should be whole matrices where possible: a slice of a few row tiles
/// launches too few workgroups to fill the card (48 MB slices cost the 8B shape's prompts 26%
/// on the H100, for the 3B shape 256 MB gains nothing over 128).
pub(super) const COOP_SLICE_BYTES: u64 = 512 << 20;

/// How a weight product is finished (besides the matrix's bias).
#[derive(Clone, Copy, Default)]
pub(super) struct Product<'a> {
    /// Add to the output instead of overwriting it (the residual).
    pub(super) accumulate: bool,
    /// RMS-normalise x (weight, epsilon) inside the decode kernel.
    pub(super) norm: Option<(&'a GpuVector, f32)>,
    /// Rows interleave gate and up; write this GLU of each pair.
    pub(super) glu: Option<Activation>,
    /// Rows are `[q | k | v]` in pair order: decode finishes them with RoPE and the cache
    /// write; prompts write them to the output.
    pub(super) qkv: Option<QkvRows<'a>>,
}

/// Where a query/key/value product goes.
#[derive(Clone, Copy)]
pub(super) struct QkvRows<'a> {
    pub(super) rope_cos_sin: &'a GpuVector,
    pub(super) q: &'a GpuTensor,
    /// The caches, or for a q8_0 one its staging rows.
    pub(super) k_cache: &'a Arc<GpuBuf>,
    pub(super) v_cache: &'a Arc<GpuBuf>,
    pub(super) types: KvTypes,
    pub(super) pos: usize,
    pub(super) shape: &'a AttentionShape,
}

impl WgpuBackend {
    /// Whether an `n`-token product over rows `cols` long normalises its input itself: decode
    /// steps do (saving a launch), where the fused kernel's 32-wide reads fit the rows.
    pub(super) fn fuses_norm(&self, n: usize, cols: usize) -> bool {
        n < TILED_MIN_TOKENS && self.tuning.fuse_norm && cols.is_multiple_of(32)
    }

    /// The input of a product over x: x itself where the product normalises it (`fused`),
    /// else rms_norm(x) in scratch.
    pub(super) fn product_input(
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

    /// Whether `m`'s products are in row order; else records why not.
    pub(super) fn plain_products(&mut self, m: &GpuMatrix) -> bool {
        if m.order != RowOrder::Given {
            self.refuse(format!(
                "{}: its rows are ordered for the GPU's fused kernels ({:?}); only the op it was uploaded for takes it",
                m.name, m.order
            ));
        }
        m.order == RowOrder::Given
    }

    /// out = x · mᵀ (+ m's bias), as `how` says: added to out, with x RMS-normalised inside
    /// the decode kernel, a GLU over interleaved gate/up rows, or RoPE and the cache write
    /// after query/key/value rows.
    pub(super) fn linear(
        &mut self,
        x: &GpuTensor,
        m: &GpuMatrix,
        out: &GpuTensor,
        n: usize,
        how: Product,
    ) {
        for run in &m.runs {
            self.linear_run(x, m, run, out, n, how);
        }
    }

    /// [`Self::linear`] over the rows of one run.
    pub(super) fn linear_run(
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
                let tile = MATMUL_TILE;
                let groups = (part.rows.div_ceil(tile), (n as u32).div_ceil(tile), 1);
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

    /// Whether prompt products of `m` run on tensor cores.
    pub(super) fn coop_takes(&self, m: &GpuMatrix) -> bool {
        self.tuning.coop && m.cols.is_multiple_of(COOP_K_STEP)
    }

    /// A prompt product on tensor cores: the part's rows are decoded to f16, in slices of at
    /// most [`COOP_SLICE_BYTES`], then multiplied. `params` describe the whole part.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn coop_product(
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

    pub(super) fn get_rows(
        &mut self,
        table: &GpuMatrix,
        ids: &Arc<GpuBuf>,
        n: usize,
        out: &GpuTensor,
    ) {
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
}
