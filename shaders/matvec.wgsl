// Matrix-vector products y[t] = W · x[t] (+ bias) straight from the quantized weights, for
// decoding (token t = workgroup z). A team of TEAM threads owns one weight row and strides
// over it 8 weights at a time.
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
}

const WG: u32 = {{WG}}u;
const TEAM: u32 = {{TEAM}}u;
const ROWS: u32 = WG / TEAM;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> partial: array<f32, WG>;

fn x4(t: u32, e: u32) -> vec4<f32> {
    let b = t * p.w_k + e;
    if (e + 4u <= p.w_k) {
        return vec4<f32>(X[b], X[b + 1u], X[b + 2u], X[b + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (e + i < p.w_k) {
            v[i] = X[b + i];
        }
    }
    return v;
}

// The sum of `v` over the team of the calling thread, valid in the team's first lane.
fn team_sum(v: f32, li: u32) -> f32 {
{{TEAM_SUM}}
}

@compute @workgroup_size({{WG}})
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let lane = li % TEAM;
    let row = linear_group(wid, nwg) * ROWS + li / TEAM;
    let t = wid.z;
    let groups = (p.w_k + 7u) / 8u;
    var acc = 0.0;
    if (row < p.rows) {
        for (var g = lane; g < groups; g += TEAM) {
            let w = load8(row, g);
            acc += dot(w[0], x4(t, 8u * g)) + dot(w[1], x4(t, 8u * g + 4u));
        }
    }
    let sum = team_sum(acc, li);
    if (lane == 0u && row < p.rows) {
        let r = p.row_start + row;
        Y[t * p.y_stride + r] = sum + select(0.0, B[r], p.has_bias != 0u);
    }
}
