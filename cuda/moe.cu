// Mixture-of-experts ops: routing (Routing::route in src/backend/ops.rs), the products with
// the chosen experts' rows (ggml's mul_mat_id), and the weighted mix into the residual.

// routes[t] = the k experts of largest softmax probability (lower id first on ties), then
// their weights, renormalised where asked. A thread per row: n_expert is small.
extern "C" __global__ void moe_route(const float* logits, float* routes, int n_expert, int k,
                                     int normalize, int n) {
    wait_for_prior_grids();
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const float* l = logits + (u64)t * n_expert;
    float* r = routes + (u64)t * 2 * k;
    float max = NEG_INF;
    for (int e = 0; e < n_expert; e++) max = fmaxf(max, l[e]);
    float sum = 0.0f;
    for (int e = 0; e < n_expert; e++) sum += expf(l[e] - max);
    // The j-th choice is the best after the (j-1)-th in the order (probability falling, id
    // rising): no list of chosen experts is needed.
    float prev_p = 0.0f;
    int prev = -1;
    float total = 0.0f;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float best_p = 0.0f;
        for (int e = 0; e < n_expert; e++) {
            float p = expf(l[e] - max);
            bool after = prev < 0 || p < prev_p || (p == prev_p && e > prev);
            if (after && (best < 0 || p > best_p)) {
                best = e;
                best_p = p;
            }
        }
        r[j] = (float)best;
        r[k + j] = best_p / sum;
        total += best_p / sum;
        prev = best;
        prev_p = best_p;
    }
    if (normalize) {
        // llama.cpp's clamp: the smallest normal f16, against a division by zero.
        total = fmaxf(total, 6.1035156e-5f);
        for (int j = 0; j < k; j++) r[k + j] /= total;
    }
}

// For choice c = t·k + j with expert e = routes[t][j]: out[c][r] = x[c or t] · w[e·block + r],
// for the rows of the part (rows part_first.. of the matrix; others are another launch's).
// One block per (row of an expert's block, choice).
extern "C" __global__ void matmul_id(const u8* w, int ty, int row_bytes, const float* x,
                                     float* out, const float* routes, int cols, int k,
                                     int block, int part_first, int part_rows, int per_choice) {
    wait_for_prior_grids();
    int r = blockIdx.x, c = blockIdx.y;
    int t = c / k, j = c % k;
    int e = (int)routes[(u64)t * 2 * k + j];
    int g = e * block + r - part_first;
    if (g < 0 || g >= part_rows) return;
    const u8* row = w + (u64)g * row_bytes;
    const float* xr = x + (u64)(per_choice ? c : t) * cols;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) acc += weight_at(ty, row, i) * xr[i];
    float s = block_sum(acc);
    if (threadIdx.x == 0) out[(u64)c * block + r] = s;
}

// acc[t][d] += Σ_j routes[t][k + j] · y[t·k + j][d]: the experts' sum first, then the residual
// add, as llama.cpp orders them.
extern "C" __global__ void moe_combine_add(const float* y, const float* routes, float* acc,
                                           int k, int d, u64 len) {
    wait_for_prior_grids();
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    u64 t = i / d, c = i % d;
    float mix = 0.0f;
    for (int j = 0; j < k; j++) mix += routes[t * 2 * k + k + j] * y[(t * k + j) * d + c];
    acc[i] += mix;
}
