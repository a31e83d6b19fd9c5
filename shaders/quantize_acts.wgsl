// x[t] quantized to 8 bits once (acts_q8.wgsl), for the products that read it from memory
// (matvec_int8_global.wgsl) instead of each workgroup quantizing it again. Without a norm,
// one group of 16 per thread (token t = workgroup y); with the RMS norm fused into the
// products, one workgroup per token, which first sums x² and then stores x · norm weight
// with the norm's common scale folded into each group's scale.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> XQ: array<u32>;

fn store_group(t: u32, g: u32, a: Acts16, scale: f32) {
    let groups = p.cols / 16u;
    let base = acts_base(t, p.cols);
    for (var i = 0u; i < 4u; i++) {
        XQ[base + 4u * g + i] = a.q[i];
    }
    XQ[base + 4u * groups + g] = bitcast<u32>(a.d * scale);
    XQ[base + 5u * groups + g] = bitcast<u32>(a.s);
}

@compute @workgroup_size(256)
fn quantize_acts(@builtin(global_invocation_id) id: vec3<u32>) {
    let g = id.x;
    let t = id.y;
    if (g >= p.cols / 16u || t >= p.n) {
        return;
    }
    let x = t * p.cols / 4u + 4u * g;
    store_group(t, g, quantize16(array<vec4<f32>, 4>(X[x], X[x + 1u], X[x + 2u], X[x + 3u])), 1.0);
}
