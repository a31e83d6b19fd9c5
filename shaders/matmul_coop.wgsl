// Matrix-matrix products Y = X · Wᵀ (+ bias), or Y += X · Wᵀ, on cooperative matrices (tensor
// cores): 16×16×16 f16 products accumulated in f32, from weights already decoded to f16
// (dequant_f16, one slice of rows at a time). A workgroup of eight subgroups computes a tile
// of BM tokens × 128 weight rows. Steps of 32 along the rows go through two buffers in
// workgroup memory, one barrier per step; each step's weights and activations are loaded into
// registers two steps ahead. Results of a whole tile go straight from the tensor cores to y;
// those of a part-filled tile, and the GLU of gate/up row pairs, through workgroup memory.
// (Tried on the H200 and slower: 64 × 64, 128 × 64, 32 × 64 and 32 × 128 tiles of 32 × 32 per
// subgroup; steps of 64.) Requires w_k % 32 == 0.

// Tokens per tile: 128 for products with enough rows to fill the card with such tiles, else
// 64 (kernels.rs, Kernel::MatmulCoop). Each subgroup computes BM / 2 tokens × 32 rows: its
// tensor-core loads from workgroup memory, not its products, bound it, so taller tiles
// (more products per load) are faster where there are enough of them.
const BM: u32 = {{COOP_TOKENS}}u;
// Tiles of 16 tokens per subgroup: 2 or 4.
const TALL: bool = BM == 128u;
// The width of a y row this kernel was built for (naga can store a cooperative matrix only
// with a constant stride); 0: none. Whole tiles of a product whose y rows are this wide go
// straight from the tensor cores to y.
const Y_STRIDE: u32 = {{COOP_Y_STRIDE}}u;
const BN: u32 = 128u;
const BK: u32 = 32u;
const WG: u32 = 256u;
// Tile rows as vec4<f16> (8-byte stores), padded by two vectors so that the eight 16-byte rows
// one tensor-core load reads fall in distinct banks (10–20% faster than unpadded).
const S: u32 = BK / 4u + 2u;

@group(0) @binding(0) var<uniform> p: ProductParams;
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

// Two buffers each: [token][k] and [weight row][k].
var<workgroup> x_tile: array<vec4<f16>, 2 * BM * S>;
var<workgroup> w_tile: array<vec4<f16>, 2 * BN * S>;
// One 16 × 16 result per subgroup on its way out.
var<workgroup> c_tile: array<f32, 8 * 256>;

// What one thread carries from memory to workgroup memory per step: 8 weights of each of two
// rows, 4 activations of each of BM / 32 tokens (held in plain variables: arrays indexed in
// loops may live in slow local memory).
struct Staged {
    w0: vec4<u32>,
    w1: vec4<u32>,
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
}

// Vector c of the weight tile (BK / 8 per row) and of the activation tile (BK / 4 per token).
fn fetch_w(c: u32, row0: u32, k0: u32) -> vec4<u32> {
    let row = row0 + c / (BK / 8u);
    return select(vec4<u32>(0u), W[row * (p.w_k / 8u) + k0 / 8u + c % (BK / 8u)], row < p.rows);
}

fn fetch_x(c: u32, tok0: u32, k0: u32) -> vec4<f32> {
    let tok = tok0 + c / (BK / 4u);
    return select(vec4<f32>(0.0), X[tok * (p.w_k / 4u) + k0 / 4u + c % (BK / 4u)], tok < p.n_tokens);
}

fn fetch(li: u32, tok0: u32, row0: u32, k0: u32) -> Staged {
    var s = Staged(fetch_w(li, row0, k0), fetch_w(li + WG, row0, k0), fetch_x(li, tok0, k0),
        fetch_x(li + WG, tok0, k0), vec4<f32>(), vec4<f32>());
    if (TALL) {
        s.x2 = fetch_x(li + 2u * WG, tok0, k0);
        s.x3 = fetch_x(li + 3u * WG, tok0, k0);
    }
    return s;
}

