// Products of f32 activations with weight rows kept in ggml's block layouts, decoded in the
// kernel (common.cuh's weight_at). One block per weight row and group of MM_TOKENS tokens:
// each row is read once per group.

#define MM_TOKENS 8

// out[t][out_first + r] = x[t] · w[r] (+ bias[r]) for the part's rows r and tokens t < n.
// `bias` is 0 where the matrix has none (else already offset to the part's first row).
extern "C" __global__ void matmul(const u8* w, int ty, int row_bytes, const float* x,
                                  float* out, const float* bias, int cols, int n,
                                  int out_stride, int out_first) {
    int r = blockIdx.x, t0 = blockIdx.y * MM_TOKENS;
    int nt = min(MM_TOKENS, n - t0);
    const u8* row = w + (u64)r * row_bytes;
    const float* xs = x + (u64)t0 * cols;
    float acc[MM_TOKENS];
    for (int t = 0; t < MM_TOKENS; t++) acc[t] = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = weight_at(ty, row, i);
        for (int t = 0; t < MM_TOKENS; t++)
            if (t < nt) acc[t] += v * xs[(u64)t * cols + i];
    }
    float b = bias ? bias[r] : 0.0f;
    for (int t = 0; t < MM_TOKENS; t++) {
        float s = block_sum(acc[t]);
        if (threadIdx.x == 0 && t < nt) out[(u64)(t0 + t) * out_stride + out_first + r] = s + b;
    }
}

// out[p[2b + 1]] = row p[2b] of the part, decoded: the embedding rows of `count` tokens.
extern "C" __global__ void embed(const u8* w, int ty, int row_bytes, const int* pairs,
                                 float* out, int cols) {
    const u8* row = w + (u64)pairs[2 * blockIdx.x] * row_bytes;
    float* o = out + (u64)pairs[2 * blockIdx.x + 1] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = weight_at(ty, row, i);
}
