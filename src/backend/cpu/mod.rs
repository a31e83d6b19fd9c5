//! The CPU backend: the reference every GPU kernel is tested against, and a usable engine.
//! Matrix products read the quantized blocks in place (activations are quantized to the
//! format each weight type dots with); prompts' work is spread over a rayon pool, except steps
//! too small to be worth handing over, and decode steps' products over a pool whose threads
//! stay awake between them (`spin_pool`). It implements only the required ops: the fused ones are
//! the trait's compositions of them. Any batch of sequences runs, each row at its own slot
//! and position of the cache.

mod spin_pool;

use super::weights::{check_parts, expert_count};
use super::{
    Activation, AttentionOpts, AttentionShape, Backend, BackendError, CacheLayer, CacheType, Dims,
    ExpertInput, HostTokens, KvLayout, KvTypes, MatrixUse, Result, RmsNorm, Rope, RopeKind,
    Scratch, WeightBytes, WeightRows,
};
use crate::quant::{self, ActFormat, Activations, GgmlType};
use half::f16;
use rayon::prelude::*;
use spin_pool::SpinPool;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Output rows handed to one rayon task: big enough to amortise scheduling, small enough to
/// balance two to a few dozen threads.
const ROWS_PER_TASK: usize = 32;

/// Bytes a step reads below which it runs on the caller's thread: handing it to the pool
/// costs two thread wake-ups, tens of microseconds on a busy machine, more than splitting
/// so little work saves (a small model decodes several times faster for it).
const SERIAL_BYTES: usize = 1 << 20;

/// Products of up to this many tokens (decode steps, and a server's batches of streams) go to
/// the spin pool, whose threads are awake between them, from SPIN_BYTES of weights up.
const SPIN_TOKENS: usize = 8;
const SPIN_BYTES: usize = 16 << 10;
/// The spin pool's tasks: about this many per thread, of at least SPIN_TASK_ROWS rows. Small
/// tasks balance threads that run at different speeds (a shared host's): on this 2-core
/// machine 4, 16, 64, 128 and 256 a thread decoded Qwen2.5-Coder-1.5B at 10.5–10.9, 11.7–11.9,
/// 12.6, 12.2–12.5 and 12.2–12.4 t/s, its 0.5B at 22.0, 23.7–24.6, 25.1–26.3, 27.1–27.7 and
/// 27.1–27.8, SmolLM2 at 107–113, 103–115, 110–118, 127 and 113–121 (BENCHMARKS.md).
const SPIN_TASKS_PER_THREAD: usize = 128;
const SPIN_TASK_ROWS: usize = 16;

/// A `[rows, cols]` tensor; scratch tensors share their storage with the backend.
pub struct CpuTensor {
    data: Rc<RefCell<Vec<f32>>>,
    rows: usize,
    cols: usize,
}

impl Dims for CpuTensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

/// Rows of one weight type, as the file stores them.
struct CpuRows {
    ggml_type: GgmlType,
    /// The first row's index in the matrix.
    first: usize,
    rows: usize,
    row_bytes: usize,
    data: WeightBytes,
}

impl CpuRows {
    fn row(&self, r: usize) -> &[u8] {
        &self.data.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

pub struct CpuMatrix {
    name: String,
    rows: usize,
    cols: usize,
    parts: Vec<CpuRows>,
    bias: Option<Vec<f32>>,
    /// Blocks of rows, one per expert ([`MatrixUse::Experts`]); 1 for other matrices.
    experts: usize,
}

impl CpuMatrix {
    /// The part holding row `r`, and the row's index in it.
    fn locate(&self, r: usize) -> (&CpuRows, usize) {
        let part = self
            .parts
            .iter()
            .rfind(|p| p.first <= r)
            .expect("the first part starts at row 0");
        (part, r - part.first)
    }

    /// Rows `rows` of the matrix, as views of the parts that hold them.
    fn rows_in(&self, rows: std::ops::Range<usize>) -> impl Iterator<Item = CpuRows> + '_ {
        self.parts.iter().filter_map(move |p| {
            let (lo, hi) = (rows.start.max(p.first), rows.end.min(p.first + p.rows));
            (lo < hi).then(|| CpuRows {
                ggml_type: p.ggml_type,
                first: lo - rows.start,
                rows: hi - lo,
                row_bytes: p.row_bytes,
                data: p
                    .data
                    .slice((lo - p.first) * p.row_bytes, (hi - lo) * p.row_bytes),
            })
        })
    }
}

impl Dims for CpuMatrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

pub struct CpuVector(Vec<f32>);

pub struct CpuKvCache {
    /// Per layer, `[slots × n_ctx, kv_width]` keys and values encoded as `types` says, row
    /// after row (slot s's position p at row s × n_ctx + p).
    k: Vec<RefCell<Vec<u8>>>,
    v: Vec<RefCell<Vec<u8>>>,
    slots: usize,
    n_ctx: usize,
    shape: AttentionShape,
    types: KvTypes,
}

impl CpuKvCache {
    /// Bytes of `n` keys (`k`) or values.
    fn bytes_for(&self, k: bool, n: usize) -> usize {
        let ty = if k { self.types.k } else { self.types.v };
        ty.bytes_for(n)
    }