fn stash_w(c: u32, w: vec4<u32>, buf: u32) {
    let at = buf * BN * S + (c / (BK / 8u)) * S + 2u * (c % (BK / 8u));
    // (naga 30 types bitcast<vec4<f16>>(vec2<u32>) wrongly, so through f32.)
    w_tile[at] = vec4<f16>(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)));
    w_tile[at + 1u] = vec4<f16>(vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));
}

fn stash_x(c: u32, x: vec4<f32>, buf: u32) {
    x_tile[buf * BM * S + (c / (BK / 4u)) * S + c % (BK / 4u)] = vec4<f16>(x);
}

fn stash(li: u32, s: Staged, buf: u32) {
    stash_w(li, s.w0, buf);
    stash_w(li + WG, s.w1, buf);
    stash_x(li, s.x0, buf);
    stash_x(li + WG, s.x1, buf);
    if (TALL) {
        stash_x(li + 2u * WG, s.x2, buf);
        stash_x(li + 3u * WG, s.x3, buf);
    }
}

// Writes one 16 × 16 accumulator of tokens t0.., rows r0.. (tile-relative) through c_tile.
fn finish(acc: coop_mat16x16<f32, C>, sg: u32, lane: u32, tok0: u32, row0: u32) {
    coopStoreT(acc, &c_tile[sg * 256u], 16u);
    workgroupBarrier();
    if (p.glu != 0u) {
        finish_pairs(sg, lane, tok0, row0);
        return;
    }
    for (var i = lane; i < 256u; i += 32u) {
        let t = tok0 + i / 16u;
        let rl = row0 + i % 16u;
        if (t < p.n_tokens && rl < p.rows) {
            let rg = p.row_start + rl;
            let y = t * p.y_stride + rg;
            let v = c_tile[sg * 256u + i] + select(0.0, bias[rg], p.has_bias != 0u);
            Y[y] = select(v, Y[y] + v, p.accumulate != 0u);
        }
    }
    workgroupBarrier();
}

