// Reads an f16 KV cache: `{{CACHE}}` holds rows of kv_width values, two a word. Composed once
// for the keys and once for the values (kernels.rs, kv_readers): `{{KV}}` names the functions
// the attention kernels call, whatever the cache's type (kv_q8_0.wgsl has the same).

// The decode kernel's view of the cache: 8 values a vector.
@group(0) @binding({{ROWS_BINDING}}) var<storage, read> {{ROWS}}: array<vec4<u32>>;

// Value e of the cache.
fn {{KV}}1(e: u32) -> f32 {
    return unpack2x16float({{CACHE}}[e / 2u])[e & 1u];
}

// Values e..e + 3 (e a multiple of 4).
fn {{KV}}4(e: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float({{CACHE}}[e / 2u]), unpack2x16float({{CACHE}}[e / 2u + 1u]));
}

// Values 8i..8i + 7, in one load.
fn {{KV}}8(i: u32) -> array<vec4<f32>, 2> {
    let w = {{ROWS}}[i];
    return array<vec4<f32>, 2>(
        vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
        vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)),
    );
}
