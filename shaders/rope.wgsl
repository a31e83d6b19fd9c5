// RoPE and the KV-cache write after the products of [q | k | v] for every token: the tiled
// products of the device's own matrices (q and k heads in pair order, see qkv.wgsl), or rows
// in the heads' own order (the generic op). One thread finishes four outputs. Rotation angles
// come from the model's cos/sin table, so every backend rotates by exactly the same values.

@group(0) @binding(0) var<uniform> p: Params;
// [rows of the step][q_width + 2 kv_width]
@group(0) @binding(1) var<storage, read> products: array<vec4<f32>>;

fn product(i: u32) -> f32 {
    return products[i / 4u][i % 4u];
}

// Outputs c..c + 3 of the step's row r in pair order. Heads in their own order hold the four values
// of slots 4j..4j + 3 at dimensions 2j, 2j + half, 2j + 1, 2j + 1 + half (NeoX pairs); with
// adjacent pairs, and for values, pair order is their own order.
fn quad(r: u32, quads: u32, c: u32) -> vec4<f32> {
    if (p.pairs != 0u || p.neox == 0u || c >= p.q_width + p.kv_width) {
        return products[r * quads + c / 4u];
    }
    let local = select(c, c - p.q_width, c >= p.q_width);
    let head = c - local % p.head_dim;
    let j = (local % p.head_dim) / 4u;
    let half = p.head_dim / 2u;
    let base = 4u * r * quads + head;
    return vec4<f32>(product(base + 2u * j), product(base + 2u * j + half),
        product(base + 2u * j + 1u), product(base + 2u * j + 1u + half));
}

@compute @workgroup_size(64)
fn rope_store_qkv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let quads = (p.q_width + 2u * p.kv_width) / 4u;
    if (t >= p.n || gid.x >= quads) {
        return;
    }
    let qkv_layout = QkvLayout(p.pos, p.head_dim, p.q_width, p.kv_width, p.neox, p.first_row);
    store_qkv(qkv_layout, t, 4u * gid.x, quad(p.first_row + t, quads, 4u * gid.x));
}
