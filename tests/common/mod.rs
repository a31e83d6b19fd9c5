//! Shared helpers for the backend tests: opening backends, seeded random inputs and weights,
//! loading host data into either backend's tensors, and tolerance checks that name the worst
//! element; and, for the tests of whole models, the digest of a file and the re-packer.

// The kernel tests, which use every other helper here, use neither of these.
#[allow(dead_code)]
pub mod repack;
// The CUDA backend's tests only.
#[cfg(feature = "cuda")]
#[allow(dead_code)]
pub mod cuda;
#[allow(dead_code)]
pub mod sha256;
// The tests of whole models.
#[allow(dead_code)]
pub mod models;
// Used by the kernel tests of every backend.
pub mod ops;

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, OnceLock};
use vibrant::backend::cpu::CpuBackend;
use vibrant::backend::gpu::{Gpu, GpuOptions, WgpuBackend};
use vibrant::backend::{Backend, MatrixUse, WeightBytes, WeightRows};
use vibrant::quant::{self, GgmlType};

/// A GPU backend on the first adapter of the tests' API ([`gpu_options`]), with its own
/// buffers and kernels on a device that the tests of this process share: a device opened and
/// destroyed per test, many tests at once, crashed the H100's driver now and then, and one at
/// a time it refused to open a new device after about twenty. On GL each test gets a device
/// of its own instead: wgpu holds a GL device's context through a whole submission (which
/// llvmpipe runs before returning) and panics in any other thread that waits 6 s for it. A
/// machine without such an adapter fails the test: lavapipe (Mesa's Vulkan on the CPU) is
/// enough, and a skipped GPU test would hide every kernel bug.
pub fn gpu() -> WgpuBackend {
    static SHARED: OnceLock<Arc<Gpu>> = OnceLock::new();
    let device =
        SHARED.get_or_init(|| Arc::new(Gpu::open(gpu_options()).unwrap_or_else(|e| no_adapter(e))));
    if device.info.backend == wgpu::Backend::Gl {
        return gpu_with(gpu_options());
    }
    WgpuBackend::on(device.clone()).unwrap_or_else(|e| no_adapter(e))
}

/// A GPU backend on a device of its own, opened with `options` (built on [`gpu_options`]).
pub fn gpu_with(options: GpuOptions) -> WgpuBackend {
    WgpuBackend::new(options).unwrap_or_else(|e| no_adapter(e))
}

/// The default options on the graphics API named by VIBRANT_TEST_BACKEND (`vulkan`, `gl`,
/// ...; unset or empty: the default adapter's). `scripts/test.sh` runs the GPU tests again
/// with `gl`, the one API here without subgroups, f16 or cooperative matrices, so that the
/// kernels' fallbacks are tested too.
pub fn gpu_options() -> GpuOptions {
    let api = std::env::var("VIBRANT_TEST_BACKEND")
        .ok()
        .filter(|api| !api.is_empty());
    GpuOptions {
        api,
        ..GpuOptions::default()
    }
}

fn no_adapter(e: impl std::fmt::Display) -> ! {
    let api = std::env::var("VIBRANT_TEST_BACKEND").unwrap_or_default();
    panic!(
        "no usable GPU adapter (VIBRANT_TEST_BACKEND='{api}'), and these tests need one \
         (Mesa's lavapipe will do; scripts/test.sh installs it and Mesa's GL): {e}"
    )
}

pub fn cpu() -> CpuBackend {
    CpuBackend::new(2).expect("CPU backend")
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in ±`scale`.
pub fn random_values(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Where a block of `ty` keeps its f16 scale fields (byte offsets), per ggml's block structs.
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
    }
}

/// An encoded `[rows, cols]` weight matrix.
pub struct Weights {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Vec<u8>,
}

