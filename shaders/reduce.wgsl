// Row reductions: argmax (greedy sampling on the device) and softmax, one workgroup per row.

struct Params {
    len: u32,
    // softmax: logits are divided by this first.
    temperature: f32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;

var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;
var<workgroup> partial: array<f32, WG>;

// Index of the largest value of row 0; the first one on ties; NaN never wins.
@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_index) li: u32) {
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = li; i < p.len; i += WG) {
        let v = X[i];
        if (v > bv || (bi == 0xffffffffu && v == v)) {
            bv = v;
            bi = i;
        }
    }
    best_value[li] = bv;
    best_index[li] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            let v = best_value[li + s];
            let i = best_index[li + s];
            if (i != 0xffffffffu && (best_index[li] == 0xffffffffu || v > best_value[li] ||
                    (v == best_value[li] && i < best_index[li]))) {
                best_value[li] = v;
                best_index[li] = i;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        result[0] = select(best_index[0], 0u, best_index[0] == 0xffffffffu);
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
