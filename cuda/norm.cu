// RMS normalisation of rows: out = x / sqrt(mean(x²) + eps) · weight. One block per row.

extern "C" __global__ void rms_norm(const float* x, const float* weight, float* out, int cols,
                                    float eps) {
    wait_for_prior_grids();
    const float* xr = x + (u64)blockIdx.x * cols;
    float* o = out + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    float scale = 1.0f / sqrtf(block_sum(ss) / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = xr[i] * scale * weight[i];
}
