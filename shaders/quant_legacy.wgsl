// Legacy quant types (blocks of 32) in vibrant's GPU layout: each block's body (the block
// minus its f16 fields) at word block * BODY, the f16 fields in a side array at w_scales.
// load8_T(row, g) decodes elements 8g..8g+7 of a row: block g / 4, quarter j = g % 4.
// In a block, bytes qs[i] hold element i (low nibble) and element i + 16 (high nibble).

fn half_scale(block: u32) -> f32 {
    return unpack2x16float(W[p.w_scales + block / 2u])[block & 1u];
}

fn pair_scale(block: u32) -> vec2<f32> {
    return unpack2x16float(W[p.w_scales + block]);
}

// Q4_0: 16 bytes of nibbles; x = (q - 8) * d.
fn load8_q4_0(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 4u;
    let j = g % 4u;
    let w = block * 4u + (j & 1u) * 2u;
    let d = half_scale(block);
    return array<vec4<f32>, 2>((nibbles(W[w], j >> 1u) - 8.0) * d, (nibbles(W[w + 1u], j >> 1u) - 8.0) * d);
}

// Q4_1: 16 bytes of nibbles; x = q * d + m.
fn load8_q4_1(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 4u;
    let j = g % 4u;
    let w = block * 4u + (j & 1u) * 2u;
    let dm = pair_scale(block);
    return array<vec4<f32>, 2>(nibbles(W[w], j >> 1u) * dm.x + dm.y, nibbles(W[w + 1u], j >> 1u) * dm.x + dm.y);
}

// Q5_0: qh (bit i = fifth bit of element i), then 16 bytes of nibbles; x = (q - 16) * d.
fn load8_q5_0(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 4u;
    let j = g % 4u;
    let qh = W[block * 5u];
    let w = block * 5u + 1u + (j & 1u) * 2u;
    let d = half_scale(block);
    let lo = nibbles(W[w], j >> 1u) + vec4<f32>(bits4(qh, 8u * j) * 16u);
    let hi = nibbles(W[w + 1u], j >> 1u) + vec4<f32>(bits4(qh, 8u * j + 4u) * 16u);
    return array<vec4<f32>, 2>((lo - 16.0) * d, (hi - 16.0) * d);
}

// Q5_1: as Q5_0 with x = q * d + m.
fn load8_q5_1(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 4u;
    let j = g % 4u;
    let qh = W[block * 5u];
    let w = block * 5u + 1u + (j & 1u) * 2u;
    let dm = pair_scale(block);
    let lo = nibbles(W[w], j >> 1u) + vec4<f32>(bits4(qh, 8u * j) * 16u);
    let hi = nibbles(W[w + 1u], j >> 1u) + vec4<f32>(bits4(qh, 8u * j + 4u) * 16u);
    return array<vec4<f32>, 2>(lo * dm.x + dm.y, hi * dm.x + dm.y);
}

// Q8_0: 32 signed bytes; x = q * d.
fn load8_q8_0(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 4u;
    let w = block * 8u + (g % 4u) * 2u;
    let d = half_scale(block);
    return array<vec4<f32>, 2>(i8x4(W[w]) * d, i8x4(W[w + 1u]) * d);
}
