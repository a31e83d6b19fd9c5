//! The CUDA backend for the kernel tests: opened on device 0, and loaded with host data as the
//! other backends are ([`super::Load`]).

use super::Load;
use vibrant::backend::cuda::{CudaBackend, CudaOptions};
use vibrant::backend::Backend;

/// A CUDA backend on device 0. A machine without a CUDA device (or without the driver or
/// NVRTC libraries) fails the test: a skipped kernel test would hide every kernel bug.
pub fn cuda() -> CudaBackend {
    cuda_with(CudaOptions::default())
}

pub fn cuda_with(options: CudaOptions) -> CudaBackend {
    CudaBackend::new(options).unwrap_or_else(|e| {
        panic!(
            "no usable CUDA device, and these tests need one (LD_LIBRARY_PATH must reach \
             libcuda.so.1 and libnvrtc.so.13, e.g. /usr/local/cuda-13.0/lib64): {e}"
        )
    })
}

impl Load for CudaBackend {
    fn load(&mut self, name: &str, rows: usize, cols: usize, data: &[f32]) -> Self::Tensor {
        assert_eq!(data.len(), rows * cols, "{name}: data size");
        let t = self.tensor(name, rows, cols).expect("CUDA tensor");
        self.write(&t, data)
            .unwrap_or_else(|e| panic!("{name}: writing to the CUDA device: {e}"));
        t
    }
}
