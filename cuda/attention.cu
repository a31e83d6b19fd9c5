// Attention of each row's query heads over the keys and values (kv.cuh's encodings) of its
// own slot, at the positions the window lets it see up to its own, with an online softmax
// over chunks of ATT_THREADS keys (so that any context length fits in shared memory).
//
// rows[2t] is the first cache row of row t's slot, rows[2t + 1] its position. One block of
// ATT_THREADS threads per (row, query head); head_dim <= 2 × ATT_THREADS. Where there are too
// few (row, head) pairs to fill the GPU (decoding), attention_split gives each block a share
// of the keys and attention_merge combines the shares.

// The online softmax of one (row, head) over keys lo..hi: its maximum, its sum and this
// thread's two output accumulators (dimensions tid and tid + ATT_THREADS).
struct Partial {
    float m, l, acc0, acc1;
};

// What a block of (row t, head h) reads: its query in shared memory, its keys and values.
struct Head {
    const u8* keys;
    const u8* values;
    u64 row_k, row_v;
    int first, pos;
};

__device__ Head head_of(const float* q, const u8* k_cache, const u8* v_cache, int k_type,
                        int v_type, const int* rows, int n_head, int n_head_kv, int head_dim,
                        int window, float* qs) {
    int t = blockIdx.x, h = blockIdx.y;
    int kv_head = h / (n_head / n_head_kv);
    int kv_width = n_head_kv * head_dim;
    u64 start = (u64)rows[2 * t];
    Head hd;
    hd.pos = rows[2 * t + 1];
    hd.first = window > 0 ? max(0, hd.pos + 1 - window) : 0;
    const float* qh = q + ((u64)t * n_head + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS) qs[d] = qh[d];
    __syncthreads();
    // Row p of the slot's keys (values) starts row_k (row_v) bytes after the one before.
    hd.row_k = kv_bytes(k_type, kv_width);
    hd.row_v = kv_bytes(v_type, kv_width);
    hd.keys = k_cache + start * hd.row_k + kv_bytes(k_type, (u64)kv_head * head_dim);
    hd.values = v_cache + start * hd.row_v + kv_bytes(v_type, (u64)kv_head * head_dim);
    return hd;
}

__device__ Partial attend(const Head& hd, const float* qs, float* p, int k_type, int v_type,
                          int head_dim, float scale, float softcap, int lo, int hi) {
    int tid = threadIdx.x;
    Partial r = {NEG_INF, 0.0f, 0.0f, 0.0f};
    for (int k0 = lo; k0 <= hi; k0 += ATT_THREADS) {
        int key = k0 + tid;
        float s = NEG_INF;
        if (key <= hi) {
            const u8* kr = hd.keys + (u64)key * hd.row_k;
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += qs[d] * kv_at(k_type, kr, d);
            s = scale * dot;
            if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        }
        // Key k0 is always visible: the chunk's maximum is finite.
        float m_new = fmaxf(r.m, block_max(s));
        float alpha = expf(r.m - m_new);
        float pj = key <= hi ? expf(s - m_new) : 0.0f;
        p[tid] = pj;
        r.l = r.l * alpha + block_sum(pj);
        __syncthreads();
        int count = min(ATT_THREADS, hi + 1 - k0);
        int d0 = tid, d1 = tid + ATT_THREADS;
        float a0 = 0.0f, a1 = 0.0f;
        for (int j = 0; j < count; j++) {
            const u8* vr = hd.values + (u64)(k0 + j) * hd.row_v;
            if (d0 < head_dim) a0 += p[j] * kv_at(v_type, vr, d0);
            if (d1 < head_dim) a1 += p[j] * kv_at(v_type, vr, d1);
        }
        r.acc0 = r.acc0 * alpha + a0;
        r.acc1 = r.acc1 * alpha + a1;
        r.m = m_new;
        __syncthreads();
    }
    return r;
}

extern "C" __global__ void attention(const float* q, const u8* k_cache, const u8* v_cache,
                                     int k_type, int v_type, float* out, const int* rows,
                                     int n_head, int n_head_kv, int head_dim, float scale,
                                     float softcap, int window) {
    __shared__ float qs[2 * ATT_THREADS];
    __shared__ float p[ATT_THREADS];
    Head hd = head_of(q, k_cache, v_cache, k_type, v_type, rows, n_head, n_head_kv, head_dim,
                      window, qs);
    Partial r = attend(hd, qs, p, k_type, v_type, head_dim, scale, softcap, hd.first, hd.pos);
    int tid = threadIdx.x;
    float* o = out + ((u64)blockIdx.x * n_head + blockIdx.y) * head_dim;
    if (tid < head_dim) o[tid] = r.acc0 / r.l;
    if (tid + ATT_THREADS < head_dim) o[tid + ATT_THREADS] = r.acc1 / r.l;
}

// Share blockIdx.z of `splits` of the visible keys of each (row, head), into `part`: per
// (row, head, share), its maximum, its sum and head_dim accumulators (an empty share has
// maximum -inf and nothing else).
extern "C" __global__ void attention_split(const float* q, const u8* k_cache, const u8* v_cache,
                                           int k_type, int v_type, float* part, const int* rows,
                                           int n_head, int n_head_kv, int head_dim, float scale,
                                           float softcap, int window, int splits) {
    __shared__ float qs[2 * ATT_THREADS];
    __shared__ float p[ATT_THREADS];
    Head hd = head_of(q, k_cache, v_cache, k_type, v_type, rows, n_head, n_head_kv, head_dim,
                      window, qs);
    int share = (hd.pos + 1 - hd.first + splits - 1) / splits;
    int lo = hd.first + blockIdx.z * share;
    int hi = min(hd.pos, lo + share - 1);
    Partial r = {NEG_INF, 0.0f, 0.0f, 0.0f};
    if (lo <= hi) r = attend(hd, qs, p, k_type, v_type, head_dim, scale, softcap, lo, hi);
    int tid = threadIdx.x;
    float* o = part + (((u64)blockIdx.x * n_head + blockIdx.y) * splits + blockIdx.z) *
                          (head_dim + 2);
    if (tid == 0) {
        o[0] = r.m;
        o[1] = r.l;
    }
    if (tid < head_dim) o[2 + tid] = r.acc0;
    if (tid + ATT_THREADS < head_dim) o[2 + tid + ATT_THREADS] = r.acc1;
}

// out of (row blockIdx.x, head blockIdx.y) from its `splits` shares in `part`.
extern "C" __global__ void attention_merge(const float* part, float* out, int n_head,
                                           int head_dim, int splits) {
    const float* parts = part + ((u64)blockIdx.x * n_head + blockIdx.y) * splits * (head_dim + 2);
    float m = NEG_INF;
    for (int s = 0; s < splits; s++) m = fmaxf(m, parts[s * (head_dim + 2)]);
    float* o = out + ((u64)blockIdx.x * n_head + blockIdx.y) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float l = 0.0f, acc = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float* ps = parts + s * (head_dim + 2);
            if (ps[0] == NEG_INF) continue;
            float w = expf(ps[0] - m);
            l += ps[1] * w;
            acc += ps[2 + d] * w;
        }
        o[d] = acc / l;
    }
}
