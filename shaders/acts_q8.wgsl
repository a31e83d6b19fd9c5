// Activations quantized to 8 bits for the integer matvecs (matvec_int8.wgsl): per group of
// 16 values, the scale amax / 127, the values rounded to the nearest integer, and their sum
// (which the K-quants' minimums multiply).
// Stored once for all workgroups (quantize_acts.wgsl, matvec_int8_global.wgsl), x[t] takes
// 6 words per group: the groups' bytes (4 words each), then their scales, then their sums.

struct Acts16 {
    q: vec4<u32>,
    d: f32,
    s: i32,
}

fn quantize16(v: array<vec4<f32>, 4>) -> Acts16 {
    var amax = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        amax = max(amax, abs(v[i]));
    }
    let d = max(max(amax.x, amax.y), max(amax.z, amax.w)) / 127.0;
    let id = select(0.0, 1.0 / d, d > 0.0);
    var packed: array<u32, 4>;
    var sum = 0i;
    for (var i = 0u; i < 4u; i++) {
        let q = vec4<i32>(round(v[i] * id));
        packed[i] = pack4xI8(q);
        sum += q.x + q.y + q.z + q.w;
    }
    return Acts16(vec4<u32>(packed[0], packed[1], packed[2], packed[3]), d, sum);
}

// Where x[t]'s stored groups begin, in words, for rows of `cols` values.
fn acts_base(t: u32, cols: u32) -> u32 {
    return t * 6u * (cols / 16u);
}
