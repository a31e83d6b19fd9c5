// Products of f32 activations with weight rows kept in ggml's block layouts, decoded in the
// kernel (common.cuh's weight_at). One block per weight row and group of MM_TOKENS tokens:
// each row is read once per group.

// out[t][out_first + r] = x[t] · w[r] (+ bias[r]) for the part's rows r and tokens t < n.
// `bias` is 0 where the matrix has none (else already offset to the part's first row).
extern "C" __global__ void matmul(const u8* w, int ty, int row_bytes, const float* x,
                                  float* out, const float* bias, int cols, int n,
                                  int out_stride, int out_first) {
    wait_for_prior_grids();
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
    wait_for_prior_grids();
    const u8* row = w + (u64)pairs[2 * blockIdx.x] * row_bytes;
    float* o = out + (u64)pairs[2 * blockIdx.x + 1] * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = weight_at(ty, row, i);
}

// The block-quantized types' products, one warp per weight row: each lane decodes 32
// consecutive weights (decode.cuh's chunks: a legacy block, or a k-quant sub-block) with their
// scales read once, then takes their products with up to MM_TOKENS tokens' activations in
// 16-byte loads. The type is a template argument, so the decode has no branch on it.

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
        wait_for_prior_grids();                                                                  \
        matmul_chunks<TY>(w, row_bytes, x, out, bias, rows, cols, n, out_stride, out_first);     \
    }


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
        wait_for_prior_grids();                                                                  \
        matmul_mma<TY>(w, row_bytes, x, out, bias, rows, cols, n, out_stride, out_first);        \
    }

// Both products of each block-quantized type: matmul_q4_0 and matmul_mma_q4_0, and so on.
#define BLOCK_MATMULS(q, TY) MATMUL_CHUNKS(matmul_##q, TY) MATMUL_MMA(matmul_mma_##q, TY)

BLOCK_MATMULS(q4_0, WT_Q4_0)
BLOCK_MATMULS(q4_1, WT_Q4_1)
BLOCK_MATMULS(q5_0, WT_Q5_0)
BLOCK_MATMULS(q5_1, WT_Q5_1)
BLOCK_MATMULS(q8_0, WT_Q8_0)
BLOCK_MATMULS(q2_k, WT_Q2_K)
BLOCK_MATMULS(q3_k, WT_Q3_K)
BLOCK_MATMULS(q4_k, WT_Q4_K)
BLOCK_MATMULS(q5_k, WT_Q5_K)
BLOCK_MATMULS(q6_k, WT_Q6_K)
