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
// row of `cols` (a multiple of 32). Thread i holds values i, i + blockDim.x, ... (up to
// NORM_HELD of them; wider rows read the rest again), so that x is read once, and the weights
// are read before the wait (through the read-only path, which tests/cuda_nvrtc.rs allows there
// as no kernel writes weights): the norm's latency is in every layer's critical path twice.
#define NORM_HELD 8
extern "C" __global__ void rms_norm_quantize(const float* x, const float* weight, i8* q,
                                             float2* ds, int cols, float eps) {
    int step = blockDim.x;
    float w[NORM_HELD], v[NORM_HELD];
#pragma unroll
    for (int k = 0; k < NORM_HELD; k++) {
        int i = threadIdx.x + k * step;
        w[k] = i < cols ? __ldg(weight + i) : 0.0f;
    }
    wait_for_prior_grids();
    const float* xr = x + (u64)blockIdx.x * cols;
#pragma unroll
    for (int k = 0; k < NORM_HELD; k++) {
        int i = threadIdx.x + k * step;
        v[k] = i < cols ? xr[i] : 0.0f;
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_HELD; k++) ss += v[k] * v[k];
    for (int i = threadIdx.x + NORM_HELD * step; i < cols; i += step) ss += xr[i] * xr[i];
    float scale = 1.0f / sqrtf(block_sum(ss) / (float)cols + eps);
    // Thread i's k-th value is lane i % 32 of block i / 32 + k · warps: whole blocks of 32
    // are in or out together.
    int lane = threadIdx.x % 32, warps = step / 32;
    u64 first = (u64)blockIdx.x * (cols / 32);
#pragma unroll
    for (int k = 0; k < NORM_HELD; k++) {
        int b = threadIdx.x / 32 + k * warps;
        if (b < cols / 32) quantize_block(v[k] * scale * w[k], q, ds, first + b);
    }
    for (int b = threadIdx.x / 32 + NORM_HELD * warps; b < cols / 32; b += warps) {
        int i = 32 * b + lane;
        quantize_block(xr[i] * scale * weight[i], q, ds, first + b);
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

// q6_K (210-byte super-blocks, 2-byte aligned): 4 units a super-block. Unit (n, j) takes bytes
// 16j..16j+15 of each quarter of half n: weight 128n + 32q + l (l in 16j..16j+15) is the low
// (q < 2) or high nibble of ql[64n + 32(q % 2) + l] with bits 2q, 2q + 1 of qh[32n + l] above,
// minus 32; its scale is scales[8n + 2q + j]. Sixteen bytes of each a lane, read as words,
// issue half the loads of eight read by halves (BENCHMARKS.md, eleventh session).
template <> __device__ __forceinline__ int q8_units<WT_Q6_K>(int cols) { return cols / 64; }

// The 16 bytes at a 2-byte aligned address as four words, from five aligned word loads (four
// 2-byte loads a word otherwise). Also reads up to 4 bytes after them, and 2 before: within
// the super-block for ql and qh, whose scales and d follow.
__device__ __forceinline__ void words16_at_even(const u8* p, u32* out) {
    const u32* a = (const u32*)((u64)p & ~(u64)3);
    u32 shift = (u32)((u64)p & 2) * 8;
    u32 w[5];
    for (int k = 0; k < 5; k++) w[k] = a[k];
    for (int k = 0; k < 4; k++) out[k] = __funnelshift_r(w[k], w[k + 1], shift);
}

template <>
__device__ __forceinline__ void q8_unit<WT_Q6_K>(const u8* row, int u, const Acts& a, int nt,
                                                 float* acc) {
    int super = u / 4, n = (u % 4) / 2, j = u % 2;
    const u8* b = row + 210 * super;
    u32 low[2][4], high[4], sc[2];
    words16_at_even(b + 64 * n + 16 * j, low[0]);
    words16_at_even(b + 64 * n + 32 + 16 * j, low[1]);
    words16_at_even(b + 128 + 32 * n + 16 * j, high);
    const u16* scales = (const u16*)(b + 192 + 8 * n);
    sc[0] = (u32)scales[0] | ((u32)scales[1] << 16);
    sc[1] = (u32)scales[2] | ((u32)scales[3] << 16);
    float d = f16_to_f32(*(const u16*)(b + 208));
    int w[4][4];
    float scale[4];
    for (int q = 0; q < 4; q++) {
        for (int k = 0; k < 4; k++) {
            u32 v = ((low[q % 2][k] >> (4 * (q / 2))) & 0x0F0F0F0Fu) |
                    (((high[k] >> (2 * q)) & 0x03030303u) << 4);
            w[q][k] = (int)__vsubss4(v, 0x20202020u);
        }
        // Byte 2q + j of the half's 8 scales.
        scale[q] = (float)(i8)(sc[q / 2] >> (8 * (2 * (q % 2) + j)));
    }
    for (int t = 0; t < MM_TOKENS && t < nt; t++) {
        float sum = 0.0f;
        for (int q = 0; q < 4; q++) {
            int block = 8 * super + 4 * n + q;
            int4 x = *(const int4*)a.at(t, block, 16 * j);
            int dot = __dp4a(w[q][0], x.x, __dp4a(w[q][1], x.y,
                      __dp4a(w[q][2], x.z, __dp4a(w[q][3], x.w, 0))));
            sum += scale[q] * a.scales(t, block).x * (float)dot;
        }
        acc[t] += d * sum;
    }
}

// Each Q8_ROWS rows take `row_warps` warps of the block (1, 2 or MV_WARPS): a warp's rows
// share its loads of the activations, and short matrices spread over more warps, so that
// enough loads are in flight to keep the memory busy. The warp's rows start at r0: the
// products of its share of their units with the n ≤ NT tokens whose activations quantize_acts
// wrote to (q, ds) go to partial[warp], for the block's share-0 warps to sum after the
// barrier. NT is MM_TOKENS, or 1 for kernels of one token, whose fewer accumulators leave
// registers for more warps in flight.
template <int TY, int NT>
__device__ void q8_partials(const u8* w, int row_bytes, const i8* q, const float2* ds, int r0,
                            int rows, int cols, int n, int row_warps,
                            float (*partial)[Q8_ROWS][NT]) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int share = warp % row_warps;
    int nt = NT == 1 ? 1 : n;
    Acts a = {q, ds, cols};
    float acc[Q8_ROWS][NT];
    for (int k = 0; k < Q8_ROWS; k++)
        for (int t = 0; t < NT; t++) acc[k][t] = 0.0f;
    int units = q8_units<TY>(cols);
    for (int u = lane + 32 * share; u < units; u += 32 * row_warps)
        for (int k = 0; k < Q8_ROWS; k++)
            if (r0 + k < rows) q8_unit<TY>(w + (u64)(r0 + k) * row_bytes, u, a, nt, acc[k]);
    for (int k = 0; k < Q8_ROWS; k++)
        for (int t = 0; t < NT; t++) {
            float s = warp_sum(acc[k][t]);
            if (lane == 0) partial[warp][k][t] = s;
        }
    __syncthreads();
}

// Row k of the slot of `warp` (its share 0) for token t: its shares' sums (+ bias).
template <int NT>
__device__ __forceinline__ float q8_row_sum(float (*partial)[Q8_ROWS][NT], int warp,
                                            int k, int t, int row_warps, const float* bias,
                                            int r) {
    float s = bias ? bias[r] : 0.0f;
    for (int p = 0; p < row_warps; p++) s += partial[warp + p][k][t];
    return s;
}

__device__ __forceinline__ int q8_slot(int row_warps) {
    return blockIdx.x * (MV_WARPS / row_warps) + threadIdx.x / 32 / row_warps;
}

// out[t][out_first + r] = x[t] · w[r] (+ bias[r]) for the part's `rows` rows r and the n
// tokens, r0 the first row of the warp's slot; with `accumulate` the products are added to out
// (a residual connection) instead of written.
template <int TY, int NT>
__device__ void matmul_q8(const u8* w, int row_bytes, const i8* q, const float2* ds, float* out,
                          const float* bias, int r0, int rows, int cols, int n, int out_stride,
                          int out_first, int row_warps, int accumulate) {
    __shared__ float partial[MV_WARPS][Q8_ROWS][NT];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    q8_partials<TY, NT>(w, row_bytes, q, ds, r0, rows, cols, n, row_warps, partial);
    if (warp % row_warps != 0) return;
    for (int k = 0; k < Q8_ROWS; k++) {
        int r = r0 + k;
        if (r < rows && lane < n) {
            float s = q8_row_sum(partial, warp, k, lane, row_warps, bias, r);
            float* o = out + (u64)lane * out_stride + out_first + r;
            *o = accumulate ? *o + s : s;
        }
    }
}

// Where matmul_q8_rope puts a step's [q | k | v] products: rope.cu's rope_store_kv of
// matmul_q8's outputs, for f16 caches and heads without norms. rows as there.
struct RopeOut {
    float* q;
    u16* k_cache;
    u16* v_cache;
    const float* cos_sin;
    const int* rows;
    int n_head, n_head_kv, head_dim, neox;

    // Global row of member m (0 or 1) of pair p: the two values RoPE rotates together (any
    // pairing of a value head's rows, which are stored as they are).
    __device__ __forceinline__ int row_of_pair(int p, int m) const {
        int half = head_dim / 2, head = p / half, i = p % half;
        return head * head_dim + (neox ? i + m * half : 2 * i + m);
    }

    // Stores token t's values x0, x1 of pair p.
    __device__ __forceinline__ void store(int t, int p, float x0, float x1) const {
        int half = head_dim / 2, head = p / half, i = p % half;
        int a = row_of_pair(p, 0) - head * head_dim, b = row_of_pair(p, 1) - head * head_dim;
        int pos = rows[2 * t + 1], kv_width = n_head_kv * head_dim;
        u64 cache_row = (u64)rows[2 * t] + pos;
        if (head >= n_head + n_head_kv) {
            u16* dst = v_cache + cache_row * kv_width + (u64)(head - n_head - n_head_kv) * head_dim;
            dst[a] = f32_to_f16(x0);
            dst[b] = f32_to_f16(x1);
            return;
        }
        const float* cs = cos_sin + (u64)pos * head_dim;
        float c = cs[2 * i], s = cs[2 * i + 1];
        float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
        if (head < n_head) {
            float* dst = q + ((u64)t * n_head + head) * head_dim;
            dst[a] = r0;
            dst[b] = r1;
        } else {
            u16* dst = k_cache + cache_row * kv_width + (u64)(head - n_head) * head_dim;
            dst[a] = f32_to_f16(r0);
            dst[b] = f32_to_f16(r1);
        }
    }
};

// matmul_q8 of a part of the [q | k | v] matrix (its first row out_first, a multiple of
// head_dim) for the n tokens of a step, put where RopeOut says instead of into a tensor: the
// warp slots of a block come in pairs, each pair the two rows RoPE rotates together, so that
// one launch does what the product and rope_store_kv did. row_warps is 1 or 2 (pairs in a
// block), Q8_ROWS 1; r is the warp's row in the part (rows where its slot is past them).
template <int TY, int NT>
__device__ void matmul_q8_rope(const u8* w, int row_bytes, const i8* q, const float2* ds,
                               const float* bias, int r, int rows, int cols, int n,
                               int out_first, int row_warps, const RopeOut& o) {
    static_assert(Q8_ROWS == 1, "a warp slot is one row of a pair");
    __shared__ float partial[MV_WARPS][Q8_ROWS][NT];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, slot = q8_slot(row_warps);
    int pair = out_first / 2 + slot / 2;
    q8_partials<TY, NT>(w, row_bytes, q, ds, r, rows, cols, n, row_warps, partial);
    if (warp % row_warps != 0 || slot % 2 != 0 || r >= rows || lane >= n) return;
    int r1 = o.row_of_pair(pair, 1) - out_first;
    float x0 = q8_row_sum(partial, warp, 0, lane, row_warps, bias, r);
    float x1 = q8_row_sum(partial, warp + row_warps, 0, lane, row_warps, bias, r1);
    o.store(lane, pair, x0, x1);
}

// Asks L2 for the weight rows a warp takes (its share of Q8_ROWS rows from r0), before the
// kernel waits for the one before it: weights are never written, so their loads may overlap
// that kernel's end.
__device__ __forceinline__ void prefetch_rows(const u8* w, int row_bytes, int r0, int rows,
                                              int row_warps) {
    int lane = threadIdx.x % 32, share = threadIdx.x / 32 % row_warps;
    for (int k = 0; k < Q8_ROWS && r0 + k < rows; k++) {
        const u8* row = w + (u64)(r0 + k) * row_bytes;
        for (int at = 128 * (lane + 32 * share); at < row_bytes; at += 128 * 32 * row_warps)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(row + at));
    }
}

