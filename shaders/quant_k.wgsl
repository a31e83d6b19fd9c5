// K-quant types (super-blocks of 256) in vibrant's GPU layout: each block's body (the block
// minus its f16 fields) at word block * BODY, the f16 fields in a side array at w_scales;
// Q4_K and Q5_K as ggml stores them (q4_k_body).
// load8_T(row, g) decodes elements 8g..8g+7 of a row: block g / 32, group gb = g % 32.

fn k_half_scale(block: u32) -> f32 {
    return unpack2x16float(W[p.w_scales + block / 2u])[block & 1u];
}

fn k_pair_scale(block: u32) -> vec2<f32> {
    return unpack2x16float(W[p.w_scales + block]);
}

// Q4_K and Q5_K blocks keep ggml's own layout, a multiple of 16 bytes (d and dmin in word 0,
// the body after them), so that kernels can read their bodies as vectors; the body starts at
// word 1 of the block.
fn q4_k_body(block: u32) -> u32 {
    return block * 36u + 1u;
}

fn q5_k_body(block: u32) -> u32 {
    return block * 44u + 1u;
}

// d and dmin of the block whose body starts at word `body`.
fn native_pair_scale(body: u32) -> vec2<f32> {
    return unpack2x16float(W[body - 1u]);
}

// Byte o of the body starting at word `base`.
fn body_byte(base: u32, o: u32) -> u32 {
    return (W[base + o / 4u] >> (8u * (o % 4u))) & 0xffu;
}

fn crumbs(w: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((bytes4(w) >> vec4<u32>(shift)) & vec4<u32>(3u));
}

// Q2_K body: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits each).
// Element 128n + 32j + l: bits 2j of qs[32n + l], scale byte 8n + 2j + l / 16.
fn load8_q2_k(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 32u;
    let gb = g % 32u;
    let n = gb / 16u;
    let r = gb % 16u;
    let j = r / 4u;
    let base = block * 20u;
    let w = base + 4u + 8u * n + 2u * (r % 4u);
    let sc = body_byte(base, 8u * n + 2u * j + (r % 4u) / 2u);
    let dm = k_pair_scale(block);
    let scale = dm.x * f32(sc & 0xfu);
    let min = dm.y * f32(sc >> 4u);
    return array<vec4<f32>, 2>(crumbs(W[w], 2u * j) * scale - min, crumbs(W[w + 1u], 2u * j) * scale - min);
}