// The GLU of the (gate, up) row pairs of the 16 × 16 result in c_tile (rows are pairs from an
// even row on: slices and parts start on even rows).
fn finish_pairs(sg: u32, lane: u32, tok0: u32, row0: u32) {
    for (var j = lane; j < 128u; j += 32u) {
        let t = tok0 + j / 8u;
        let rl = row0 + 2u * (j % 8u);
        if (t < p.n_tokens && rl < p.rows) {
            let at = sg * 256u + (j / 8u) * 16u + 2u * (j % 8u);
            let g = c_tile[at];
            Y[t * p.y_stride + (p.row_start + rl) / 2u] = activate(p.glu, g) * c_tile[at + 1u];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
               @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let tok0 = wid.x * BM;
    let row0 = wid.y * BN;
    // Subgroup sg owns tokens sm * 64.. and weight rows sn * 32.. of the tile.
    let sm = sg / (BN / 32u);
    let sn = sg % (BN / 32u);
    let t = tok0 + sm * (BM / 2u);
    let r = row0 + sn * 32u;
    // A whole tile goes straight to y, its accumulators starting from y (the residual) or the
    // bias (read with a row stride of 0); else through c_tile (finish). (Non-short-circuit
    // & and |: naga would take a short-circuit condition for non-uniform control flow, where
    // tensor-core operations may not be.)
    let direct = (Y_STRIDE == p.y_stride) & (tok0 + BM <= p.n_tokens) & (row0 + BN <= p.rows)
        & (p.glu == 0u) & ((p.has_bias == 0u) | (p.accumulate == 0u));
    let y = t * Y_STRIDE + p.row_start + r;
    var acc00 = coop_mat16x16<f32, C>();
    var acc01 = coop_mat16x16<f32, C>();
    var acc10 = coop_mat16x16<f32, C>();
    var acc11 = coop_mat16x16<f32, C>();
    var acc20 = coop_mat16x16<f32, C>();
    var acc21 = coop_mat16x16<f32, C>();
    var acc30 = coop_mat16x16<f32, C>();
    var acc31 = coop_mat16x16<f32, C>();
    if (direct & (p.accumulate != 0u)) {
        acc00 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y], Y_STRIDE);
        acc01 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y + 16u], Y_STRIDE);
        acc10 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y + 16u * Y_STRIDE], Y_STRIDE);
        acc11 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y + 16u * Y_STRIDE + 16u], Y_STRIDE);
        if (TALL) {
            acc20 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y + 32u * Y_STRIDE], Y_STRIDE);
            acc21 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y + 32u * Y_STRIDE + 16u], Y_STRIDE);
            acc30 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y + 48u * Y_STRIDE], Y_STRIDE);
            acc31 = coopLoadT<coop_mat16x16<f32, C>>(&Y[y + 48u * Y_STRIDE + 16u], Y_STRIDE);
        }
    }
    if (direct & (p.has_bias != 0u)) {
        let b = p.row_start + r;
        acc00 = coopLoadT<coop_mat16x16<f32, C>>(&bias[b], 0u);
        acc01 = coopLoadT<coop_mat16x16<f32, C>>(&bias[b + 16u], 0u);
        acc10 = acc00;
        acc11 = acc01;
        acc20 = acc00;
        acc21 = acc01;
        acc30 = acc00;
        acc31 = acc01;
    }
    let steps = p.w_k / BK;
    stash(li, fetch(li, tok0, row0, 0u), 0u);
    workgroupBarrier();
    // Loads run two steps ahead of their use: a step's products alone do not cover the
    // latency of a load from L2 (with one step, waiting for them halved the kernel's rate).
    // The last steps fetch the last step again, unused: no branch around the loads.
    var pending = fetch(li, tok0, row0, min(1u, steps - 1u) * BK);
    for (var step = 0u; step < steps; step++) {
        let buf = step % 2u;
        let ahead = fetch(li, tok0, row0, min(step + 2u, steps - 1u) * BK);
        let xb = buf * BM * S + sm * (BM / 2u) * S;
        let wb = buf * BN * S + sn * 32u * S;
        for (var kk = 0u; kk < BK / 4u; kk += 4u) {
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[wb + kk], S);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[wb + 16u * S + kk], S);
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[xb + kk], S);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[xb + 16u * S + kk], S);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
            if (TALL) {
                let a2 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[xb + 32u * S + kk], S);
                let a3 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[xb + 48u * S + kk], S);
                acc20 = coopMultiplyAdd(a2, b0, acc20);
                acc21 = coopMultiplyAdd(a2, b1, acc21);
                acc30 = coopMultiplyAdd(a3, b0, acc30);
                acc31 = coopMultiplyAdd(a3, b1, acc31);
            }
        }
        stash(li, pending, 1u - buf);
        pending = ahead;
        workgroupBarrier();
    }
    if (direct) {
        coopStoreT(acc00, &Y[y], Y_STRIDE);
        coopStoreT(acc01, &Y[y + 16u], Y_STRIDE);
        coopStoreT(acc10, &Y[y + 16u * Y_STRIDE], Y_STRIDE);
        coopStoreT(acc11, &Y[y + 16u * Y_STRIDE + 16u], Y_STRIDE);
        if (TALL) {
            coopStoreT(acc20, &Y[y + 32u * Y_STRIDE], Y_STRIDE);
            coopStoreT(acc21, &Y[y + 32u * Y_STRIDE + 16u], Y_STRIDE);
            coopStoreT(acc30, &Y[y + 48u * Y_STRIDE], Y_STRIDE);
            coopStoreT(acc31, &Y[y + 48u * Y_STRIDE + 16u], Y_STRIDE);
        }
        return;
    }
    finish(acc00, sg, lane, t, r);
    finish(acc01, sg, lane, t, r + 16u);
    finish(acc10, sg, lane, t + 16u, r);
    finish(acc11, sg, lane, t + 16u, r + 16u);
    if (TALL) {
        finish(acc20, sg, lane, t + 32u, r);
        finish(acc21, sg, lane, t + 32u, r + 16u);
        finish(acc30, sg, lane, t + 48u, r);
        finish(acc31, sg, lane, t + 48u, r + 16u);
    }
}
