// Probes of cooperative-matrix throughput for benches/coop_probe.rs (not an engine kernel):
// each subgroup keeps four 16×16 f32 accumulators and runs ITERS steps of four products; the variants differ only in
// where the A and B tiles come from each step.

const ITERS: u32 = 2048u;
// A 64 × 32 and a 128 × 32 f16 tile, as the prompt matmul stages them.
const BK: u32 = 32u;

@group(0) @binding(0) var<storage, read> src_f16: array<f16>;
@group(0) @binding(1) var<storage, read> src_v4: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> tile_f16: array<f16, 192 * BK>;
var<workgroup> tile_v4: array<vec4<f16>, 192 * BK / 4>;
var<workgroup> sink: array<f32, 8 * 256>;

// 0 or 1, from a hash of the step: with (i % 2) the compiler could unroll the loop and hoist
// the (then loop-invariant) tile loads out of it, measuring the products alone.
fn half_of(i: u32) -> u32 {
    return (i * 2654435761u) >> 31u;
}

fn fill(li: u32) {
    for (var i = li; i < 192u * BK; i += 256u) {
        tile_f16[i] = f16(f32(i % 7u) * 0.01);
    }
    for (var i = li; i < 192u * BK / 4u; i += 256u) {
        tile_v4[i] = vec4<f16>(f16(f32(i % 5u) * 0.01));
    }
    workgroupBarrier();
}

fn finish(sg: u32, wid: u32, a: coop_mat16x16<f32, C>, b: coop_mat16x16<f32, C>,
          c: coop_mat16x16<f32, C>, d: coop_mat16x16<f32, C>) {
    coopStore(a, &sink[sg * 256u], 16u);
    coopStore(b, &sink[sg * 256u], 16u);
    coopStore(c, &sink[sg * 256u], 16u);
    coopStore(d, &sink[sg * 256u], 16u);
    workgroupBarrier();
    out[wid] = sink[sg * 256u + wid % 256u];
}

// Products only: the tiles are loaded once.
@compute @workgroup_size(256)
fn mma_only(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
            @builtin(subgroup_id) sg: u32) {
    fill(li);
    let a0 = coopLoadT<coop_mat16x16<f16, A>>(&tile_f16[0], BK);
    let a1 = coopLoadT<coop_mat16x16<f16, A>>(&tile_f16[16u * BK], BK);
    let b0 = coopLoad<coop_mat16x16<f16, B>>(&tile_f16[64u * BK], BK);
    let b1 = coopLoad<coop_mat16x16<f16, B>>(&tile_f16[80u * BK], BK);
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var i = 0u; i < ITERS; i++) {
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
    }
    finish(sg, wid.x, c00, c01, c10, c11);
}

// Tiles loaded from workgroup memory each step through an f16 pointer (as matmul_coop does).
@compute @workgroup_size(256)
fn lds_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
           @builtin(subgroup_id) sg: u32) {
    fill(li);
    let sm = sg / 4u;
    let sn = sg % 4u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var i = 0u; i < ITERS; i++) {
        let kk = half_of(i) * 16u;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&tile_f16[(sm * 32u) * BK + kk], BK);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&tile_f16[(sm * 32u + 16u) * BK + kk], BK);
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&tile_f16[(64u + sn * 32u) * BK + kk], BK);
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&tile_f16[(64u + sn * 32u + 16u) * BK + kk], BK);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
    }
    finish(sg, wid.x, c00, c01, c10, c11);
}

// The same through a vec4<f16> pointer: the stride counts vectors, so the driver knows each
// row starts 8-byte aligned.
@compute @workgroup_size(256)
fn lds_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
          @builtin(subgroup_id) sg: u32) {
    fill(li);
    let sm = sg / 4u;
    let sn = sg % 4u;
    let s = BK / 4u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var i = 0u; i < ITERS; i++) {
        let kk = half_of(i) * 4u;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&tile_v4[(sm * 32u) * s + kk], s);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&tile_v4[(sm * 32u + 16u) * s + kk], s);
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&tile_v4[(64u + sn * 32u) * s + kk], s);
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&tile_v4[(64u + sn * 32u + 16u) * s + kk], s);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
    }
    finish(sg, wid.x, c00, c01, c10, c11);
}

// Tiles loaded from a storage buffer (cached: 12 KiB per workgroup) through an f16 pointer.
@compute @workgroup_size(256)
fn global_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_id) sg: u32) {
    let sm = sg / 4u;
    let sn = sg % 4u;
    let base = (wid.x % 64u) * 192u * BK;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var i = 0u; i < ITERS; i++) {
        let kk = half_of(i) * 16u;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&src_f16[base + (sm * 32u) * BK + kk], BK);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&src_f16[base + (sm * 32u + 16u) * BK + kk], BK);
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&src_f16[base + (64u + sn * 32u) * BK + kk], BK);
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&src_f16[base + (64u + sn * 32u + 16u) * BK + kk], BK);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
    }
    finish(sg, wid.x, c00, c01, c10, c11);
}

// The same through a vec4<f16> pointer.
@compute @workgroup_size(256)
fn global_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
             @builtin(subgroup_id) sg: u32) {
    let sm = sg / 4u;
    let sn = sg % 4u;
    let s = BK / 4u;
    let base = (wid.x % 64u) * 192u * s;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    for (var i = 0u; i < ITERS; i++) {
        let kk = half_of(i) * 4u;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&src_v4[base + (sm * 32u) * s + kk], s);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&src_v4[base + (sm * 32u + 16u) * s + kk], s);
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&src_v4[base + (64u + sn * 32u) * s + kk], s);
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&src_v4[base + (64u + sn * 32u + 16u) * s + kk], s);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
    }
    finish(sg, wid.x, c00, c01, c10, c11);
}

