//! The CPU backend: the reference every GPU kernel is tested against, and a usable engine.
//! Matrix products read the quantized blocks in place (activations are quantized to the
//! format each weight type dots with); work is spread over a rayon pool, except steps too
//! small to be worth handing over.

use super::{
    AttentionShape, Backend, CacheType, KvTypes, QkvPart, Result, RopeKind, WeightBytes,
    ARGMAX_SLOTS,
};
use crate::quant::{self, ActFormat, Activations, GgmlType};
use crate::sampling::Sampler;
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

/// Output rows handed to one rayon task: big enough to amortise scheduling, small enough to
/// balance two to a few dozen threads.
const ROWS_PER_TASK: usize = 32;

/// Bytes a step reads below which it runs on the caller's thread: handing it to the pool
/// costs two thread wake-ups, tens of microseconds on a busy machine, more than splitting
/// so little work saves (a small model decodes several times faster for it).
const SERIAL_BYTES: usize = 1 << 20;

pub struct CpuTensor {
    data: RefCell<Vec<f32>>,
    cols: usize,
}

pub struct CpuMatrix {
    name: String,
    ggml_type: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: WeightBytes,
}

impl CpuMatrix {
    fn row(&self, r: usize) -> &[u8] {
        &self.data.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

pub struct CpuVector(Vec<f32>);

pub struct CpuKvCache {
    /// Per layer, `[n_ctx, kv_width]` keys and values encoded as `types` says, row after row.
    k: Vec<RefCell<Vec<u8>>>,
    v: Vec<RefCell<Vec<u8>>>,
    kv_width: usize,
    types: KvTypes,
}

impl CpuKvCache {
    /// Bytes of `n` keys (`k`) or values.
    fn bytes_for(&self, k: bool, n: usize) -> usize {
        let ty = if k { self.types.k } else { self.types.v };
        ty.bytes_for(n)
    }
}

/// Encodes a row of keys or values into the cache's type (f16, or q8_0 rounded as ggml
/// rounds it).
fn encode_row(ty: CacheType, x: &[f32], out: &mut [u8]) {
    match ty {
        CacheType::F16 => {
            for (o, x) in out.as_chunks_mut::<2>().0.iter_mut().zip(x) {
                *o = f16::from_f32(*x).to_le_bytes();
            }
        }
        CacheType::Q8_0 => {
            let mut bytes = Vec::new();
            quant::quantize_acts(ActFormat::Q8_0, x, &mut bytes);
            out.copy_from_slice(&bytes);
        }
    }
}

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    bytes_held: u64,
    /// Reference mode: weights dequantized block by block, products in f64.
    exact: bool,
    /// The ids of [`Backend::queue_argmax`], and the last one queued.
    argmax_slots: [u32; ARGMAX_SLOTS],
    last_argmax: u32,
    /// The sampler of [`Backend::start_sampling`].
    sampler: Option<Sampler>,
}

impl CpuBackend {
    /// A backend on `threads` threads (0: one per core).
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vibrant-cpu-{i}"))
            .build()
            .map_err(|e| {
                super::BackendError::Unsupported(format!("cannot start CPU threads: {e}"))
            })?;
        Ok(Self {
            pool,
            bytes_held: 0,
            exact: false,
            argmax_slots: [0; ARGMAX_SLOTS],
            last_argmax: 0,
            sampler: None,
        })
    }

