// Causal attention over the KV cache with an online softmax: one workgroup per (query head,
// token); keys are scored a tile at a time, so no full score matrix is ever stored.
// Params: attention_params.wgsl. The cache is read through key1/4/8 and value1/4/8, composed
// from kv_f16.wgsl or kv_q8_0.wgsl for the cache's type.

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
// Tree reductions over the `width` threads of a workgroup (a power of two up to 128: the
// prompt kernel's WG, the decode kernel's DWG).
var<workgroup> reduce: array<f32, 128>;

fn reduce_max(li: u32, v: f32, width: u32) -> f32 {
    reduce[li] = v;
    workgroupBarrier();
    for (var s = width / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            reduce[li] = max(reduce[li], reduce[li + s]);
        }
        workgroupBarrier();
    }
    let r = reduce[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(li: u32, v: f32, width: u32) -> f32 {
    reduce[li] = v;
    workgroupBarrier();
    for (var s = width / 2u; s > 0u; s >>= 1u) {
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
        q[d] = Q[q_row(t) + h * hd + d];
    }
    workgroupBarrier();

    let n_keys = p.pos + t + 1u;
    var acc: array<f32, DPT>;
    var running_max = -3.4e38;
    var running_sum = 0.0;
    for (var start = first_key(p.pos + t); start < n_keys; start += WG) {
        let key = start + li;
        var s = -3.4e38;
        if (key < n_keys) {
            let base = key * p.kv_width + kv_off;
            var dot = 0.0;
            for (var w = 0u; w < hd / 4u; w++) {
                let k = key4(base + 4u * w);
                dot += q[4u * w] * k.x + q[4u * w + 1u] * k.y + q[4u * w + 2u] * k.z + q[4u * w + 3u] * k.w;
            }
            s = capped(dot * p.scale);
        }
        let tile_max = reduce_max(li, s, WG);
        let new_max = max(running_max, tile_max);
        let e = select(0.0, exp(s - new_max), key < n_keys);
        scores[li] = e;
        let correction = exp(running_max - new_max);
        running_sum = running_sum * correction + reduce_sum(li, e, WG);
        running_max = new_max;
        let tile = min(WG, n_keys - start);
        for (var i = 0u; i < DPT; i++) {
            let d = li + i * WG;
            if (d < hd) {
                var a = acc[i] * correction;
                for (var j = 0u; j < tile; j++) {
                    a += scores[j] * value1((start + j) * p.kv_width + kv_off + d);
                }
                acc[i] = a;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < DPT; i++) {
        let d = li + i * WG;
        if (d < hd) {
            O[q_row(t) + h * hd + d] = acc[i] / running_sum;
        }
    }
}

// Prompts, flash style: one workgroup of 128 threads per (query head, tile of FQ tokens)
// walks the keys a tile of FK at a time, with the tile's queries, keys (then values) and
// scores in workgroup memory, so that each key is read once per tile of queries rather than
// once per query. Thread (row, quarter) scores FK / 4 keys of its row and owns every fourth
// value vector of its row's output; the row's running maximum and sum live in its four
// threads' registers. Heads up to FHD values, a multiple of 16. FK is 32 where the device
// has the workgroup memory (37 KB), else 16.

const FQ: u32 = 32u;
const FK: u32 = {{ATTENTION_KEYS}}u;
const FHD: u32 = 128u;

var<workgroup> fq: array<vec4<f32>, FQ * FHD / 4u>;
var<workgroup> fkv: array<vec4<f32>, FK * FHD / 4u>;
var<workgroup> fs: array<f32, FQ * FK>;
var<workgroup> f_part: array<f32, 128>;

// Vector `i` of the key or value row `key` of this head (four values).
fn cache_vec4(cache_is_k: bool, key: u32, kv_off: u32, i: u32) -> vec4<f32> {
    let e = key * p.kv_width + kv_off + 4u * i;
    if (cache_is_k) {
        return key4(e);
    }
    return value4(e);
}

// Loads FK rows of keys or values from `k0` into fkv (zeros past `n_keys`).
fn load_kv_tile(cache_is_k: bool, k0: u32, n_keys: u32, kv_off: u32, li: u32) {
    let hv = p.head_dim / 4u;
    for (var i = li; i < FK * hv; i += 128u) {
        let key = k0 + i / hv;
        var v = vec4<f32>(0.0);
        if (key < n_keys) {
            v = cache_vec4(cache_is_k, key, kv_off, i % hv);
        }
        fkv[i] = v;
    }
}

@compute @workgroup_size(128)
fn attention_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let q0 = wid.y * FQ;
    let hd = p.head_dim;
    let hv = hd / 4u;
    let kv_off = (h / (p.n_head / p.n_head_kv)) * hd;
    for (var i = li; i < FQ * hv; i += 128u) {
        let t = q0 + i / hv;
        var v = vec4<f32>(0.0);
        if (t < p.n) {
            let b = q_row(t) + h * hd + 4u * (i % hv);
            v = vec4<f32>(Q[b], Q[b + 1u], Q[b + 2u], Q[b + 3u]) * p.scale;
        }
        fq[i] = v;
    }
    let row = li / 4u;
    let quarter = li % 4u;
    // The last key any query of this tile sees, plus one.
    let n_keys = p.pos + min(q0 + FQ, p.n);
    let row_keys = p.pos + q0 + row + 1u;
    let row_first = first_key(p.pos + q0 + row);
    var m = -3.4e38;
    var l = 0.0;
    var o: array<vec4<f32>, FHD / 16u>;
    for (var k0 = first_key(p.pos + q0); k0 < n_keys; k0 += FK) {
        load_kv_tile(true, k0, n_keys, kv_off, li);
        workgroupBarrier();
        // Scores of this thread's keys for this row.
        var s: array<f32, FK / 4u>;
        var tile_max = -3.4e38;
        for (var j = 0u; j < FK / 4u; j++) {
            let kj = FK / 4u * quarter + j;
            var score = 0.0;
            for (var i = 0u; i < hv; i++) {
                score += dot(fq[row * hv + i], fkv[kj * hv + i]);
            }
            s[j] = select(-3.4e38, capped(score), k0 + kj < row_keys && k0 + kj >= row_first);
            tile_max = max(tile_max, s[j]);
        }
        f_part[li] = tile_max;
        workgroupBarrier();
        let base = 4u * row;
        let m_new = max(m, max(max(f_part[base], f_part[base + 1u]), max(f_part[base + 2u], f_part[base + 3u])));
        workgroupBarrier();
        // Softmax weights into fs; values replace keys in fkv.
        var part_sum = 0.0;
        for (var j = 0u; j < FK / 4u; j++) {
            let kj = FK / 4u * quarter + j;
            let e = select(0.0, exp(s[j] - m_new), k0 + kj < row_keys && k0 + kj >= row_first);
            fs[row * FK + kj] = e;
            part_sum += e;
        }
        f_part[li] = part_sum;
        load_kv_tile(false, k0, n_keys, kv_off, li);
        workgroupBarrier();
        let correction = exp(m - m_new);
        l = l * correction + f_part[base] + f_part[base + 1u] + f_part[base + 2u] + f_part[base + 3u];
        m = m_new;
        for (var c = 0u; c < hv / 4u; c++) {
            let i = quarter + 4u * c;
            var a = o[c] * correction;
            for (var kj = 0u; kj < FK; kj++) {
                a += fs[row * FK + kj] * fkv[kj * hv + i];
            }
            o[c] = a;
        }
        workgroupBarrier();
    }
    let t = q0 + row;
    if (t < p.n) {
        for (var c = 0u; c < hv / 4u; c++) {
            let b = q_row(t) + h * hd + 4u * (quarter + 4u * c);
            let v = o[c] / l;
            O[b] = v.x;
            O[b + 1u] = v.y;
            O[b + 2u] = v.z;
            O[b + 3u] = v.w;
        }
    }
}

// Decoding: few queries, many keys. One workgroup per (query head, chunk of CHUNK keys,
// token); a token with one chunk of keys gets its output, else a partial result (max, sum, weighted
// values) that attention_combine merges. Partials: [token][head][chunk][2 + head_dim].
// Keys and values are read 8 values a load (key8, value8; head_dim is a multiple of 8), several
// loads issued before their first use, so that each thread keeps many loads in flight: the
// work is small and latency, not bandwidth, bounds it.

const CHUNK: u32 = 128u;
const DWG: u32 = 128u;

@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

var<workgroup> chunk_weights: array<f32, CHUNK>;
var<workgroup> group_sums: array<array<vec4<f32>, 2>, DWG>;

fn partial_base(t: u32, h: u32, c: u32) -> u32 {
    return ((t * p.n_head + h) * p.n_chunks + c) * (p.head_dim + 2u);
}

// The dot product of 8 values with q[d..d + 8].
fn dot8(kv: array<vec4<f32>, 2>, d: u32) -> f32 {
    let a = kv[0];
    let b = kv[1];
    return q[d] * a.x + q[d + 1u] * a.y + q[d + 2u] * a.z + q[d + 3u] * a.w
        + q[d + 4u] * b.x + q[d + 5u] * b.y + q[d + 6u] * b.z + q[d + 7u] * b.w;
}

// Key `key`'s score: its row of head_dim / 8 vectors from `row`, four loads at a time.
fn key_score(row: u32) -> f32 {
    let vecs = p.head_dim / 8u;
    var dot = 0.0;
    var i = 0u;
    for (; i + 4u <= vecs; i += 4u) {
        let k0 = key8(row + i);
        let k1 = key8(row + i + 1u);
        let k2 = key8(row + i + 2u);
        let k3 = key8(row + i + 3u);
        dot += dot8(k0, 8u * i) + dot8(k1, 8u * i + 8u) + dot8(k2, 8u * i + 16u) + dot8(k3, 8u * i + 24u);
    }
    for (; i < vecs; i++) {
        dot += dot8(key8(row + i), 8u * i);
    }
    return dot;
}

fn add_weighted(acc: ptr<function, array<vec4<f32>, 2>>, weight: f32, v: array<vec4<f32>, 2>) {
    (*acc)[0] += weight * v[0];
    (*acc)[1] += weight * v[1];
}

@compute @workgroup_size(128)
fn attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let c = wid.y;
    let t = wid.z;
    let hd = p.head_dim;
    // Rows of the caches in units of 8 values.
    let row_vecs = p.kv_width / 8u;
    let head_vec = (h / (p.n_head / p.n_head_kv)) * hd / 8u;
    let n_keys = p.pos + t + 1u;
    let first = first_key(p.pos + t);
    // Chunks past this token's keys (an earlier token of the step), or before its window,
    // have nothing to do.
    if (c * CHUNK >= n_keys || (c + 1u) * CHUNK <= first) {
        return;
    }
    let start = max(c * CHUNK, first);
    let count = min((c + 1u) * CHUNK, n_keys) - start;
    for (var d = li; d < hd; d += DWG) {
        q[d] = Q[q_row(t) + h * hd + d] * p.scale;
    }
    workgroupBarrier();

    // One key per thread: scores, their maximum, the softmax weights and their sum.
    var score = -3.4e38;
    if (li < count) {
        score = capped(key_score((start + li) * row_vecs + head_vec));
    }
    let m = reduce_max(li, score, DWG);
    let weight = select(0.0, exp(score - m), li < count);
    chunk_weights[li] = weight;
    let l = reduce_sum(li, weight, DWG);

    // Weighted values: thread (group g, vector i) sums vector i of keys g, g + groups, ...
    let vecs = hd / 8u;
    let groups = DWG / vecs;
    let i = li % vecs;
    let g = li / vecs;
    var acc: array<vec4<f32>, 2>;
    if (g < groups) {
        var j = g;
        for (; j + 3u * groups < count; j += 4u * groups) {
            let v0 = value8((start + j) * row_vecs + head_vec + i);
            let v1 = value8((start + j + groups) * row_vecs + head_vec + i);
            let v2 = value8((start + j + 2u * groups) * row_vecs + head_vec + i);
            let v3 = value8((start + j + 3u * groups) * row_vecs + head_vec + i);
            add_weighted(&acc, chunk_weights[j], v0);
            add_weighted(&acc, chunk_weights[j + groups], v1);
            add_weighted(&acc, chunk_weights[j + 2u * groups], v2);
            add_weighted(&acc, chunk_weights[j + 3u * groups], v3);
        }
        for (; j < count; j += groups) {
            add_weighted(&acc, chunk_weights[j], value8((start + j) * row_vecs + head_vec + i));
        }
    }
    group_sums[li] = acc;
    workgroupBarrier();
    if (g != 0u) {
        return;
    }
    for (var o = 1u; o < groups; o++) {
        acc[0] += group_sums[o * vecs + i][0];
        acc[1] += group_sums[o * vecs + i][1];
    }
    // The token's only chunk writes its output itself.
    if (first / CHUNK == (n_keys - 1u) / CHUNK) {
        let base = q_row(t) + h * hd + 8u * i;
        for (var e = 0u; e < 8u; e++) {
            O[base + e] = acc[e / 4u][e % 4u] / l;
        }
        return;
    }
    let out = partial_base(t, h, c);
    for (var e = 0u; e < 8u; e++) {
        partials[out + 2u + 8u * i + e] = acc[e / 4u][e % 4u];
    }
    if (li == 0u) {
        partials[out] = m;
        partials[out + 1u] = l;
    }
}

// Merges the chunks of one (head, token): rescales each by exp(m_c - max) and normalises.
// Every thread takes a share of the chunks, so that the loads of many chunks are in flight at
// once (a loop over all chunks per thread left this merge as slow as the decode kernel at
// depth).
const CWG: u32 = 128u;

var<workgroup> combine_sums: array<vec4<f32>, CWG>;

@compute @workgroup_size(128)
fn attention_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let used = (p.pos + t + CHUNK) / CHUNK;
    let c_first = first_key(p.pos + t) / CHUNK;
    // A single chunk wrote its output itself.
    if (used - c_first == 1u) {
        return;
    }
    var m_part = -3.4e38;
    for (var c = c_first + li; c < used; c += CWG) {
        m_part = max(m_part, partials[partial_base(t, h, c)]);
    }
    let m = reduce_max(li, m_part, CWG);
    var l_part = 0.0;
    for (var c = c_first + li; c < used; c += CWG) {
        let b = partial_base(t, h, c);
        l_part += partials[b + 1u] * exp(partials[b] - m);
    }
    let l = reduce_sum(li, l_part, CWG);
    // Thread (group g, vector i) sums values 4i..4i + 4 of chunks g, g + groups, ...
    let vecs = hd / 4u;
    let groups = CWG / vecs;
    let i = li % vecs;
    let g = li / vecs;
    var acc = vec4<f32>(0.0);
    if (g < groups) {
        for (var c = c_first + g; c < used; c += groups) {
            let b = partial_base(t, h, c);
            let at = b + 2u + 4u * i;
            let v = vec4<f32>(partials[at], partials[at + 1u], partials[at + 2u], partials[at + 3u]);
            acc += exp(partials[b] - m) * v;
        }
    }
    combine_sums[li] = acc;
    workgroupBarrier();
    if (g != 0u) {
        return;
    }
    for (var o = 1u; o < groups; o++) {
        acc += combine_sums[o * vecs + i];
    }
    let out = q_row(t) + h * hd + 4u * i;
    for (var e = 0u; e < 4u; e++) {
        O[out + e] = acc[e] / l;
    }
}
