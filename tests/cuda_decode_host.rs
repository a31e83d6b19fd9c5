//! The CUDA kernels' weight decoders, compiled for the host with the system's C++ compiler
//! (CI has no NVIDIA GPU): `cuda/decode.cuh`'s chunks of 32, which the products use, and
//! `cuda/common.cuh`'s `weight_at`, which embeddings and float rows use, against vibrant's own
//! decoder for every block-quantized type, on random and quantized blocks. A wrong bit, shift
//! or sign (an unsigned difference once turned every negative q5_0 weight into 4e9) fails here
//! before it reaches a GPU.

// The wgpu and CUDA helpers there are not used here.
#[allow(dead_code)]
mod common;

use common::ops::widths;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vibrant::quant::ALL_TYPES;

/// The shims that let the kernels' headers compile as host C++, and a main that decodes the
/// rows on stdin (type id, rows, cols, bytes per row as arguments): every chunk, then every
/// element by weight_at, as f32 on stdout.
const HARNESS: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <vector>
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() ((void)0)
#define __shfl_xor_sync(mask, v, o) (v)
struct Dim3 { unsigned x, y, z; };
static Dim3 threadIdx, blockDim;
static float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
struct float2 { float x, y; };
static float2 make_float2(float x, float y) { return {x, y}; }
static int __float2int_rn(float f) { return (int)nearbyintf(f); }
#include "common.cuh"
#include "decode.cuh"

template <int TY> void chunks(const u8* row, int cols, float* out) {
    for (int c = 0; c < cols / 32; c++) decode_chunk<TY>(row, c, out + 32 * c);
}

int main(int argc, char** argv) {
    if (argc != 5) return 2;
    int ty = atoi(argv[1]), rows = atoi(argv[2]), cols = atoi(argv[3]), row_bytes = atoi(argv[4]);
    std::vector<u8> w((size_t)rows * row_bytes);
    if (fread(w.data(), 1, w.size(), stdin) != w.size()) return 3;
    std::vector<float> out(2 * (size_t)rows * cols);
    for (int r = 0; r < rows; r++) {
        const u8* row = w.data() + (size_t)r * row_bytes;
        float* o = out.data() + (size_t)r * cols;
        switch (ty) {
        case WT_Q4_0: chunks<WT_Q4_0>(row, cols, o); break;
        case WT_Q4_1: chunks<WT_Q4_1>(row, cols, o); break;
        case WT_Q5_0: chunks<WT_Q5_0>(row, cols, o); break;
        case WT_Q5_1: chunks<WT_Q5_1>(row, cols, o); break;
        case WT_Q8_0: chunks<WT_Q8_0>(row, cols, o); break;
        case WT_Q2_K: chunks<WT_Q2_K>(row, cols, o); break;
        case WT_Q3_K: chunks<WT_Q3_K>(row, cols, o); break;
        case WT_Q4_K: chunks<WT_Q4_K>(row, cols, o); break;
        case WT_Q5_K: chunks<WT_Q5_K>(row, cols, o); break;
        case WT_Q6_K: chunks<WT_Q6_K>(row, cols, o); break;
        default: return 4;
        }
        for (int i = 0; i < cols; i++) o[(size_t)rows * cols + i] = weight_at(ty, row, i);
    }
    fwrite(out.data(), 4, out.size(), stdout);
    return 0;
}
"#;

/// The harness, built once into a folder of its own; the compiler is `$CXX`, else `c++`.
fn harness() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vibrant-decode-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("harness.cpp");
    std::fs::write(&source, HARNESS).unwrap();
    let exe = dir.join("harness");
    let cuda = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-o"])
        .arg(&exe)
        .arg("-I")
        .arg(&cuda)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("no C++ compiler '{cxx}' (scripts/test.sh installs g++): {e}"));
    assert!(
        out.status.success(),
        "compiling cuda/decode.cuh for the host:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// (chunks, weight_at) of every row of `w`.
fn decode_on_host(exe: &Path, w: &Weights) -> (Vec<f32>, Vec<f32>) {
    let row_bytes = w.bytes.len() / w.rows;
    let mut child = Command::new(exe)
        .args([w.ty.id(), w.rows as u32, w.cols as u32, row_bytes as u32].map(|v| v.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&w.bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "harness on {}: {:?}",
        w.label(),
        out.status
    );
    let values: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let (chunks, elements) = values.split_at(w.rows * w.cols);
    (chunks.to_vec(), elements.to_vec())
}

/// Each decoder against the library's, within 1e-6 of each row's largest weight: only the
/// rounding of one multiply-add may differ; a weight read from a wrong bit is off by a step of
/// the scale.
#[test]
fn cuda_decoders_match_the_host_decoder_for_every_block_type() {
    let exe = harness();
    let mut rng = rng(21);
    for ty in ALL_TYPES.into_iter().filter(|t| t.block_size() > 1) {
        for cols in widths(ty) {
            for w in [
                Weights::random(&mut rng, ty, 9, cols),
                Weights::quantized(&mut rng, ty, 9, cols),
            ] {
                let want = w.decoded();
                let row_max: Vec<f64> = want
                    .chunks(cols)
                    .map(|r| r.iter().fold(0f64, |m, v| m.max(v.abs() as f64)))
                    .collect();
                let (chunks, elements) = decode_on_host(&exe, &w);
                for (what, got) in [("decode_chunk", chunks), ("weight_at", elements)] {
                    let label = format!("{what} of {}", w.label());
                    let scale = |i: usize| row_max[i / cols];
                    assert_close(&label, &got, &to_f64(&want), cols, scale, 1e-6);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}
