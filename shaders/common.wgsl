// Helpers shared by every kernel.

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

// Parameters of every weight product (matvec, matmul): the weight layout (row length, blocks
// per row, where the scales start), which rows this dispatch covers, and how to finish.
struct ProductParams {
    w_k: u32,
    w_bpr: u32,
    w_scales: u32,
    rows: u32,
    row_start: u32,
    // Width of a y row (all rows of the whole matrix).
    y_stride: u32,
    has_bias: u32,
    n_tokens: u32,
    // 1: add to y (the residual) instead of overwriting it.
    accumulate: u32,
    // 1: x is RMS-normalised on the fly (matvec: weight NW, epsilon eps).
    norm: u32,
    eps: f32,
    // Query/key/value products (matvec_qkv): first position, head size, key/value width,
    // NeoX rotation pairs; y_stride is the query width.
    pos: u32,
    head_dim: u32,
    kv_width: u32,
    neox: u32,
    // Not 0: rows interleave gate and up, and this is the activation of the GLU (ACT_*) that
    // the tensor-core matmul writes of each pair, to column row / 2 of y.
    glu: u32,
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
