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
// Consecutive keys a warp reads at once.
#define ATT_KEYS 4
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

// The block's online softmax over keys lo..hi (each warp runs of ATT_KEYS keys), merged
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
    // Each warp takes runs of ATT_KEYS consecutive keys, their loads issued together, so that
    // a key's wait for memory overlaps the others' (one key at a time, a decode step over a
    // long cache waited on each key's load in turn).
    for (int key0 = lo + ATT_KEYS * warp; key0 <= hi; key0 += ATT_KEYS * ATT_WARPS) {
        float dots[ATT_KEYS];
#pragma unroll
        for (int j = 0; j < ATT_KEYS; j++) {
            const u8* kr = hd.keys + (u64)min(key0 + j, hi) * hd.row_k;
            float dot = 0.0f;
            for (int i = 0; i < ATT_PAIRS; i++) {
                int d = 2 * lane + 64 * i;
                if (d < head_dim) {
                    float2 k = kv_pair(k_type, kr, d);
                    dot += q[2 * i] * k.x + q[2 * i + 1] * k.y;
                }
            }
            dots[j] = dot;
        }
        float s[ATT_KEYS], m_new = m;
#pragma unroll
        for (int j = 0; j < ATT_KEYS; j++) {
            s[j] = scale * warp_sum(dots[j]);
            if (softcap > 0.0f) s[j] = softcap * tanhf(s[j] / softcap);
            // Past hi (the run's end) a key weighs nothing.
            if (key0 + j > hi) s[j] = NEG_INF;
            m_new = fmaxf(m_new, s[j]);
        }
        float alpha = expf(m - m_new);
        l *= alpha;
        for (int i = 0; i < 2 * ATT_PAIRS; i++) a[i] *= alpha;
#pragma unroll
        for (int j = 0; j < ATT_KEYS; j++) {
            float p = expf(s[j] - m_new);
            l += p;
            const u8* vr = hd.values + (u64)min(key0 + j, hi) * hd.row_v;
            for (int i = 0; i < ATT_PAIRS; i++) {
                int d = 2 * lane + 64 * i;
                if (d < head_dim) {
                    float2 v = kv_pair(v_type, vr, d);
                    a[2 * i] += p * v.x;
                    a[2 * i + 1] += p * v.y;
                }
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

// The output of (row, head) from `at` in out, and where q8 is given (head_dim a multiple of
// 32), rounded to 8 bits in q8 and ds for the product after (the block's threads a multiple of
// 32, so that a warp takes whole blocks of 32).
__device__ __forceinline__ void write_head(float* out, i8* q8, float2* ds, int head_dim,
                                           int n_head, int d, float v) {
    u64 at = ((u64)blockIdx.x * n_head + blockIdx.y) * head_dim + d;
    out[at] = v;
    if (q8) quantize_block(v, q8, ds, at / 32);
}

extern "C" __global__ void attention(const float* q, const u8* k_cache, const u8* v_cache,
                                     int k_type, int v_type, float* out, const int* rows,
                                     int n_head, int n_head_kv, int head_dim, float scale,
                                     float softcap, int window, i8* q8, float2* ds) {
    wait_for_prior_grids();
    __shared__ float qs[MAX_HEAD_DIM];
    __shared__ float acc[MAX_HEAD_DIM];
    Head hd = head_of(q, k_cache, v_cache, k_type, v_type, rows, n_head, n_head_kv, head_dim,
                      window, qs);
    Partial r = attend(hd, qs, k_type, v_type, head_dim, scale, softcap, hd.first, hd.pos, acc);
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS)
        write_head(out, q8, ds, head_dim, n_head, d, acc[d] / r.l);
}

// Share blockIdx.z of `splits` of the visible keys of each (row, head), into `part`: per
// (row, head, share), its maximum, its sum and head_dim accumulators (an empty share has
// maximum -inf and nothing else).
extern "C" __global__ void attention_split(const float* q, const u8* k_cache, const u8* v_cache,
                                           int k_type, int v_type, float* part, const int* rows,
                                           int n_head, int n_head_kv, int head_dim, float scale,
                                           float softcap, int window, int splits) {
    wait_for_prior_grids();
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

// Decode attention of a whole group of query heads (the n_head / n_head_kv <= ATT_GROUP heads
// that read one key/value head) in one block, so that the group's keys and values are read
// once rather than once per query head: share blockIdx.z of `splits` of the visible keys of
// (row blockIdx.x, key/value head blockIdx.y), written into `part` as attention_split writes
// each of the group's heads. f16 caches; head_dim a multiple of 4, at most ATT_GROUP_HEAD_DIM.
//
// Each of the block's GQ_WARPS warps takes runs of GQ_KEYS keys, the run's loads issued
// together: decoding over a long cache is bound by the loads in flight. A lane holds values
// 4 lane .. 4 lane + 3 of each head's query and output. Its partial dots of a key with the
// group's queries are summed over the warp by halves (group_sum), which leaves the score of
// head (lane / 4) % ATT_GROUP with the lane; those lanes run that head's online softmax and
// pass its rescale and weights to the warp through shared memory.
#define GQ_THREADS (32 * GQ_WARPS)

// The sum over the warp of each of the ATT_GROUP (8) values in d, the one of head
// (lane / 4) % 8 returned: lanes 16 apart swap four heads' partials, 8 apart two, 4 apart one,
// then plain sums (9 shuffles rather than 8 sums of 5).
__device__ __forceinline__ float group_sum(float* d, int lane) {
    const unsigned all = 0xffffffffu;
    bool hi4 = lane & 16, hi2 = lane & 8, hi1 = lane & 4;
#pragma unroll
    for (int g = 0; g < 4; g++) {
        float send = hi4 ? d[g] : d[g + 4];
        d[g] = (hi4 ? d[g + 4] : d[g]) + __shfl_xor_sync(all, send, 16);
    }
#pragma unroll
    for (int g = 0; g < 2; g++) {
        float send = hi2 ? d[g] : d[g + 2];
        d[g] = (hi2 ? d[g + 2] : d[g]) + __shfl_xor_sync(all, send, 8);
    }
    float v = (hi1 ? d[1] : d[0]) + __shfl_xor_sync(all, hi1 ? d[0] : d[1], 4);
    v += __shfl_xor_sync(all, v, 2);
    return v + __shfl_xor_sync(all, v, 1);
}

// Four f16 values (8 bytes) as floats.
__device__ __forceinline__ float4 f16x4(uint2 w) {
    return make_float4(f16_to_f32((u16)(w.x & 0xFFFFu)), f16_to_f32((u16)(w.x >> 16)),
                       f16_to_f32((u16)(w.y & 0xFFFFu)), f16_to_f32((u16)(w.y >> 16)));
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

__device__ __forceinline__ void add_scaled(float4& acc, float p, float4 v) {
    acc.x += p * v.x;
    acc.y += p * v.y;
    acc.z += p * v.z;
    acc.w += p * v.w;
}

extern "C" __global__ void __launch_bounds__(GQ_THREADS, 2)
    attention_grouped(const float* q, const u8* k_cache, const u8* v_cache, int k_type,
                      int v_type, float* part, const int* rows, int n_head, int n_head_kv,
                      int head_dim, float scale, float softcap, int window, int splits) {
    wait_for_prior_grids();
    static_assert(ATT_GROUP == 8, "group_sum halves eight heads");
    static_assert(ATT_GROUP_HEAD_DIM == 128, "a lane holds four values of a head");
    // Per warp: each head's rescale (row 0) and its run's weights (rows 1..GQ_KEYS).
    __shared__ float weights[GQ_WARPS][GQ_KEYS + 1][ATT_GROUP];
    __shared__ float warp_m[GQ_WARPS][ATT_GROUP], warp_l[GQ_WARPS][ATT_GROUP];
    __shared__ __align__(16) float warp_acc[GQ_WARPS][ATT_GROUP][ATT_GROUP_HEAD_DIM];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, d = 4 * lane;
    int t = blockIdx.x, kv_head = blockIdx.y, group = n_head / n_head_kv;
    int pos = rows[2 * t + 1];
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    int share = (pos + 1 - first + splits - 1) / splits;
    int lo = first + blockIdx.z * share, hi = min(pos, lo + share - 1);
    // Rows of f16 values: a key's (value's) head is row_words u16s after the one before.
    u64 row_words = (u64)n_head_kv * head_dim, start = (u64)rows[2 * t];
    const u16* keys = (const u16*)k_cache + start * row_words + (u64)kv_head * head_dim + d;
    const u16* values = (const u16*)v_cache + start * row_words + (u64)kv_head * head_dim + d;
    bool lane_in = d < head_dim;

    float4 qv[ATT_GROUP], acc[ATT_GROUP];
    const float* qg = q + ((u64)t * n_head + (u64)kv_head * group) * head_dim + d;
#pragma unroll
    for (int g = 0; g < ATT_GROUP; g++) {
        bool in = g < group && lane_in;
        qv[g] = in ? make_float4(qg[g * head_dim], qg[g * head_dim + 1], qg[g * head_dim + 2],
                                 qg[g * head_dim + 3])
                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        acc[g] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    // The online softmax of head (lane / 4) % ATT_GROUP.
    int h = (lane / 4) % ATT_GROUP;
    float m = NEG_INF, l = 0.0f;
    for (int key0 = lo + GQ_KEYS * warp; key0 <= hi; key0 += GQ_KEYS * GQ_WARPS) {
        uint2 kw[GQ_KEYS], vw[GQ_KEYS];
#pragma unroll
        for (int j = 0; j < GQ_KEYS; j++) {
            u64 at = (u64)min(key0 + j, hi) * row_words;
            kw[j] = lane_in ? *(const uint2*)(keys + at) : make_uint2(0u, 0u);
            vw[j] = lane_in ? *(const uint2*)(values + at) : make_uint2(0u, 0u);
        }
        float s[GQ_KEYS], m_new = m;
#pragma unroll
        for (int j = 0; j < GQ_KEYS; j++) {
            float4 k = f16x4(kw[j]);
            float dots[ATT_GROUP];
#pragma unroll
            for (int g = 0; g < ATT_GROUP; g++) dots[g] = dot4(qv[g], k);
            s[j] = scale * group_sum(dots, lane);
            if (softcap > 0.0f) s[j] = softcap * tanhf(s[j] / softcap);
            // Past hi (the run's end) a key weighs nothing.
            if (key0 + j > hi) s[j] = NEG_INF;
            m_new = fmaxf(m_new, s[j]);
        }
        // The run's first key is visible, so m_new is finite.
        float alpha = expf(m - m_new);
        l *= alpha;
        if (lane % 4 == 0) weights[warp][0][h] = alpha;
#pragma unroll
        for (int j = 0; j < GQ_KEYS; j++) {
            float p = expf(s[j] - m_new);
            l += p;
            if (lane % 4 == 0) weights[warp][1 + j][h] = p;
        }
        m = m_new;
        __syncwarp();
#pragma unroll
        for (int g = 0; g < ATT_GROUP; g++) {
            float a = weights[warp][0][g];
            acc[g] = make_float4(acc[g].x * a, acc[g].y * a, acc[g].z * a, acc[g].w * a);
        }
#pragma unroll
        for (int j = 0; j < GQ_KEYS; j++) {
            float4 v = f16x4(vw[j]);
#pragma unroll
            for (int g = 0; g < ATT_GROUP; g++) add_scaled(acc[g], weights[warp][1 + j][g], v);
        }
        __syncwarp();
    }
    if (lane % 4 == 0) {
        warp_m[warp][h] = m;
        warp_l[warp][h] = l;
    }
#pragma unroll
    for (int g = 0; g < ATT_GROUP; g++)
        if (lane_in) *(float4*)&warp_acc[warp][g][d] = acc[g];
    __syncthreads();
    // Thread by thread, (head, value) pairs of the group merged over the warps.
    for (int e = threadIdx.x; e < group * head_dim; e += GQ_THREADS) {
        int g = e / head_dim, dd = e % head_dim;
        float mg = NEG_INF, lg = 0.0f, sum = 0.0f;
        for (int w = 0; w < GQ_WARPS; w++) mg = fmaxf(mg, warp_m[w][g]);
        for (int w = 0; w < GQ_WARPS; w++)
            if (warp_m[w][g] != NEG_INF) {
                float f = expf(warp_m[w][g] - mg);
                lg += warp_l[w][g] * f;
                sum += warp_acc[w][g][dd] * f;
            }
        u64 hq = (u64)kv_head * group + g;
        float* o = part + (((u64)t * n_head + hq) * splits + blockIdx.z) * (head_dim + 2);
        if (dd == 0) {
            o[0] = mg;
            o[1] = lg;
        }
        o[2 + dd] = sum;
    }
}

// out of (row blockIdx.x, head blockIdx.y) from its `splits` (at most MAX_SHARES) shares in
// `part` (and its 8-bit form, as attention's). The shares' weights go to shared memory once;
// each warp then sums every ATT_WARPS-th share's values, its loads in flight together, and the
// warps' sums are added.
extern "C" __global__ void attention_merge(const float* part, float* out, int n_head,
                                           int head_dim, int splits, i8* q8, float2* ds) {
    wait_for_prior_grids();
    __shared__ float w[MAX_SHARES];
    __shared__ float sums[ATT_WARPS][MAX_HEAD_DIM];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    u64 stride = head_dim + 2;
    const float* parts = part + ((u64)blockIdx.x * n_head + blockIdx.y) * splits * stride;
    float m = NEG_INF;
    for (int s = threadIdx.x; s < splits; s += ATT_THREADS) m = fmaxf(m, parts[s * stride]);
    m = block_max(m);
    // An empty share has maximum -inf and weighs nothing.
    float l = 0.0f;
    for (int s = threadIdx.x; s < splits; s += ATT_THREADS) {
        float ms = parts[s * stride];
        w[s] = ms == NEG_INF ? 0.0f : expf(ms - m);
        l += w[s] * parts[s * stride + 1];
    }
    l = block_sum(l);
    for (int d0 = 0; d0 < head_dim; d0 += 32) {
        int d = d0 + lane;
        float acc = 0.0f;
#pragma unroll 8
        for (int s = warp; s < splits; s += ATT_WARPS)
            if (d < head_dim) acc += w[s] * parts[s * stride + 2 + d];
        sums[warp][d] = acc;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += ATT_THREADS) {
        float acc = 0.0f;
        for (int k = 0; k < ATT_WARPS; k++) acc += sums[k][d];
        write_head(out, q8, ds, head_dim, n_head, d, acc / l);
    }
}

// Prompt attention on tensor cores (compute capability 8.0 and up), FlashAttention-2 style,
// for a batch that is one span of a sequence: rows t < n at positions p0 + t of the slot whose
// first cache row is `start`. A block of four warps takes FA_ROWS query rows of one head, a
// warp 16 of them, and walks the keys they see in tiles of FA_KEYS: each tile's keys (and its
// values, transposed) go to shared memory as f16, the warp's scores come from mma.sync
// m16n8k16 with its queries (f16, held in registers), pass through the online softmax in
// registers, and their weights (rounded to f16) multiply the values on tensor cores as well.
// head_dim a multiple of 16, at most FA_MAX_HD; FA_ROWS = 64 (four warps of 16 rows).
#define FA_KEYS 64
#define FA_THREADS (2 * FA_ROWS)
#define FA_PITCH_K (FA_MAX_HD + 8)
#define FA_PITCH_V (FA_KEYS + 8)

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attention_flash(const float* q, const u8* k_cache, const u8* v_cache, int k_type, int v_type,
                    float* out, int start, int p0, int n, int n_head, int n_head_kv,
                    int head_dim, float scale, float softcap, int window) {
    wait_for_prior_grids();
    __shared__ __align__(16) u16 ks[FA_KEYS][FA_PITCH_K];
    __shared__ __align__(16) u16 vt[FA_MAX_HD][FA_PITCH_V];
    int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tig = lane % 4;
    int h = blockIdx.y, kv_head = h / (n_head / n_head_kv);
    int t0 = blockIdx.x * FA_ROWS, wt = t0 + 16 * warp;
    int kv_width = n_head_kv * head_dim;
    u64 row_k = kv_bytes(k_type, kv_width), row_v = kv_bytes(v_type, kv_width);
    const u8* keys = k_cache + (u64)start * row_k + kv_bytes(k_type, (u64)kv_head * head_dim);
    const u8* values = v_cache + (u64)start * row_v + kv_bytes(v_type, (u64)kv_head * head_dim);
    int steps = head_dim / 16, pairs = head_dim / 2;

    // This lane's rows: wt + g and wt + g + 8.
    int rows[2] = {wt + g, wt + g + 8};
    u32 qa[FA_MAX_HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < FA_MAX_HD / 16; kk++) {
        for (int i = 0; i < 4; i++) {
            int r = rows[i % 2], d = 16 * kk + 2 * tig + 8 * (i / 2);
            const float* qr = q + ((u64)r * n_head + h) * head_dim;
            bool in = kk < steps && r < n;
            qa[kk][i] = in ? pack_f16x2(qr[d], qr[d + 1]) : 0u;
        }
    }
    float o[FA_MAX_HD / 8][4];
#pragma unroll
    for (int j = 0; j < FA_MAX_HD / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    int pos[2], first[2];
    for (int i = 0; i < 2; i++) {
        pos[i] = p0 + rows[i];
        first[i] = window > 0 ? max(0, pos[i] + 1 - window) : 0;
    }
    int last_row = min(t0 + FA_ROWS, n) - 1;
    int lo = window > 0 ? max(0, p0 + t0 + 1 - window) : 0, hi = p0 + last_row;

    for (int k0 = lo; k0 <= hi; k0 += FA_KEYS) {
        __syncthreads();
        for (int i = tid; i < FA_KEYS * pairs; i += FA_THREADS) {
            int key = i / pairs, d = 2 * (i % pairs);
            float2 k = make_float2(0.0f, 0.0f), v = make_float2(0.0f, 0.0f);
            if (k0 + key <= hi) {
                k = kv_pair(k_type, keys + (u64)(k0 + key) * row_k, d);
                v = kv_pair(v_type, values + (u64)(k0 + key) * row_v, d);
            }
            *(u32*)&ks[key][d] = pack_f16x2(k.x, k.y);
            vt[d][key] = f32_to_f16(v.x);
            vt[d + 1][key] = f32_to_f16(v.y);
        }
        __syncthreads();
        if (wt >= n) continue;
        float s[FA_KEYS / 8][4];
#pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < FA_MAX_HD / 16; kk++) {
            if (kk >= steps) break;
#pragma unroll
            for (int j = 0; j < FA_KEYS / 8; j++) {
                u32 b[2] = {*(const u32*)&ks[8 * j + g][16 * kk + 2 * tig],
                            *(const u32*)&ks[8 * j + g][16 * kk + 8 + 2 * tig]};
                mma_16x8x16(s[j], qa[kk], b);
            }
        }
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++)
            for (int e = 0; e < 4; e++) {
                int key = k0 + 8 * j + 2 * tig + (e % 2), i = e / 2;
                float v = scale * s[j][e];
                if (softcap > 0.0f) v = softcap * tanhf(v / softcap);
                if (key > pos[i] || key < first[i] || rows[i] >= n) v = NEG_INF;
                s[j][e] = v;
                mx[i] = fmaxf(mx[i], v);
            }
        float alpha[2], base[2];
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            float m_new = fmaxf(m[i], mx[i]);
            // A row that has seen no key yet keeps a base of 0: exp(-inf - 0) = 0, no NaN.
            base[i] = m_new == NEG_INF ? 0.0f : m_new;
            alpha[i] = expf(m[i] - base[i]);
            m[i] = m_new;
        }
        float sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++)
            for (int e = 0; e < 4; e++) {
                float p = expf(s[j][e] - base[e / 2]);
                s[j][e] = p;
                sum[e / 2] += p;
            }
        for (int i = 0; i < 2; i++) {
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
            l[i] = l[i] * alpha[i] + sum[i];
        }
#pragma unroll
        for (int j = 0; j < FA_MAX_HD / 8; j++) {
            o[j][0] *= alpha[0];
            o[j][1] *= alpha[0];
            o[j][2] *= alpha[1];
            o[j][3] *= alpha[1];
        }
#pragma unroll
        for (int kk = 0; kk < FA_KEYS / 16; kk++) {
            u32 pa[4] = {pack_f16x2(s[2 * kk][0], s[2 * kk][1]),
                         pack_f16x2(s[2 * kk][2], s[2 * kk][3]),
                         pack_f16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack_f16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int j = 0; j < FA_MAX_HD / 8; j++) {
                if (8 * j >= head_dim) break;
                u32 b[2] = {*(const u32*)&vt[8 * j + g][16 * kk + 2 * tig],
                            *(const u32*)&vt[8 * j + g][16 * kk + 8 + 2 * tig]};
                mma_16x8x16(o[j], pa, b);
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        if (rows[i] >= n) continue;
        float* orow = out + ((u64)rows[i] * n_head + h) * head_dim;
#pragma unroll
        for (int j = 0; j < FA_MAX_HD / 8; j++) {
            int d = 8 * j + 2 * tig;
            if (d >= head_dim) break;
            orow[d] = o[j][2 * i] / l[i];
            orow[d + 1] = o[j][2 * i + 1] / l[i];
        }
    }
}
