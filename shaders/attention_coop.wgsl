// Prompts on tensor cores, flash style: one workgroup of four subgroups per (query head, tile
// of 64 tokens); each subgroup owns 16 query rows and walks the keys 64 at a time:
//   S = Q·Kᵀ (16 × 64, f16 products, f32 sums; keys read straight from the f16 cache),
//   an online softmax of S's rows in workgroup memory (P in f16),
//   O = O·correction + P·V, four 16 × 16 blocks of O at a time through workgroup memory, O
//   held in the lanes' registers.
// Heads of up to 128 values, a multiple of 16. Every subgroup of a workgroup runs the same
// number of steps, so workgroup barriers stand in for subgroup ones (six per step).

const BQ: u32 = 64u;
const BKV: u32 = 64u;
const HD_MAX: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f16>;
@group(0) @binding(3) var<storage, read> v_cache: array<f16>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

// Scaled queries [token][d], f16.
var<workgroup> q_tile: array<f16, BQ * HD_MAX>;
// Per subgroup: scores [row][key] (16 × 64 f32), later four 16 × 16 blocks of P·V.
var<workgroup> s_tile: array<f32, 4 * 16 * BKV>;
// Per subgroup: softmax weights [row][key], f16.
var<workgroup> p_tile: array<f16, 4 * 16 * BKV>;
// Per subgroup and row: the correction of this step, then the final sum.
var<workgroup> row_factor: array<f32, 4 * 16>;

