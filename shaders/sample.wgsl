// Sampling on the device over row 0 of the logits, step for step as the
// host's Sampler (src/generate/sampler.rs), the reference it is tested against: logit bias,
// then repetition/frequency/presence penalties over the recent tokens, then the top_k most
// likely tokens (by logit, then by id), the softmax over them cut by top_p and min_p, the
// softmax of what is left at the temperature, and one seeded draw. Only the id leaves the
// device: it goes to result[0], where the next step's embedding reads it, and into the
// window of recent tokens for the next step's penalties.
//
// Two stages: `sample_slices` gives each slice of SLICE logits a workgroup that adjusts the
// slice's logits and writes its top_k candidates (key, id) to `cands`; `sample`, one
// workgroup, takes the top_k of all the slices' candidates and draws. The top_k of the whole
// vocabulary are among them, ties at the k-th key ranked by id in both stages. One
// workgroup over the whole vocabulary took three quarters of a millisecond a token.
//
// The top_k of a stage are found by radix selection on order-preserving keys of the logits:
// four passes of 8 bits fix the key of the k-th largest; the larger ones and the ties at it
// are gathered, sorted, and the first k kept.

// MAX_K (most candidates, top_k), WINDOW (the most recent tokens the penalties look at),
// MAX_BIAS (most logit biases) and SLICE (logits per first-stage workgroup) come from the
// host (src/sampling.rs, src/backend/gpu/sampling.rs).
const WG: u32 = 256u;
// Candidates gathered before sorting: those above the k-th key in [0, MAX_K), ties at it
// after them.
const CAP: u32 = 1024u;
// state: the draw counter, the tokens in the window, where the next one goes, the window.
const STATE_DRAWS: u32 = 0u;
const STATE_LEN: u32 = 1u;
const STATE_HEAD: u32 = 2u;
const STATE_WINDOW: u32 = 3u;
const NO_ID: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: SampleParams;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;
@group(0) @binding(3) var<storage, read_write> state: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<u32>;
// Each slice's top_k candidates: (key, id) pairs, key 0 where a slice has fewer.
@group(0) @binding(5) var<storage, read_write> cands: array<u32>;

// What a stage's passes run over: entries [0, src_len) of the logits from src_base on (the
// first stage), or of the candidates (the second).
var<private> src_base: u32;
var<private> src_len: u32;
var<private> from_cands: bool;

var<workgroup> hist: array<atomic<u32>, WG>;
var<workgroup> scan: array<u32, WG>;
var<workgroup> select_at: array<u32, 3>;
var<workgroup> n_above: atomic<u32>;
var<workgroup> n_ties: atomic<u32>;
var<workgroup> cand_key: array<u32, CAP>;
var<workgroup> cand_id: array<u32, CAP>;

// An order-preserving key of a logit; non-finite logits get 0, below every finite one.
fn key_of(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x7f800000u) == 0x7f800000u) {
        return 0u;
    }
    return select(b | 0x80000000u, ~b, (b >> 31u) == 1u);
}

fn logit_of(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k >> 31u) == 1u));
}

fn entry_key(i: u32) -> u32 {
    if (from_cands) {
        return cands[2u * i];
    }
    return key_of(X[src_base + i]);
}

fn entry_id(i: u32) -> u32 {
    if (from_cands) {
        return cands[2u * i + 1u];
    }
    return src_base + i;
}

// Chris Wellons' lowbias32 hash; the host's Sampler draws with the same.
fn hash(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// Uniform in [0, 1): draw number `n` of the seed.
fn uniform_draw(n: u32) -> f32 {
    let h = hash(p.seed_lo ^ hash(p.seed_hi ^ hash(n)));
    return f32(h >> 8u) / 16777216.0;
}

fn penalize(logit: f32, count: u32) -> f32 {
    var l = select(logit / p.repeat_penalty, logit * p.repeat_penalty, logit <= 0.0);
    return l - f32(count) * p.frequency_penalty - select(0.0, p.presence_penalty, count > 0u);
}

// Bias, then penalties, of the tokens in [lo, hi): each token of the window once, with its
// count.
fn adjust_logits(li: u32, lo: u32, hi: u32) {
    for (var b = li; b < min(p.n_bias, MAX_BIAS); b += WG) {
        let t = bias[2u * b];
        if (t >= lo && t < hi) {
            X[t] += bitcast<f32>(bias[2u * b + 1u]);
        }
    }
    storageBarrier();
    workgroupBarrier();
    let len = min(state[STATE_LEN], WINDOW);
    for (var e = li; e < len; e += WG) {
        let t = state[STATE_WINDOW + e];
        if (t < lo || t >= hi) {
            continue;
        }
        var first = true;
        var count = 0u;
        for (var j = 0u; j < len; j++) {
            let same = state[STATE_WINDOW + j] == t;
            first = first && !(same && j < e);
            count += u32(same);
        }
        if (first) {
            X[t] = penalize(X[t], count);
        }
    }
    storageBarrier();
    workgroupBarrier();
}

// Threads see the key of the k-th largest logit and how many of its ties to keep.
fn select_kth(li: u32, k: u32) -> vec2<u32> {
    var prefix = 0u;
    var mask = 0u;
    var remaining = k;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        atomicStore(&hist[li], 0u);
        workgroupBarrier();
        for (var i = li; i < src_len; i += WG) {
            let key = entry_key(i);
            if ((key & mask) == prefix) {
                atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
            }
        }
        workgroupBarrier();
        // Counts of the bins from the top down, summed: the bin where they reach `remaining`
        // holds the k-th key.
        scan[li] = atomicLoad(&hist[WG - 1u - li]);
        workgroupBarrier();
        for (var s = 1u; s < WG; s <<= 1u) {
            var add = 0u;
            if (li >= s) {
                add = scan[li - s];
            }
            workgroupBarrier();
            scan[li] += add;
            workgroupBarrier();
        }
        var before = 0u;
        if (li > 0u) {
            before = scan[li - 1u];
        }
        if (before < remaining && scan[li] >= remaining) {
            let bin = WG - 1u - li;
            select_at[0] = prefix | (bin << shift);
            select_at[1] = mask | (0xffu << shift);
            select_at[2] = remaining - before;
        }
        workgroupBarrier();
        prefix = select_at[0];
        mask = select_at[1];
        remaining = select_at[2];
        workgroupBarrier();
    }
    return vec2<u32>(prefix, remaining);
}

