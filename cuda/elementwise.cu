// Element-wise ops over the first `len` values of tensors (a thread per value).

#define ACT_SILU 0
#define ACT_GELU_TANH 1

// As Activation::apply (src/backend/ops.rs), including GELU's saturation beyond ±10.
__device__ __forceinline__ float activate(int act, float x) {
    if (act == ACT_SILU) return x / (1.0f + expf(-x));
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    float inner = 0.7978846f * x * (1.0f + 0.044715f * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
}

extern "C" __global__ void add(float* acc, const float* x, u64 len) {
    wait_for_prior_grids();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) acc[i] += x[i];
}

extern "C" __global__ void scale(float* x, float s, u64 len) {
    wait_for_prior_grids();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) x[i] *= s;
}

extern "C" __global__ void softcap(float* x, float cap, u64 len) {
    wait_for_prior_grids();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) x[i] = cap * tanhf(x[i] / cap);
}

// out[t][i] = act(gate_up[t][i]) · gate_up[t][w + i], over n rows of w outputs; where q is
// given (w a multiple of 32), the outputs rounded to 8 bits as well, for the product after.
extern "C" __global__ void glu(int act, const float* gate_up, float* out, i8* q, float2* ds,
                               int w, u64 len) {
    wait_for_prior_grids();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    // len is a multiple of 32 where q is given: a warp is one block of 32, all in or all out.
    if (i >= len) return;
    u64 t = i / w, c = i % w;
    const float* row = gate_up + t * 2 * w;
    float v = activate(act, row[c]) * row[w + c];
    out[i] = v;
    if (q) quantize_block(v, q, ds, i / 32);
}

extern "C" __global__ void copy(float* dst, const float* src, u64 len) {
    wait_for_prior_grids();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) dst[i] = src[i];
}
