// Decode-sized products (up to MM_TOKENS tokens) with 8-bit activations, as llama.cpp's mmvq
// computes them: quantize_acts rounds each 32 activations to bytes with one scale (amax / 127),
// then a warp per weight row (several for short matrices) takes dot products of weight bytes
// with activation bytes four at a time (__dp4a), scaling each block's integer sum once.
// Decoding every weight to f32 costs more instructions than the memory needs: that, not the
// bandwidth, bounded decode before (BENCHMARKS.md). A lane's unit is a few bytes of one weight
// block, so that neighbouring lanes read neighbouring weights and activations.

// The activations of `blocks` blocks of 32 (all tokens' rows, back to back): q the bytes,
// ds[b] = (d, d · Σ q) of block b. A warp per block.
extern "C" __global__ void quantize_acts(const float* x, i8* q, float2* ds, int blocks) {
    wait_for_prior_grids();
    int b = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (b >= blocks) return;
    quantize_block(x[(u64)b * 32 + threadIdx.x % 32], q, ds, b);
}

// quantize_acts of rms_norm(x) (norm.cu's), for the products that follow a norm: one block per
// row of `cols` (a multiple of 32).
extern "C" __global__ void rms_norm_quantize(const float* x, const float* weight, i8* q,
                                             float2* ds, int cols, float eps) {
    wait_for_prior_grids();
    const float* xr = x + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    float scale = 1.0f / sqrtf(block_sum(ss) / (float)cols + eps);
    int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int b = threadIdx.x / 32; b < cols / 32; b += warps) {
        int i = 32 * b + lane;
        quantize_block(xr[i] * scale * weight[i], q, ds, (u64)blockIdx.x * (cols / 32) + b);
    }
}

// The activations a unit multiplies: token t's bytes and block scales.
struct Acts {
    const i8* q;
    const float2* ds;
    int cols;
    __device__ __forceinline__ const int* at(int t, int block, int offset) const {
        return (const int*)(q + (u64)t * cols + 32 * block + offset);
    }
    __device__ __forceinline__ float2 scales(int t, int block) const {
        return ds[(u64)t * (cols / 32) + block];
    }
};

// Four weight bytes at a 2-byte aligned address (blocks of 18, 22, 34 and 210 bytes).
__device__ __forceinline__ u32 u32_at_even(const u8* p) {
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}

// Bits 0..3 of b as bit 4 of bytes 0..3 (q5_0's fifth bits).
__device__ __forceinline__ u32 fifth_bits(u32 b) {
    return ((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25);
}

// Units of a row `cols` long, and unit u's products with nt tokens added to acc.
template <int TY> __device__ __forceinline__ int q8_units(int cols);
template <int TY>
__device__ __forceinline__ void q8_unit(const u8* row, int u, const Acts& a, int nt, float* acc);

// Legacy blocks (32 weights): four units a block, of 8 bytes (q8_0) or of 4 low and 4 high
// nibbles (the others).
template <> __device__ __forceinline__ int q8_units<WT_Q8_0>(int cols) { return cols / 8; }
template <> __device__ __forceinline__ int q8_units<WT_Q4_0>(int cols) { return cols / 8; }
template <> __device__ __forceinline__ int q8_units<WT_Q4_1>(int cols) { return cols / 8; }
template <> __device__ __forceinline__ int q8_units<WT_Q5_0>(int cols) { return cols / 8; }
template <> __device__ __forceinline__ int q8_units<WT_Q5_1>(int cols) { return cols / 8; }

template <>
__device__ __forceinline__ void q8_unit<WT_Q8_0>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int block = u / 4, i = u % 4;
    const u8* b = row + 34 * block;
    float d = f16_at(b);
    int w0 = (int)u32_at_even(b + 2 + 8 * i), w1 = (int)u32_at_even(b + 6 + 8 * i);
    for (int t = 0; t < MM_TOKENS && t < nt; t++) {
        const int* x = a.at(t, block, 8 * i);
        acc[t] += d * a.scales(t, block).x * (float)__dp4a(w0, x[0], __dp4a(w1, x[1], 0));
    }
}

