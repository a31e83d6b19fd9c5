// Dequantization: whole matrices (dequant) and selected rows (get_rows, the embedding lookup).
// One invocation writes 8 consecutive elements of one row.

struct Params {
    w_k: u32,
    w_bpr: u32,
    w_scales: u32,
    // Rows held by this part of the matrix, and the first of them in the whole matrix.
    rows: u32,
    row_start: u32,
    // Rows to produce (tokens for get_rows).
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

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
