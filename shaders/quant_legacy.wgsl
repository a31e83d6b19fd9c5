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

// load32_T(row, c): all 32 elements of block c of a row, in order.

fn spread_nibbles(words: array<u32, 4>, offset: vec4<f32>, scale: f32, hi: array<vec4<f32>, 8>) -> array<vec4<f32>, 8> {
    // Bytes qs[i] hold element i (low nibble) and element i + 16 (high nibble).
    return array<vec4<f32>, 8>(
        (nibbles(words[0], 0u) + hi[0] + offset) * scale, (nibbles(words[1], 0u) + hi[1] + offset) * scale,
        (nibbles(words[2], 0u) + hi[2] + offset) * scale, (nibbles(words[3], 0u) + hi[3] + offset) * scale,
        (nibbles(words[0], 1u) + hi[4] + offset) * scale, (nibbles(words[1], 1u) + hi[5] + offset) * scale,
        (nibbles(words[2], 1u) + hi[6] + offset) * scale, (nibbles(words[3], 1u) + hi[7] + offset) * scale);
}

fn no_high_bits() -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0),
                               vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

// The fifth bits of Q5 blocks, worth 16 each.
fn high_bits(qh: u32) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(
        vec4<f32>(bits4(qh, 0u) * 16u), vec4<f32>(bits4(qh, 4u) * 16u),
        vec4<f32>(bits4(qh, 8u) * 16u), vec4<f32>(bits4(qh, 12u) * 16u),
        vec4<f32>(bits4(qh, 16u) * 16u), vec4<f32>(bits4(qh, 20u) * 16u),
        vec4<f32>(bits4(qh, 24u) * 16u), vec4<f32>(bits4(qh, 28u) * 16u));
}

fn add_min(v: array<vec4<f32>, 8>, m: f32) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(v[0] + m, v[1] + m, v[2] + m, v[3] + m, v[4] + m, v[5] + m, v[6] + m, v[7] + m);
}

fn load32_q4_0(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c;
    let w = block * 4u;
    let words = array<u32, 4>(W[w], W[w + 1u], W[w + 2u], W[w + 3u]);
    return spread_nibbles(words, vec4<f32>(-8.0), half_scale(block), no_high_bits());
}

fn load32_q4_1(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c;
    let w = block * 4u;
    let words = array<u32, 4>(W[w], W[w + 1u], W[w + 2u], W[w + 3u]);
    let dm = pair_scale(block);
    return add_min(spread_nibbles(words, vec4<f32>(0.0), dm.x, no_high_bits()), dm.y);
}

fn load32_q5_0(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c;
    let w = block * 5u;
    let words = array<u32, 4>(W[w + 1u], W[w + 2u], W[w + 3u], W[w + 4u]);
    return spread_nibbles(words, vec4<f32>(-16.0), half_scale(block), high_bits(W[w]));
}

fn load32_q5_1(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c;
    let w = block * 5u;
    let words = array<u32, 4>(W[w + 1u], W[w + 2u], W[w + 3u], W[w + 4u]);
    let dm = pair_scale(block);
    return add_min(spread_nibbles(words, vec4<f32>(0.0), dm.x, high_bits(W[w])), dm.y);
}

fn load32_q8_0(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c;
    let w = block * 8u;
    let d = half_scale(block);
    return array<vec4<f32>, 8>(
        i8x4(W[w]) * d, i8x4(W[w + 1u]) * d, i8x4(W[w + 2u]) * d, i8x4(W[w + 3u]) * d,
        i8x4(W[w + 4u]) * d, i8x4(W[w + 5u]) * d, i8x4(W[w + 6u]) * d, i8x4(W[w + 7u]) * d);
}
