// The second half of a q8_0 cache write: the query/key/value epilogue (qkv.wgsl) staged each
// token's rotated keys and its values in f32, [n][kv_width]; this quantizes them as ggml does
// (per block of 32: d = max |x| / 127, kept in f16; q = x / d rounded half away from zero)
// into the cache's layout (kv_q8_0.wgsl). One thread per word of scales, that is per two
// blocks: two blocks' scales share a word, and where one of them belongs to a position written
// before this step, the thread keeps its half of the word. z: 0 keys, 1 values (K_Q8 and V_Q8
// say which caches are q8_0; an f16 cache was written by the epilogue itself).

struct Params {
    pos: u32,
    kv_width: u32,
    n: u32,
    // Where the caches' scales begin, in words.
    scales: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k_staged: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v_staged: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;

fn staged(is_k: bool, i: u32) -> vec4<f32> {
    if (is_k) {
        return k_staged[i];
    }
    return v_staged[i];
}

fn cache_word(is_k: bool, i: u32) -> u32 {
    if (is_k) {
        return k_cache[i];
    }
    return v_cache[i];
}

fn set_cache_word(is_k: bool, i: u32, w: u32) {
    if (is_k) {
        k_cache[i] = w;
    } else {
        v_cache[i] = w;
    }
}

// To the nearest integer, halves away from zero (C's roundf, which ggml's quantizer uses).
fn round_away(x: vec4<f32>) -> vec4<f32> {
    let t = trunc(x);
    return select(round(x), t + sign(x), abs(x - t) == vec4<f32>(0.5));
}

// Four integers in -127..127 as signed bytes of one word, lowest first.
fn pack_i8x4(q: vec4<f32>) -> u32 {
    let b = bitcast<vec4<u32>>(vec4<i32>(q)) & vec4<u32>(0xffu);
    return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}

// Quantizes block g of the cache (values 32g..32g + 31) from its staged row; returns its scale.
fn quantize_block(is_k: bool, g: u32) -> f32 {
    let bpr = p.kv_width / 32u;
    let src = ((g / bpr - p.pos) * p.kv_width + (g % bpr) * 32u) / 4u;
    var x: array<vec4<f32>, 8>;
    var amax = 0.0;
    for (var i = 0u; i < 8u; i++) {
        x[i] = staged(is_k, src + i);
        let a = abs(x[i]);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    let d = amax / 127.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    for (var i = 0u; i < 8u; i++) {
        set_cache_word(is_k, 8u * g + i, pack_i8x4(round_away(x[i] * id)));
    }
    return d;
}

@compute @workgroup_size(64)
fn kv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let is_k = wid.z == 0u;
    if (!select(V_Q8, K_Q8, is_k)) {
        return;
    }
    let bpr = p.kv_width / 32u;
    // The blocks of this step's positions.
    let first = p.pos * bpr;
    let end = (p.pos + p.n) * bpr;
    let w = first / 2u + linear_group(wid, nwg) * 64u + li;
    if (2u * w >= end) {
        return;
    }
    var scales = unpack2x16float(cache_word(is_k, p.scales + w));
    for (var h = 0u; h < 2u; h++) {
        let g = 2u * w + h;
        if (g >= first && g < end) {
            scales[h] = quantize_block(is_k, g);
        }
    }
    set_cache_word(is_k, p.scales + w, pack2x16float(scales));
}
