// Matrix-vector products y[t] = W · x[t] (+ bias), or y[t] += W · x[t] (the residual add
// fused), straight from the quantized weights, for decoding (token t = workgroup z).
// A team of TEAM threads owns R weight rows: each thread takes WIDTH activations at a time and
// dots them with WIDTH weights of each of its rows; consecutive lanes take consecutive groups,
// so that the loads of a subgroup, of activations and of weights, fall on few cache lines
// (8 at a time, with bounds, where the row length is not a multiple of WIDTH). With `norm`, x
// is RMS-normalised on the fly: a team covers all of x, so it sums x² in the same loop and
// scales its dot products at the end, with no separate pass (and no wait) before the weight
// loads.
// Teams reduce with subgroup operations where the device has them, else in workgroup memory.

const WG: u32 = {{WG}}u;
const TEAM: u32 = {{TEAM}}u;
// The device's subgroup size (1 without subgroups).
const SUBGROUP: u32 = {{SUBGROUP}}u;
const TEAMS: u32 = WG / TEAM;
const R: u32 = {{ROWS_PER_TEAM}}u;
// Weights each thread decodes at a time (8, 16 or 32), and the vectors that hold them.
const WIDTH: u32 = {{MATVEC_WIDTH}}u;
const V: u32 = WIDTH / 4u;
// Weight rows per workgroup.
const ROWS: u32 = TEAMS * R;

@group(0) @binding(0) var<uniform> p: ProductParams;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read> NW: array<vec4<f32>>;

var<workgroup> partial: array<f32, WG>;

fn x_at(i: u32) -> f32 {
    return X[i / 4u][i % 4u];
}

// Elements e..e+3 of x[t], zero past the row's end (rows of any length).
fn x4(t: u32, e: u32) -> vec4<f32> {
    let b = t * p.w_k + e;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (e + i < p.w_k) {
            v[i] = x_at(b + i);
        }
    }
    return v;
}

// Weights WIDTH * g .. WIDTH * (g + 1) of a row.
fn load_width(row: u32, g: u32) -> array<vec4<f32>, V> {
    return {{LOAD_WIDTH}}(row, g);
}

// The sum of `v` over the team of the calling thread, valid in the team's first lane.
fn team_sum(v: f32, li: u32) -> f32 {
{{TEAM_SUM}}
}

// The products of this thread's team's R rows with x[t], complete in the team's first lane.
fn team_products(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> array<f32, R> {
    let lane = li % TEAM;
    let row0 = linear_group(wid, nwg) * ROWS + (li / TEAM) * R;
    let t = wid.z;
    var acc: array<f32, R>;
    var squares = 0.0;
    if (p.w_k % WIDTH == 0u) {
        let xt = t * p.w_k / 4u;
        for (var g = lane; g < p.w_k / WIDTH; g += TEAM) {
            var x: array<vec4<f32>, V>;
            for (var i = 0u; i < V; i++) {
                x[i] = X[xt + V * g + i];
            }
            if (p.norm != 0u) {
                for (var i = 0u; i < V; i++) {
                    squares += dot(x[i], x[i]);
                    x[i] *= NW[V * g + i];
                }
            }
            for (var r = 0u; r < R; r++) {
                if (row0 + r < p.rows) {
                    let w = load_width(row0 + r, g);
                    var d = 0.0;
                    for (var i = 0u; i < V; i++) {
                        d += dot(w[i], x[i]);
                    }
                    acc[r] += d;
                }
            }
        }
    } else {
        for (var g = lane; g < (p.w_k + 7u) / 8u; g += TEAM) {
            let xa = x4(t, 8u * g);
            let xb = x4(t, 8u * g + 4u);
            for (var r = 0u; r < R; r++) {
                if (row0 + r < p.rows) {
                    let w = load8(row0 + r, g);
                    acc[r] += dot(w[0], xa) + dot(w[1], xb);
                }
            }
        }
    }
    // The norm's scale is common to the whole row (the host fuses the norm only into rows
    // that are a multiple of 32 long).
    var scale = 1.0;
    if (p.norm != 0u) {
        scale = inverseSqrt(team_sum(squares, li) / f32(p.w_k) + p.eps);
    }
    var sums: array<f32, R>;
    for (var r = 0u; r < R; r++) {
        sums[r] = team_sum(acc[r], li) * scale;
    }
    return sums;
}

@compute @workgroup_size({{WG}})
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let sums = team_products(wid, nwg, li);
    let row0 = linear_group(wid, nwg) * ROWS + (li / TEAM) * R;
    for (var r = 0u; r < R; r++) {
        let row = row0 + r;
        if (li % TEAM == 0u && row < p.rows) {
            let rg = p.row_start + row;
            let y = wid.z * p.y_stride + rg;
            let value = sums[r] + select(0.0, B[rg], p.has_bias != 0u);
            Y[y] = select(value, Y[y] + value, p.accumulate != 0u);
        }
    }
}

// SwiGLU feed-forward input: rows interleave gate and up (row 2i is gate i, 2i + 1 is up i),
// so a team holds R / 2 whole pairs (R even) and writes y[i] = silu(gate) * up for each.
@compute @workgroup_size({{WG}})
fn matvec_swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let sums = team_products(wid, nwg, li);
    let row0 = linear_group(wid, nwg) * ROWS + (li / TEAM) * R;
    for (var pair = 0u; pair < R / 2u; pair++) {
        let row = row0 + 2u * pair;
        if (li % TEAM == 0u && row + 1u < p.rows) {
            let g = sum_at(sums, 2u * pair);
            Y[wid.z * p.y_stride + (p.row_start + row) / 2u] = g / (1.0 + exp(-g)) * sum_at(sums, 2u * pair + 1u);
        }
    }
}

// Query, key and value rows ([q | k | v], see qkv.wgsl) with R = 4: a team's four sums (plus
// bias) are two rotation pairs, finished by the shared epilogue.
@compute @workgroup_size({{WG}})
fn matvec_qkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let sums = team_products(wid, nwg, li);
    let row0 = linear_group(wid, nwg) * ROWS + (li / TEAM) * R;
    if (li % TEAM != 0u || row0 >= p.rows) {
        return;
    }
    let c = p.row_start + row0;
    var v = vec4<f32>(sum_at(sums, 0u), sum_at(sums, 1u), sum_at(sums, 2u), sum_at(sums, 3u));
    if (p.has_bias != 0u) {
        v += vec4<f32>(B[c], B[c + 1u], B[c + 2u], B[c + 3u]);
    }
    let qkv_layout = QkvLayout(p.pos, p.head_dim, p.y_stride, p.kv_width, p.neox);
    store_qkv(qkv_layout, wid.z, c, v);
}

// sums[i], for entries built with more rows than other entries of their module, where the
// index must still be valid.
fn sum_at(sums: array<f32, R>, i: u32) -> f32 {
    return sums[min(i, R - 1u)];
}