// Kernels for n ≤ MM_TOKENS tokens, and for one token (name_1: a single sequence's decode),
// whose launch bound asks the compiler for registers that fit `blocks` blocks an SM: 16 (all
// 64 warps) where the unit fits 32 registers without spilling, as q4_K's does, else 12.
#define MATMUL_Q8(name, TY, NT, BOUNDS)                                                          \
    extern "C" __global__ void BOUNDS                                                            \
        name(const u8* w, int row_bytes, const i8* q, const float2* ds, float* out,              \
             const float* bias, int rows, int cols, int n, int out_stride, int out_first,        \
             int row_warps, int accumulate) {                                                    \
        int r0 = q8_slot(row_warps) * Q8_ROWS;                                                   \
        prefetch_rows(w, row_bytes, r0, rows, row_warps);                                        \
        wait_for_prior_grids();                                                                  \
        matmul_q8<TY, NT>(w, row_bytes, q, ds, out, bias, r0, rows, cols, n, out_stride,         \
                          out_first, row_warps, accumulate);                                     \
    }

#define MATMUL_Q8_ROPE(name, TY, NT, BOUNDS)                                                     \
    extern "C" __global__ void BOUNDS name(                                                      \
        const u8* w, int row_bytes, const i8* q, const float2* ds, const float* bias, int rows,   \
        int cols, int n, int out_first, int row_warps, float* q_out, u16* k_cache,               \
        u16* v_cache, const float* cos_sin, const int* cache_rows, int n_head, int n_head_kv,    \
        int head_dim, int neox) {                                                                \
        RopeOut o = {q_out, k_cache, v_cache, cos_sin, cache_rows, n_head, n_head_kv, head_dim,   \
                     neox};                                                                      \
        int slot = q8_slot(row_warps);                                                           \
        int r = slot < rows ? o.row_of_pair(out_first / 2 + slot / 2, slot % 2) - out_first      \
                            : rows;                                                              \
        prefetch_rows(w, row_bytes, r, rows, row_warps);                                         \
        wait_for_prior_grids();                                                                  \
        matmul_q8_rope<TY, NT>(w, row_bytes, q, ds, bias, r, rows, cols, n, out_first,           \
                               row_warps, o);                                                    \
    }

