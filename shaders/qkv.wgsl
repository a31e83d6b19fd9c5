// The epilogue of the query/key/value projections, shared by the decode matvec (which runs it
// on its own sums) and the prompt path (which runs it over the tiled products): RoPE on q and
// k, q to its tensor, k and v into the f16 cache; for a q8_0 cache (K_Q8, V_Q8), into f32
// staging rows [t][kv_width] instead, which kv_store.wgsl quantizes a whole block at a time
// (the 32 values of a block come from several workgroups here).
// Rows of [q | k | v] come with q and k in pair order: within each head, slots 4j..4j+3 hold
// the two rotation pairs of frequencies 2j and 2j + 1 (NeoX pairs (f, f + d/2), else (2f,
// 2f + 1)), so four consecutive outputs rotate together and land on whole f16 words.

struct QkvLayout {
    pos: u32,
    head_dim: u32,
    q_width: u32,
    kv_width: u32,
    neox: u32,
    // The step's row of this sequence's first token in q (a step of several sequences runs
    // a sequence at a time; its staging rows start at 0).
    first_row: u32,
}

// cos and sin of (position, frequency).
@group(0) @binding(6) var<storage, read> rope_cos_sin: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(9) var<storage, read_write> v_cache: array<u32>;

// Outputs c..c + 3 (c a multiple of 4) of token t.
fn store_qkv(l: QkvLayout, t: u32, c: u32, v: vec4<f32>) {
    let pos = l.pos + t;
    let v_start = l.q_width + l.kv_width;
    if (c >= v_start) {
        if (V_Q8) {
            let w = t * l.kv_width + c - v_start;
            v_cache[w] = bitcast<u32>(v.x);
            v_cache[w + 1u] = bitcast<u32>(v.y);
            v_cache[w + 2u] = bitcast<u32>(v.z);
            v_cache[w + 3u] = bitcast<u32>(v.w);
            return;
        }
        let w = (pos * l.kv_width + c - v_start) / 2u;
        v_cache[w] = pack2x16float(v.xy);
        v_cache[w + 1u] = pack2x16float(v.zw);
        return;
    }
    let is_k = c >= l.q_width;
    let local = select(c, c - l.q_width, is_k);
    let head = local - local % l.head_dim;
    let half = l.head_dim / 2u;
    let f = (local % l.head_dim) / 2u;
    let cs0 = rope_cos_sin[pos * half + f];
    let cs1 = rope_cos_sin[pos * half + f + 1u];
    let a0 = v.x * cs0.x - v.y * cs0.y;
    let b0 = v.x * cs0.y + v.y * cs0.x;
    let a1 = v.z * cs1.x - v.w * cs1.y;
    let b1 = v.z * cs1.y + v.w * cs1.x;
    // Where the rotated values go in the head: two adjacent dimensions each.
    var lo = vec2<f32>(a0, b0);
    var hi = vec2<f32>(a1, b1);
    var at_lo = 2u * f;
    var at_hi = 2u * f + 2u;
    if (l.neox != 0u) {
        lo = vec2<f32>(a0, a1);
        hi = vec2<f32>(b0, b1);
        at_lo = f;
        at_hi = f + half;
    }
    if (is_k && K_Q8) {
        let base = t * l.kv_width + head;
        k_cache[base + at_lo] = bitcast<u32>(lo.x);
        k_cache[base + at_lo + 1u] = bitcast<u32>(lo.y);
        k_cache[base + at_hi] = bitcast<u32>(hi.x);
        k_cache[base + at_hi + 1u] = bitcast<u32>(hi.y);
        return;
    }
    if (is_k) {
        let base = pos * l.kv_width + head;
        k_cache[(base + at_lo) / 2u] = pack2x16float(lo);
        k_cache[(base + at_hi) / 2u] = pack2x16float(hi);
        return;
    }
    let base = (l.first_row + t) * l.q_width + head;
    q_out[base + at_lo] = lo.x;
    q_out[base + at_lo + 1u] = lo.y;
    q_out[base + at_hi] = hi.x;
    q_out[base + at_hi + 1u] = hi.y;
}
