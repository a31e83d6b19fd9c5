// quantize_acts.wgsl's entry point for products with the RMS norm fused: one workgroup of
// 256 per token. (Its own file: the norm weight's binding is not the plain kernel's.)

@group(0) @binding(3) var<storage, read> NW: array<vec4<f32>>;

var<workgroup> squares: array<f32, 256>;

@compute @workgroup_size(256)
fn quantize_acts_normed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wid.y;
    let xt = t * p.cols / 4u;
    var sum = 0.0;
    for (var i = li; i < p.cols / 4u; i += 256u) {
        let v = X[xt + i];
        sum += dot(v, v);
    }
    squares[li] = sum;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            squares[li] += squares[li + s];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(squares[0] / f32(p.cols) + p.eps);
    for (var g = li; g < p.cols / 16u; g += 256u) {
        let x = xt + 4u * g;
        let w = 4u * g;
        let v = array<vec4<f32>, 4>(X[x] * NW[w], X[x + 1u] * NW[w + 1u], X[x + 2u] * NW[w + 2u],
                                    X[x + 3u] * NW[w + 3u]);
        store_group(t, g, quantize16(v), scale);
    }
}
