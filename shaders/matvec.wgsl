// Matrix-vector products y[t] = W · x[t] (+ bias) straight from the quantized weights:
// one workgroup per weight row and token, threads striding over the row 8 elements at a time.

struct Params {
    w_k: u32,
    w_bpr: u32,
    w_scales: u32,
    rows: u32,
    row_start: u32,
    // Width of a y row (all rows of the whole matrix).
    y_stride: u32,
    has_bias: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> partial: array<f32, WG>;

fn x4(t: u32, e: u32) -> vec4<f32> {
    let b = t * p.w_k + e;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (e + i < p.w_k) {
            v[i] = X[b + i];
        }
    }
    return v;
}

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let row = linear_group(wid, nwg);
    let t = wid.z;
    let groups = (p.w_k + 7u) / 8u;
    var acc = 0.0;
    if (row < p.rows) {
        for (var g = li; g < groups; g += WG) {
            let w = load8(row, g);
            acc += dot(w[0], x4(t, 8u * g)) + dot(w[1], x4(t, 8u * g + 4u));
        }
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u && row < p.rows) {
        let r = p.row_start + row;
        Y[t * p.y_stride + r] = partial[0] + select(0.0, B[r], p.has_bias != 0u);
    }
}
