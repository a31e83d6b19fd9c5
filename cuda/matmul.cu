// Products of f32 activations with weight rows kept in ggml's block layouts, decoded in the
// kernel (common.cuh's weight_at). One block per weight row and group of MM_TOKENS tokens:
// each row is read once per group.

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

// The block-quantized types' products, one warp per weight row: each lane decodes 32
// consecutive weights (a legacy block, or a k-quant sub-block) with their scales read once,
// then takes their products with up to MM_TOKENS tokens' activations in 16-byte loads.
// The type is a template argument, so the decode has no branch on it.

template <int TY> __device__ __forceinline__ void decode_chunk(const u8* row, int c, float* w);

template <> __device__ __forceinline__ void decode_chunk<WT_Q4_0>(const u8* row, int c, float* w) {
    const u8* b = row + 18 * c;
    float d = f16_at(b);
    for (int l = 0; l < 16; l++) {
        int q = b[2 + l];
        w[l] = d * (float)((q & 0xF) - 8);
        w[l + 16] = d * (float)((q >> 4) - 8);
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q4_1>(const u8* row, int c, float* w) {
    const u8* b = row + 20 * c;
    float d = f16_at(b), m = f16_at(b + 2);
    for (int l = 0; l < 16; l++) {
        int q = b[4 + l];
        w[l] = d * (float)(q & 0xF) + m;
        w[l + 16] = d * (float)(q >> 4) + m;
    }
}

__device__ __forceinline__ u32 u32_at(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q5_0>(const u8* row, int c, float* w) {
    const u8* b = row + 22 * c;
    float d = f16_at(b);
    u32 qh = u32_at(b + 2);
    for (int l = 0; l < 16; l++) {
        int q = b[6 + l];
        w[l] = d * (float)(((q & 0xF) | (((qh >> l) & 1) << 4)) - 16);
        w[l + 16] = d * (float)(((q >> 4) | (((qh >> (l + 16)) & 1) << 4)) - 16);
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q5_1>(const u8* row, int c, float* w) {
    const u8* b = row + 24 * c;
    float d = f16_at(b), m = f16_at(b + 2);
    u32 qh = u32_at(b + 4);
    for (int l = 0; l < 16; l++) {
        int q = b[8 + l];
        w[l] = d * (float)((q & 0xF) | (((qh >> l) & 1) << 4)) + m;
        w[l + 16] = d * (float)((q >> 4) | (((qh >> (l + 16)) & 1) << 4)) + m;
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q8_0>(const u8* row, int c, float* w) {
    const u8* b = row + 34 * c;
    float d = f16_at(b);
    for (int l = 0; l < 32; l++) w[l] = d * (float)(i8)b[2 + l];
}

// The k-quants: chunk c is sub-block j = c % 8 of super-block c / 8 (elements 32j..32j+32).
template <> __device__ __forceinline__ void decode_chunk<WT_Q2_K>(const u8* row, int c, float* w) {
    const u8* b = row + 84 * (c / 8);
    int j = c % 8, h = j / 4, s = j % 4;
    float d = f16_at(b + 80), dmin = f16_at(b + 82);
    for (int half = 0; half < 2; half++) {
        u8 sc = b[2 * j + half];
        float scale = d * (float)(sc & 0xF), min = dmin * (float)(sc >> 4);
        for (int l = 16 * half; l < 16 * half + 16; l++)
            w[l] = scale * (float)((b[16 + 32 * h + l] >> (2 * s)) & 3) - min;
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q3_K>(const u8* row, int c, float* w) {
    const u8* b = row + 110 * (c / 8);
    int j = c % 8, h = j / 4, s = j % 4;
    float d = f16_at(b + 108);
    const u8* sc = b + 96;
    for (int half = 0; half < 2; half++) {
        int g = 2 * j + half;
        int low = g < 8 ? (sc[g] & 0xF) : (sc[g - 8] >> 4);
        int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        float scale = d * (float)((low | (high << 4)) - 32);
        for (int l = 16 * half; l < 16 * half + 16; l++) {
            int q = ((b[32 + 32 * h + l] >> (2 * s)) & 3) - (((b[l] >> j) & 1) ? 0 : 4);
            w[l] = scale * (float)q;
        }
    }
}

// q4_K and q5_K blocks (144 and 176 bytes) keep their nibbles 4-byte aligned: word loads.
template <> __device__ __forceinline__ void decode_chunk<WT_Q4_K>(const u8* row, int c, float* w) {
    const u8* b = row + 144 * (c / 8);
    int j = c % 8, shift = 4 * (j % 2);
    float sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    float scale = f16_at(b) * sc, min = f16_at(b + 2) * m;
    const u32* qs = (const u32*)(b + 16 + 32 * (j / 2));
    for (int k = 0; k < 8; k++) {
        u32 q = qs[k] >> shift;
        for (int i = 0; i < 4; i++) w[4 * k + i] = scale * (float)((q >> (8 * i)) & 0xF) - min;
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q5_K>(const u8* row, int c, float* w) {
    const u8* b = row + 176 * (c / 8);
    int j = c % 8, shift = 4 * (j % 2);
    float sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    float scale = f16_at(b) * sc, min = f16_at(b + 2) * m;
    const u32* qs = (const u32*)(b + 48 + 32 * (j / 2));
    const u32* qh = (const u32*)(b + 16);
    for (int k = 0; k < 8; k++) {
        u32 q = qs[k] >> shift, h = qh[k] >> j;
        for (int i = 0; i < 4; i++) {
            int v = ((q >> (8 * i)) & 0xF) | (((h >> (8 * i)) & 1) << 4);
            w[4 * k + i] = scale * (float)v - min;
        }
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q6_K>(const u8* row, int c, float* w) {
    const u8* b = row + 210 * (c / 8);
    int j = c % 8, n = j / 4, quarter = j % 4;
    const u8* ql = b + 64 * n + 32 * (quarter & 1);
    const u8* qh = b + 128 + 32 * n;
    const i8* sc = (const i8*)(b + 192) + 8 * n + 2 * quarter;
    float d = f16_at(b + 208);
    int low_shift = quarter >= 2 ? 4 : 0;
    for (int half = 0; half < 2; half++) {
        float scale = d * (float)sc[half];
        for (int l = 16 * half; l < 16 * half + 16; l++) {
            int q = ((ql[l] >> low_shift) & 0xF) | (((qh[l] >> (2 * quarter)) & 3) << 4);
            w[l] = scale * (float)(q - 32);
        }
    }
}

// out[t][out_first + r] = x[t] · w[r] (+ bias[r]) for the part's `rows` rows r (a warp each)
// and tokens t < n; `cols` a multiple of 32. `bias` as in matmul.
template <int TY>
__device__ void matmul_chunks(const u8* w, int row_bytes, const float* x, float* out,
                              const float* bias, int rows, int cols, int n, int out_stride,
                              int out_first) {
    int lane = threadIdx.x % 32, r = blockIdx.x * MV_WARPS + threadIdx.x / 32;
    if (r >= rows) return;
    int t0 = blockIdx.y * MM_TOKENS, nt = min(MM_TOKENS, n - t0);
    const u8* row = w + (u64)r * row_bytes;
    const float* xs = x + (u64)t0 * cols;
    float acc[MM_TOKENS];
    for (int t = 0; t < MM_TOKENS; t++) acc[t] = 0.0f;
    for (int c = lane; c < cols / 32; c += 32) {
        float v[32];
        decode_chunk<TY>(row, c, v);
        for (int t = 0; t < MM_TOKENS; t++) {
            if (t >= nt) break;
            const float4* xv = (const float4*)(xs + (u64)t * cols + 32 * c);
            float s = 0.0f;
            for (int k = 0; k < 8; k++) {
                float4 a = xv[k];
                s += v[4 * k] * a.x + v[4 * k + 1] * a.y + v[4 * k + 2] * a.z + v[4 * k + 3] * a.w;
            }
            acc[t] += s;
        }
    }
    float b = bias ? bias[r] : 0.0f;
    for (int t = 0; t < MM_TOKENS; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t < nt) out[(u64)(t0 + t) * out_stride + out_first + r] = s + b;
    }
}

#define MATMUL_CHUNKS(name, TY)                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * MV_WARPS)                                  \
        name(const u8* w, int row_bytes, const float* x, float* out, const float* bias,          \
             int rows, int cols, int n, int out_stride, int out_first) {                         \
        matmul_chunks<TY>(w, row_bytes, x, out, bias, rows, cols, n, out_stride, out_first);     \
    }

MATMUL_CHUNKS(matmul_q4_0, WT_Q4_0)
MATMUL_CHUNKS(matmul_q4_1, WT_Q4_1)
MATMUL_CHUNKS(matmul_q5_0, WT_Q5_0)
MATMUL_CHUNKS(matmul_q5_1, WT_Q5_1)
MATMUL_CHUNKS(matmul_q8_0, WT_Q8_0)
MATMUL_CHUNKS(matmul_q2_k, WT_Q2_K)
MATMUL_CHUNKS(matmul_q3_k, WT_Q3_K)
MATMUL_CHUNKS(matmul_q4_k, WT_Q4_K)
MATMUL_CHUNKS(matmul_q5_k, WT_Q5_K)
MATMUL_CHUNKS(matmul_q6_k, WT_Q6_K)

// Prompt-sized products on tensor cores (compute capability 8.0 and up): out[t][out_first + r]
// = x[t] · w[r] (+ bias[r]) as in matmul_chunks, over tiles of MMA_TOKENS tokens by MMA_ROWS
// weight rows. Each step of 64 columns, the block rounds its tokens' activations to f16 and
// decodes its rows' two chunks of weights (decode_chunk, a thread per chunk) to f16 in shared
// memory; then each warp multiplies its 32 tokens by 32 rows with mma.sync m16n8k16, summing
// in f32. Both operands round to f16 (2^-11 relative): what llama.cpp's cuBLAS path does.
#define MMA_K 64
// Shared rows padded by 8 halves, so that the 8 rows a fragment load touches fall in
// different banks.
#define MMA_PITCH (MMA_K + 8)
#define MMA_THREADS (2 * MMA_ROWS)

template <int TY>
__device__ void matmul_mma(const u8* w, int row_bytes, const float* x, float* out,
                           const float* bias, int rows, int cols, int n, int out_stride,
                           int out_first) {
    __shared__ __align__(16) u16 xs[MMA_TOKENS][MMA_PITCH];
    __shared__ __align__(16) u16 ws[MMA_ROWS][MMA_PITCH];
    int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    int g = lane / 4, tig = lane % 4;
    int t0 = blockIdx.y * MMA_TOKENS, r0 = blockIdx.x * MMA_ROWS;
    // Warps tile the block as (MMA_TOKENS / 32) × (MMA_ROWS / 32).
    int wt = 32 * (warp % (MMA_TOKENS / 32)), wr = 32 * (warp / (MMA_TOKENS / 32));
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) acc[i][j][k] = 0.0f;
    int chunks = cols / 32;
    for (int k0 = 0; k0 < cols; k0 += MMA_K) {
        for (int i = tid; i < MMA_TOKENS * MMA_K / 4; i += MMA_THREADS) {
            int t = i / (MMA_K / 4), k = 4 * (i % (MMA_K / 4));
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (t0 + t < n && k0 + k < cols) v = *(const float4*)(x + (u64)(t0 + t) * cols + k0 + k);
            *(uint2*)&xs[t][k] = make_uint2(pack_f16x2(v.x, v.y), pack_f16x2(v.z, v.w));
        }
        {
            int r = tid / 2, half = tid % 2, c = k0 / 32 + half;
            // Rows and chunks past the matrix decode a valid one and store zeros (a decode
            // under a branch would put v in local memory).
            float v[32];
            decode_chunk<TY>(w + (u64)min(r0 + r, rows - 1) * row_bytes, min(c, chunks - 1), v);
            bool keep = r0 + r < rows && c < chunks;
#pragma unroll
            for (int l = 0; l < 32; l++) v[l] = keep ? v[l] : 0.0f;
            uint4* dst = (uint4*)&ws[r][32 * half];
#pragma unroll
            for (int q = 0; q < 4; q++)
                dst[q] = make_uint4(pack_f16x2(v[8 * q], v[8 * q + 1]),
                                    pack_f16x2(v[8 * q + 2], v[8 * q + 3]),
                                    pack_f16x2(v[8 * q + 4], v[8 * q + 5]),
                                    pack_f16x2(v[8 * q + 6], v[8 * q + 7]));
        }
        __syncthreads();
        for (int kk = 0; kk < MMA_K; kk += 16) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int m = wt + 16 * i + g;
                a[i][0] = *(const u32*)&xs[m][kk + 2 * tig];
                a[i][1] = *(const u32*)&xs[m + 8][kk + 2 * tig];
                a[i][2] = *(const u32*)&xs[m][kk + 8 + 2 * tig];
                a[i][3] = *(const u32*)&xs[m + 8][kk + 8 + 2 * tig];
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int r = wr + 8 * j + g;
                b[j][0] = *(const u32*)&ws[r][kk + 2 * tig];
                b[j][1] = *(const u32*)&ws[r][kk + 8 + 2 * tig];
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_16x8x16(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) {
                int t = t0 + wt + 16 * i + g + 8 * (k / 2);
                int r = r0 + wr + 8 * j + 2 * tig + k % 2;
                if (t < n && r < rows)
                    out[(u64)t * out_stride + out_first + r] = acc[i][j][k] + (bias ? bias[r] : 0.0f);
            }
}

#define MATMUL_MMA(name, TY)                                                                     \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS)                                    \
        name(const u8* w, int row_bytes, const float* x, float* out, const float* bias,          \
             int rows, int cols, int n, int out_stride, int out_first) {                         \
        matmul_mma<TY>(w, row_bytes, x, out, bias, rows, cols, n, out_stride, out_first);        \
    }

MATMUL_MMA(matmul_mma_q4_0, WT_Q4_0)
MATMUL_MMA(matmul_mma_q4_1, WT_Q4_1)
MATMUL_MMA(matmul_mma_q5_0, WT_Q5_0)
MATMUL_MMA(matmul_mma_q5_1, WT_Q5_1)
MATMUL_MMA(matmul_mma_q8_0, WT_Q8_0)
MATMUL_MMA(matmul_mma_q2_k, WT_Q2_K)
MATMUL_MMA(matmul_mma_q3_k, WT_Q3_K)
MATMUL_MMA(matmul_mma_q4_k, WT_Q4_K)
MATMUL_MMA(matmul_mma_q5_k, WT_Q5_K)
MATMUL_MMA(matmul_mma_q6_k, WT_Q6_K)
