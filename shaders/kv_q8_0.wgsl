// Reads a q8_0 KV cache (see kv_f16.wgsl for the functions): ggml's blocks of 32 values, an
// f16 scale d and 32 signed 8-bit quants q (value d * q), 34 bytes a block as in ggml, but
// split in two so that the quants stay word-aligned: first the quants of every row
// ([rows][kv_width] bytes), then the blocks' scales in the same order, two a word, from word
// p.scales on. Rows, and heads, are whole blocks.

// The decode kernel's view of the cache: 8 quants a vector.
@group(0) @binding({{ROWS_BINDING}}) var<storage, read> {{ROWS}}: array<vec2<u32>>;

// The scale of block b (values 32b..32b + 31 of the cache).
fn {{KV}}_scale(b: u32) -> f32 {
    return unpack2x16float({{CACHE}}[p.scales + b / 2u])[b & 1u];
}

fn {{KV}}1(e: u32) -> f32 {
    return i8x4({{CACHE}}[e / 4u])[e & 3u] * {{KV}}_scale(e / 32u);
}

fn {{KV}}4(e: u32) -> vec4<f32> {
    return i8x4({{CACHE}}[e / 4u]) * {{KV}}_scale(e / 32u);
}

// Values 8i..8i + 7: their quants in one load, their block's scale in another.
fn {{KV}}8(i: u32) -> array<vec4<f32>, 2> {
    let w = {{ROWS}}[i];
    let b = i / 4u;
    let word = p.scales + b / 2u;
    let d = unpack2x16float({{ROWS}}[word / 2u][word & 1u])[b & 1u];
    return array<vec4<f32>, 2>(i8x4(w.x) * d, i8x4(w.y) * d);
}
