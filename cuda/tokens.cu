// Token picks on the device: the argmax of a row of logits, kept on the device for the next
// step's embedding (so that step can be queued before the host reads the id), and small
// integer arrays written from kernel arguments (no host copy, hence no wait for the stream).

// Whether value a at index ia is a better pick than b at ib: larger, the first on ties, and
// never a NaN (index `len` stands for "none yet").
__device__ __forceinline__ bool better(float a, int ia, float b, int ib) {
    if (a != a) return false;
    return b != b || a > b || (a == b && ia < ib);
}

__device__ __forceinline__ void warp_best(float* v, int* idx) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, o);
        int oi = __shfl_xor_sync(0xffffffffu, *idx, o);
        if (better(ov, oi, *v, *idx)) {
            *v = ov;
            *idx = oi;
        }
    }
}

// picked[0] = the index of the first largest of x[0..len), as the host's argmax picks it
// (NaNs never win; all-NaN gives 0); picked[1] = 0: the (row, output row) pair that
// embed_picked reads. One block of PICK_THREADS.
extern "C" __global__ void __launch_bounds__(PICK_THREADS) argmax(const float* x, int len,
                                                                  int* picked) {
    wait_for_prior_grids();
    __shared__ float best_v[PICK_THREADS / 32];
    __shared__ int best_i[PICK_THREADS / 32];
    float v = __int_as_float(0x7fc00000);
    int idx = len;
    for (int i = threadIdx.x; i < len; i += PICK_THREADS) {
        float x_i = x[i];
        if (better(x_i, i, v, idx)) {
            v = x_i;
            idx = i;
        }
    }
    warp_best(&v, &idx);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        best_v[warp] = v;
        best_i[warp] = idx;
    }
    __syncthreads();
    if (warp != 0) return;
    v = lane < PICK_THREADS / 32 ? best_v[lane] : __int_as_float(0x7fc00000);
    idx = lane < PICK_THREADS / 32 ? best_i[lane] : len;
    warp_best(&v, &idx);
    if (lane == 0) {
        picked[0] = idx < len ? idx : 0;
        picked[1] = 0;
    }
}

// out[0] = row picked[0] of a table (clamped to its last row, as embed clamps ids), if the
// part of `rows` rows from row `first` holds it: one block per part.
extern "C" __global__ void embed_picked(const u8* w, int ty, int row_bytes, const int* picked,
                                        int first, int rows, int last_row, float* out,
                                        int cols) {
    wait_for_prior_grids();
    int tok = min(picked[0], last_row);
    if (tok < first || tok >= first + rows) return;
    const u8* row = w + (u64)(tok - first) * row_bytes;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[i] = weight_at(ty, row, i);
}

// dst[0..n) = the ints packed two to a slot in the arguments (n at most 2 * FILL_SLOTS).
extern "C" __global__ void fill_ints(int* dst, int n, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4,
                                     u64 a5, u64 a6, u64 a7, u64 a8, u64 a9, u64 a10, u64 a11,
                                     u64 a12, u64 a13, u64 a14, u64 a15) {
    wait_for_prior_grids();
    u64 v[FILL_SLOTS] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
    int i = threadIdx.x;
    if (i < n) dst[i] = (int)(u32)(v[i / 2] >> (32 * (i % 2)));
}
