// RoPE and the KV-cache write in one pass: q is rotated in place, k is rotated on its way into
// the f16 cache, v is copied beside it. Rotation angles come from the model's cos/sin table
// ([position][frequency][cos, sin]), so every backend rotates by exactly the same values.

struct Params {
    n_head: u32,
    head_dim: u32,
    pos: u32,
    n: u32,
    // 1: NeoX pairs (i, i + d/2); 0: adjacent pairs (2i, 2i + 1).
    neox: u32,
    q_width: u32,
    kv_width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<f32>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read> cos_sin: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;

// The two dimensions rotated together by frequency f of a head.
fn pair(f: u32) -> vec2<u32> {
    if (p.neox != 0u) {
        return vec2<u32>(f, f + p.head_dim / 2u);
    }
    return vec2<u32>(2u * f, 2u * f + 1u);
}

fn angle(t: u32, f: u32) -> vec2<f32> {
    let i = (p.pos + t) * p.head_dim + 2u * f;
    return vec2<f32>(cos_sin[i], cos_sin[i + 1u]);
}

// Dimension l of a k head (starting at `head`) after rotation.
fn rotated_k(t: u32, head: u32, l: u32) -> f32 {
    let half = p.head_dim / 2u;
    var f: u32;
    if (p.neox != 0u) {
        f = l % half;
    } else {
        f = l / 2u;
    }
    let d = pair(f);
    let cs = angle(t, f);
    let x0 = K[head + d.x];
    let x1 = K[head + d.y];
    return select(x0 * cs.y + x1 * cs.x, x0 * cs.x - x1 * cs.y, l == d.x);
}

@compute @workgroup_size(64)
fn rope_store_kv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let half = p.head_dim / 2u;
    let q_pairs = p.q_width / 2u;
    let kv_words = p.kv_width / 2u;
    var i = gid.x;
    if (t >= p.n) {
        return;
    }
    if (i < q_pairs) {
        let head = t * p.q_width + (i / half) * p.head_dim;
        let f = i % half;
        let d = pair(f);
        let cs = angle(t, f);
        let x0 = Q[head + d.x];
        let x1 = Q[head + d.y];
        Q[head + d.x] = x0 * cs.x - x1 * cs.y;
        Q[head + d.y] = x0 * cs.y + x1 * cs.x;
        return;
    }
    i -= q_pairs;
    let slot = (p.pos + t) * kv_words;
    if (i < kv_words) {
        let dim = 2u * i;
        let head = t * p.kv_width + (dim / p.head_dim) * p.head_dim;
        let l = dim % p.head_dim;
        k_cache[slot + i] = pack2x16float(vec2<f32>(rotated_k(t, head, l), rotated_k(t, head, l + 1u)));
        return;
    }
    i -= kv_words;
    if (i < kv_words) {
        let v = t * p.kv_width + 2u * i;
        v_cache[slot + i] = pack2x16float(vec2<f32>(V[v], V[v + 1u]));
    }
}
