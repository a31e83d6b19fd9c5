//! Weight uploads: a matrix's rows in the order its fused kernels read them, repacked into
//! runs of one weight type through a ring of staging buffers.

use super::*;
use crate::backend::weights::check_parts;

/// Weight bytes repacked into staging memory and sent to the device at a time.
pub(super) const UPLOAD_CHUNK_BYTES: usize = 32 << 20;

/// Staging buffers weight uploads cycle through: the device copies from one or two while the
/// host repacks into the next. Fresh staging memory for every chunk cost a page fault per
/// 4 KiB (on lavapipe, most of a load's host time) and the driver's mapping of new memory.
pub(super) const UPLOADS_IN_FLIGHT: usize = 3;

/// A staging buffer for weight uploads and the submission that last copied from it.
pub(super) struct Staging {
    pub(super) buffer: wgpu::Buffer,
    /// Mapped for writing again (set by the map callback).
    pub(super) mapped: Arc<AtomicBool>,
    pub(super) copied_by: Option<wgpu::SubmissionIndex>,
}

/// Query or key rows (`rows`, heads of `head_dim`) in the order shaders/qkv.wgsl takes them:
/// per head, the two rotation pairs of frequencies 2j and 2j + 1 in slots 4j..4j + 3.
pub(super) fn pair_order(rows: usize, head_dim: usize, neox: bool) -> Vec<usize> {
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
pub(super) fn qkv_order(shape: &AttentionShape) -> Vec<usize> {
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    let neox = shape.rope == RopeKind::Neox;
    let mut order = pair_order(qw, shape.head_dim, neox);
    order.extend(pair_order(kvw, shape.head_dim, neox).iter().map(|r| qw + r));
    order.extend(qw + kvw..qw + 2 * kvw);
    order
}

/// One row of a weight matrix as stored: its type and bytes.
pub(super) type StoredRow<'a> = (GgmlType, &'a [u8]);

/// Every row of `parts` as stored, and every row's bias (0 where its part has none),
/// checking the parts' sizes.
pub(super) fn stored_rows<'a>(
    name: &str,
    cols: usize,
    parts: &'a [WeightRows],
) -> Result<(Vec<StoredRow<'a>>, Vec<f32>)> {
    let (row_bytes, bias) = check_parts(name, cols, parts)?;
    let rows: Vec<StoredRow> = parts
        .iter()
        .zip(row_bytes)
        .flat_map(|(p, bytes)| p.data.bytes().chunks_exact(bytes).map(|r| (p.ggml_type, r)))
        .collect();
    let bias = bias.unwrap_or_else(|| vec![0.0; rows.len()]);
    Ok((rows, bias))
}

/// The rows of each of `n` experts' blocks, refusing a matrix [`Backend::matmul_id`]'s
/// kernel cannot take: experts of two weight types (it decodes one), or with biases.
fn expert_block(
    name: &str,
    rows: &[StoredRow<'_>],
    bias: &[f32],
    n: usize,
    one_type: bool,
) -> Result<usize> {
    if n == 0 || !rows.len().is_multiple_of(n) {
        return Err(BackendError::Unsupported(format!(
            "{name}: {} rows are not {n} experts' blocks of rows",
            rows.len()
        )));
    }
    if !one_type || bias.iter().any(|b| *b != 0.0) {
        return Err(BackendError::Unsupported(format!(
            "{name}: experts of more than one weight type, or with biases, are not supported on the GPU (run it with --device cpu)"
        )));
    }
    Ok(rows.len() / n)
}

impl WgpuBackend {
    /// Uploads `parts`' rows as one matrix for `usage`: in the order its fused kernels read
    /// them, in runs of one weight type whose parts split on whole groups of the rows those
    /// kernels finish together (gate/up pairs, four query/key/value rows). Builds the kernels
    /// its products take.
    pub(super) fn upload_parts(
        &mut self,
        name: &str,
        cols: usize,
        parts: &[WeightRows],
        usage: MatrixUse,
    ) -> Result<GpuMatrix> {
        let (rows, bias) = stored_rows(name, cols, parts)?;
        let one_type = rows.windows(2).all(|w| w[0].0 == w[1].0);
        let (order, sequence, multiple) = match usage {
            MatrixUse::Experts(n) => {
                let block = expert_block(name, &rows, &bias, n, one_type)?;
                (RowOrder::Given, (0..rows.len()).collect(), block)
            }
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
            experts: match usage {
                MatrixUse::Experts(n) => n,
                _ => 1,
            },
        };
        self.build_products_of(&matrix)?;
        Ok(matrix)
    }

    /// Builds the fused kernels a matrix's products take, ahead of its first step.
    pub(super) fn build_products_of(&mut self, m: &GpuMatrix) -> Result<()> {
        for run in &m.runs {
            let ty = run.ggml_type;
            if m.experts > 1 {
                for kernel in [
                    Kernel::MatvecId(ty),
                    Kernel::MatmulId(ty),
                    Kernel::MoeRoute,
                    Kernel::MoeLists,
                    Kernel::MoeCombineAdd,
                ] {
                    self.pipeline(kernel)?;
                }
            }
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

    /// Uploads `rows` rows of a weight matrix (`row(r)`: row r as stored), in parts that fit
    /// one binding each; a part boundary falls on a multiple of `row_multiple` rows
    /// (interleaved pairs stay together).
    pub(super) fn upload_rows<'a>(
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
            // Rows that stay together: an interleaved pair, or an expert's block.
            let what = match row_multiple {
                1 => format!("one row takes {row_bytes} bytes"),
                n => format!(
                    "{n} rows that stay in one binding take {} bytes",
                    n * row_bytes
                ),
            };
            return Err(BackendError::Unsupported(format!(
                "{name}: {what}, more than {} can bind",
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
    pub(super) fn write_rows<'a>(
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
    pub(super) fn staging_slot(&mut self, stage: &str, size: u64) -> Result<usize> {
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

    /// Whether tensor-core `kernels` (an experimental wgpu feature) build on this device;
    /// where they do not, a warning naming `what` says that the FMA kernel stands in.
    pub(super) fn tensor_core_kernels_build(&mut self, kernels: &[Kernel], what: &str) -> bool {
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
}