// The nibble types: byte l of qs holds weights l (low nibble) and l + 16 (high); unit i takes
// bytes 4i..4i+3, lo and hi their weights' values before `offset` is taken off (8 for q4_0,
// 16 for q5_0, none for q4_1 and q5_1, whose blocks add `min` to each weight instead: added
// once a block, from the activations' sum, by unit 0).
__device__ __forceinline__ void legacy_nibbles(float d, float min, u32 lo, u32 hi, int offset,
                                               int block, int i, const Acts& a, int nt,
                                               float* acc) {
    u32 bias = 0x01010101u * (u32)offset;
    int wl = (int)__vsubss4(lo, bias), wh = (int)__vsubss4(hi, bias);
    float mins = i == 0 ? min : 0.0f;
    for (int t = 0; t < MM_TOKENS && t < nt; t++) {
        int dot = __dp4a(wl, *a.at(t, block, 4 * i), __dp4a(wh, *a.at(t, block, 16 + 4 * i), 0));
        float2 s = a.scales(t, block);
        acc[t] += d * s.x * (float)dot + mins * s.y;
    }
}

template <>
__device__ __forceinline__ void q8_unit<WT_Q4_0>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int block = u / 4, i = u % 4;
    const u8* b = row + 18 * block;
    u32 q = u32_at_even(b + 2 + 4 * i);
    legacy_nibbles(f16_at(b), 0.0f, q & 0x0F0F0F0Fu, (q >> 4) & 0x0F0F0F0Fu, 8, block, i, a, nt,
                   acc);
}

// q4_1 blocks (20 bytes) are 4-byte aligned.
template <>
__device__ __forceinline__ void q8_unit<WT_Q4_1>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int block = u / 4, i = u % 4;
    const u8* b = row + 20 * block;
    u32 q = *(const u32*)(b + 4 + 4 * i);
    legacy_nibbles(f16_at(b), f16_at(b + 2), q & 0x0F0F0F0Fu, (q >> 4) & 0x0F0F0F0Fu, 0, block,
                   i, a, nt, acc);
}

template <>
__device__ __forceinline__ void q8_unit<WT_Q5_0>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int block = u / 4, i = u % 4;
    const u8* b = row + 22 * block;
    u32 qh = u32_at_even(b + 2), q = u32_at_even(b + 6 + 4 * i);
    u32 lo = (q & 0x0F0F0F0Fu) | fifth_bits((qh >> (4 * i)) & 0xF);
    u32 hi = ((q >> 4) & 0x0F0F0F0Fu) | fifth_bits((qh >> (16 + 4 * i)) & 0xF);
    legacy_nibbles(f16_at(b), 0.0f, lo, hi, 16, block, i, a, nt, acc);
}

// q5_1 blocks (24 bytes) are 4-byte aligned.
template <>
__device__ __forceinline__ void q8_unit<WT_Q5_1>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int block = u / 4, i = u % 4;
    const u8* b = row + 24 * block;
    u32 qh = *(const u32*)(b + 4), q = *(const u32*)(b + 8 + 4 * i);
    u32 lo = (q & 0x0F0F0F0Fu) | fifth_bits((qh >> (4 * i)) & 0xF);
    u32 hi = ((q >> 4) & 0x0F0F0F0Fu) | fifth_bits((qh >> (16 + 4 * i)) & 0xF);
    legacy_nibbles(f16_at(b), f16_at(b + 2), lo, hi, 0, block, i, a, nt, acc);
}

// q4_K and q5_K (144- and 176-byte super-blocks, 16-byte aligned): 8 units a super-block.
// Unit (c, i) takes bytes 16i..16i+15 of qs pair c: low nibbles are weights 16i.. of
// sub-block 2c, high nibbles the same of sub-block 2c + 1 (q5_K's fifth bits are bits 2c and
// 2c + 1 of qh bytes 16i..). Each sub-block: d·scale·Σ q·x − dmin·min·Σ x, the second term
// (from the activations' block sums) added once, by the unit with i = 0.
template <> __device__ __forceinline__ int q8_units<WT_Q4_K>(int cols) { return cols / 32; }
template <> __device__ __forceinline__ int q8_units<WT_Q5_K>(int cols) { return cols / 32; }

