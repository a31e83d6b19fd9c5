// The products of matvec.wgsl with 8-bit activations, for Q4_K and Q6_K: x[t] quantized
// per group of 16 (scale amax / 127, values rounded to the nearest integer, and their sum),
// by the workgroup itself or once before the product; then each thread dots 4-bit or 6-bit
// weights with those bytes four at a time (dot4I8Packed: one instruction on GPUs with integer
// dot products). Decoding a weight to f32 costs several instructions, and that work, not the
// memory, bounded the f32 path on the H100 (BENCHMARKS.md).
// Work is split in units of 32 weights of one row that share their scales: 16 from each of
// two sub-blocks, whose activations are the 16-element groups `unit_groups` names.
// The host uses this path for rows of a multiple of 256 up to INT8_COLS long, on devices with
// subgroups.

const INT8_COLS: u32 = {{INT8_COLS}}u;

// The weights again, 16 bytes at a time: Q4_K blocks and Q6_K bodies are 16-byte multiples.
@group(0) @binding(10) var<storage, read> W4: array<vec4<u32>>;

// Each subgroup's sum of x² (for the norm).
var<workgroup> squares_part: array<f32, WG / SUBGROUP>;

// `prepare_acts(t, li)` (returning this thread's share of the sum of x²) and `acts16(t, g)`
// (group g of x[t]) come from matvec_int8_local.wgsl, where each workgroup quantizes x[t]
// itself, or matvec_int8_global.wgsl, which reads what acts_q8.wgsl quantized once.

// The products of this thread's team's R rows with x[t], complete in the team's first lane.
fn team_products(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> array<f32, R> {
    let lane = li % TEAM;
    let row0 = linear_group(wid, nwg) * ROWS + (li / TEAM) * R;
    let squares = prepare_acts(wid.z, li);
    if (p.norm != 0u && !GLOBAL_ACTS) {
        let s = subgroupAdd(squares);
        if (li % SUBGROUP == 0u) {
            squares_part[li / SUBGROUP] = s;
        }
    }
    workgroupBarrier();
    // The norm's scale is common to the whole row, so it applies to the finished sums.
    var scale = 1.0;
    if (p.norm != 0u && !GLOBAL_ACTS) {
        var total = 0.0;
        for (var i = 0u; i < WG / SUBGROUP; i++) {
            total += squares_part[i];
        }
        scale = inverseSqrt(total / f32(p.w_k) + p.eps);
    }
    var acc: array<f32, R>;
    for (var u = lane; u < p.w_bpr * 8u; u += TEAM) {
        let g = unit_groups(u);
        let a = acts16(wid.z, g.x);
        let b = acts16(wid.z, g.y);
        for (var r = 0u; r < R; r++) {
            if (row0 + r < p.rows) {
                acc[r] += dot_unit(row0 + r, u, a, b);
            }
        }
    }
    var sums: array<f32, R>;
    for (var r = 0u; r < R; r++) {
        sums[r] = team_sum(acc[r], li) * scale;
    }
    return sums;
}

// Q4_K (layout in quant_k.wgsl; 9 vectors a block: d, dmin and the scales, then qs): unit v
// of a block (0..7) is bytes 16 (v % 2) .. +15 of chunk c = v / 2 of qs, vector 1 + v: low
// nibbles are elements 16 (v % 2) .. +15 of sub-block 2c, high nibbles the same of sub-block
// 2c + 1. Each sub-block: d · scale · Σ q·x − dmin · min · Σ x.
fn unit_groups_q4_k(u: u32) -> vec2<u32> {
    let v = u % 8u;
    let g = 16u * (u / 8u) + 4u * (v / 2u) + v % 2u;
    return vec2<u32>(g, g + 2u);
}

fn dot_unit_q4_k(row: u32, u: u32, a: Acts16, b: Acts16) -> f32 {
    let block = row * p.w_bpr + u / 8u;
    let v = u % 8u;
    let c = v / 2u;
    let head = W4[9u * block];
    let quants = W4[9u * block + 1u + v];
    let dm = unpack2x16float(head.x);
    let lo_sm = k4_scale_min_of(head.yzw, 2u * c);
    let hi_sm = k4_scale_min_of(head.yzw, 2u * c + 1u);
    var lo = 0i;
    var hi = 0i;
    for (var i = 0u; i < 4u; i++) {
        let q = quants[i];
        lo += dot4I8Packed(q & 0x0f0f0f0fu, a.q[i]);
        hi += dot4I8Packed((q >> 4u) & 0x0f0f0f0fu, b.q[i]);
    }
    return a.d * (dm.x * lo_sm.x * f32(lo) - dm.y * lo_sm.y * f32(a.s))
        + b.d * (dm.x * hi_sm.x * f32(hi) - dm.y * hi_sm.y * f32(b.s));
}

// Q6_K (13 vectors a body: ql, qh, scales): unit v = 4n + 2j + h of a block holds, for k = j
// and k = j + 2, elements 16h .. +15 of row 32k + 128n's quants (see load8_q6_k): the low and
// high nibbles of the same ql bytes (vector v) and bit pairs 2j and 2j + 4 of the same qh
// bytes (vector 8 + 2n + h). Each: d · scale · Σ (q − 32)·x.
fn unit_groups_q6_k(u: u32) -> vec2<u32> {
    let v = u % 8u;
    let g = 16u * (u / 8u) + 8u * (v / 4u) + 2u * ((v / 2u) % 2u) + v % 2u;
    return vec2<u32>(g, g + 4u);
}

fn dot_unit_q6_k(row: u32, u: u32, a: Acts16, b: Acts16) -> f32 {
    let block = row * p.w_bpr + u / 8u;
    let v = u % 8u;
    let n = v / 4u;
    let j = (v / 2u) % 2u;
    let base = 13u * block;
    let ql = W4[base + v];
    let qh = W4[base + 8u + 2u * n + v % 2u];
    // Scale bytes 8n + 2k + h: byte 2j + h of words 2n (k = j) and 2n + 1 (k = j + 2) of the
    // last vector.
    let scales = W4[base + 12u];
    let words = select(scales.xy, scales.zw, n == 1u);
    let shift = 8u * (v % 4u);
    let lo_scale = f32(bitcast<i32>((words.x >> shift) << 24u) >> 24u);
    let hi_scale = f32(bitcast<i32>((words.y >> shift) << 24u) >> 24u);
    var lo = 0i;
    var hi = 0i;
    for (var i = 0u; i < 4u; i++) {
        let l = ql[i];
        let h = qh[i];
        let q_lo = (l & 0x0f0f0f0fu) | (((h >> (2u * j)) & 0x03030303u) << 4u);
        let q_hi = ((l >> 4u) & 0x0f0f0f0fu) | (((h >> (2u * j + 4u)) & 0x03030303u) << 4u);
        lo += dot4I8Packed(q_lo, a.q[i]);
        hi += dot4I8Packed(q_hi, b.q[i]);
    }
    return k_half_scale(block) * (a.d * lo_scale * f32(lo - 32 * a.s) + b.d * hi_scale * f32(hi - 32 * b.s));
}