    /// The reference mode the GPU kernels are checked against: each weight row is dequantized
    /// and dotted with the f32 activations in f64 (slower than the quantized-activation path).
    pub fn exact(threads: usize) -> Result<Self> {
        Ok(Self {
            exact: true,
            ..Self::new(threads)?
        })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = CpuVector;
    type KvCache = CpuKvCache;
    type GateUp = (CpuMatrix, CpuMatrix);
    /// q, k and v with their biases, kept apart.
    type Qkv = [(CpuMatrix, Option<CpuVector>); 3];

    fn describe(&self) -> String {
        let mode = if self.exact {
            ", exact reference mode"
        } else {
            ""
        };
        format!("CPU ({} threads{mode})", self.threads())
    }

    fn upload_matrix(
        &mut self,
        name: &str,
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        data: WeightBytes,
    ) -> Result<CpuMatrix> {
        let row_bytes = ggml_type
            .bytes_for(cols as u64)
            .expect("shape checked at load") as usize;
        assert_eq!(
            data.bytes().len(),
            row_bytes * rows,
            "{name}: size checked at load"
        );
        Ok(CpuMatrix {
            name: name.to_string(),
            ggml_type,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    fn upload_vector(&mut self, _name: &str, data: &[f32]) -> Result<CpuVector> {
        self.bytes_held += 4 * data.len() as u64;
        Ok(CpuVector(data.to_vec()))
    }

    fn upload_gate_up(
        &mut self,
        name: &str,
        gate: (GgmlType, WeightBytes),
        up: (GgmlType, WeightBytes),
        rows: usize,
        cols: usize,
    ) -> Result<Self::GateUp> {
        Ok((
            self.upload_matrix(&format!("{name} gate"), gate.0, rows, cols, gate.1)?,
            self.upload_matrix(&format!("{name} up"), up.0, rows, cols, up.1)?,
        ))
    }

    fn upload_qkv(
        &mut self,
        name: &str,
        parts: [QkvPart; 3],
        cols: usize,
        _shape: &AttentionShape,
    ) -> Result<Self::Qkv> {
        let mut upload = |(part, role): (QkvPart, &str)| -> Result<_> {
            let w = self.upload_matrix(
                &format!("{name} {role}"),
                part.ggml_type,
                part.rows,
                cols,
                part.data,
            )?;
            let bias = part
                .bias
                .map(|b| self.upload_vector(role, &b))
                .transpose()?;
            Ok((w, bias))
        };
        let [q, k, v] = parts;
        Ok([upload((q, "q"))?, upload((k, "k"))?, upload((v, "v"))?])
    }

    fn attention_inputs(
        &mut self,
        x: &CpuTensor,
        (norm, eps): (&CpuVector, f32),
        [(wq, bq), (wk, bk), (wv, bv)]: &Self::Qkv,
        [normed, k, v]: [&CpuTensor; 3],
        q: &CpuTensor,
        rope_cos_sin: &CpuVector,
        cache: &CpuKvCache,
        layer: usize,
        pos: usize,
        n: usize,
        shape: &AttentionShape,
    ) {
        let products = [
            (wq, bq.as_ref(), q),
            (wk, bk.as_ref(), k),
            (wv, bv.as_ref(), v),
        ];
        self.norm_matmuls(x, norm, eps, normed, &products, n);
        self.rope_store_kv(q, k, v, rope_cos_sin, cache, layer, pos, n, shape);
    }

    fn norm_gate_up_swiglu(
        &mut self,
        x: &CpuTensor,
        norm: &CpuVector,
        eps: f32,
        normed: &CpuTensor,
        (gate, up): &Self::GateUp,
        gate_out: &CpuTensor,
        up_out: &CpuTensor,
        out: &CpuTensor,
        n: usize,
    ) {
        self.norm_matmuls(
            x,
            norm,
            eps,
            normed,
            &[(gate, None, gate_out), (up, None, up_out)],
            n,
        );
        self.swiglu(gate_out, up_out, out, n);
    }

    fn tensor(&mut self, _name: &str, rows: usize, cols: usize) -> Result<CpuTensor> {
        self.bytes_held += 4 * (rows * cols) as u64;
        Ok(CpuTensor {
            data: RefCell::new(vec![0.0; rows * cols]),
            cols,
        })
    }

    fn kv_cache(
        &mut self,
        n_layers: usize,
        n_ctx: usize,
        shape: &AttentionShape,
        types: KvTypes,
    ) -> Result<CpuKvCache> {
        types.check(shape)?;
        let kv_width = shape.kv_width();
        // Zeroed allocations are lazily backed by the OS: unused context costs no memory.
        let layer = |ty: CacheType| RefCell::new(vec![0u8; n_ctx * ty.bytes_for(kv_width)]);
        self.bytes_held += (n_layers * n_ctx * types.bytes_per_position(shape)) as u64;
        Ok(CpuKvCache {
            k: (0..n_layers).map(|_| layer(types.k)).collect(),
            v: (0..n_layers).map(|_| layer(types.v)).collect(),
            kv_width,
            types,
        })
    }

    fn embed(&mut self, table: &CpuMatrix, tokens: &[u32], out: &CpuTensor) {
        let mut o = out.data.borrow_mut();
        for (row, &tok) in o.chunks_mut(out.cols).zip(tokens) {
            let tok = (tok as usize).min(table.rows - 1);
            quant::dequantize(table.ggml_type, table.row(tok), row)
                .unwrap_or_else(|e| panic!("{}: {e}", table.name));
        }
    }

    fn rms_norm(&mut self, x: &CpuTensor, weight: &CpuVector, eps: f32, out: &CpuTensor, n: usize) {
        let x = x.data.borrow();
        let mut o = out.data.borrow_mut();
        let d = out.cols;
        for (xr, or) in x.chunks(d).zip(o.chunks_mut(d)).take(n) {
            rms_norm_row(xr, &weight.0, eps, or);
        }
    }

    fn matmul(
        &mut self,
        x: &CpuTensor,
        w: &CpuMatrix,
        bias: Option<&CpuVector>,
        out: &CpuTensor,
        n: usize,
    ) {
        assert_eq!((x.cols, out.cols), (w.cols, w.rows), "{}: shape", w.name);
        let x = x.data.borrow();
        let x = &x[..n * w.cols];
        let mut o = out.data.borrow_mut();
        let o: &mut [f32] = &mut o;
        let pool = &self.pool;
        let format = w.ggml_type.act_format();
        if self.exact {
            pool.install(|| exact_matmul(w, x, o, n));
        } else if n * w.data.bytes().len() < SERIAL_BYTES {
            let mut bytes = Vec::new();
            quant::quantize_acts(format, x, &mut bytes);
            let acts = Activations::new(w.ggml_type, bytes, w.cols);
            quant::mat_mul(w.data.bytes(), &acts, &mut o[..n * w.rows]);
        } else {
            pool.install(|| {
                let bytes = quantize_rows(format, x, w.cols);
                quantized_matmul(w, &Activations::new(w.ggml_type, bytes, w.cols), o, n)
            });
        }
        if let Some(bias) = bias {
            for row in o.chunks_mut(w.rows).take(n) {
                row.iter_mut().zip(&bias.0).for_each(|(v, b)| *v += b);
            }
        }
    }

    fn add(&mut self, acc: &CpuTensor, x: &CpuTensor, n: usize) {
        let x = x.data.borrow();
        let mut a = acc.data.borrow_mut();
        let len = n * acc.cols;
        a[..len]
            .iter_mut()
            .zip(&x[..len])
            .for_each(|(a, x)| *a += x);
    }

    fn swiglu(&mut self, gate: &CpuTensor, up: &CpuTensor, out: &CpuTensor, n: usize) {
        let (g, u) = (gate.data.borrow(), up.data.borrow());
        let mut o = out.data.borrow_mut();
        let cols = out.cols;
        let (o, g, u) = (&mut o[..n * cols], &g[..n * cols], &u[..n * cols]);
        let row = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = silu(*g) * u;
            }
        };
        // Gate, up and output: 12 bytes a value.
        if 12 * o.len() < SERIAL_BYTES {
            o.chunks_mut(cols)
                .zip(g.chunks(cols).zip(u.chunks(cols)))
                .for_each(row);
        } else {
            self.pool.install(|| {
                o.par_chunks_mut(cols)
                    .zip(g.par_chunks(cols).zip(u.par_chunks(cols)))
                    .for_each(row);
            });
        }
    }

    fn attention(
        &mut self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        pos: usize,
        n: usize,
        out: &CpuTensor,
        shape: &AttentionShape,
    ) {
        let (hd, n_head) = (shape.head_dim, shape.n_head);
        let group = n_head / shape.n_head_kv;
        let types = cache.types;
        let (k_row, v_row) = (cache.bytes_for(true, hd), cache.bytes_for(false, hd));
        let (k_width, v_width) = (
            cache.bytes_for(true, cache.kv_width),
            cache.bytes_for(false, cache.kv_width),
        );
        let scale = 1.0 / (hd as f32).sqrt();
        let q = q.data.borrow();
        let (kc, vc) = (cache.k[layer].borrow(), cache.v[layer].borrow());
        let (q, kc, vc): (&[f32], &[u8], &[u8]) = (&q, &kc, &vc);
        let mut o = out.data.borrow_mut();
        let o: &mut [f32] = &mut o;
        // A task per token and KV head: the heads sharing the KV head share its key and value
        // rows, converted to f32 once.
        let task = |i: usize, out_group: &mut [f32]| {
            let (t, kv_head) = (i / shape.n_head_kv, i % shape.n_head_kv);
            let n_keys = pos + t + 1;
            let key = |p: usize| &kc[p * k_width + kv_head * k_row..][..k_row];
            let value = |p: usize| &vc[p * v_width + kv_head * v_row..][..v_row];
            let q_group = &q[(t * n_head + kv_head * group) * hd..][..group * hd];
            let mut scores = vec![0f32; group * n_keys];
            let mut k = vec![0f32; hd];
            for p in 0..n_keys {
                // f16 keys are dotted where they lie; q8_0 ones are dequantized once for the
                // heads of the group.
                if types.k == CacheType::Q8_0 {
                    dequantize_row(types.k, key(p), &mut k);
                }
                for (qh, scores) in q_group.chunks(hd).zip(scores.chunks_mut(n_keys)) {
                    let dot = match types.k {
                        CacheType::F16 => {
                            quant::vec_dot(GgmlType::F16, key(p), bytemuck::cast_slice(qh), hd)
                        }
                        CacheType::Q8_0 => qh.iter().zip(&k).map(|(a, b)| a * b).sum(),
                    };
                    scores[p] = scale * dot;
                }
            }
            scores.chunks_mut(n_keys).for_each(softmax);
            out_group.fill(0.0);
            let mut v = vec![0f32; hd];
            for p in 0..n_keys {
                dequantize_row(types.v, value(p), &mut v);
                for (out_head, s) in out_group.chunks_mut(hd).zip(scores.chunks(n_keys)) {
                    add_scaled(out_head, s[p], &v);
                }
            }
        };
        let o = &mut o[..n * n_head * hd];
        // Keys and values read by the heads of the KV head.
        let bytes = n * shape.n_head_kv * (pos + n) * (k_row + v_row);
        if bytes < SERIAL_BYTES {
            o.chunks_mut(group * hd)
                .enumerate()
                .for_each(|(i, out_group)| task(i, out_group));
        } else {
            self.pool.install(|| {
                o.par_chunks_mut(group * hd)
                    .enumerate()
                    .for_each(|(i, out_group)| task(i, out_group))
            });
        }
    }

    fn copy_row(&mut self, src: &CpuTensor, row: usize, dst: &CpuTensor) {
        let s = src.data.borrow();
        dst.data.borrow_mut()[..src.cols].copy_from_slice(&s[row * src.cols..(row + 1) * src.cols]);
    }

    fn read(&mut self, x: &CpuTensor, n: usize) -> Result<Vec<f32>> {
        Ok(x.data.borrow()[..n * x.cols].to_vec())
    }

    fn queue_argmax(&mut self, x: &CpuTensor, slot: usize) {
        let id = argmax(&x.data.borrow()[..x.cols]) as u32;
        self.argmax_slots[slot] = id;
        self.last_argmax = id;
    }

    fn read_argmax(&mut self, slot: usize) -> Result<u32> {
        Ok(self.argmax_slots[slot])
    }

    fn start_sampling(&mut self, sampler: &Sampler) -> Result<()> {
        self.sampler = Some(sampler.clone());
        Ok(())
    }

    fn queue_sample(&mut self, x: &CpuTensor, slot: usize) {
        let sampler = self
            .sampler
            .as_mut()
            .expect("start_sampling comes before queue_sample");
        let id = sampler.sample(&mut x.data.borrow_mut()[..x.cols]);
        sampler.accept(id);
        self.argmax_slots[slot] = id;
        self.last_argmax = id;
    }

    fn embed_argmax(&mut self, table: &CpuMatrix, out: &CpuTensor) {
        self.embed(table, &[self.last_argmax], out);
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn memory_used(&self) -> u64 {
        self.bytes_held
    }
}

/// The activation vectors of `x`'s rows in `format`, one after the other, on the current pool.
fn quantize_rows(format: ActFormat, x: &[f32], cols: usize) -> Vec<u8> {
    let bytes = format
        .bytes_for(cols)
        .expect("rows of whole blocks, checked at load");
    let mut all = vec![0u8; bytes * (x.len() / cols)];
    all.par_chunks_mut(bytes)
        .zip(x.par_chunks(cols))
        .for_each_init(Vec::new, |one, (out, row)| {
            quant::quantize_acts(format, row, one);
            out.copy_from_slice(one);
        });
    all
}

/// Fills `o[t * rows + r]` for `rows` weight rows and `n` tokens on the current pool: `task`
/// gets the first row of a block of rows and their outputs, token by token (`len` rows for
/// token t at `t * len`). A task takes a block of rows for every token, so each row is read
/// from memory once per step; with several tokens the blocks are then copied into place.
fn row_block_tasks(rows: usize, n: usize, o: &mut [f32], task: impl Fn(usize, &mut [f32]) + Sync) {
    if n == 1 {
        o[..rows]
            .par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, chunk)| task(c * ROWS_PER_TASK, chunk));
        return;
    }
    let mut blocks = vec![0f32; rows * n];
    blocks
        .par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(c, chunk)| task(c * ROWS_PER_TASK, chunk));
    o[..rows * n]
        .par_chunks_mut(rows)
        .enumerate()
        .for_each(|(t, o)| {
            for (c, block) in blocks.chunks(ROWS_PER_TASK * n).enumerate() {
                let len = block.len() / n;
                o[c * ROWS_PER_TASK..][..len].copy_from_slice(&block[t * len..][..len]);
            }
        });
}

