// Matrix-vector products y[t] = W · x[t] (+ bias), or y[t] += W · x[t] (the residual add
// fused), straight from the quantized weights, for decoding (token t = workgroup z). A team of
// TEAM threads owns one weight row and strides over it 32 weights at a time (8 where the row
// length is not a multiple of 32).
// Teams reduce with subgroupAdd when a team is exactly one subgroup (SUBGROUP_REDUCE),
// otherwise through workgroup memory.

struct Params {
    w_k: u32,
    w_bpr: u32,
    w_scales: u32,
    rows: u32,
    row_start: u32,
    // Width of a y row (all rows of the whole matrix).
    y_stride: u32,
    has_bias: u32,
    n_tokens: u32,
    accumulate: u32,
    // 1: x is RMS-normalised on the fly (weight NW, epsilon eps) before the product.
    norm: u32,
    eps: f32,
}

const WG: u32 = {{WG}}u;
const TEAM: u32 = {{TEAM}}u;
const ROWS: u32 = WG / TEAM;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read> NW: array<vec4<f32>>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> team_totals: array<f32, ROWS>;

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

fn dot32(w: array<vec4<f32>, 8>, x: u32) -> f32 {
    return dot(w[0], X[x]) + dot(w[1], X[x + 1u]) + dot(w[2], X[x + 2u]) + dot(w[3], X[x + 3u])
        + dot(w[4], X[x + 4u]) + dot(w[5], X[x + 5u]) + dot(w[6], X[x + 6u]) + dot(w[7], X[x + 7u]);
}

// The sum of `v` over the team of the calling thread, valid in the team's first lane.
fn team_sum(v: f32, li: u32) -> f32 {
{{TEAM_SUM}}
}

// 1 / rms(x[t]), computed by the whole workgroup (the row length is a multiple of 4 here).
fn inverse_rms(t: u32, li: u32) -> f32 {
    var s = 0.0;
    for (var i = li; i < p.w_k / 4u; i += WG) {
        let v = X[t * p.w_k / 4u + i];
        s += dot(v, v);
    }
    let team = team_sum(s, li);
    if (li % TEAM == 0u) {
        team_totals[li / TEAM] = team;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < ROWS; i++) {
        total += team_totals[i];
    }
    return inverseSqrt(total / f32(p.w_k) + p.eps);
}

fn dot32_normed(w: array<vec4<f32>, 8>, x: u32, n: u32, scale: f32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < 8u; i++) {
        s += dot(w[i], X[x + i] * NW[n + i]);
    }
    return s * scale;
}

@compute @workgroup_size({{WG}})
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let lane = li % TEAM;
    let row = linear_group(wid, nwg) * ROWS + li / TEAM;
    let t = wid.z;
    let groups = (p.w_k + 7u) / 8u;
    var acc = 0.0;
    if (p.norm != 0u) {
        // Only used with rows of whole 32-blocks.
        let scale = inverse_rms(t, li);
        let x0 = t * p.w_k / 4u;
        if (row < p.rows) {
            for (var c = lane; c < p.w_k / 32u; c += TEAM) {
                acc += dot32_normed(load32(row, c), x0 + 8u * c, 8u * c, scale);
            }
        }
    } else if (row < p.rows && p.w_k % 32u == 0u) {
        let x0 = t * p.w_k / 4u;
        for (var c = lane; c < p.w_k / 32u; c += TEAM) {
            acc += dot32(load32(row, c), x0 + 8u * c);
        }
    } else if (row < p.rows) {
        for (var g = lane; g < groups; g += TEAM) {
            let w = load8(row, g);
            acc += dot(w[0], x4(t, 8u * g)) + dot(w[1], x4(t, 8u * g + 4u));
        }
    }
    let sum = team_sum(acc, li);
    if (lane == 0u && row < p.rows) {
        let r = p.row_start + row;
        let y = t * p.y_stride + r;
        let value = sum + select(0.0, B[r], p.has_bias != 0u);
        Y[y] = select(value, Y[y] + value, p.accumulate != 0u);
    }
}