@compute @workgroup_size(128)
fn attention_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
                  @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let h = wid.x;
    let q0 = wid.y * BQ;
    let hd = p.head_dim;
    let blocks = hd / 16u;
    let kv_off = (h / (p.n_head / p.n_head_kv)) * hd;
    for (var i = li; i < BQ * hd; i += 128u) {
        let t = q0 + i / hd;
        var v = 0.0;
        if (t < p.n) {
            v = Q[q_row(t) + h * hd + i % hd] * p.scale;
        }
        q_tile[i] = f16(v);
    }
    workgroupBarrier();
    // Lane (row, half): row r = lane / 2 of the subgroup's 16, keys 32 * half.. of each step.
    let r = lane / 2u;
    let half = lane % 2u;
    let row_q = q0 + sg * 16u + r;
    let row_keys = p.pos + row_q + 1u;
    let row_first = first_key(p.pos + row_q);
    // The last key any query of this tile sees, plus one.
    let n_keys = p.pos + min(q0 + BQ, p.n);
    var m = -3.4e38;
    var l = 0.0;
    // O's elements of this lane: block b, element lane + 32 e of the 16 × 16 block.
    var o: array<array<f32, 8>, 8>;
    for (var b = 0u; b < 8u; b++) {
        for (var e = 0u; e < 8u; e++) {
            o[b][e] = 0.0;
        }
    }
    let s_base = sg * 16u * BKV;
    // From the tile's first visible key, rounded down to a step (aligned tensor-core loads).
    for (var k0 = first_key(p.pos + q0) / BKV * BKV; k0 < n_keys; k0 += BKV) {
        // Scores of the subgroup's 16 rows against keys k0.. (four 16-key blocks).
        var s0 = coop_mat16x16<f32, C>();
        var s1 = coop_mat16x16<f32, C>();
        var s2 = coop_mat16x16<f32, C>();
        var s3 = coop_mat16x16<f32, C>();
        let kc = k0 * p.kv_width + kv_off;
        let kw = p.kv_width;
        for (var d = 0u; d < hd; d += 16u) {
            let a = coopLoadT<coop_mat16x16<f16, A>>(&q_tile[sg * 16u * hd + d], hd);
            s0 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&k_cache[kc + d], kw), s0);
            s1 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&k_cache[kc + 16u * kw + d], kw), s1);
            s2 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&k_cache[kc + 32u * kw + d], kw), s2);
            s3 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&k_cache[kc + 48u * kw + d], kw), s3);
        }
        coopStoreT(s0, &s_tile[s_base], BKV);
        coopStoreT(s1, &s_tile[s_base + 16u], BKV);
        coopStoreT(s2, &s_tile[s_base + 32u], BKV);
        coopStoreT(s3, &s_tile[s_base + 48u], BKV);
        workgroupBarrier();
        // Online softmax of row r: this lane's 32 keys, then its partner's through a shuffle.
        var tile_max = -3.4e38;
        for (var j = 0u; j < 32u; j++) {
            let key = k0 + 32u * half + j;
            let visible = key < row_keys && key >= row_first;
            let s = select(-3.4e38, capped(s_tile[s_base + r * BKV + 32u * half + j]), visible);
            tile_max = max(tile_max, s);
        }
        let m_new = max(m, max(tile_max, subgroupShuffleXor(tile_max, 1u)));
        var sum = 0.0;
        for (var j = 0u; j < 32u; j++) {
            let key = k0 + 32u * half + j;
            let at = r * BKV + 32u * half + j;
            let visible = key < row_keys && key >= row_first;
            let e = select(0.0, exp(capped(s_tile[s_base + at]) - m_new), visible);
            p_tile[s_base + at] = f16(e);
            sum += e;
        }
        let correction = exp(m - m_new);
        l = l * correction + sum + subgroupShuffleXor(sum, 1u);
        m = m_new;
        if (half == 0u) {
            row_factor[sg * 16u + r] = correction;
        }
        workgroupBarrier();
        // O = O · correction + P · V, four 16 × 16 blocks of values at a time. (Blocks past
        // the head read the next head's values, unused: no branch around the tensor-core
        // operations, which the whole subgroup must reach.)
        let vc = k0 * kw + kv_off;
        let p0 = coopLoadT<coop_mat16x16<f16, A>>(&p_tile[s_base], BKV);
        let p1 = coopLoadT<coop_mat16x16<f16, A>>(&p_tile[s_base + 16u], BKV);
        let p2 = coopLoadT<coop_mat16x16<f16, A>>(&p_tile[s_base + 32u], BKV);
        let p3 = coopLoadT<coop_mat16x16<f16, A>>(&p_tile[s_base + 48u], BKV);
        for (var b0 = 0u; b0 < 8u; b0 += 4u) {
            for (var b = b0; b < b0 + 4u; b++) {
                let v = vc + 16u * b;
                var pv = coopMultiplyAdd(p0, coopLoadT<coop_mat16x16<f16, B>>(&v_cache[v], kw), coop_mat16x16<f32, C>());
                pv = coopMultiplyAdd(p1, coopLoadT<coop_mat16x16<f16, B>>(&v_cache[v + 16u * kw], kw), pv);
                pv = coopMultiplyAdd(p2, coopLoadT<coop_mat16x16<f16, B>>(&v_cache[v + 32u * kw], kw), pv);
                pv = coopMultiplyAdd(p3, coopLoadT<coop_mat16x16<f16, B>>(&v_cache[v + 48u * kw], kw), pv);
                coopStoreT(pv, &s_tile[s_base + 256u * (b - b0)], 16u);
            }
            workgroupBarrier();
            for (var b = b0; b < b0 + 4u; b++) {
                if (b < blocks) {
                    for (var e = 0u; e < 8u; e++) {
                        let i = lane + 32u * e;
                        let staged = s_tile[s_base + 256u * (b - b0) + i];
                        o[b][e] = o[b][e] * row_factor[sg * 16u + i / 16u] + staged;
                    }
                }
            }
            workgroupBarrier();
        }
    }
    if (half == 0u) {
        row_factor[sg * 16u + r] = l;
    }
    workgroupBarrier();
    for (var b = 0u; b < 8u; b++) {
        for (var e = 0u; e < 8u; e++) {
            let i = lane + 32u * e;
            let t = q0 + sg * 16u + i / 16u;
            if (b < blocks && t < p.n) {
                O[q_row(t) + h * hd + 16u * b + i % 16u] = o[b][e] / row_factor[sg * 16u + i / 16u];
            }
        }
    }
}