__device__ __forceinline__ void k_nibbles(const u8* b, int super, int c, int i, const u32* lo,
                                          const u32* hi, const Acts& a, int nt, float* acc) {
    float scale_lo, min_lo, scale_hi, min_hi;
    k4_scale_min(b, 2 * c, &scale_lo, &min_lo);
    k4_scale_min(b, 2 * c + 1, &scale_hi, &min_hi);
    int blo = 8 * super + 2 * c, bhi = blo + 1;
    float mins = i == 0 ? 1.0f : 0.0f;
    for (int t = 0; t < MM_TOKENS && t < nt; t++) {
        int4 xl = *(const int4*)a.at(t, blo, 16 * i);
        int4 xh = *(const int4*)a.at(t, bhi, 16 * i);
        float2 sl = a.scales(t, blo), sh = a.scales(t, bhi);
        int dl = __dp4a((int)lo[0], xl.x, __dp4a((int)lo[1], xl.y,
                 __dp4a((int)lo[2], xl.z, __dp4a((int)lo[3], xl.w, 0))));
        int dh = __dp4a((int)hi[0], xh.x, __dp4a((int)hi[1], xh.y,
                 __dp4a((int)hi[2], xh.z, __dp4a((int)hi[3], xh.w, 0))));
        acc[t] += scale_lo * sl.x * (float)dl + scale_hi * sh.x * (float)dh -
                  mins * (min_lo * sl.y + min_hi * sh.y);
    }
}

template <>
__device__ __forceinline__ void q8_unit<WT_Q4_K>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int super = u / 8, c = (u % 8) / 2, i = u % 2;
    const u8* b = row + 144 * super;
    uint4 q = *(const uint4*)(b + 16 + 32 * c + 16 * i);
    u32 words[4] = {q.x, q.y, q.z, q.w}, lo[4], hi[4];
    for (int k = 0; k < 4; k++) {
        lo[k] = words[k] & 0x0F0F0F0Fu;
        hi[k] = (words[k] >> 4) & 0x0F0F0F0Fu;
    }
    k_nibbles(b, super, c, i, lo, hi, a, nt, acc);
}

template <>
__device__ __forceinline__ void q8_unit<WT_Q5_K>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int super = u / 8, c = (u % 8) / 2, i = u % 2;
    const u8* b = row + 176 * super;
    uint4 q = *(const uint4*)(b + 48 + 32 * c + 16 * i);
    uint4 h = *(const uint4*)(b + 16 + 16 * i);
    u32 words[4] = {q.x, q.y, q.z, q.w}, highs[4] = {h.x, h.y, h.z, h.w}, lo[4], hi[4];
    for (int k = 0; k < 4; k++) {
        lo[k] = (words[k] & 0x0F0F0F0Fu) | (((highs[k] >> (2 * c)) & 0x01010101u) << 4);
        hi[k] = ((words[k] >> 4) & 0x0F0F0F0Fu) | (((highs[k] >> (2 * c + 1)) & 0x01010101u) << 4);
    }
    k_nibbles(b, super, c, i, lo, hi, a, nt, acc);
}

// q6_K (210-byte super-blocks, 2-byte aligned): 8 units a super-block. Unit (n, j) takes bytes
// 8j..8j+7 of each quarter of half n: weight 128n + 32q + l (l in 8j..8j+7) is the low (q < 2)
// or high nibble of ql[64n + 32(q % 2) + l] with bits 2q, 2q + 1 of qh[32n + l] above, minus
// 32; its scale is scales[8n + 2q + l / 16].
template <> __device__ __forceinline__ int q8_units<WT_Q6_K>(int cols) { return cols / 32; }

template <>
__device__ __forceinline__ void q8_unit<WT_Q6_K>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int super = u / 8, n = (u % 8) / 4, j = u % 4;
    const u8* b = row + 210 * super;
    const u8* ql = b + 64 * n + 8 * j;
    const u8* qh = b + 128 + 32 * n + 8 * j;
    const i8* scales = (const i8*)(b + 192) + 8 * n + j / 2;
    float d = f16_at(b + 208);
    u32 low[2][2] = {{u32_at_even(ql), u32_at_even(ql + 4)},
                     {u32_at_even(ql + 32), u32_at_even(ql + 36)}};
    u32 high[2] = {u32_at_even(qh), u32_at_even(qh + 4)};
    int w[4][2];
    for (int q = 0; q < 4; q++)
        for (int k = 0; k < 2; k++) {
            u32 v = ((low[q % 2][k] >> (4 * (q / 2))) & 0x0F0F0F0Fu) |
                    (((high[k] >> (2 * q)) & 0x03030303u) << 4);
            w[q][k] = (int)__vsubss4(v, 0x20202020u);
        }
    for (int t = 0; t < MM_TOKENS && t < nt; t++) {
        float sum = 0.0f;
        for (int q = 0; q < 4; q++) {
            int block = 8 * super + 4 * n + q;
            const int* x = a.at(t, block, 8 * j);
            int dot = __dp4a(w[q][0], x[0], __dp4a(w[q][1], x[1], 0));
            sum += (float)scales[2 * q] * a.scales(t, block).x * (float)dot;
        }
        acc[t] += d * sum;
    }
}

