// x[t] quantized to 8 bits once (acts_q8.wgsl), for the products that read it from memory
// (matvec_int8_global.wgsl) instead of each workgroup quantizing it again: one group of 16
// per thread, token t = workgroup y.

struct Params {
    cols: u32,
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> XQ: array<u32>;

@compute @workgroup_size(256)
fn quantize_acts(@builtin(global_invocation_id) id: vec3<u32>) {
    let g = id.x;
    let t = id.y;
    let groups = p.cols / 16u;
    if (g >= groups || t >= p.n) {
        return;
    }
    let x = t * p.cols / 4u + 4u * g;
    let a = quantize16(array<vec4<f32>, 4>(X[x], X[x + 1u], X[x + 2u], X[x + 3u]));
    let base = acts_base(t, p.cols);
    for (var i = 0u; i < 4u; i++) {
        XQ[base + 4u * g + i] = a.q[i];
    }
    XQ[base + 4u * groups + g] = bitcast<u32>(a.d);
    XQ[base + 5u * groups + g] = bitcast<u32>(a.s);
}