    /// The cache row of a slot's position.
    fn row(&self, slot: usize, pos: usize) -> usize {
        assert!(
            slot < self.slots && pos < self.n_ctx,
            "slot {slot} position {pos} is outside a cache of {} slots of {} positions",
            self.slots,
            self.n_ctx
        );
        slot * self.n_ctx + pos
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

fn threads_error(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unsupported(format!("cannot start CPU threads: {e}"))
}

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    spin: SpinPool,
    bytes_held: u64,
    /// Reference mode: weights dequantized block by block, products in f64.
    exact: bool,
    /// The ids of [`Backend::queue_argmax`], and the last one queued.
    /// Token picks: the CPU reads its logits where they are.
    tokens: HostTokens,
    scratch: HashMap<Scratch, Rc<RefCell<Vec<f32>>>>,
}

impl CpuBackend {
    /// A backend on `threads` threads (0: one per core).
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vibrant-cpu-{i}"))
            .build()
            .map_err(threads_error)?;
        let spin = SpinPool::new(pool.current_num_threads()).map_err(threads_error)?;
        Ok(Self {
            pool,
            spin,
            bytes_held: 0,
            exact: false,
            tokens: HostTokens::default(),
            scratch: HashMap::new(),
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

    /// The products of `n` rows of x with the part's rows, into their columns of `dst`.
    fn part_product(&self, part: &CpuRows, cols: usize, x: &[f32], dst: Columns, n: usize) {
        part_product(self.pools(), self.exact, part, cols, x, dst, n);
    }

    fn pools(&self) -> Pools<'_> {
        Pools {
            rayon: &self.pool,
            spin: &self.spin,
        }
    }

    /// Runs `row(out, inputs…)` over the first `n` rows, on the pool where they are worth it
    /// (`bytes` read and written in all).
    fn rows_of<F>(&self, bytes: usize, out: &mut [f32], cols: usize, row: F)
    where
        F: Fn(usize, &mut [f32]) + Sync + Send,
    {
        if bytes < SERIAL_BYTES {
            out.chunks_mut(cols)
                .enumerate()
                .for_each(|(t, o)| row(t, o));
        } else {
            self.pool.install(|| {
                out.par_chunks_mut(cols)
                    .enumerate()
                    .for_each(|(t, o)| row(t, o))
            });
        }
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = CpuVector;
    type KvCache = CpuKvCache;

    fn describe(&self) -> String {
        let mode = if self.exact {
            ", exact reference mode"
        } else {
            ""
        };
        format!("CPU ({} threads{mode})", self.threads())
    }

    /// The parts stay as the file stores them (in place, when they are in a mapped file),
    /// in the order given, whatever they feed.
    fn upload_matrix(
        &mut self,
        name: &str,
        cols: usize,
        parts: Vec<WeightRows>,
        usage: MatrixUse,
    ) -> Result<CpuMatrix> {
        let (row_bytes, bias) = check_parts(name, cols, &parts)?;
        let mut kept = Vec::with_capacity(parts.len());
        let mut first = 0;
        for (part, row_bytes) in parts.into_iter().zip(row_bytes) {
            kept.push(CpuRows {
                ggml_type: part.ggml_type,
                first,
                rows: part.rows,
                row_bytes,
                data: part.data,
            });
            first += part.rows;
        }
        if let Some(bias) = &bias {
            self.bytes_held += 4 * bias.len() as u64;
        }
        let experts = expert_count(name, first, usage, bias.is_some())?;
        Ok(CpuMatrix {
            name: name.to_string(),
            rows: first,
            cols,
            parts: kept,
            bias,
            experts,
        })
    }

    fn upload_vector(&mut self, _name: &str, data: &[f32]) -> Result<CpuVector> {
        self.bytes_held += 4 * data.len() as u64;
        Ok(CpuVector(data.to_vec()))
    }

    fn tensor(&mut self, _name: &str, rows: usize, cols: usize) -> Result<CpuTensor> {
        self.bytes_held += 4 * (rows * cols) as u64;
        Ok(CpuTensor {
            data: Rc::new(RefCell::new(vec![0.0; rows * cols])),
            rows,
            cols,
        })
    }

    fn scratch(&mut self, which: Scratch, rows: usize, cols: usize) -> CpuTensor {
        let len = rows * cols;
        let held = self.scratch.entry(which).or_default();
        let have = held.borrow().len();
        if have < len {
            self.bytes_held += 4 * (len - have) as u64;
            *held = Rc::new(RefCell::new(vec![0.0; len]));
        }
        CpuTensor {
            data: held.clone(),
            rows,
            cols,
        }
    }

    fn kv_cache(&mut self, layout: &KvLayout) -> Result<CpuKvCache> {
        let shape = layout.shape;
        let types = layout.types;
        types.check(&shape)?;
        let kv_width = shape.kv_width();
        let positions = layout.slots * layout.n_ctx;
        let n_layers = layout.layers.len();
        // Zeroed allocations are lazily backed by the OS: unused context costs no memory.
        let layer = |ty: CacheType| RefCell::new(vec![0u8; positions * ty.bytes_for(kv_width)]);
        self.bytes_held += (n_layers * positions * types.bytes_per_position(&shape)) as u64;
        Ok(CpuKvCache {
            k: (0..n_layers).map(|_| layer(types.k)).collect(),
            v: (0..n_layers).map(|_| layer(types.v)).collect(),
            slots: layout.slots,
            n_ctx: layout.n_ctx,
            shape,
            types,
        })
    }

    fn embed(&mut self, table: &CpuMatrix, tokens: &[u32], out: &CpuTensor) {
        let mut o = out.data.borrow_mut();
        for (row, &tok) in o.chunks_mut(out.cols).zip(tokens) {
            let (part, r) = table.locate((tok as usize).min(table.rows - 1));
            quant::dequantize(part.ggml_type, part.row(r), row)
                .unwrap_or_else(|e| panic!("{}: {e}", table.name));
        }
    }

    fn rms_norm(&mut self, x: &CpuTensor, norm: RmsNorm<'_, CpuVector>, out: &CpuTensor, n: usize) {
        let x = x.data.borrow();
        let mut o = out.data.borrow_mut();
        let d = out.cols;
        for (xr, or) in x.chunks(d).zip(o.chunks_mut(d)).take(n) {
            rms_norm_row(xr, &norm.weight.0, norm.eps, or);
        }
    }

    fn matmul(&mut self, x: &CpuTensor, w: &CpuMatrix, out: &CpuTensor, n: usize) {
        assert_eq!((x.cols, out.cols), (w.cols, w.rows), "{}: shape", w.name);
        let x = x.data.borrow();
        let x = &x[..n * w.cols];
        let mut o = out.data.borrow_mut();
        let o = &mut o[..n * w.rows];
        for part in &w.parts {
            let dst = Columns {
                out: &mut *o,
                stride: w.rows,
                first: part.first,
            };
            self.part_product(part, w.cols, x, dst, n);
        }
        if let Some(bias) = &w.bias {
            for row in o.chunks_mut(w.rows) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
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

    fn glu(&mut self, act: Activation, gate_up: &CpuTensor, out: &CpuTensor, n: usize) {
        let w = out.cols;
        assert_eq!(gate_up.cols, 2 * w, "glu: gate and up of {w} values each");
        let gu = gate_up.data.borrow();
        let gu = &gu[..n * 2 * w];
        let mut o = out.data.borrow_mut();
        // Gate, up and output: 12 bytes a value.
        self.rows_of(12 * n * w, &mut o[..n * w], w, |t, o| {
            let (gate, up) = gu[t * 2 * w..][..2 * w].split_at(w);
            for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
                *o = act.apply(*g) * u;
            }
        });
    }

    fn rope_store_kv(
        &mut self,
        qkv: &CpuTensor,
        rope: &Rope<'_, CpuVector>,
        q: &CpuTensor,
        at: CacheLayer<'_, CpuKvCache>,
    ) {
        let cache = at.cache;
        let shape = &cache.shape;
        let (qw, kvw, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        assert_eq!(qkv.cols, qw + 2 * kvw, "rope_store_kv: [q | k | v] rows");
        let table = |p: usize| &rope.cos_sin.0[p * hd..(p + 1) * hd];
        let finish = |heads: &mut [f32], norm: Option<&CpuVector>, pos: usize| {
            for head in heads.chunks_mut(hd) {
                if let (Some(w), Some(n)) = (norm, &rope.qk_norm) {
                    let raw = head.to_vec();
                    rms_norm_row(&raw, &w.0, n.eps, head);
                }
                rope_head(head, table(pos), shape.rope);
            }
        };
        let (q_norm, k_norm) = match &rope.qk_norm {
            Some(n) => (Some(n.q), Some(n.k)),
            None => (None, None),
        };
        let products = qkv.data.borrow();
        let mut q = q.data.borrow_mut();
        let (mut kc, mut vc) = (
            cache.k[at.layer].borrow_mut(),
            cache.v[at.layer].borrow_mut(),
        );
        let (k_width, v_width) = (cache.bytes_for(true, kvw), cache.bytes_for(false, kvw));
        for (t, (slot, pos)) in at.batch.positions().enumerate() {
            let row = &products[t * qkv.cols..][..qkv.cols];
            let q_row = &mut q[t * qw..][..qw];
            q_row.copy_from_slice(&row[..qw]);
            finish(q_row, q_norm, pos);
            let mut k_row = row[qw..qw + kvw].to_vec();
            finish(&mut k_row, k_norm, pos);
            let r = cache.row(slot, pos);
            encode_row(cache.types.k, &k_row, &mut kc[r * k_width..][..k_width]);
            encode_row(
                cache.types.v,
                &row[qw + kvw..],
                &mut vc[r * v_width..][..v_width],
            );
        }
    }

    fn attention(
        &mut self,
        q: &CpuTensor,
        at: CacheLayer<'_, CpuKvCache>,
        opts: &AttentionOpts,
        out: &CpuTensor,
    ) {
        let cache = at.cache;
        let shape = cache.shape;
        let (hd, n_head) = (shape.head_dim, shape.n_head);
        let group = n_head / shape.n_head_kv;
        let types = cache.types;
        let (k_row, v_row) = (cache.bytes_for(true, hd), cache.bytes_for(false, hd));
        let kvw = shape.kv_width();
        let (k_width, v_width) = (cache.bytes_for(true, kvw), cache.bytes_for(false, kvw));
        // Each row's slot and position, and the cache rows they start at.
        let rows: Vec<(usize, usize)> = at.batch.positions().collect();
        let starts: Vec<usize> = rows.iter().map(|&(s, p)| cache.row(s, p) - p).collect();
        let q = q.data.borrow();
        let (kc, vc) = (cache.k[at.layer].borrow(), cache.v[at.layer].borrow());
        let (q, kc, vc): (&[f32], &[u8], &[u8]) = (&q, &kc, &vc);
        let mut o = out.data.borrow_mut();
        // A task per row and KV head: the heads sharing the KV head share its key and value
        // rows, converted to f32 once.
        let task = |i: usize, out_group: &mut [f32]| {
            let (t, kv_head) = (i / shape.n_head_kv, i % shape.n_head_kv);
            let (pos, start) = (rows[t].1, starts[t]);
            let keys = opts.first_key(pos)..pos + 1;
            let n_keys = keys.len();
            let key = |p: usize| &kc[(start + p) * k_width + kv_head * k_row..][..k_row];
            let value = |p: usize| &vc[(start + p) * v_width + kv_head * v_row..][..v_row];
            let q_group = &q[(t * n_head + kv_head * group) * hd..][..group * hd];
            let mut scores = vec![0f32; group * n_keys];
            let mut k = vec![0f32; hd];
            for (j, p) in keys.clone().enumerate() {
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
                    scores[j] = opts.score(dot);
                }
            }
            scores.chunks_mut(n_keys).for_each(softmax);
            out_group.fill(0.0);
            let mut v = vec![0f32; hd];
            for (j, p) in keys.enumerate() {
                dequantize_row(types.v, value(p), &mut v);
                for (out_head, s) in out_group.chunks_mut(hd).zip(scores.chunks(n_keys)) {
                    add_scaled(out_head, s[j], &v);
                }
            }
        };
        let o = &mut o[..rows.len() * n_head * hd];
        // Keys and values read by the heads of each KV head.
        let keys: usize = rows.iter().map(|&(_, p)| p + 1 - opts.first_key(p)).sum();
        let bytes = keys * shape.n_head_kv * (k_row + v_row);
        self.rows_of(bytes, o, group * hd, task);
    }

    /// Row by row of the experts chosen: each expert's rows of `x` gathered, multiplied by
    /// its block of `w` at once (as a prompt's rows share a dense product), scattered back.
    fn matmul_id(
        &mut self,
        x: &CpuTensor,
        w: &CpuMatrix,
        routes: &CpuTensor,
        input: ExpertInput,
        out: &CpuTensor,
        n: usize,
    ) {
        let k = routes.cols / 2;
        let block = w.rows / w.experts;
        assert_eq!((x.cols, out.cols), (w.cols, block), "{}: shape", w.name);
        let mut chosen: Vec<Vec<usize>> = vec![Vec::new(); w.experts];
        {
            let r = routes.data.borrow();
            for (t, route) in r.chunks(routes.cols).take(n).enumerate() {
                for (j, &e) in route[..k].iter().enumerate() {
                    // Ids come from moe_route; an id outside the experts is a backend bug.
                    chosen[e as usize].push(t * k + j);
                }
            }
        }
        let x_ref = x.data.borrow();
        let x: &[f32] = &x_ref;
        let (pools, exact) = (self.pools(), self.exact);
        // One expert's products for the rows that chose it, `[choices, block]`.
        let expert = |&(e, choices): &(usize, &Vec<usize>)| {
            let m = choices.len();
            let mut gathered = Vec::with_capacity(m * w.cols);
            for &c in choices {
                let row = match input {
                    ExpertInput::Token => c / k,
                    ExpertInput::Choice => c,
                };
                gathered.extend_from_slice(&x[row * w.cols..][..w.cols]);
            }
            let mut products = vec![0f32; m * block];
            for part in w.rows_in(e * block..(e + 1) * block) {
                let dst = Columns {
                    out: &mut products,
                    stride: block,
                    first: part.first,
                };
                part_product(pools, exact, &part, w.cols, &gathered, dst, m);
            }
            products
        };
        let jobs: Vec<(usize, &Vec<usize>)> = chosen
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_empty())
            .collect();
        // Decoding reads a few experts' blocks each too small to split: the experts go to
        // the pool side by side instead, where they are worth a hand-over together.
        let block_bytes: usize = w.rows_in(0..block).map(|p| p.data.bytes().len()).sum();
        let bytes: usize = jobs.iter().map(|(_, c)| c.len() * block_bytes).sum();
        let products: Vec<Vec<f32>> = match bytes < SERIAL_BYTES || jobs.len() == 1 {
            true => jobs.iter().map(expert).collect(),
            false => pools
                .rayon
                .install(|| jobs.par_iter().map(expert).collect()),
        };
        let mut o = out.data.borrow_mut();
        for ((_, choices), products) in jobs.iter().zip(&products) {
            for (&c, p) in choices.iter().zip(products.chunks(block)) {
                o[c * block..][..block].copy_from_slice(p);
            }
        }
    }

    fn read(&mut self, x: &CpuTensor, n: usize) -> Result<Vec<f32>> {
        Ok(x.data.borrow()[..n * x.cols].to_vec())
    }

    fn write(&mut self, x: &CpuTensor, rows: &[f32]) {
        x.data.borrow_mut()[..rows.len()].copy_from_slice(rows);
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn memory_used(&self) -> u64 {
        self.bytes_held
    }

    fn host_tokens(&mut self) -> &mut HostTokens {
        &mut self.tokens
    }
}

/// The activation vectors of `x`'s rows in `format`, one after the other, on the current pool.
/// The products of `n` rows of x with the part's rows, into their columns of `dst`: in f64
/// over dequantized weights (`exact`), or over activations quantized as the weights dot with
/// them, on `pool` where the step is worth handing over.
fn part_product(
    pools: Pools,
    exact: bool,
    part: &CpuRows,
    cols: usize,
    x: &[f32],
    dst: Columns,
    n: usize,
) {
    let format = part.ggml_type.act_format();
    let bytes = part.data.bytes().len();
    if exact {
        pools.rayon.install(|| exact_matmul(part, cols, x, dst, n));
    } else if n <= SPIN_TOKENS && bytes >= SPIN_BYTES && pools.spin.threads() > 1 {
        spin_product(pools.spin, part, &acts_of(part, x, cols), dst, n);
    } else if n * bytes < SERIAL_BYTES {
        let acts = acts_of(part, x, cols);
        let rows = part.rows;
        match dst.stride == rows || n == 1 {
            true => quant::mat_mul(
                part.data.bytes(),
                &acts,
                &mut dst.out[dst.first..][..n * rows],
            ),
            false => {
                let mut products = vec![0f32; n * rows];
                quant::mat_mul(part.data.bytes(), &acts, &mut products);
                for (o, p) in dst.out.chunks_mut(dst.stride).zip(products.chunks(rows)) {
                    o[dst.first..][..rows].copy_from_slice(p);
                }
            }
        }
    } else {
        pools.rayon.install(|| {
            let bytes = quantize_rows(format, x, cols);
            let acts = Activations::new(part.ggml_type, bytes, cols);
            quantized_matmul(part, &acts, dst, n)
        });
    }
}

/// `x`'s rows quantized on this thread as `part`'s weights dot with them.
fn acts_of(part: &CpuRows, x: &[f32], cols: usize) -> Activations {
    let mut bytes = Vec::new();
    quant::quantize_acts(part.ggml_type.act_format(), x, &mut bytes);
    Activations::new(part.ggml_type, bytes, cols)
}

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

/// The backend's two pools: rayon's for large steps, the spin pool for decode-sized ones.
#[derive(Clone, Copy)]
struct Pools<'a> {
    rayon: &'a rayon::ThreadPool,
    spin: &'a SpinPool,
}

/// A decode-sized product on the spin pool: each task takes a block of rows for every token
/// (into `dst` itself for one token; else into blocks then copied into place, as
/// [`row_block_tasks`] does).
fn spin_product(spin: &SpinPool, part: &CpuRows, acts: &Activations, dst: Columns, n: usize) {
    let rows = part.rows;
    let per_task = rows
        .div_ceil(spin.threads() * SPIN_TASKS_PER_THREAD)
        .max(SPIN_TASK_ROWS);
    let mut blocks = match n {
        1 => Vec::new(),
        _ => vec![0f32; rows * n],
    };
    let out: &mut [f32] = match n {
        1 => &mut dst.out[dst.first..][..rows],
        _ => &mut blocks,
    };
    let out = SharedOut(out.as_mut_ptr());
    spin.run(rows.div_ceil(per_task), &|i| {
        let first = i * per_task;
        let len = per_task.min(rows - first);
        let weights = &part.data.bytes()[first * part.row_bytes..][..len * part.row_bytes];
        // SAFETY: task i alone writes rows first..first + len of every token (n × len values
        // from n × first), inside the rows × n values `out` points to, which outlive run.
        let o = unsafe { std::slice::from_raw_parts_mut(out.at(first * n), len * n) };
        quant::mat_mul(weights, acts, o);
    });
    if n > 1 {
        for (t, o) in dst.out.chunks_mut(dst.stride).take(n).enumerate() {
            place_token(o, t, &blocks, per_task, n, dst.first);
        }
    }
}

/// The output of [`spin_product`], which its tasks write in disjoint ranges.
struct SharedOut(*mut f32);

// SAFETY: see spin_product: each task writes only its own range.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The address `offset` values in (within the output, which the caller checks).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Where a part's products go: token t's in `out[t * stride + first..][..rows]`.
struct Columns<'a> {
    out: &'a mut [f32],
    stride: usize,
    first: usize,
}

/// Fills `dst` for `rows` weight rows and `n` tokens on the current pool: `task`
/// gets the first row of a block of rows and their outputs, token by token (`len` rows for
/// token t at `t * len`). A task takes a block of rows for every token, so each row is read
/// from memory once per step; with several tokens the blocks are then copied into place.
fn row_block_tasks(rows: usize, n: usize, dst: Columns, task: impl Fn(usize, &mut [f32]) + Sync) {
    if n == 1 {
        dst.out[dst.first..][..rows]
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
    dst.out
        .par_chunks_mut(dst.stride)
        .take(n)
        .enumerate()
        .for_each(|(t, o)| place_token(o, t, &blocks, ROWS_PER_TASK, n, dst.first));
}

/// Token t's products, from `blocks` as row-block tasks write them (`per_block` rows of every
/// token a block, token after token), into `o`, the token's row of the output, from column
/// `first`.
fn place_token(o: &mut [f32], t: usize, blocks: &[f32], per_block: usize, n: usize, first: usize) {
    for (c, block) in blocks.chunks(per_block * n).enumerate() {
        let len = block.len() / n;
        o[first + c * per_block..][..len].copy_from_slice(&block[t * len..][..len]);
    }
}

fn quantized_matmul(w: &CpuRows, acts: &Activations, dst: Columns, n: usize) {
    row_block_tasks(w.rows, n, dst, |first, chunk| {
        let rows = &w.data.bytes()[first * w.row_bytes..][..chunk.len() / n * w.row_bytes];
        quant::mat_mul(rows, acts, chunk);
    });
}

/// The reference product: each weight row dequantized and dotted with `x` in f64.
fn exact_matmul(w: &CpuRows, cols: usize, x: &[f32], dst: Columns, n: usize) {
    row_block_tasks(w.rows, n, dst, |first, chunk| {
        let len = chunk.len() / n;
        let mut row = vec![0f32; cols];
        for i in 0..len {
            quant::dequantize(w.ggml_type, w.row(first + i), &mut row)
                .expect("size checked at load");
            for (t, xt) in x.chunks(cols).enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Batch, QkNorm, Span};
    use crate::rng::SplitMix64;

    /// Decode-sized products on the spin pool (several threads) are the caller's alone (one
    /// thread), bit for bit: each row's dot is the same, only who takes it differs. Parts of
    /// two types, so that each writes its own columns, with a bias; 1, 3 and 8 tokens.
    #[test]
    fn products_on_the_spin_pool_are_those_of_one_thread() {
        let mut rng = SplitMix64::for_stream(3, "spin products");
        let cols = 512;
        let parts = [(GgmlType::Q4K, 300), (GgmlType::Q8_0, 70)];
        let rows: usize = parts.iter().map(|p| p.1).sum();
        let bias: Vec<f32> = (0..rows).map(|_| rng.next_normal()).collect();
        let weight_rows = || {
            let mut first = 0;
            parts.map(|(ty, n)| {
                let mut rng = SplitMix64::for_stream(4, ty.name());
                let values: Vec<f32> = (0..n * cols).map(|_| rng.next_normal()).collect();
                let mut part = WeightRows::new(
                    ty,
                    n,
                    WeightBytes::owned(quant::quantize(ty, &values).unwrap()),
                );
                part.bias = Some(bias[first..first + n].to_vec());
                first += n;
                part
            })
        };
        let products = |threads: usize, n: usize, x: &[f32]| {
            let mut cpu = CpuBackend::new(threads).unwrap();
            let w = cpu
                .upload_matrix("w", cols, weight_rows().into(), MatrixUse::Plain)
                .unwrap();
            let out = cpu.tensor("out", n, rows).unwrap();
            cpu.matmul(&tensor_of(n, x.to_vec()), &w, &out, n);
            cpu.read(&out, n).unwrap()
        };
        for n in [1, 3, 8] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.next_normal()).collect();
            let spun = products(3, n, &x);
            assert!(spun.iter().all(|v| v.is_finite()), "n={n}");
            assert_eq!(spun, products(1, n, &x), "n={n}");
        }
    }

    fn tensor_of(rows: usize, data: Vec<f32>) -> CpuTensor {
        CpuTensor {
            cols: data.len() / rows,
            data: Rc::new(RefCell::new(data)),
            rows,
        }
    }

    fn layout(shape: AttentionShape, types: KvTypes, slots: usize, n_ctx: usize) -> KvLayout {
        KvLayout {
            slots,
            n_ctx,
            shape,
            types,
            layers: vec![AttentionOpts::causal(shape.head_dim)],
            qk_norm: false,
        }
    }

    /// No rotation: cos 1, sin 0 at every position.
    fn identity_rope(n_ctx: usize, head_dim: usize) -> CpuVector {
        CpuVector([1.0, 0.0].repeat(n_ctx * head_dim / 2))
    }

    /// `[n, q | k | v]` rows from seeded normal queries (scaled by 3, so that the softmax has
    /// favourites), keys and values, drawn in that order.
    fn random_qkv(shape: &AttentionShape, n: usize, stream: &str) -> Vec<f32> {
        let mut rng = SplitMix64::for_stream(7, stream);
        let mut normal = |len: usize, scale: f32| -> Vec<f32> {
            (0..len).map(|_| scale * rng.next_normal()).collect()
        };
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let (q, k, v) = (
            normal(n * qw, 3.0),
            normal(n * kvw, 1.0),
            normal(n * kvw, 1.0),
        );
        (0..n)
            .flat_map(|t| {
                [
                    &q[t * qw..][..qw],
                    &k[t * kvw..][..kvw],
                    &v[t * kvw..][..kvw],
                ]
                .concat()
            })
            .collect()
    }

    /// Stores `qkv`'s rows for `batch` into layer 0 of `cache` (no rotation) and attends with
    /// `opts`: the output rows.
    fn store_and_attend(
        cpu: &mut CpuBackend,
        cache: &CpuKvCache,
        qkv: Vec<f32>,
        batch: &Batch,
        opts: &AttentionOpts,
    ) -> Vec<f32> {
        let shape = cache.shape;
        let n = batch.rows();
        let qkv = tensor_of(n, qkv);
        let q = cpu.tensor("q", n, shape.q_width()).unwrap();
        let table = identity_rope(cache.n_ctx, shape.head_dim);
        let rope = Rope {
            cos_sin: &table,
            qk_norm: None,
        };
        let at = CacheLayer {
            cache,
            layer: 0,
            batch,
        };
        cpu.rope_store_kv(&qkv, &rope, &q, at);
        let out = cpu.tensor("out", n, shape.q_width()).unwrap();
        cpu.attention(&q, at, opts, &out);
        cpu.read(&out, n).unwrap()
    }

    /// Attention of `n` queries at position 0 over caches of `types`.
    fn attention_over(types: KvTypes, shape: &AttentionShape, n: usize) -> Vec<f32> {
        let mut cpu = CpuBackend::new(1).unwrap();
        let cache = cpu.kv_cache(&layout(*shape, types, 1, n)).unwrap();
        let qkv = random_qkv(shape, n, "kv cache");
        let opts = AttentionOpts::causal(shape.head_dim);
        store_and_attend(&mut cpu, &cache, qkv, &Batch::one(0, 0, n), &opts)
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

    fn small_shape() -> AttentionShape {
        AttentionShape {
            n_head: 4,
            n_head_kv: 2,
            head_dim: 32,
            rope: RopeKind::Neox,
        }
    }

    /// Two sequences in one step, each at its own slot and position, attend as each does
    /// alone: sequence A (slot 1) decodes its 7th and 8th tokens while sequence B (slot 0)
    /// decodes its 4th, after each prefilled alone.
    #[test]
    fn a_batch_of_sequences_attends_as_each_alone() {
        let shape = small_shape();
        let opts = AttentionOpts::causal(shape.head_dim);
        let width = shape.q_width() + 2 * shape.kv_width();
        let (a, b) = (random_qkv(&shape, 8, "a"), random_qkv(&shape, 4, "b"));
        let (a_prefill, a_step) = a.split_at(6 * width);
        let (b_prefill, b_step) = b.split_at(3 * width);

        let mut cpu = CpuBackend::new(1).unwrap();
        let cache = cpu
            .kv_cache(&layout(shape, KvTypes::default(), 2, 16))
            .unwrap();
        store_and_attend(
            &mut cpu,
            &cache,
            a_prefill.to_vec(),
            &Batch::one(1, 0, 6),
            &opts,
        );
        store_and_attend(
            &mut cpu,
            &cache,
            b_prefill.to_vec(),
            &Batch::one(0, 0, 3),
            &opts,
        );
        let batch = Batch::new(vec![
            Span {
                slot: 1,
                pos: 6,
                len: 2,
            },
            Span {
                slot: 0,
                pos: 3,
                len: 1,
            },
        ]);
        let together = store_and_attend(&mut cpu, &cache, [a_step, b_step].concat(), &batch, &opts);

        let alone = |qkv: &[f32], n: usize| {
            let mut cpu = CpuBackend::new(1).unwrap();
            let cache = cpu
                .kv_cache(&layout(shape, KvTypes::default(), 1, 16))
                .unwrap();
            store_and_attend(&mut cpu, &cache, qkv.to_vec(), &Batch::one(0, 0, n), &opts)
        };
        let qw = shape.q_width();
        let a_alone = alone(&a, 8);
        let b_alone = alone(&b, 4);
        assert_eq!(&together[..2 * qw], &a_alone[6 * qw..], "sequence A");
        assert_eq!(&together[2 * qw..], &b_alone[3 * qw..], "sequence B");
    }

    /// With a window of w, a query at position p attends as it would over a cache holding
    /// only the keys at p - w + 1..=p (no rotation, so positions do not matter otherwise);
    /// without the window it sees more and answers differently.
    #[test]
    fn a_sliding_window_sees_only_the_last_keys() {
        let shape = small_shape();
        let (n, w) = (12, 5);
        let width = shape.q_width() + 2 * shape.kv_width();
        let qkv = random_qkv(&shape, n, "window");
        let windowed = AttentionOpts {
            window: Some(w),
            ..AttentionOpts::causal(shape.head_dim)
        };
        let run = |qkv: &[f32], opts: &AttentionOpts| {
            let mut cpu = CpuBackend::new(1).unwrap();
            let rows = qkv.len() / width;
            let cache = cpu
                .kv_cache(&layout(shape, KvTypes::default(), 1, n))
                .unwrap();
            let out = store_and_attend(
                &mut cpu,
                &cache,
                qkv.to_vec(),
                &Batch::one(0, 0, rows),
                opts,
            );
            out[out.len() - shape.q_width()..].to_vec()
        };
        let got = run(&qkv, &windowed);
        let want = run(
            &qkv[(n - w) * width..],
            &AttentionOpts::causal(shape.head_dim),
        );
        assert_eq!(got, want);
        assert_ne!(got, run(&qkv, &AttentionOpts::causal(shape.head_dim)));
    }

    /// Soft-capped scores against a float64 reference of one head over f16 keys and values.
    #[test]
    fn soft_capped_attention_matches_a_reference() {
        let shape = AttentionShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 32,
            rope: RopeKind::Normal,
        };
        let n = 9;
        let qkv = random_qkv(&shape, n, "softcap");
        let opts = AttentionOpts {
            softcap: Some(2.0),
            ..AttentionOpts::causal(32)
        };
        let mut cpu = CpuBackend::new(1).unwrap();
        let cache = cpu
            .kv_cache(&layout(shape, KvTypes::default(), 1, n))
            .unwrap();
        let got = store_and_attend(&mut cpu, &cache, qkv.clone(), &Batch::one(0, 0, n), &opts);
        let f16_of = |x: f32| f16::from_f32(x).to_f64();
        let row = |t: usize| &qkv[t * 96..][..96];
        for t in 0..n {
            let q = &row(t)[..32];
            let scores: Vec<f64> = (0..=t)
                .map(|p| {
                    let dot: f64 = q
                        .iter()
                        .zip(&row(p)[32..64])
                        .map(|(a, b)| *a as f64 * f16_of(*b))
                        .sum();
                    2.0 * (dot / 32f64.sqrt() / 2.0).tanh()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for d in 0..32 {
                let want: f64 = (0..=t)
                    .map(|p| (scores[p] - max).exp() / sum * f16_of(row(p)[64 + d]))
                    .sum();
                let g = got[t * 32 + d] as f64;
                assert!((g - want).abs() < 1e-5, "row {t} dim {d}: {g} vs {want}");
            }
        }
    }

    /// Per-head QK-norm: each query head (and each key head, as the cache holds it) is
    /// RMS-normalised by its own weight before RoPE (here the identity).
    #[test]
    fn qk_norm_normalises_each_head_before_rope() {
        let shape = small_shape();
        let (qw, kvw, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        let qkv = random_qkv(&shape, 1, "qk norm");
        let mut cpu = CpuBackend::new(1).unwrap();
        let cache = cpu
            .kv_cache(&layout(shape, KvTypes::default(), 1, 1))
            .unwrap();
        let weights: Vec<f32> = (0..hd).map(|i| 0.5 + i as f32 / hd as f32).collect();
        let (q_w, k_w) = (
            CpuVector(weights.clone()),
            CpuVector(weights.iter().map(|w| 2.0 * w).collect()),
        );
        let table = identity_rope(1, hd);
        let rope = Rope {
            cos_sin: &table,
            qk_norm: Some(QkNorm {
                q: &q_w,
                k: &k_w,
                eps: 1e-6,
            }),
        };
        let q = cpu.tensor("q", 1, qw).unwrap();
        let batch = Batch::one(0, 0, 1);
        let at = CacheLayer {
            cache: &cache,
            layer: 0,
            batch: &batch,
        };
        cpu.rope_store_kv(&tensor_of(1, qkv.clone()), &rope, &q, at);
        let normed = |x: &[f32], w: &[f32]| -> Vec<f32> {
            x.chunks(hd)
                .flat_map(|h| {
                    let ms = h.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / hd as f64;
                    let s = 1.0 / (ms + 1e-6).sqrt();
                    h.iter()
                        .zip(w)
                        .map(move |(v, w)| (*v as f64 * s) as f32 * w)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let got = cpu.read(&q, 1).unwrap();
        let want = normed(&qkv[..qw], &weights);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5 * w.abs().max(1.0), "q: {g} vs {w}");
        }
        let mut keys = vec![0f32; kvw];
        dequantize_row(CacheType::F16, &cache.k[0].borrow()[..2 * kvw], &mut keys);
        let want = normed(&qkv[qw..qw + kvw], &k_w.0);
        for (g, w) in keys.iter().zip(&want) {
            assert!(
                (g - w).abs() < 2e-3 * w.abs().max(1.0),
                "k (f16): {g} vs {w}"
            );
        }
    }
}
