// Matrix-matrix products Y = X · Wᵀ (+ bias), or Y += X · Wᵀ, for prompt processing: each workgroup computes a
// tile of BM weight rows × BN tokens. Per step of BK along the rows, the weight tile is decoded
// once into workgroup memory (8 weights per thread), the activations tile is staged beside it,
// and every thread accumulates a 4 × 4 block of outputs.

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: ProductParams;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

// [k][rows or tokens / 4]: a thread reads its 4 rows (or tokens) at one k as one vec4.
var<workgroup> w_tile: array<array<vec4<f32>, 16>, BK>;
var<workgroup> x_tile: array<array<vec4<f32>, 16>, BK>;

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wid.x * BM;
    let tok0 = wid.y * BN;
    // Loading: thread li decodes group (li % 4) of row li / 4 of the weight tile, and stages
    // 8 activations of token li / 4.
    let load_row = li / 4u;
    let load_group = li % 4u;
    // Computing: thread owns rows tr * 4.. and tokens tc * 4.. of the tile.
    let tr = li / 16u;
    let tc = li % 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let tok = tok0 + load_row;
    let row = row0 + load_row;
    for (var k0 = 0u; k0 < p.w_k; k0 += BK) {
        let g = k0 / 8u + load_group;
        var w = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
        if (row < p.rows && g * 8u < p.w_k) {
            w = load8(row, g);
        }
        let e0 = 8u * g;
        let kt = 8u * load_group;
        let slot = load_row / 4u;
        let lane = load_row % 4u;
        let x_base = tok * p.w_k + e0;
        let x_ok = tok < p.n_tokens;
        w_tile[kt][slot][lane] = w[0].x;
        w_tile[kt + 1u][slot][lane] = w[0].y;
        w_tile[kt + 2u][slot][lane] = w[0].z;
        w_tile[kt + 3u][slot][lane] = w[0].w;
        w_tile[kt + 4u][slot][lane] = w[1].x;
        w_tile[kt + 5u][slot][lane] = w[1].y;
        w_tile[kt + 6u][slot][lane] = w[1].z;
        w_tile[kt + 7u][slot][lane] = w[1].w;
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
    for (var i = 0u; i < 4u; i++) {
        let r_local = row0 + tr * 4u + i;
        if (r_local >= p.rows) {
            continue;
        }
        let r = p.row_start + r_local;
        let bias = select(0.0, B[r], p.has_bias != 0u);
        for (var j = 0u; j < 4u; j++) {
            let t = tok0 + tc * 4u + j;
            if (t < p.n_tokens) {
                let y = t * p.y_stride + r;
                Y[y] = select(accs[i][j] + bias, Y[y] + accs[i][j] + bias, p.accumulate != 0u);
            }
        }
    }
}
