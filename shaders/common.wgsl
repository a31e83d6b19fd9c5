// Helpers shared by every kernel. Each kernel's parameter struct (binding 0) and the constants
// it shares with the host are declared by the host (src/backend/gpu/params.rs, kernels.rs)
// and composed into its source with these.

// The four bytes of a word, lowest first.
fn bytes4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
}

// The low (hi = 0) or high (hi = 1) nibble of each byte of a word.
fn nibbles(w: u32, hi: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + 4u * hi)) & vec4<u32>(0xfu));
}

// The four bytes of a word as signed 8-bit integers.
fn i8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Bits first..first+3 of a word, one per lane.
fn bits4(w: u32, first: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> (vec4<u32>(0u, 1u, 2u, 3u) + first)) & vec4<u32>(1u);
}

// Workgroup counts above 65535 spill into y; kernels rebuild the linear index.
fn linear_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The activation of a GLU's gate by its code (ACT_SILU, ACT_GELU_TANH: the host's
// Activation, generated). GELU is the tanh approximation, exactly 0 below -10 and x above 10
// (where f32's tanh saturates anyway), so that no device's tanh meets an argument that
// overflows its exponentials.
fn activate(kind: u32, x: f32) -> f32 {
    if (kind == ACT_GELU_TANH) {
        if (x <= -10.0) {
            return 0.0;
        }
        if (x >= 10.0) {
            return x;
        }
        return 0.5 * x * (1.0 + tanh(GELU_SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)));
    }
    return x / (1.0 + exp(-x));
}
