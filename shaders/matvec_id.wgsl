// Products with the experts each row chose (ggml's mul_mat_id), straight from the quantized
// weights: for choice c = t k + j of row t, expert e = routes[t][j], y[c] = W_e · x[c's input]
// where W_e is the e-th block of `rows` rows of the matrix. A part of the matrix holds whole
// experts; choices of experts outside it leave their rows to the other parts' dispatches.
// Decoding (matvec_id): one workgroup per (row of a block, choice), its threads taking groups
// of 8 weights in turn. Prompts (matmul_id): per expert, tiles of its rows × the choices of
// its list (moe.wgsl's moe_lists), as matmul.wgsl tiles rows × tokens, so that each expert's
// weights are decoded once per 64 of its choices.

// IdParams is declared by the host (src/backend/gpu/params.rs).

@group(0) @binding(0) var<uniform> p: IdParams;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> R: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
// matmul_id: each expert's list of choices.
@group(0) @binding(5) var<storage, read> L: array<f32>;

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

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;

// [k][rows or choices / 4]: a thread reads its 4 rows (or choices) at one k as one vec4.
var<workgroup> w_tile: array<array<vec4<f32>, 16>, BK>;
var<workgroup> x_tile: array<array<vec4<f32>, 16>, BK>;
var<workgroup> listed: u32;

// Workgroup (row tile x, list tile y, expert z of the part): matmul.wgsl's tile over the
// expert's rows and the choices y·BN.. of its list, each choice's input row gathered and its
// outputs scattered to its own row of y.
@compute @workgroup_size(256)
fn matmul_id(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let list = (p.expert_start + wid.z) * (p.n + 1u);
    if (li == 0u) {
        listed = u32(L[list]);
    }
    let count = workgroupUniformLoad(&listed);
    let row0 = wid.x * BM;
    let slot0 = wid.y * BN;
    if (slot0 >= count) {
        return;
    }
    // Loading: thread li decodes group (li % 4) of row li / 4 of the weight tile, and stages
    // 8 activations of the tile's choice li / 4.
    let load_row = li / 4u;
    let load_group = li % 4u;
    // Computing: thread owns rows tr * 4.. and choices tc * 4.. of the tile.
    let tr = li / 16u;
    let tc = li % 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let row = row0 + load_row;
    let w_row = wid.z * p.rows + row;
    let x_ok = slot0 + load_row < count;
    var x_row = 0u;
    if (x_ok) {
        let c = u32(L[list + 1u + slot0 + load_row]);
        x_row = select(c / p.k, c, p.per_choice != 0u);
    }
    for (var k0 = 0u; k0 < p.w_k; k0 += BK) {
        let g = k0 / 8u + load_group;
        var w = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
        if (row < p.rows && g * 8u < p.w_k) {
            w = load8(w_row, g);
        }
        let e0 = 8u * g;
        let kt = 8u * load_group;
        let slot = load_row / 4u;
        let lane = load_row % 4u;
        let x_base = x_row * p.w_k + e0;
        for (var i = 0u; i < 4u; i++) {
            w_tile[kt + i][slot][lane] = w[0][i];
            w_tile[kt + 4u + i][slot][lane] = w[1][i];
        }
        for (var i = 0u; i < 8u; i++) {
            x_tile[kt + i][slot][lane] = select(0.0, X[x_base + i], x_ok && e0 + i < p.w_k);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = w_tile[kk][tr];
            let b = x_tile[kk][tc];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var j = 0u; j < 4u; j++) {
        let s = slot0 + tc * 4u + j;
        if (s >= count) {
            continue;
        }
        let c = u32(L[list + 1u + s]);
        for (var i = 0u; i < 4u; i++) {
            let r = row0 + tr * 4u + i;
            if (r < p.rows) {
                Y[c * p.rows + r] = accs[i][j];
            }
        }
    }
}
