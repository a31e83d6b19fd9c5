// Parameters of every attention kernel (attention.wgsl, attention_coop.wgsl).
struct Params {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    pos: u32,
    kv_width: u32,
    q_width: u32,
    scale: f32,
    // Key chunks per (head, token) in the decode kernel's partials.
    n_chunks: u32,
    // Queries in this step.
    n: u32,
    // Where a q8_0 cache's scales begin, in words (kv_q8_0.wgsl).
    scales: u32,
    // Sliding-window attention: a query sees its last `window` keys (itself included); 0: all.
    window: u32,
    // Scores become softcap · tanh(score / softcap) (Gemma 2); 0: left as they are.
    softcap: f32,
    // The step's row of this sequence's first query: a step of several sequences attends a
    // sequence (a span of rows, its own cache) at a time.
    first_row: u32,
}

// Where the query (and output) of the sequence's token t begins in Q and O.
fn q_row(t: u32) -> u32 {
    return (p.first_row + t) * p.q_width;
}

// The first key that the query at position `q_pos` sees.
fn first_key(q_pos: u32) -> u32 {
    if (p.window == 0u || q_pos < p.window) {
        return 0u;
    }
    return q_pos + 1u - p.window;
}

// A scaled score, soft-capped where the model asks for it.
fn capped(score: f32) -> f32 {
    if (p.softcap == 0.0) {
        return score;
    }
    return p.softcap * tanh(score / p.softcap);
}
