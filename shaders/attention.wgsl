// Causal attention over the f16 KV cache with an online softmax: one workgroup per (query
// head, token); keys are scored a tile at a time, so no full score matrix is ever stored.

struct Params {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    pos: u32,
    kv_width: u32,
    q_width: u32,
    scale: f32,
    // Key chunks per (head, token) in the split kernels' partials.
    n_chunks: u32,
}

const WG: u32 = 64u;
// Output dimensions per thread: head_dim up to WG * DPT = 256.
const DPT: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

var<workgroup> q: array<f32, 256>;
var<workgroup> scores: array<f32, WG>;
var<workgroup> reduce: array<f32, WG>;

fn reduce_max(li: u32, v: f32) -> f32 {
    reduce[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            reduce[li] = max(reduce[li], reduce[li + s]);
        }
        workgroupBarrier();
    }
    let r = reduce[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(li: u32, v: f32) -> f32 {
    reduce[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            reduce[li] += reduce[li + s];
        }
        workgroupBarrier();
    }
    let r = reduce[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let kv_off = (h / (p.n_head / p.n_head_kv)) * hd;
    for (var d = li; d < hd; d += WG) {
        q[d] = Q[t * p.q_width + h * hd + d];
    }
    workgroupBarrier();

    let n_keys = p.pos + t + 1u;
    var acc: array<f32, DPT>;
    var running_max = -3.4e38;
    var running_sum = 0.0;
    for (var start = 0u; start < n_keys; start += WG) {
        let key = start + li;
        var s = -3.4e38;
        if (key < n_keys) {
            let base = (key * p.kv_width + kv_off) / 2u;
            var dot = 0.0;
            for (var w = 0u; w < hd / 2u; w++) {
                let kv = unpack2x16float(k_cache[base + w]);
                dot += q[2u * w] * kv.x + q[2u * w + 1u] * kv.y;
            }
            s = dot * p.scale;
        }
        let tile_max = reduce_max(li, s);
        let new_max = max(running_max, tile_max);
        let e = select(0.0, exp(s - new_max), key < n_keys);
        scores[li] = e;
        let correction = exp(running_max - new_max);
        running_sum = running_sum * correction + reduce_sum(li, e);
        running_max = new_max;
        let tile = min(WG, n_keys - start);
        for (var i = 0u; i < DPT; i++) {
            let d = li + i * WG;
            if (d < hd) {
                var a = acc[i] * correction;
                for (var j = 0u; j < tile; j++) {
                    let word = v_cache[((start + j) * p.kv_width + kv_off + d) / 2u];
                    a += scores[j] * unpack2x16float(word)[d & 1u];
                }
                acc[i] = a;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < DPT; i++) {
        let d = li + i * WG;
        if (d < hd) {
            O[t * p.q_width + h * hd + d] = acc[i] / running_sum;
        }
    }
}

// Decoding attends over many keys with few queries: the keys are split into chunks of CHUNK,
// one workgroup per (head, chunk, token) writes a partial result (max, sum, weighted values)
// and attention_combine merges the chunks. Partials: [token][head][chunk][2 + head_dim].

const CHUNK: u32 = 32u;

@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

// The chunk's keys, a row of head_dim / 2 words each, padded by one word against bank conflicts.
var<workgroup> k_tile: array<u32, 4128>;
var<workgroup> chunk_scores: array<f32, CHUNK>;
var<workgroup> chunk_weights: array<f32, CHUNK>;

fn partial_base(t: u32, h: u32, c: u32) -> u32 {
    return ((t * p.n_head + h) * p.n_chunks + c) * (p.head_dim + 2u);
}

@compute @workgroup_size(64)
fn attention_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let c = wid.y;
    let t = wid.z;
    let hd = p.head_dim;
    let words = hd / 2u;
    let stride = words + 1u;
    let kv_off = (h / (p.n_head / p.n_head_kv)) * hd;
    let n_keys = p.pos + t + 1u;
    let start = c * CHUNK;
    let out = partial_base(t, h, c);
    if (start >= n_keys) {
        if (li == 0u) {
            partials[out] = -3.4e38;
            partials[out + 1u] = 0.0;
        }
        return;
    }
    let count = min(CHUNK, n_keys - start);
    for (var d = li; d < hd; d += 64u) {
        q[d] = Q[t * p.q_width + h * hd + d];
    }
    for (var i = li; i < CHUNK * words; i += 64u) {
        let key = i / words;
        let w = i % words;
        var v = 0u;
        if (key < count) {
            v = k_cache[((start + key) * p.kv_width + kv_off) / 2u + w];
        }
        k_tile[key * stride + w] = v;
    }
    workgroupBarrier();
    if (li < CHUNK) {
        var s = -3.4e38;
        if (li < count) {
            var dot = 0.0;
            for (var w = 0u; w < words; w++) {
                let kv = unpack2x16float(k_tile[li * stride + w]);
                dot += q[2u * w] * kv.x + q[2u * w + 1u] * kv.y;
            }
            s = dot * p.scale;
        }
        chunk_scores[li] = s;
    }
    workgroupBarrier();
    var m = -3.4e38;
    for (var j = 0u; j < count; j++) {
        m = max(m, chunk_scores[j]);
    }
    if (li < CHUNK) {
        chunk_weights[li] = select(0.0, exp(chunk_scores[li] - m), li < count);
    }
    workgroupBarrier();
    var l = 0.0;
    for (var j = 0u; j < count; j++) {
        l += chunk_weights[j];
    }
    for (var d = li; d < hd; d += 64u) {
        var a = 0.0;
        for (var j = 0u; j < count; j++) {
            let word = v_cache[((start + j) * p.kv_width + kv_off + d) / 2u];
            a += chunk_weights[j] * unpack2x16float(word)[d & 1u];
        }
        partials[out + 2u + d] = a;
    }
    if (li == 0u) {
        partials[out] = m;
        partials[out + 1u] = l;
    }
}

// Merges the chunks of one (head, token): rescales each by exp(m_c - max) and normalises.
@compute @workgroup_size(64)
fn attention_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let used = (p.pos + t + 1u + CHUNK - 1u) / CHUNK;
    var m = -3.4e38;
    for (var c = 0u; c < used; c++) {
        m = max(m, partials[partial_base(t, h, c)]);
    }
    var l = 0.0;
    for (var c = 0u; c < used; c++) {
        let b = partial_base(t, h, c);
        l += partials[b + 1u] * exp(partials[b] - m);
    }
    for (var d = li; d < hd; d += 64u) {
        var a = 0.0;
        for (var c = 0u; c < used; c++) {
            let b = partial_base(t, h, c);
            a += partials[b + 2u + d] * exp(partials[b] - m);
        }
        O[t * p.q_width + h * hd + d] = a / l;
    }
}
