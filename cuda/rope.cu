// The attention inputs of a step: from each row's [q | k | v] products, queries and keys
// normalised per head (where given) and rotated by RoPE at the row's position; queries to `q`,
// keys and values into the cache (kv.cuh's encodings) at the row's slot and position.
//
// rows[2t] is the first cache row of row t's slot (slot × n_ctx), rows[2t + 1] its position.
// One block per (row, head): n_head query heads, then n_head_kv key heads, then value heads.

extern "C" __global__ void rope_store_kv(const float* qkv, float* q, u8* k_cache, u8* v_cache,
                                         int k_type, int v_type, const float* cos_sin,
                                         const int* rows, const float* q_norm,
                                         const float* k_norm, float eps, int n_head,
                                         int n_head_kv, int head_dim, int neox) {
    wait_for_prior_grids();
    __shared__ float head[MAX_HEAD_DIM];
    __shared__ float rotated[MAX_HEAD_DIM];
    int t = blockIdx.x, h = blockIdx.y;
    int kv_width = n_head_kv * head_dim;
    int qkv_cols = n_head * head_dim + 2 * kv_width;
    int pos = rows[2 * t + 1];
    u64 cache_row = (u64)rows[2 * t] + pos;
    const float* src = qkv + (u64)t * qkv_cols + (u64)h * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) head[i] = src[i];
    __syncthreads();
    if (h >= n_head + n_head_kv) {
        int vh = h - n_head - n_head_kv;
        u8* dst = v_cache + kv_bytes(v_type, cache_row * kv_width + (u64)vh * head_dim);
        kv_store(v_type, dst, head, head_dim);
        return;
    }
    bool is_q = h < n_head;
    const float* norm = is_q ? q_norm : k_norm;
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
        rotated[a] = x0 * c - x1 * s;
        rotated[b] = x0 * s + x1 * c;
    }
    __syncthreads();
    if (is_q) {
        float* dst = q + ((u64)t * n_head + h) * head_dim;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = rotated[i];
    } else {
        int kh = h - n_head;
        u8* dst = k_cache + kv_bytes(k_type, cache_row * kv_width + (u64)kh * head_dim);
        kv_store(k_type, dst, rotated, head_dim);
    }
}
