//! Runners of single ops shared by the kernel tests of every backend (tests/gpu_kernels.rs,
//! tests/cuda_kernels.rs): each loads host data through [`Load`], runs one op and reads the
//! result back, so that one function gives the device's and the CPU reference's answers.

use super::{cpu, random_values, read, Load, Weights};
use rand::rngs::StdRng;
use vibrant::backend::{Activation, Pointwise, RmsNorm, Routing};
use vibrant::quant::GgmlType;

/// Weight rows in most tests: odd, and not a multiple of any workgroup size.
pub const ROWS: usize = 67;

/// Two row widths per type: one within a single dequant workgroup's 512 elements and one past
/// it; neither a multiple of 256 where the format allows (and odd for the float types).
pub fn widths(ty: GgmlType) -> [usize; 2] {
    match ty.block_size() {
        1 => [37, 1003],
        32 => [416, 736],
        _ => [256, 768],
    }
}

pub fn embed_rows<B: Load>(b: &mut B, table: &B::Matrix, tokens: &[u32], cols: usize) -> Vec<f32> {
    let n = tokens.len();
    let out = b.load("embedded", n, cols, &vec![f32::NAN; n * cols]);
    b.embed(table, tokens, &out);
    read(b, &out, n)
}

pub fn rms_norm_rows<B: Load>(b: &mut B, x: &[f32], w: &[f32], n: usize, rows: usize) -> Vec<f32> {
    let cols = w.len();
    let xt = b.load("x", rows, cols, x);
    let weight = b.upload_vector("norm weight", w).expect("weight");
    let out = b.load("normed", rows, cols, &vec![f32::NAN; rows * cols]);
    let norm = RmsNorm {
        weight: &weight,
        eps: 1e-6,
    };
    b.rms_norm(&xt, norm, &out, n);
    read(b, &out, n)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Elementwise {
    Add,
    Glu(Activation),
    CopyRow,
    Pointwise(Pointwise),
}

/// An elementwise op over the first `n` of 6 rows (copy_row: row 3 into row 0), written into
/// `a`; all 6 rows come back, so a row past `n` that changed fails the comparison. The GLU's
/// gate and up are x and y side by side.
pub fn elementwise<B: Load>(
    b: &mut B,
    op: Elementwise,
    [a, x, y]: &[Vec<f32>; 3],
    n: usize,
    cols: usize,
) -> Vec<f32> {
    let at = b.load("a", 6, cols, a);
    let xt = b.load("x", 6, cols, x);
    match op {
        Elementwise::Add => b.add(&at, &xt, n),
        Elementwise::Glu(act) => {
            let gate_up: Vec<f32> = x
                .chunks(cols)
                .zip(y.chunks(cols))
                .flat_map(|(g, u)| [g, u].concat())
                .collect();
            let gate_up = b.load("gate | up", 6, 2 * cols, &gate_up);
            b.glu(act, &gate_up, &at, n)
        }
        Elementwise::CopyRow => b.copy_row(&xt, 3, &at),
        Elementwise::Pointwise(f) => b.pointwise(&at, f, n),
    }
    read(b, &at, 6)
}

/// The `[n_ctx, head_dim / 2]` (cos, sin) table of RoPE with base 10000.
pub fn rope_table(n_ctx: usize, head_dim: usize) -> Vec<f32> {
    let mut table = Vec::with_capacity(n_ctx * head_dim);
    for p in 0..n_ctx {
        for f in 0..head_dim / 2 {
            let theta = p as f64 * 10000f64.powf(-2.0 * f as f64 / head_dim as f64);
            table.extend([theta.cos() as f32, theta.sin() as f32]);
        }
    }
    table
}

/// Runs one matmul of `n` tokens into an output prefilled with NaN, so that an output the
/// kernel never writes fails the comparison.
pub fn run_matmul<B: Load>(b: &mut B, w: &B::Matrix, x: &[f32], n: usize, rows: usize) -> Vec<f32> {
    let xt = b.load("x", n, x.len() / n, x);
    let out = b.load("matmul out", n, rows, &vec![f32::NAN; n * rows]);
    b.matmul(&xt, w, &out, n);
    read(b, &out, n)
}

/// Each row's routes as the host computes them ([`Routing::route`]).
pub fn host_routes(logits: &[f32], n_expert: usize, routing: Routing) -> Vec<f32> {
    let mut routes = vec![0f32; logits.len() / n_expert * 2 * routing.k];
    for (l, r) in logits
        .chunks(n_expert)
        .zip(routes.chunks_mut(2 * routing.k))
    {
        routing.route(l, r);
    }
    routes
}

/// Two argmaxes queued into their slots, the last one embedded on the device: the ids read
/// back (the later slot first) and the embedded row.
fn queued_argmaxes<B: Load>(
    b: &mut B,
    w: &Weights,
    logits: &[Vec<f32>; 2],
) -> (Vec<u32>, Vec<f32>) {
    let table = w.upload(b, "table");
    for (slot, x) in logits.iter().enumerate() {
        let t = b.load("logits", 1, x.len(), x);
        b.queue_argmax(&t, slot);
    }
    let out = b.load("embedded", 1, w.cols, &vec![f32::NAN; w.cols]);
    b.embed_argmax(&table, &out);
    let ids = [1, 0].map(|slot| b.read_argmax(slot).expect("argmax"));
    (ids.to_vec(), read(b, &out, 1))
}

/// What pipelined decoding relies on, on `b` and on the CPU: two argmaxes over random logits
/// (told apart) queued into their slots, each id read back from its own slot (checked here),
/// and the last one embedded on the device. Gives the q4_K table, the ids (the later slot's
/// first) and the device's and the CPU's embedded rows.
pub fn queued_argmaxes_beside_the_cpu<B: Load>(
    b: &mut B,
    rng: &mut StdRng,
) -> (Weights, Vec<u32>, Vec<f32>, Vec<f32>) {
    let w = Weights::random(rng, GgmlType::Q4K, ROWS, widths(GgmlType::Q4K)[1]);
    let logits = [0, 1].map(|_| random_values(rng, ROWS, 1.0));
    let want_ids: Vec<u32> = [1, 0]
        .map(|i| vibrant::backend::argmax(&logits[i]) as u32)
        .to_vec();
    assert_ne!(want_ids[0], want_ids[1], "slots told apart");
    let (ids, got) = queued_argmaxes(b, &w, &logits);
    assert_eq!(ids, want_ids, "device ids");
    let (ids, want) = queued_argmaxes(&mut cpu(), &w, &logits);
    assert_eq!(ids, want_ids, "CPU ids");
    (w, want_ids, got, want)
}