// Gathers the logits above the k-th key, then its ties, and sorts them by key, then id.
fn gather_sorted(li: u32, kth: u32) {
    for (var i = li; i < CAP; i += WG) {
        cand_key[i] = 0u;
        cand_id[i] = NO_ID;
    }
    if (li == 0u) {
        atomicStore(&n_above, 0u);
        atomicStore(&n_ties, 0u);
    }
    workgroupBarrier();
    for (var i = li; i < src_len; i += WG) {
        let key = entry_key(i);
        if (key > kth) {
            let at = atomicAdd(&n_above, 1u);
            cand_key[at] = key;
            cand_id[at] = entry_id(i);
        } else if (key == kth && key != 0u) {
            let at = MAX_K + atomicAdd(&n_ties, 1u);
            if (at < CAP) {
                cand_key[at] = key;
                cand_id[at] = entry_id(i);
            }
        }
    }
    workgroupBarrier();
    // Bitonic sort, descending by key, ascending by id on equal keys.
    for (var size = 2u; size <= CAP; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var t = li; t < CAP / 2u; t += WG) {
                let a = 2u * t - (t & (stride - 1u));
                let b = a + stride;
                let descending = (a & size) == 0u;
                let ka = cand_key[a];
                let kb = cand_key[b];
                let b_first = kb > ka || (kb == ka && cand_id[b] < cand_id[a]);
                if (b_first == descending) {
                    cand_key[a] = kb;
                    cand_key[b] = ka;
                    let ia = cand_id[a];
                    cand_id[a] = cand_id[b];
                    cand_id[b] = ia;
                }
            }
            workgroupBarrier();
        }
    }
}

// The draw over the first `k` sorted candidates, on one thread: at most MAX_K of them; a
// temperature of 0 takes the first.
fn draw(k: u32) -> u32 {
    var n = 0u;
    while (n < k && cand_key[n] != 0u) {
        n++;
    }
    if (n == 0u) {
        return 0u;
    }
    if (p.temperature <= 0.0) {
        return cand_id[0];
    }
    let top = logit_of(cand_key[0]);
    var sum = 0.0;
    for (var i = 0u; i < n; i++) {
        sum += exp(logit_of(cand_key[i]) - top);
    }
    // top_p: the fewest candidates whose probabilities reach it.
    var keep = n;
    if (p.top_p < 1.0) {
        var cumulative = 0.0;
        for (var i = 0u; i < n; i++) {
            cumulative += exp(logit_of(cand_key[i]) - top) / sum;
            if (cumulative >= p.top_p) {
                keep = i + 1u;
                break;
            }
        }
    }
    // min_p: those at least min_p times as likely as the first.
    if (p.min_p > 0.0) {
        let threshold = p.min_p / sum;
        var i = 1u;
        while (i < keep && exp(logit_of(cand_key[i]) - top) / sum >= threshold) {
            i++;
        }
        keep = i;
    }
    var total = 0.0;
    for (var i = 0u; i < keep; i++) {
        total += exp((logit_of(cand_key[i]) - top) / p.temperature);
    }
    let r = uniform_draw(state[STATE_DRAWS]);
    var cumulative = 0.0;
    for (var i = 0u; i < keep; i++) {
        cumulative += exp((logit_of(cand_key[i]) - top) / p.temperature) / total;
        if (r < cumulative) {
            return cand_id[i];
        }
    }
    return cand_id[keep - 1u];
}

// Candidates each stage keeps: top_k (1 at temperature 0).
fn kept() -> u32 {
    return select(min(p.top_k, MAX_K), 1u, p.temperature <= 0.0);
}

@compute @workgroup_size(256)
fn sample_slices(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    src_base = wid.x * SLICE;
    src_len = min(SLICE, p.n_vocab - src_base);
    from_cands = false;
    adjust_logits(li, src_base, src_base + src_len);
    let k = kept();
    let kth = select_kth(li, min(k, src_len));
    gather_sorted(li, kth.x);
    for (var i = li; i < k; i += WG) {
        cands[2u * (wid.x * k + i)] = cand_key[i];
        cands[2u * (wid.x * k + i) + 1u] = cand_id[i];
    }
}

@compute @workgroup_size(256)
fn sample(@builtin(local_invocation_index) li: u32) {
    let k = kept();
    src_base = 0u;
    src_len = p.n_slices * k;
    from_cands = true;
    let kth = select_kth(li, k);
    gather_sorted(li, kth.x);
    if (li == 0u) {
        let id = draw(k);
        result[0] = id;
        if (p.temperature > 0.0) {
            state[STATE_DRAWS] += 1u;
        }
        let len = state[STATE_LEN];
        if (p.repeat_last_n > 0u) {
            state[STATE_WINDOW + state[STATE_HEAD]] = id;
            state[STATE_HEAD] = (state[STATE_HEAD] + 1u) % p.repeat_last_n;
            state[STATE_LEN] = min(len + 1u, p.repeat_last_n);
        }
    }
}
