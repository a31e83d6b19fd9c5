// Matrix-vector products y[t] = W · x[t] (+ bias), or y[t] += W · x[t] (the residual add
// fused), straight from the quantized weights, for decoding (token t = workgroup z).
// A team of TEAM threads owns R weight rows and computes their products with x[t] in
// `team_products`: matvec_float.wgsl (f32 activations, any weight type) or matvec_int8.wgsl
// (8-bit activations and integer dot products, for the K-quants). With `norm`, x is
// RMS-normalised on the fly: the products sum x² themselves and scale their dot products at
// the end, with no separate pass (and no wait) before the weight loads.
// Teams reduce with subgroup operations where the device has them, else in workgroup memory.

const WG: u32 = {{WG}}u;
const TEAM: u32 = {{TEAM}}u;
// The device's subgroup size (1 without subgroups).
const SUBGROUP: u32 = {{SUBGROUP}}u;
const TEAMS: u32 = WG / TEAM;
const R: u32 = {{ROWS_PER_TEAM}}u;
// Weight rows per workgroup.
const ROWS: u32 = TEAMS * R;

@group(0) @binding(0) var<uniform> p: ProductParams;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read> NW: array<vec4<f32>>;

var<workgroup> partial: array<f32, WG>;

// The sum of `v` over the team of the calling thread, valid in the team's first lane.
fn team_sum(v: f32, li: u32) -> f32 {
{{TEAM_SUM}}
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

// Gated feed-forward input: rows interleave gate and up (row 2i is gate i, 2i + 1 is up i),
// so a team holds R / 2 whole pairs (R even) and writes y[i] = act(gate) * up for each (the
// activation p.glu).
@compute @workgroup_size({{WG}})
fn matvec_glu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let sums = team_products(wid, nwg, li);
    let row0 = linear_group(wid, nwg) * ROWS + (li / TEAM) * R;
    for (var pair = 0u; pair < R / 2u; pair++) {
        let row = row0 + 2u * pair;
        if (li % TEAM == 0u && row + 1u < p.rows) {
            let g = sum_at(sums, 2u * pair);
            Y[wid.z * p.y_stride + (p.row_start + row) / 2u] = activate(p.glu, g) * sum_at(sums, 2u * pair + 1u);
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
    let qkv_layout = QkvLayout(p.pos, p.head_dim, p.y_stride, p.kv_width, p.neox, 0u);
    store_qkv(qkv_layout, wid.z, c, v);
}

// sums[i], for entries built with more rows than other entries of their module, where the
// index must still be valid.
fn sum_at(sums: array<f32, R>, i: u32) -> f32 {
    return sums[min(i, R - 1u)];
}