fn quantized_matmul(w: &CpuMatrix, acts: &Activations, o: &mut [f32], n: usize) {
    row_block_tasks(w.rows, n, o, |first, chunk| {
        let rows = &w.data.bytes()[first * w.row_bytes..][..chunk.len() / n * w.row_bytes];
        quant::mat_mul(rows, acts, chunk);
    });
}

/// The reference product: each weight row dequantized and dotted with `x` in f64.
fn exact_matmul(w: &CpuMatrix, x: &[f32], o: &mut [f32], n: usize) {
    row_block_tasks(w.rows, n, o, |first, chunk| {
        let len = chunk.len() / n;
        let mut row = vec![0f32; w.cols];
        for i in 0..len {
            quant::dequantize(w.ggml_type, w.row(first + i), &mut row)
                .expect("size checked at load");
            for (t, xt) in x.chunks(w.cols).enumerate() {
                chunk[t * len + i] = dot_f64(&row, xt) as f32;
            }
        }
    });
}

/// Σ a·b in f64, over eight running sums: one sum would chain every addition on the one
/// before it, four times slower.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = (a8.remainder().iter().zip(b8.remainder()))
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    let mut acc = [0f64; 8];
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            acc[k] += x[k] as f64 * y[k] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(weight) {
        *o = x * scale * w;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rotates one head by the (cos, sin) pairs of its position.
pub fn rope_head(head: &mut [f32], cos_sin: &[f32], kind: RopeKind) {
    let half = head.len() / 2;
    for i in 0..half {
        let (a, b) = match kind {
            RopeKind::Normal => (2 * i, 2 * i + 1),
            RopeKind::Neox => (i, i + half),
        };
        let (cos, sin) = (cos_sin[2 * i], cos_sin[2 * i + 1]);
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos - x1 * sin;
        head[b] = x0 * sin + x1 * cos;
    }
}

/// A row of keys or values of the cache, as f32.
fn dequantize_row(ty: CacheType, bytes: &[u8], out: &mut [f32]) {
    quant::dequantize(ty.ggml_type(), bytes, out).expect("rows of whole blocks, checked at load");
}

/// `acc += s · x`.
fn add_scaled(acc: &mut [f32], s: f32, x: &[f32]) {
    for (a, x) in acc.iter_mut().zip(x) {
        *a += s * x;
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// Index of the first largest value; NaNs never win (an all-NaN row gives 0).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_nan() && (v > x[best] || x[best].is_nan()) {
            best = i;
        }
    }
    best
}
impl CpuBackend {
    /// Rotates q in place and k into the cache for positions `pos..pos + n` using the
    /// `[n_ctx, head_dim / 2]` cos/sin tables, and stores v beside it.
    #[allow(clippy::too_many_arguments)]
    fn rope_store_kv(
        &mut self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        rope_cos_sin: &CpuVector,
        cache: &CpuKvCache,
        layer: usize,
        pos: usize,
        n: usize,
        shape: &AttentionShape,
    ) {
        let hd = shape.head_dim;
        let table = |p: usize| &rope_cos_sin.0[p * hd..(p + 1) * hd];
        let mut q = q.data.borrow_mut();
        for (t, row) in q.chunks_mut(shape.q_width()).take(n).enumerate() {
            row.chunks_mut(hd)
                .for_each(|head| rope_head(head, table(pos + t), shape.rope));
        }
        let (mut kc, mut vc) = (cache.k[layer].borrow_mut(), cache.v[layer].borrow_mut());
        let kvw = cache.kv_width;
        let (k_width, v_width) = (cache.bytes_for(true, kvw), cache.bytes_for(false, kvw));
        let mut k = k.data.borrow_mut();
        let v = v.data.borrow();
        for t in 0..n {
            let krow = &mut k[t * kvw..(t + 1) * kvw];
            krow.chunks_mut(hd)
                .for_each(|head| rope_head(head, table(pos + t), shape.rope));
            let p = pos + t;
            encode_row(cache.types.k, krow, &mut kc[p * k_width..][..k_width]);
            let vrow = &v[t * kvw..(t + 1) * kvw];
            encode_row(cache.types.v, vrow, &mut vc[p * v_width..][..v_width]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Attention of `n` queries at position 0 over caches of `types`, from seeded normal
    /// queries (scaled by 3, so that the softmax has favourites), keys and values.
    fn attention_over(types: KvTypes, shape: &AttentionShape, n: usize) -> Vec<f32> {
        let mut rng = SplitMix64::for_stream(7, "kv cache");
        let mut normal = |len: usize, scale: f32| -> CpuTensor {
            CpuTensor {
                data: RefCell::new((0..len).map(|_| scale * rng.next_normal()).collect()),
                cols: len / n,
            }
        };
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let (q, k, v) = (
            normal(n * qw, 3.0),
            normal(n * kvw, 1.0),
            normal(n * kvw, 1.0),
        );
        let mut cpu = CpuBackend::new(1).unwrap();
        let cache = cpu.kv_cache(1, n, shape, types).unwrap();
        // No rotation: cos 1, sin 0 at every position.
        let table = CpuVector([1.0, 0.0].repeat(n * shape.head_dim / 2));
        cpu.rope_store_kv(&q, &k, &v, &table, &cache, 0, 0, n, shape);
        let out = cpu.tensor("out", n, qw).unwrap();
        cpu.attention(&q, &cache, 0, 0, n, &out, shape);
        out.data.into_inner()
    }

    /// A q8_0 cache moves attention's output by a small fraction of its largest value:
    /// measured 0.0152 (keys: the scores move, and the softmax amplifies), 0.0039 (values),
    /// 0.0151 (both) over 200 positions; each bound sits a little above. A q8_0 cache read
    /// with a neighbouring block's scales, or as f16 bytes, is off by tens of percent or more.
    #[test]
    fn a_q8_0_cache_stays_close_to_an_f16_one() {
        let shape = AttentionShape {
            n_head: 8,
            n_head_kv: 2,
            head_dim: 64,
            rope: RopeKind::Neox,
        };
        let n = 200;
        let f16 = attention_over(KvTypes::default(), &shape, n);
        let scale = f16.iter().fold(0f32, |m, x| m.max(x.abs()));
        let q8 = CacheType::Q8_0;
        let cases = [
            (
                KvTypes {
                    k: q8,
                    ..KvTypes::default()
                },
                0.018,
            ),
            (
                KvTypes {
                    v: q8,
                    ..KvTypes::default()
                },
                0.0045,
            ),
            (KvTypes { k: q8, v: q8 }, 0.018),
        ];
        for (types, bound) in cases {
            let got = attention_over(types, &shape, n);
            let worst = (got.iter().zip(&f16))
                .map(|(a, b)| (a - b).abs() / scale)
                .fold(0f32, f32::max);
            // Above zero: the q8_0 path ran.
            assert!(
                worst > 0.0 && worst < bound,
                "{types}: {worst} of the scale"
            );
        }
    }
}