#define MANY_TOKENS __launch_bounds__(32 * MV_WARPS)
#define ONE_TOKEN(blocks) __launch_bounds__(32 * MV_WARPS, blocks)

// The four products of each type: matmul_q8_q4_0, matmul_q8_q4_0_1, matmul_q8_rope_q4_0,
// matmul_q8_rope_q4_0_1, and so on.
#define Q8_PRODUCTS(t, TY, blocks)                                                               \
    MATMUL_Q8(matmul_q8_##t, TY, MM_TOKENS, MANY_TOKENS)                                         \
    MATMUL_Q8(matmul_q8_##t##_1, TY, 1, ONE_TOKEN(blocks))                                       \
    MATMUL_Q8_ROPE(matmul_q8_rope_##t, TY, MM_TOKENS, MANY_TOKENS)                               \
    MATMUL_Q8_ROPE(matmul_q8_rope_##t##_1, TY, 1, ONE_TOKEN(blocks))

Q8_PRODUCTS(q4_0, WT_Q4_0, 12)
Q8_PRODUCTS(q4_1, WT_Q4_1, 12)
Q8_PRODUCTS(q5_0, WT_Q5_0, 12)
Q8_PRODUCTS(q5_1, WT_Q5_1, 12)
Q8_PRODUCTS(q8_0, WT_Q8_0, 12)
Q8_PRODUCTS(q4_k, WT_Q4_K, 16)
Q8_PRODUCTS(q5_k, WT_Q5_K, 12)
Q8_PRODUCTS(q6_k, WT_Q6_K, 12)
