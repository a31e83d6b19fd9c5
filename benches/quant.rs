//! Single-thread throughput of the quant kernels: `mat_vec` (decoding one token) on a matrix
//! that stays in cache and on one that does not, in GB/s of weight bytes; `mat_mul` of a
//! cached matrix with a prompt's tokens, in billions of multiply-adds per second; and
//! `dequantize`. Run with `cargo bench --bench quant [-- TYPE ...]`.

use std::hint::black_box;
use std::time::{Duration, Instant};
use vibrant::quant::{
    dequantize, mat_mul, mat_vec, quantize, quantize_acts, Activations, GgmlType, ALL_TYPES,
};

/// Row length: a typical hidden size, a multiple of every block size.
const N: usize = 4096;
const HOT_BYTES: usize = 1 << 20;
const COLD_BYTES: usize = 256 << 20;
/// Tokens of the prompt-processing product.
const TOKENS: usize = 64;
const MIN_TIME: Duration = Duration::from_millis(400);

/// Deterministic values of weight-like spread (no RNG crate needed).
fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32 - 0.5) * 0.2
        })
        .collect()
}

/// Best time of repeated runs over at least [`MIN_TIME`], as billions of `units` (bytes or
/// multiply-adds) per second.
fn gbps(units: usize, mut run: impl FnMut()) -> f64 {
    run();
    let start = Instant::now();
    let mut best = Duration::MAX;
    while start.elapsed() < MIN_TIME {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed());
    }
    units as f64 / best.as_secs_f64() / 1e9
}

fn bench(ty: GgmlType) {
    let row_bytes = ty.row_bytes(N).expect("N is whole blocks");
    let one_row = quantize(ty, &values(N, 1)).expect("quantizable");
    let mut acts = Vec::new();
    quantize_acts(ty.act_format(), &values(N, 2), &mut acts);

    let mut line = format!("{:<5} {:>5} B/row", ty.name(), row_bytes);
    for total in [HOT_BYTES, COLD_BYTES] {
        let rows = (total / row_bytes).max(1);
        let weights = one_row.repeat(rows);
        let mut out = vec![0.0f32; rows];
        let speed = gbps(weights.len(), || {
            mat_vec(ty, black_box(&weights), N, black_box(&acts), &mut out);
            black_box(&out);
        });
        line += &format!(
            "  mat_vec {:>5.1} MiB: {speed:6.2} GB/s",
            weights.len() as f64 / (1 << 20) as f64
        );
    }
    let weights = one_row.repeat((HOT_BYTES / row_bytes).max(1));
    let rows = weights.len() / row_bytes;
    let all_acts = Activations::new(ty, acts.repeat(TOKENS), N);
    let mut out = vec![0.0f32; rows * TOKENS];
    let macs = rows * N * TOKENS;
    let speed = gbps(macs, || {
        mat_mul(black_box(&weights), black_box(&all_acts), &mut out);
        black_box(&out);
    });
    line += &format!("  mat_mul x{TOKENS}: {speed:6.1} GMAC/s");
    let mut out = vec![0.0f32; rows * N];
    let speed = gbps(weights.len(), || {
        dequantize(ty, black_box(&weights), &mut out).expect("sizes match");
        black_box(&out);
    });
    line += &format!("  dequantize: {speed:6.2} GB/s");
    println!("{line}");
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments pick types by name.
    let picked: Vec<GgmlType> = std::env::args()
        .skip(1)
        .filter_map(|a| GgmlType::from_name(&a))
        .collect();
    let types = if picked.is_empty() {
        ALL_TYPES.to_vec()
    } else {
        picked
    };
    println!("single thread, rows of {N} elements");
    for ty in types {
        bench(ty);
    }
}
