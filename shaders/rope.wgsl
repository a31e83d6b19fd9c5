// RoPE and the KV-cache write for prompts: the tiled products wrote [q | k | v] of every token
// (q and k in pair order, see qkv.wgsl); one thread finishes four outputs. Rotation angles come
// from the model's cos/sin table, so every backend rotates by exactly the same values.

struct Params {
    pos: u32,
    head_dim: u32,
    q_width: u32,
    kv_width: u32,
    neox: u32,
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [n][q_width + 2 kv_width]
@group(0) @binding(1) var<storage, read> products: array<vec4<f32>>;

@compute @workgroup_size(64)
fn rope_store_qkv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let quads = (p.q_width + 2u * p.kv_width) / 4u;
    if (t >= p.n || gid.x >= quads) {
        return;
    }
    let qkv_layout = QkvLayout(p.pos, p.head_dim, p.q_width, p.kv_width, p.neox);
    store_qkv(qkv_layout, t, 4u * gid.x, products[t * quads + gid.x]);
}
