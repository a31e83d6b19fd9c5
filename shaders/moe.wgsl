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

// One thread per row: k passes over the row's probabilities, each taking the largest below
// the previous choice (the lower id first on ties, as the host's stable sort does).
@compute @workgroup_size(64)
fn moe_route(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * THREADS;
    if (t >= p.n) {
        return;
    }
    let l = t * p.width;
    var m = B[l];
    for (var e = 1u; e < p.width; e++) {
        m = max(m, B[l + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < p.width; e++) {
        sum += exp(B[l + e] - m);
    }
    let out = t * 2u * p.k;
    var total = 0.0;
    var prev_p = 0.0;
    var prev_e = 0u;
    for (var j = 0u; j < p.k; j++) {
        // Logits that are NaN never win: the first expert not yet taken stands in.
        var best = p.width;
        var best_p = -1.0;
        for (var e = 0u; e < p.width; e++) {
            let pe = exp(B[l + e] - m);
            let after = j == 0u || pe < prev_p || (pe == prev_p && e > prev_e);
            if (after && (best == p.width || pe > best_p)) {
                best = e;
                best_p = pe;
            }
        }
        best = min(best, p.width - 1u);
        A[out + j] = f32(best);
        let w = best_p / sum;
        A[out + p.k + j] = w;
        total += w;
        prev_p = best_p;
        prev_e = best;
    }
    if (p.normalize != 0u) {
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
