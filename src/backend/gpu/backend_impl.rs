//! The [`Backend`] ops on the GPU, over the recording, upload and product machinery of the
//! sibling modules.

use super::*;

impl Backend for WgpuBackend {
    type Tensor = GpuTensor;
    type Matrix = GpuMatrix;
    type Vector = GpuVector;
    type KvCache = GpuKvCache;

    fn host_tokens(&mut self) -> &mut HostTokens {
        &mut self.host_tokens
    }

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
        // A buffer per sequence and layer: the kernels address one sequence's rows from 0, so
        // a step of several sequences binds each one's buffers in turn.
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for slot in 0..layout.slots {
            for layer in 0..n_layers {
                let name = |what| format!("sequence {slot} layer {layer} {what} cache");
                k.push(self.storage(&name("key"), bytes(types.k))?);
                v.push(self.storage(&name("value"), bytes(types.v))?);
            }
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
            n_layers,
            slots: layout.slots,
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
        let placed = self.placed_spans(at.batch, at.cache);
        if let Some(norm) = &rope.qk_norm {
            self.qk_norm(qkv, norm, &at.cache.shape, at.batch.rows(), false);
        }
        for span in placed {
            let Some(dst) = self.kv_destinations(at.cache, at.layer, span.span) else {
                return;
            };
            self.rope_and_store(qkv, rope.cos_sin, q, &dst, at.cache, span, false);
            self.quantize_staged(&dst, at.cache, at.layer, span.span);
        }
    }

    fn attention(
        &mut self,
        q: &GpuTensor,
        at: CacheLayer<'_, GpuKvCache>,
        opts: &AttentionOpts,
        out: &GpuTensor,
    ) {
        for span in self.placed_spans(at.batch, at.cache) {
            self.attend_span(q, at.cache, at.layer, opts, out, span);
        }
    }

    fn moe_route(&mut self, logits: &GpuTensor, routing: Routing, routes: &GpuTensor, n: usize) {
        self.route_experts(logits, routing, routes, n);
    }

    fn matmul_id(
        &mut self,
        x: &GpuTensor,
        w: &GpuMatrix,
        routes: &GpuTensor,
        input: ExpertInput,
        out: &GpuTensor,
        n: usize,
    ) {
        self.expert_products(x, w, routes, input, out, n);
    }

    fn moe_combine_add(&mut self, y: &GpuTensor, routes: &GpuTensor, acc: &GpuTensor, n: usize) {
        self.combine_experts(y, routes, acc, n);
    }

    fn write(&mut self, x: &GpuTensor, rows: &[f32]) {
        assert!(
            rows.len() <= x.rows * x.cols,
            "write past the end of a tensor"
        );
        // Work recorded before the write reads the tensor as it was: it goes first.
        self.submit();
        self.gpu
            .queue
            .write_buffer(&x.buf.buffer, 0, bytemuck::cast_slice(rows));
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
        let placed = self.placed_spans(at.batch, at.cache);
        let Some(&first) = placed.first() else {
            return;
        };
        let (cache, n) = (at.cache, at.batch.rows());
        let tiled = n >= TILED_MIN_TOKENS;
        let fuse = self.fuses_norm(n, x.cols);
        let input = self.product_input(x, norm, fuse, n);
        // A head's norm needs all its products, which the decode epilogue's workgroups do not
        // share, and the epilogue writes one sequence's cache: with QK-norm, or rows of several
        // sequences, the products go through the RoPE kernel, a sequence at a time.
        if rope.qk_norm.is_some() || placed.len() > 1 {
            let products = self.scratch(Scratch::Products, n, qkv.rows);
            let how = Product {
                norm: fuse.then_some((norm.weight, norm.eps)),
                ..Product::default()
            };
            self.linear(&input, qkv, &products, n, how);
            if let Some(qk_norm) = &rope.qk_norm {
                self.qk_norm(&products, qk_norm, &cache.shape, n, true);
            }
            for span in placed {
                let Some(dst) = self.kv_destinations(cache, at.layer, span.span) else {
                    return;
                };
                self.rope_and_store(&products, rope.cos_sin, q, &dst, cache, span, true);
                self.quantize_staged(&dst, cache, at.layer, span.span);
            }
            return;
        }
        let Some(dst) = self.kv_destinations(cache, at.layer, first.span) else {
            return;
        };
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
            pos: first.span.pos,
            shape: &cache.shape,
        };
        let how = Product {
            norm: fuse.then_some((norm.weight, norm.eps)),
            qkv: Some(rows),
            ..Product::default()
        };
        self.linear(&input, qkv, &products, n, how);
        if tiled {
            self.rope_and_store(&products, rope.cos_sin, q, &dst, cache, first, true);
        }
        self.quantize_staged(&dst, cache, at.layer, first.span);
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