// out[t][out_first + r] = x[t] · w[r] (+ bias[r]) for the part's `rows` rows r and the
// n ≤ MM_TOKENS tokens whose activations quantize_acts wrote to (q, ds). Each Q8_ROWS rows
// take `row_warps` warps of the block (1, 2 or MV_WARPS): a warp's rows share its loads of the
// activations, and short matrices spread over more warps, so that enough loads are in flight
// to keep the memory busy. With `accumulate` the products are added to out (a residual
// connection) instead of written.
template <int TY>
__device__ void matmul_q8(const u8* w, int row_bytes, const i8* q, const float2* ds, float* out,
                          const float* bias, int rows, int cols, int n, int out_stride,
                          int out_first, int row_warps, int accumulate) {
    __shared__ float partial[MV_WARPS][Q8_ROWS][MM_TOKENS];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int r0 = (blockIdx.x * (MV_WARPS / row_warps) + warp / row_warps) * Q8_ROWS;
    int share = warp % row_warps;
    Acts a = {q, ds, cols};
    float acc[Q8_ROWS][MM_TOKENS];
    for (int k = 0; k < Q8_ROWS; k++)
        for (int t = 0; t < MM_TOKENS; t++) acc[k][t] = 0.0f;
    int units = q8_units<TY>(cols);
    for (int u = lane + 32 * share; u < units; u += 32 * row_warps)
        for (int k = 0; k < Q8_ROWS; k++)
            if (r0 + k < rows) q8_unit<TY>(w + (u64)(r0 + k) * row_bytes, u, a, n, acc[k]);
    for (int k = 0; k < Q8_ROWS; k++)
        for (int t = 0; t < MM_TOKENS; t++) {
            float s = warp_sum(acc[k][t]);
            if (lane == 0) partial[warp][k][t] = s;
        }
    __syncthreads();
    if (share != 0) return;
    for (int k = 0; k < Q8_ROWS; k++) {
        int r = r0 + k;
        if (r < rows && lane < n) {
            float s = bias ? bias[r] : 0.0f;
            for (int p = 0; p < row_warps; p++) s += partial[warp + p][k][lane];
            float* o = out + (u64)lane * out_stride + out_first + r;
            *o = accumulate ? *o + s : s;
        }
    }
}

// Asks L2 for the weight rows matmul_q8's warp takes (its share of Q8_ROWS rows from r0),
// before the kernel waits for the one before it: weights are never written, so their loads
// may overlap that kernel's end.
__device__ __forceinline__ void prefetch_rows(const u8* w, int row_bytes, int rows,
                                              int row_warps) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int r0 = (blockIdx.x * (MV_WARPS / row_warps) + warp / row_warps) * Q8_ROWS;
    int share = warp % row_warps;
    for (int k = 0; k < Q8_ROWS && r0 + k < rows; k++) {
        const u8* row = w + (u64)(r0 + k) * row_bytes;
        for (int at = 128 * (lane + 32 * share); at < row_bytes; at += 128 * 32 * row_warps)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(row + at));
    }
}

#define MATMUL_Q8(name, TY)                                                                      \
    extern "C" __global__ void __launch_bounds__(32 * MV_WARPS)                                  \
        name(const u8* w, int row_bytes, const i8* q, const float2* ds, float* out,              \
             const float* bias, int rows, int cols, int n, int out_stride, int out_first,        \
             int row_warps, int accumulate) {                                                    \
        prefetch_rows(w, row_bytes, rows, row_warps);                                            \
        wait_for_prior_grids();                                                                  \
        matmul_q8<TY>(w, row_bytes, q, ds, out, bias, rows, cols, n, out_stride, out_first,      \
                      row_warps, accumulate);                                                    \
    }

MATMUL_Q8(matmul_q8_q4_0, WT_Q4_0)
MATMUL_Q8(matmul_q8_q4_1, WT_Q4_1)
MATMUL_Q8(matmul_q8_q5_0, WT_Q5_0)
MATMUL_Q8(matmul_q8_q5_1, WT_Q5_1)
MATMUL_Q8(matmul_q8_q8_0, WT_Q8_0)
MATMUL_Q8(matmul_q8_q4_k, WT_Q4_K)
MATMUL_Q8(matmul_q8_q5_k, WT_Q5_K)
MATMUL_Q8(matmul_q8_q6_k, WT_Q6_K)
