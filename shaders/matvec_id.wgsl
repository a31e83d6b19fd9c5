// Products with the experts each row chose (ggml's mul_mat_id), straight from the quantized
// weights: for choice c = t k + j of row t, expert e = routes[t][j], y[c] = W_e · x[c's input]
// where W_e is the e-th block of `rows` rows of the matrix. One workgroup per (row of a
// block, choice): its threads take groups of 8 weights in turn and sum in workgroup memory.
// A part of the matrix holds whole experts; choices of experts outside it leave their rows to
// the other parts' dispatches.

struct IdParams {
    w_k: u32,
    w_bpr: u32,
    w_scales: u32,
    // Rows of one expert's block: the width of a y row.
    rows: u32,
    // Experts a row chose.
    k: u32,
    // The experts this part holds: `experts` of them from `expert_start`.
    expert_start: u32,
    experts: u32,
    // 1: choice c reads row c of x; 0: row t = c / k, shared by the row's choices.
    per_choice: u32,
}

@group(0) @binding(0) var<uniform> p: IdParams;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> R: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

const THREADS: u32 = 64u;

var<workgroup> partial: array<f32, THREADS>;
var<workgroup> chosen: u32;

@compute @workgroup_size(64)
fn matvec_id(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let row = linear_group(wid, nwg);
    let c = wid.z;
    let t = c / p.k;
    if (li == 0u) {
        // Saturating: an id past the experts (a NaN route) matches no part.
        chosen = u32(R[t * 2u * p.k + c % p.k]);
    }
    let e = workgroupUniformLoad(&chosen);
    if (row >= p.rows || e < p.expert_start || e - p.expert_start >= p.experts) {
        return;
    }
    let w_row = (e - p.expert_start) * p.rows + row;
    let x0 = select(t, c, p.per_choice != 0u) * p.w_k;
    var acc = 0.0;
    for (var g = li; g < (p.w_k + 7u) / 8u; g += THREADS) {
        let w = load8(w_row, g);
        for (var i = 0u; i < 8u; i++) {
            let col = 8u * g + i;
            if (col < p.w_k) {
                acc += w[i / 4u][i % 4u] * X[x0 + col];
            }
        }
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        Y[c * p.rows + row] = partial[0];
    }
}
