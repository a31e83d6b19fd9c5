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
}
