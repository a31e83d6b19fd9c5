// Float weight types, element-addressed: row r, element e is element r * w_k + e.
// Elements past the row's end read as zero, so rows of any length work.

fn f32_at(row: u32, e: u32) -> f32 {
    return select(0.0, bitcast<f32>(W[row * p.w_k + e]), e < p.w_k);
}

fn half_word(row: u32, e: u32) -> vec2<u32> {
    let i = row * p.w_k + e;
    return vec2<u32>(W[i / 2u], (i & 1u) * 16u);
}

fn f16_at(row: u32, e: u32) -> f32 {
    let h = half_word(row, e);
    return select(0.0, unpack2x16float(h.x >> h.y).x, e < p.w_k);
}

fn bf16_at(row: u32, e: u32) -> f32 {
    let h = half_word(row, e);
    return select(0.0, bitcast<f32>(((h.x >> h.y) & 0xffffu) << 16u), e < p.w_k);
}

fn load8_f32(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let e = 8u * g;
    return array<vec4<f32>, 2>(
        vec4<f32>(f32_at(row, e), f32_at(row, e + 1u), f32_at(row, e + 2u), f32_at(row, e + 3u)),
        vec4<f32>(f32_at(row, e + 4u), f32_at(row, e + 5u), f32_at(row, e + 6u), f32_at(row, e + 7u)));
}

fn load8_f16(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let e = 8u * g;
    return array<vec4<f32>, 2>(
        vec4<f32>(f16_at(row, e), f16_at(row, e + 1u), f16_at(row, e + 2u), f16_at(row, e + 3u)),
        vec4<f32>(f16_at(row, e + 4u), f16_at(row, e + 5u), f16_at(row, e + 6u), f16_at(row, e + 7u)));
}

fn load8_bf16(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let e = 8u * g;
    return array<vec4<f32>, 2>(
        vec4<f32>(bf16_at(row, e), bf16_at(row, e + 1u), bf16_at(row, e + 2u), bf16_at(row, e + 3u)),
        vec4<f32>(bf16_at(row, e + 4u), bf16_at(row, e + 5u), bf16_at(row, e + 6u), bf16_at(row, e + 7u)));
}
