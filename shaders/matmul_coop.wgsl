// Matrix-matrix products Y = X · Wᵀ (+ bias), or Y += X · Wᵀ, on cooperative matrices (tensor
// cores): 16×16×16 f16 products accumulated in f32. A workgroup of eight subgroups computes a
// tile of 64 tokens × 128 weight rows; per step of 32 along the rows, the weight tile is decoded
// to f16 in workgroup memory and the activations tile converted beside it. Results go through
// workgroup memory (a constant stride: naga cannot store with a runtime stride) so the epilogue
// can apply bounds, bias and the residual add.

const BM: u32 = 64u;
const BN: u32 = 128u;
const BK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: ProductParams;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

// [token][k] and [weight row][k], BK wide.
var<workgroup> x_tile: array<f16, BM * BK>;
var<workgroup> w_tile: array<f16, BN * BK>;
// [token][weight row].
var<workgroup> y_tile: array<f32, BM * BN>;

@compute @workgroup_size(256)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
               @builtin(subgroup_id) sg: u32) {
    let tok0 = wid.y * BM;
    let row0 = wid.x * BN;
    // Loading: thread li decodes 16 weights of weight row li / 2, and
    // stages 8 activations of token li / 4.
    let r = li / 2u;
    let half = li % 2u;
    let xr = li / 4u;
    let quarter = li % 4u;
    // Computing: subgroup sg owns tokens sm * 32.. and weight rows sn * 32.. of the tile.
    let sm = sg / 4u;
    let sn = sg % 4u;
    var acc00 = coop_mat16x16<f32, C>();
    var acc01 = coop_mat16x16<f32, C>();
    var acc10 = coop_mat16x16<f32, C>();
    var acc11 = coop_mat16x16<f32, C>();
    let row = row0 + r;
    let tok = tok0 + xr;
    for (var k0 = 0u; k0 < p.w_k; k0 += BK) {
        let g = k0 / 8u + 2u * half;
        let kt = r * BK + 16u * half;
        // Sixteen weights in one decode where rows are whole groups of 16 (one scale decode
        // for the K-quants), else as two groups of 8.
        var w: array<vec4<f32>, 4>;
        if (row < p.rows && g * 8u < p.w_k) {
            if (p.w_k % 16u == 0u) {
                w = load16(row, g / 2u);
            } else {
                let a = load8(row, g);
                w[0] = a[0];
                w[1] = a[1];
                if ((g + 1u) * 8u < p.w_k) {
                    let b = load8(row, g + 1u);
                    w[2] = b[0];
                    w[3] = b[1];
                }
            }
        }
        for (var i = 0u; i < 4u; i++) {
            w_tile[kt + 4u * i] = f16(w[i].x);
            w_tile[kt + 4u * i + 1u] = f16(w[i].y);
            w_tile[kt + 4u * i + 2u] = f16(w[i].z);
            w_tile[kt + 4u * i + 3u] = f16(w[i].w);
        }
        let e0 = k0 + 8u * quarter;
        let xt = xr * BK + 8u * quarter;
        for (var i = 0u; i < 8u; i++) {
            var x = 0.0;
            if (tok < p.n_tokens && e0 + i < p.w_k) {
                x = X[tok * p.w_k + e0 + i];
            }
            x_tile[xt + i] = f16(x);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += 16u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[(sm * 32u) * BK + kk], BK);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[(sm * 32u + 16u) * BK + kk], BK);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[(sn * 32u) * BK + kk], BK);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[(sn * 32u + 16u) * BK + kk], BK);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        workgroupBarrier();
    }
    let c = (sm * 32u) * BN + sn * 32u;
    coopStoreT(acc00, &y_tile[c], BN);
    coopStoreT(acc01, &y_tile[c + 16u], BN);
    coopStoreT(acc10, &y_tile[c + 16u * BN], BN);
    coopStoreT(acc11, &y_tile[c + 16u * BN + 16u], BN);
    workgroupBarrier();
    for (var i = li; i < BM * BN; i += 256u) {
        let t = tok0 + i / BN;
        let rl = row0 + i % BN;
        if (t < p.n_tokens && rl < p.rows) {
            let rg = p.row_start + rl;
            let y = t * p.y_stride + rg;
            let v = y_tile[i] + select(0.0, bias[rg], p.has_bias != 0u);
            Y[y] = select(v, Y[y] + v, p.accumulate != 0u);
        }
    }
}
