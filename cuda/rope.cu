// The attention inputs of a step: from each row's [q | k | v] products, queries and keys
// normalised per head (where given) and rotated by RoPE at the row's position; queries to `q`,
// keys and values into the f16 cache at the row's slot and position.
//
// rows[2t] is the first cache row of row t's slot (slot × n_ctx), rows[2t + 1] its position.
// One block per (row, head): n_head query heads, then n_head_kv key heads, then value heads.

#define MAX_HEAD_DIM 256

extern "C" __global__ void rope_store_kv(const float* qkv, float* q, u16* k_cache,
                                         u16* v_cache, const float* cos_sin, const int* rows,
                                         const float* q_norm, const float* k_norm, float eps,
                                         int n_head, int n_head_kv, int head_dim, int neox) {
    __shared__ float head[MAX_HEAD_DIM];
    int t = blockIdx.x, h = blockIdx.y;
    int kv_width = n_head_kv * head_dim;
    int qkv_cols = n_head * head_dim + 2 * kv_width;
    int pos = rows[2 * t + 1];
    u64 cache_row = (u64)rows[2 * t] + pos;
    const float* src = qkv + (u64)t * qkv_cols + (u64)h * head_dim;
    if (h >= n_head + n_head_kv) {
        int vh = h - n_head - n_head_kv;
        u16* dst = v_cache + cache_row * kv_width + (u64)vh * head_dim;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = f32_to_f16(src[i]);
        return;
    }
    bool is_q = h < n_head;
    const float* norm = is_q ? q_norm : k_norm;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) head[i] = src[i];
    __syncthreads();
    if (norm) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) ss += head[i] * head[i];
        float s = 1.0f / sqrtf(block_sum(ss) / (float)head_dim + eps);
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) head[i] = head[i] * s * norm[i];
        __syncthreads();
    }
    const float* cs = cos_sin + (u64)pos * head_dim;
    int half = head_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = head[a], x1 = head[b];
        float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
        if (is_q) {
            float* dst = q + ((u64)t * n_head + h) * head_dim;
            dst[a] = y0;
            dst[b] = y1;
        } else {
            u16* dst = k_cache + cache_row * kv_width + (u64)(h - n_head) * head_dim;
            dst[a] = f32_to_f16(y0);
            dst[b] = f32_to_f16(y1);
        }
    }
}