impl Weights {
    /// Every bit of every block random, except the f16 scales, which are finite and moderate
    /// (either sign): this reaches bit patterns a quantizer rarely writes (high scale bits,
    /// extreme quants). Float types get values in ±1.
    pub fn random(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> Self {
        let scales = scale_offsets(ty);
        if scales.is_empty() {
            return Self::quantized(rng, ty, rows, cols);
        }
        let mut bytes = vec![0u8; ty.row_bytes(cols).expect("whole blocks") * rows];
        rng.fill(&mut bytes[..]);
        for block in bytes.chunks_exact_mut(ty.type_size()) {
            for &at in scales {
                let magnitude = rng.random_range(0.002f32..0.02);
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                let scale = f16::from_f32(sign * magnitude).to_le_bytes();
                block[at..at + 2].copy_from_slice(&scale);
            }
        }
        Self {
            ty,
            rows,
            cols,
            bytes,
        }
    }

    /// Values in ±1 encoded by the library's quantizer, as real models hold them.
    pub fn quantized(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> Self {
        let values = random_values(rng, rows * cols, 1.0);
        let bytes = quant::quantize(ty, &values).expect("quantize");
        Self {
            ty,
            rows,
            cols,
            bytes,
        }
    }

    /// The whole matrix decoded on the host by the library's reference dequantizer.
    pub fn decoded(&self) -> Vec<f32> {
        let row_bytes = self.ty.row_bytes(self.cols).expect("whole blocks");
        let mut out = vec![0.0; self.rows * self.cols];
        let rows = self.bytes.chunks_exact(row_bytes);
        for (row, dst) in rows.zip(out.chunks_exact_mut(self.cols)) {
            quant::dequantize(self.ty, row, dst).expect("valid blocks");
        }
        out
    }

    pub fn upload<B: Backend>(&self, b: &mut B, name: &str) -> B::Matrix {
        self.upload_with_bias(b, name, None)
    }

    /// The rows as one plain matrix, with `bias` where given.
    pub fn upload_with_bias<B: Backend>(
        &self,
        b: &mut B,
        name: &str,
        bias: Option<&[f32]>,
    ) -> B::Matrix {
        let rows = self.rows_of(bias);
        b.upload_matrix(name, self.cols, vec![rows], MatrixUse::Plain)
            .unwrap_or_else(|e| panic!("{}: uploading {name}: {e}", b.describe()))
    }

    /// All rows as one part of a matrix, with `bias` where given.
    pub fn rows_of(&self, bias: Option<&[f32]>) -> WeightRows {
        let data = WeightBytes::owned(self.bytes.clone());
        WeightRows::new(self.ty, self.rows, data).with_bias(bias.map(<[f32]>::to_vec))
    }

    /// `[ty rows x cols]`, for messages.
    pub fn label(&self) -> String {
        format!("{} [{}x{}]", self.ty, self.rows, self.cols)
    }
}

/// Host data placed in a new `[rows, cols]` tensor of either backend.
pub trait Load: Backend {
    fn load(&mut self, name: &str, rows: usize, cols: usize, data: &[f32]) -> Self::Tensor;
}

impl Load for WgpuBackend {
    fn load(&mut self, name: &str, rows: usize, cols: usize, data: &[f32]) -> Self::Tensor {
        assert_eq!(data.len(), rows * cols, "{name}: data size");
        let t = self.tensor(name, rows, cols).expect("GPU tensor");
        self.write(&t, data);
        t
    }
}

impl Load for CpuBackend {
    /// The CPU backend has no upload: an F32 table's rows are embedded instead, which copies
    /// them bit for bit.
    fn load(&mut self, name: &str, rows: usize, cols: usize, data: &[f32]) -> Self::Tensor {
        assert_eq!(data.len(), rows * cols, "{name}: data size");
        let bytes = quant::quantize(GgmlType::F32, data).expect("F32");
        let table = Weights {
            ty: GgmlType::F32,
            rows,
            cols,
            bytes,
        }
        .upload(self, name);
        let t = self.tensor(name, rows, cols).expect("CPU tensor");
        let all: Vec<u32> = (0..rows as u32).collect();
        self.embed(&table, &all, &t);
        t
    }
}

/// Reads `n` rows back, naming the backend on failure.
pub fn read<B: Backend>(b: &mut B, t: &B::Tensor, n: usize) -> Vec<f32> {
    b.read(t, n)
        .unwrap_or_else(|e| panic!("{}: read: {e}", b.describe()))
}

pub fn norm(x: &[f32]) -> f64 {
    x.iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

pub fn max_abs(x: &[f32]) -> f64 {
    x.iter().map(|v| v.abs() as f64).fold(0.0, f64::max)
}

/// The largest of |got - want| / scale(i) over flat element indices i, with where it is; a
/// non-finite result counts as infinitely wrong.
pub fn worst_error(got: &[f32], want: &[f64], scale: impl Fn(usize) -> f64) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "compared lengths differ");
    let mut worst = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / scale(i);
        let err = if err.is_finite() { err } else { f64::INFINITY };
        if err > worst.0 {
            worst = (err, i);
        }
    }
    worst
}

/// Fails, naming the worst element of the `[_, cols]` data, unless every
/// |got[i] - want[i]| <= tol * scale(i).
pub fn assert_close(
    what: &str,
    got: &[f32],
    want: &[f64],
    cols: usize,
    scale: impl Fn(usize) -> f64,
    tol: f64,
) {
    let (err, i) = worst_error(got, want, &scale);
    assert!(
        err <= tol,
        "{what}: row {} col {}: got {}, want {} (error {err:.3e} of the scale {:.3e}, tolerance {tol:.0e})",
        i / cols,
        i % cols,
        got[i],
        want[i],
        scale(i)
    );
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
