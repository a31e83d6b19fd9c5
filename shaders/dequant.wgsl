// Dequantization: whole matrices (dequant), row ranges to f16 for the tensor-core matmul
// (dequant_f16), and selected rows (get_rows, the embedding lookup). One invocation writes 8
// consecutive elements of one row.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// Eight f16 per vector, rows w_k long (a multiple of 8).
@group(0) @binding(4) var<storage, read_write> out_f16: array<vec4<u32>>;

fn write8(out_row: u32, row: u32, g: u32) {
    let v = load8(row, g);
    let base = out_row * p.w_k + 8u * g;
    for (var i = 0u; i < 8u; i++) {
        if (8u * g + i < p.w_k) {
            out[base + i] = v[i / 4u][i % 4u];
        }
    }
}

@compute @workgroup_size(64)
fn get_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let t = gid.y;
    if (g * 8u >= p.w_k || t >= p.n) {
        return;
    }
    let row = tokens[t];
    // Rows outside this part are written by the dispatch of the part that holds them.
    if (row < p.row_start || row >= p.row_start + p.rows) {
        return;
    }
    write8(t, row - p.row_start, g);
}

@compute @workgroup_size(64)
fn dequant(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let row = gid.y + 65535u * gid.z;
    if (g * 8u >= p.w_k || row >= p.rows) {
        return;
    }
    write8(p.row_start + row, row, g);
}

// Rows n..n + rows of this part, as f16, to rows 0.. of out_f16.
@compute @workgroup_size(256)
fn dequant_f16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.x;
    let row = gid.y + 65535u * gid.z;
    if (g * 8u >= p.w_k || row >= p.rows) {
        return;
    }
    let v = load8(p.n + row, g);
    out_f16[row * (p.w_k / 8u) + g] = vec4<u32>(pack2x16float(v[0].xy), pack2x16float(v[0].zw),
        pack2x16float(v[1].xy), pack2x16float(v[1].zw));
}