// Q3_K body: hmask[32], qs[64], scales[12] (16 packed 6-bit scales, offset 32).
// Element 128n + 32j + l: bits 2j of qs[32n + l], high bit (4n + j) of hmask[l] (clear
// subtracts 4), scale 8n + 2j + l / 16.
fn q3_k_scale(base: u32, s: u32) -> f32 {
    let low = select(body_byte(base, 96u + s - 8u) >> 4u, body_byte(base, 96u + s) & 0xfu, s < 8u);
    let high = (body_byte(base, 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
    return f32(i32(low | (high << 4u)) - 32);
}

fn load8_q3_k(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 32u;
    let gb = g % 32u;
    let n = gb / 16u;
    let r = gb % 16u;
    let j = r / 4u;
    let base = block * 27u;
    let w = base + 8u + 8u * n + 2u * (r % 4u);
    let h = base + 2u * (r % 4u);
    let bit = 4u * n + j;
    let scale = k_half_scale(block) * q3_k_scale(base, 8u * n + 2u * j + (r % 4u) / 2u);
    let lo = crumbs(W[w], 2u * j) - 4.0 + 4.0 * vec4<f32>((bytes4(W[h]) >> vec4<u32>(bit)) & vec4<u32>(1u));
    let hi = crumbs(W[w + 1u], 2u * j) - 4.0 + 4.0 * vec4<f32>((bytes4(W[h + 1u]) >> vec4<u32>(bit)) & vec4<u32>(1u));
    return array<vec4<f32>, 2>(lo * scale, hi * scale);
}

// The 6-bit scale and min of sub-block s (0..7) from the 12 packed bytes at body word base:
// bytes 0..3 hold the scales of 0..3 (and the top bits of 4..7's), bytes 4..7 the mins,
// bytes 8..11 the low bits of 4..7's scale and min. Without branches, so that the threads
// of a subgroup (on different sub-blocks) do not split.
fn k4_scale_min(base: u32, s: u32) -> vec2<f32> {
    return k4_scale_min_of(vec3<u32>(W[base], W[base + 1u], W[base + 2u]), s);
}

// The same from the three words already loaded.
fn k4_scale_min_of(words: vec3<u32>, s: u32) -> vec2<f32> {
    let shift = 8u * (s % 4u);
    let a = (words.x >> shift) & 0xffu;
    let b = (words.y >> shift) & 0xffu;
    let c = (words.z >> shift) & 0xffu;
    let low = vec2<u32>(a & 63u, b & 63u);
    let high = vec2<u32>((c & 0xfu) | ((a >> 6u) << 4u), (c >> 4u) | ((b >> 6u) << 4u));
    return vec2<f32>(select(low, high, s >= 4u));
}

// Q4_K body: scales[12], qs[128]. Element 64c + 32h + l: nibble h of qs[32c + l],
// sub-block 2c + h.
fn load8_q4_k(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 32u;
    let gb = g % 32u;
    let c = gb / 8u;
    let h = (gb % 8u) / 4u;
    let base = q4_k_body(block);
    let w = base + 3u + 8u * c + 2u * (gb % 4u);
    let dm = native_pair_scale(base);
    let sm = k4_scale_min(base, 2u * c + h);
    let scale = dm.x * sm.x;
    let min = dm.y * sm.y;
    return array<vec4<f32>, 2>(nibbles(W[w], h) * scale - min, nibbles(W[w + 1u], h) * scale - min);
}

// Q5_K body: scales[12], qh[32], qs[128]. As Q4_K, plus bit 2c + h of qh[l] worth 16.
fn load8_q5_k(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 32u;
    let gb = g % 32u;
    let c = gb / 8u;
    let h = (gb % 8u) / 4u;
    let base = q5_k_body(block);
    let w = base + 11u + 8u * c + 2u * (gb % 4u);
    let q = base + 3u + 2u * (gb % 4u);
    let bit = 2u * c + h;
    let dm = native_pair_scale(base);
    let sm = k4_scale_min(base, 2u * c + h);
    let scale = dm.x * sm.x;
    let min = dm.y * sm.y;
    let lo = nibbles(W[w], h) + 16.0 * vec4<f32>((bytes4(W[q]) >> vec4<u32>(bit)) & vec4<u32>(1u));
    let hi = nibbles(W[w + 1u], h) + 16.0 * vec4<f32>((bytes4(W[q + 1u]) >> vec4<u32>(bit)) & vec4<u32>(1u));
    return array<vec4<f32>, 2>(lo * scale - min, hi * scale - min);
}

// Q6_K body: ql[128], qh[64], scales[16] (signed). Element 128n + 32k + l: nibble k / 2 of
// ql[64n + 32 (k % 2) + l], bits 2k of qh[32n + l], scale 8n + 2k + l / 16; x = (q - 32) * s.
fn load8_q6_k(row: u32, g: u32) -> array<vec4<f32>, 2> {
    let block = row * p.w_bpr + g / 32u;
    let gb = g % 32u;
    let n = gb / 16u;
    let r = gb % 16u;
    let k = r / 4u;
    let base = block * 52u;
    let ql = base + 16u * n + 8u * (k & 1u) + 2u * (r % 4u);
    let qh = base + 32u + 8u * n + 2u * (r % 4u);
    let sbyte = body_byte(base, 192u + 8u * n + 2u * k + (r % 4u) / 2u);
    let scale = k_half_scale(block) * f32(bitcast<i32>(sbyte << 24u) >> 24u);
    let lo = nibbles(W[ql], k >> 1u) + 16.0 * crumbs(W[qh], 2u * k);
    let hi = nibbles(W[ql + 1u], k >> 1u) + 16.0 * crumbs(W[qh + 1u], 2u * k);
    return array<vec4<f32>, 2>((lo - 32.0) * scale, (hi - 32.0) * scale);
}

// load16_T(row, q): elements 16q..16q+15 of a row, where one scale covers all sixteen (so it
// is decoded once): half a sub-block of Q4_K, a sub-block of Q6_K.
fn load16_q4_k(row: u32, q: u32) -> array<vec4<f32>, 4> {
    let block = row * p.w_bpr + q / 16u;
    let qb = q % 16u;
    let sb = qb / 2u;
    let base = q4_k_body(block);
    let w = base + 3u + 8u * (sb / 2u) + 4u * (qb % 2u);
    let dm = native_pair_scale(base);
    let sm = k4_scale_min(base, sb);
    let scale = dm.x * sm.x;
    let min = dm.y * sm.y;
    let h = sb % 2u;
    return array<vec4<f32>, 4>(nibbles(W[w], h) * scale - min, nibbles(W[w + 1u], h) * scale - min,
        nibbles(W[w + 2u], h) * scale - min, nibbles(W[w + 3u], h) * scale - min);
}

fn load16_q6_k(row: u32, q: u32) -> array<vec4<f32>, 4> {
    let block = row * p.w_bpr + q / 16u;
    let qb = q % 16u;
    let n = qb / 8u;
    let k = (qb % 8u) / 2u;
    let hq = qb % 2u;
    let base = block * 52u;
    let ql = base + 16u * n + 8u * (k & 1u) + 4u * hq;
    let qh = base + 32u + 8u * n + 4u * hq;
    let sbyte = body_byte(base, 192u + 8u * n + 2u * k + hq);
    let scale = k_half_scale(block) * f32(bitcast<i32>(sbyte << 24u) >> 24u);
    let h = k >> 1u;
    return array<vec4<f32>, 4>(q6(W[ql], W[qh], h, k) * scale, q6(W[ql + 1u], W[qh + 1u], h, k) * scale,
        q6(W[ql + 2u], W[qh + 2u], h, k) * scale, q6(W[ql + 3u], W[qh + 3u], h, k) * scale);
}

// load32_T(row, c): elements 32c..32c+31 of a row (sub-block c % 8 of block c / 8), in order.

fn scaled_nibbles(w: u32, base: u32, hi: u32, scale: f32, min: f32) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(
        nibbles(W[w], hi) * scale - min, nibbles(W[w + 1u], hi) * scale - min,
        nibbles(W[w + 2u], hi) * scale - min, nibbles(W[w + 3u], hi) * scale - min,
        nibbles(W[w + 4u], hi) * scale - min, nibbles(W[w + 5u], hi) * scale - min,
        nibbles(W[w + 6u], hi) * scale - min, nibbles(W[w + 7u], hi) * scale - min);
}

fn load32_q4_k(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c / 8u;
    let sb = c % 8u;
    let base = q4_k_body(block);
    let dm = native_pair_scale(base);
    let sm = k4_scale_min(base, sb);
    return scaled_nibbles(base + 3u + 8u * (sb / 2u), base, sb % 2u, dm.x * sm.x, dm.y * sm.y);
}

fn load32_q5_k(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c / 8u;
    let sb = c % 8u;
    let base = q5_k_body(block);
    let dm = native_pair_scale(base);
    let sm = k4_scale_min(base, sb);
    let scale = dm.x * sm.x;
    let min = dm.y * sm.y;
    let w = base + 11u + 8u * (sb / 2u);
    let q = base + 3u;
    let hi = sb % 2u;
    return array<vec4<f32>, 8>(
        q5(W[w], W[q], hi, sb) * scale - min, q5(W[w + 1u], W[q + 1u], hi, sb) * scale - min,
        q5(W[w + 2u], W[q + 2u], hi, sb) * scale - min, q5(W[w + 3u], W[q + 3u], hi, sb) * scale - min,
        q5(W[w + 4u], W[q + 4u], hi, sb) * scale - min, q5(W[w + 5u], W[q + 5u], hi, sb) * scale - min,
        q5(W[w + 6u], W[q + 6u], hi, sb) * scale - min, q5(W[w + 7u], W[q + 7u], hi, sb) * scale - min);
}

// Four 5-bit quants: nibble `hi` of each byte of `qs`, plus bit `bit` of each byte of `qh` as 16.
fn q5(qs: u32, qh: u32, hi: u32, bit: u32) -> vec4<f32> {
    return nibbles(qs, hi) + 16.0 * vec4<f32>((bytes4(qh) >> vec4<u32>(bit)) & vec4<u32>(1u));
}

fn load32_q6_k(row: u32, c: u32) -> array<vec4<f32>, 8> {
    let block = row * p.w_bpr + c / 8u;
    let sb = c % 8u;
    let n = sb / 4u;
    let k = sb % 4u;
    let base = block * 52u;
    let ql = base + 16u * n + 8u * (k & 1u);
    let qh = base + 32u + 8u * n;
    let sw = W[base + 48u + 2u * n + k / 2u];
    let d = k_half_scale(block);
    // Elements 0..15 use the first scale of the pair, 16..31 the second.
    let s0 = d * f32(bitcast<i32>(sw << (24u - 16u * (k % 2u))) >> 24u);
    let s1 = d * f32(bitcast<i32>(sw << (16u - 16u * (k % 2u))) >> 24u);
    let h = k >> 1u;
    return array<vec4<f32>, 8>(
        q6(W[ql], W[qh], h, k) * s0, q6(W[ql + 1u], W[qh + 1u], h, k) * s0,
        q6(W[ql + 2u], W[qh + 2u], h, k) * s0, q6(W[ql + 3u], W[qh + 3u], h, k) * s0,
        q6(W[ql + 4u], W[qh + 4u], h, k) * s1, q6(W[ql + 5u], W[qh + 5u], h, k) * s1,
        q6(W[ql + 6u], W[qh + 6u], h, k) * s1, q6(W[ql + 7u], W[qh + 7u], h, k) * s1);
}

// Four 6-bit quants, centred: nibble `h` of each byte of `ql`, bits 2k of each byte of `qh`.
fn q6(ql: u32, qh: u32, h: u32, k: u32) -> vec4<f32> {
    return nibbles(ql, h) + 16.0 * crumbs(qh, 2u * k) - 32.0;
}
