// A mixture of experts' routing and mixing (src/backend/ops.rs, Routing): each row's top k
// experts by the softmax of its router logits, each expert's list of the choices routed to it
// (for the prompt products of matvec_id.wgsl), and the weighted sum of the chosen experts'
// outputs into the residual stream. Rows of routes hold k expert ids (as f32 values), then
// their k weights.

// MoeParams is declared by the host (src/backend/gpu/params.rs).

@group(0) @binding(0) var<uniform> p: MoeParams;
// moe_route: the routes; moe_lists: the lists; moe_combine_add: the residual stream.
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
// moe_route: the logits; moe_combine_add: the chosen experts' outputs, k rows a row.
@group(0) @binding(2) var<storage, read> B: array<f32>;
// moe_lists, moe_combine_add: the routes.
@group(0) @binding(3) var<storage, read> R: array<f32>;

const THREADS: u32 = 64u;

// One workgroup per row, its threads striding over the experts: the softmax's max and sum,
// then k passes, each taking the largest probability after the previous choice in (probability
// descending, id ascending) order, so the lower id first on ties, as the host's stable sort.
var<workgroup> best_p: array<f32, THREADS>;
var<workgroup> best_e: array<u32, THREADS>;

// Whether candidate (pa, ea) comes before (pb, eb); an id of `width` is no candidate.
fn routes_before(pa: f32, ea: u32, pb: f32, eb: u32) -> bool {
    return ea < p.width && (eb >= p.width || pa > pb || (pa == pb && ea < eb));
}

// Reduces best_p/best_e to slot 0 by routes_before; every thread reads the result after.
fn reduce_best(li: u32) {
    for (var off = THREADS / 2u; off > 0u; off >>= 1u) {
        workgroupBarrier();
        if (li < off && routes_before(best_p[li + off], best_e[li + off], best_p[li], best_e[li])) {
            best_p[li] = best_p[li + off];
            best_e[li] = best_e[li + off];
        }
    }
    workgroupBarrier();
}

// Reduces best_p to slot 0 by `max` (want_max) or `+`.
fn reduce_value(li: u32, want_max: bool) {
    for (var off = THREADS / 2u; off > 0u; off >>= 1u) {
        workgroupBarrier();
        if (li < off) {
            if (want_max) {
                best_p[li] = max(best_p[li], best_p[li + off]);
            } else {
                best_p[li] += best_p[li + off];
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn moe_route(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.n) {
        return;
    }
    let l = t * p.width;
    var m = B[l];
    for (var e = li; e < p.width; e += THREADS) {
        m = max(m, B[l + e]);
    }
    best_p[li] = m;
    reduce_value(li, true);
    m = best_p[0];
    workgroupBarrier();
    var part = 0.0;
    for (var e = li; e < p.width; e += THREADS) {
        part += exp(B[l + e] - m);
    }
    best_p[li] = part;
    reduce_value(li, false);
    let sum = best_p[0];
    let out = t * 2u * p.k;
    var total = 0.0;
    var prev_p = 0.0;
    var prev_e = 0u;
    for (var j = 0u; j < p.k; j++) {
        var mine_e = p.width;
        var mine_p = 0.0;
        for (var e = li; e < p.width; e += THREADS) {
            let pe = exp(B[l + e] - m);
            let after = j == 0u || pe < prev_p || (pe == prev_p && e > prev_e);
            if (after && routes_before(pe, e, mine_p, mine_e)) {
                mine_e = e;
                mine_p = pe;
            }
        }
        workgroupBarrier();
        best_p[li] = mine_p;
        best_e[li] = mine_e;
        reduce_best(li);
        // No candidate (more choices than experts): the last stands in, as a route must name one.
        let chosen = min(best_e[0], p.width - 1u);
        let chosen_p = best_p[0];
        let w = chosen_p / sum;
        if (li == 0u) {
            A[out + j] = f32(chosen);
            A[out + p.k + j] = w;
        }
        total += w;
        prev_p = chosen_p;
        prev_e = chosen;
    }
    if (p.normalize != 0u && li == 0u) {
        // llama.cpp's clamp: the smallest normal f16, against a division by zero.
        total = max(total, 6.103515625e-5);
        for (var j = 0u; j < p.k; j++) {
            A[out + p.k + j] /= total;
        }
    }
}

// A[t][i] += sum_j weight[t][j] * B[t k + j][i]: the experts' sum first, then the residual
// add, as the host orders them.
@compute @workgroup_size(64)
fn moe_combine_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * THREADS;
    if (i >= p.n * p.width) {
        return;
    }
    let t = i / p.width;
    let col = i % p.width;
    var s = 0.0;
    for (var j = 0u; j < p.k; j++) {
        s += R[t * 2u * p.k + p.k + j] * B[(t * p.k + j) * p.width + col];
    }
    A[i] += s;
}

// Each expert's list, A[e (n + 1)] = how many choices took expert e and A[e (n + 1) + 1 + i]
// the i-th of them (choice c = t k + j, as an f32 value), in choice order: one workgroup per
// expert, a prefix sum over each LIST_THREADS choices placing its hits.
const LIST_THREADS: u32 = 256u;

var<workgroup> hits: array<u32, LIST_THREADS>;

@compute @workgroup_size(256)
fn moe_lists(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let e = wid.x + wid.y * nwg.x;
    if (e >= p.width) {
        return;
    }
    let list = e * (p.n + 1u);
    let choices = p.n * p.k;
    var count = 0u;
    for (var base = 0u; base < choices; base += LIST_THREADS) {
        let c = base + li;
        var hit = 0u;
        if (c < choices && u32(R[(c / p.k) * 2u * p.k + c % p.k]) == e) {
            hit = 1u;
        }
        hits[li] = hit;
        workgroupBarrier();
        for (var off = 1u; off < LIST_THREADS; off <<= 1u) {
            var v = 0u;
            if (li >= off) {
                v = hits[li - off];
            }
            workgroupBarrier();
            hits[li] += v;
            workgroupBarrier();
        }
        if (hit == 1u) {
            A[list + count + hits[li]] = f32(c);
        }
        count += hits[LIST_THREADS - 1u];
        workgroupBarrier();
    }
    if (li == 0u) {
        A[list] = f32(count);
    }
}
