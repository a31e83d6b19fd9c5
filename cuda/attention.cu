// Attention of each row's query heads over the keys and values (kv.cuh's encodings) of its
// own slot, at the
// positions the window lets it see up to its own, with an online softmax over chunks of
// ATT_THREADS keys (so that any context length fits in shared memory).
//
// rows[2t] is the first cache row of row t's slot, rows[2t + 1] its position. One block of
// ATT_THREADS threads per (row, query head); head_dim <= 2 × ATT_THREADS.

extern "C" __global__ void attention(const float* q, const u8* k_cache, const u8* v_cache,
                                     int k_type, int v_type, float* out, const int* rows,
                                     int n_head, int n_head_kv, int head_dim, float scale,
                                     float softcap, int window) {
    __shared__ float qs[2 * ATT_THREADS];
    __shared__ float p[ATT_THREADS];
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    int kv_head = h / (n_head / n_head_kv);
    int kv_width = n_head_kv * head_dim;
    u64 start = (u64)rows[2 * t];
    int pos = rows[2 * t + 1];
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    const float* qh = q + ((u64)t * n_head + h) * head_dim;
    for (int d = tid; d < head_dim; d += ATT_THREADS) qs[d] = qh[d];
    __syncthreads();
    // Row p of the slot's keys (values) starts row_k (row_v) bytes after the one before.
    u64 row_k = kv_bytes(k_type, kv_width), row_v = kv_bytes(v_type, kv_width);
    const u8* keys = k_cache + start * row_k + kv_bytes(k_type, (u64)kv_head * head_dim);
    const u8* values = v_cache + start * row_v + kv_bytes(v_type, (u64)kv_head * head_dim);
    float m = NEG_INF, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
    for (int k0 = first; k0 <= pos; k0 += ATT_THREADS) {
        int key = k0 + tid;
        float s = NEG_INF;
        if (key <= pos) {
            const u8* kr = keys + (u64)key * row_k;
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += qs[d] * kv_at(k_type, kr, d);
            s = scale * dot;
            if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        }
        // Key k0 is always visible: the chunk's maximum is finite.
        float m_new = fmaxf(m, block_max(s));
        float alpha = expf(m - m_new);
        float pj = key <= pos ? expf(s - m_new) : 0.0f;
        p[tid] = pj;
        l = l * alpha + block_sum(pj);
        __syncthreads();
        int count = min(ATT_THREADS, pos + 1 - k0);
        int d0 = tid, d1 = tid + ATT_THREADS;
        float a0 = 0.0f, a1 = 0.0f;
        for (int j = 0; j < count; j++) {
            const u8* vr = values + (u64)(k0 + j) * row_v;
            if (d0 < head_dim) a0 += p[j] * kv_at(v_type, vr, d0);
            if (d1 < head_dim) a1 += p[j] * kv_at(v_type, vr, d1);
        }
        acc0 = acc0 * alpha + a0;
        acc1 = acc1 * alpha + a1;
        m = m_new;
        __syncthreads();
    }
    float* o = out + ((u64)t * n_head + h) * head_dim;
    if (tid < head_dim) o[tid] = acc0 / l;
    if (tid + ATT_THREADS < head_dim) o[tid + ATT_THREADS] = acc1 / l;
}
