// Per-head RMS norms of queries and keys before RoPE (Qwen3, Gemma 3), in place over the
// products of [q | k | v]: one workgroup per head (query heads, then key heads) and token.
// The weight is indexed by each value's dimension in its head, so heads in the device's pair
// order (qkv.wgsl) take it as heads in their own order do.

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> products: array<f32>;
@group(0) @binding(2) var<storage, read> q_weight: array<f32>;
@group(0) @binding(3) var<storage, read> k_weight: array<f32>;

var<workgroup> partial: array<f32, WG>;

// The dimension held in slot s of a head: in pair order with NeoX pairs, slots 4j..4j + 3
// hold dimensions 2j, 2j + half, 2j + 1, 2j + 1 + half; otherwise slot s holds dimension s.
fn dim_of(s: u32) -> u32 {
    if (p.pairs == 0u || p.neox == 0u) {
        return s;
    }
    let r = s % 4u;
    return 2u * (s / 4u) + r / 2u + (r % 2u) * (p.head_dim / 2u);
}

@compute @workgroup_size(64)
fn qk_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = wid.y * p.width + wid.x * p.head_dim;
    var sum = 0.0;
    for (var i = li; i < p.head_dim; i += WG) {
        let v = products[base + i];
        sum += v * v;
    }
    partial[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(p.head_dim) + p.eps);
    let is_q = wid.x < p.q_heads;
    for (var i = li; i < p.head_dim; i += WG) {
        let d = dim_of(i);
        let w = select(k_weight[d], q_weight[d], is_q);
        products[base + i] = products[base + i] * scale * w;
    }
}
