// Row reductions: argmax (greedy sampling on the device) and softmax, one workgroup per row.

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;
var<workgroup> partial: array<f32, WG>;

// Argmax of row 0 in two steps: ARGMAX_GROUPS (the host's) workgroups each find the best of a
// slice and write (value, index) pairs after the result slot; one workgroup then picks among
// them.
// The first index wins ties; NaN never wins; an all-NaN row gives 0.

const NONE: u32 = 0xffffffffu;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

// The workgroup's best (value, index) pair, valid in thread 0.
fn workgroup_best(li: u32, v: f32, i: u32) -> vec2<u32> {
    best_value[li] = v;
    best_index[li] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s && better(best_value[li + s], best_index[li + s], best_value[li], best_index[li])) {
            best_value[li] = best_value[li + s];
            best_index[li] = best_index[li + s];
        }
        workgroupBarrier();
    }
    return vec2<u32>(bitcast<u32>(best_value[0]), best_index[0]);
}

@compute @workgroup_size(256)
fn argmax_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let per = (p.len + ARGMAX_GROUPS - 1u) / ARGMAX_GROUPS;
    let end = min(p.len, (wid.x + 1u) * per);
    var bv = 0.0;
    var bi = NONE;
    for (var i = wid.x * per + li; i < end; i += WG) {
        let v = X[i];
        // v == v is false for NaN.
        if (v == v && better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    let best = workgroup_best(li, bv, bi);
    if (li == 0u) {
        result[2u + 2u * wid.x] = best.x;
        result[3u + 2u * wid.x] = best.y;
    }
}

@compute @workgroup_size(256)
fn argmax_final(@builtin(local_invocation_index) li: u32) {
    var bv = 0.0;
    var bi = NONE;
    if (li < ARGMAX_GROUPS) {
        bv = bitcast<f32>(result[2u + 2u * li]);
        bi = result[3u + 2u * li];
    }
    let best = workgroup_best(li, bv, bi);
    if (li == 0u) {
        result[0] = select(best.y, 0u, best.y == NONE);
    }
}

fn row_max(li: u32, base: u32) -> f32 {
    var m = -3.4e38;
    for (var i = li; i < p.len; i += WG) {
        m = max(m, X[base + i] / p.temperature);
    }
    partial[li] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] = max(partial[li], partial[li + s]);
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

// X[row] = softmax(X[row] / temperature), in place.
@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let base = wid.x * p.len;
    let m = row_max(li, base);
    var sum = 0.0;
    for (var i = li; i < p.len; i += WG) {
        let e = exp(X[base + i] / p.temperature - m);
        X[base + i] = e;
        sum += e;
    }
    partial[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    for (var i = li; i < p.len; i += WG) {
        X[base + i] = X[base + i] / total;
    }
}
