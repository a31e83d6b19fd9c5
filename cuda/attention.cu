// Attention of each row's query heads over the keys and values (kv.cuh's encodings) of its
// own slot, at the positions the window lets it see up to its own, with an online softmax
// (so that any context length fits).
//
// rows[2t] is the first cache row of row t's slot, rows[2t + 1] its position. One block of
// ATT_THREADS threads per (row, query head); head_dim <= MAX_HEAD_DIM. Each warp takes every
// ATT_WARPS-th key: its lanes read the key's row together (two values each per 64 of
// head_dim, so a row is one coalesced read), sum the dot across the warp, and keep the
// online softmax of their keys and their lanes' output values; the block then merges its
// warps. Where there are too few (row, head) pairs to fill the GPU (decoding),
// attention_split gives each block a share of the keys and attention_merge combines them.

#define ATT_WARPS (ATT_THREADS / 32)
// Pairs of head values per lane.
#define ATT_PAIRS (MAX_HEAD_DIM / 64)

// Values d and d + 1 of the head starting at `head` (d even).
__device__ __forceinline__ float2 kv_pair(int ty, const u8* head, int d) {
    if (ty == WT_Q8_0) return make_float2(kv_at(ty, head, d), kv_at(ty, head, d + 1));
    u32 w = *(const u32*)(head + 2 * d);
    return make_float2(f16_to_f32((u16)(w & 0xFFFFu)), f16_to_f32((u16)(w >> 16)));
}

// The online softmax of one (row, head) over some of its keys: the maximum score, the sum of
// exp(score - m), and the weighted values (acc[d] for d < head_dim, in shared memory once
// merged).
struct Partial {
    float m, l;
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

// The block's online softmax over keys lo..hi (each warp every ATT_WARPS-th key), merged
// across warps: m and l returned to every thread, the weighted values in acc[0..head_dim).
__device__ Partial attend(const Head& hd, const float* qs, int k_type, int v_type, int head_dim,
                          float scale, float softcap, int lo, int hi, float* acc) {
    __shared__ float warp_m[ATT_WARPS], warp_l[ATT_WARPS];
    __shared__ float warp_acc[ATT_WARPS][MAX_HEAD_DIM];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float q[2 * ATT_PAIRS], a[2 * ATT_PAIRS];
    for (int i = 0; i < ATT_PAIRS; i++) {
        int d = 2 * lane + 64 * i;
        q[2 * i] = d < head_dim ? qs[d] : 0.0f;
        q[2 * i + 1] = d < head_dim ? qs[d + 1] : 0.0f;
        a[2 * i] = a[2 * i + 1] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int key = lo + warp; key <= hi; key += ATT_WARPS) {
        const u8* kr = hd.keys + (u64)key * hd.row_k;
        float dot = 0.0f;
        for (int i = 0; i < ATT_PAIRS; i++) {
            int d = 2 * lane + 64 * i;
            if (d < head_dim) {
                float2 k = kv_pair(k_type, kr, d);
                dot += q[2 * i] * k.x + q[2 * i + 1] * k.y;
            }
        }
        float s = scale * warp_sum(dot);
        if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        float m_new = fmaxf(m, s);
        float alpha = expf(m - m_new), p = expf(s - m_new);
        l = l * alpha + p;
        const u8* vr = hd.values + (u64)key * hd.row_v;
        for (int i = 0; i < ATT_PAIRS; i++) {
            int d = 2 * lane + 64 * i;
            if (d < head_dim) {
                float2 v = kv_pair(v_type, vr, d);
                a[2 * i] = a[2 * i] * alpha + p * v.x;
                a[2 * i + 1] = a[2 * i + 1] * alpha + p * v.y;
            }
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    for (int i = 0; i < ATT_PAIRS; i++) {
        int d = 2 * lane + 64 * i;
        if (d < head_dim) {
            warp_acc[warp][d] = a[2 * i];
            warp_acc[warp][d + 1] = a[2 * i + 1];
        }
    }
    __syncthreads();
    Partial r = {NEG_INF, 0.0f};
    for (int w = 0; w < ATT_WARPS; w++) r.m = fmaxf(r.m, warp_m[w]);
    for (int w = 0; w < ATT_WARPS; w++)
        if (warp_m[w] != NEG_INF) r.l += warp_l[w] * expf(warp_m[w] - r.m);
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS) {
        float sum = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (warp_m[w] != NEG_INF) sum += warp_acc[w][d] * expf(warp_m[w] - r.m);
        acc[d] = sum;
    }
    return r;
}

extern "C" __global__ void attention(const float* q, const u8* k_cache, const u8* v_cache,
                                     int k_type, int v_type, float* out, const int* rows,
                                     int n_head, int n_head_kv, int head_dim, float scale,
                                     float softcap, int window) {
    __shared__ float qs[MAX_HEAD_DIM];
    __shared__ float acc[MAX_HEAD_DIM];
    Head hd = head_of(q, k_cache, v_cache, k_type, v_type, rows, n_head, n_head_kv, head_dim,
                      window, qs);
    Partial r = attend(hd, qs, k_type, v_type, head_dim, scale, softcap, hd.first, hd.pos, acc);
    float* o = out + ((u64)blockIdx.x * n_head + blockIdx.y) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS) o[d] = acc[d] / r.l;
}

// Share blockIdx.z of `splits` of the visible keys of each (row, head), into `part`: per
// (row, head, share), its maximum, its sum and head_dim accumulators (an empty share has
// maximum -inf and nothing else).
extern "C" __global__ void attention_split(const float* q, const u8* k_cache, const u8* v_cache,
                                           int k_type, int v_type, float* part, const int* rows,
                                           int n_head, int n_head_kv, int head_dim, float scale,
                                           float softcap, int window, int splits) {
    __shared__ float qs[MAX_HEAD_DIM];
    __shared__ float acc[MAX_HEAD_DIM];
    Head hd = head_of(q, k_cache, v_cache, k_type, v_type, rows, n_head, n_head_kv, head_dim,
                      window, qs);
    int share = (hd.pos + 1 - hd.first + splits - 1) / splits;
    int lo = hd.first + blockIdx.z * share;
    int hi = min(hd.pos, lo + share - 1);
    // An empty share (lo > hi) has maximum -inf, which the merge skips.
    Partial r = attend(hd, qs, k_type, v_type, head_dim, scale, softcap, lo, hi, acc);
    float* o = part + (((u64)blockIdx.x * n_head + blockIdx.y) * splits + blockIdx.z) *
                          (head_dim + 2);
    if (threadIdx.x == 0) {
        o[0] = r.m;
        o[1] = r.l;
    }
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS) o[2 + d] = acc[d];
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
