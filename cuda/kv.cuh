// The KV cache's encodings, shared by rope.cu (which writes it) and attention.cu (which reads
// it): f16 (WT_F16) or ggml's q8_0 blocks (WT_Q8_0: an f16 scale and 32 signed quants, 34
// bytes per 32 values). Rows and heads are whole blocks (checked at load), so every block
// starts at an even byte and its scale can be read as a u16.

// Bytes of n cache values.
__device__ __forceinline__ u64 kv_bytes(int ty, u64 n) {
    return ty == WT_Q8_0 ? n / 32 * 34 : 2 * n;
}

// Value d of the head starting at `head`.
__device__ __forceinline__ float kv_at(int ty, const u8* head, int d) {
    if (ty == WT_Q8_0) {
        const u8* b = head + 34 * (d / 32);
        return f16_to_f32(*(const u16*)b) * (float)(i8)b[2 + d % 32];
    }
    return f16_to_f32(((const u16*)head)[d]);
}

// Stores a head of `n` values (in shared memory) at `head`. Every thread of the block calls
// it. q8_0 rounds as vibrant's CPU backend does (ggml-cpu's quantize_row_q8_0): scale
// amax / 127, quants round(x · 127 / amax), ties to even; a warp per block of 32.
__device__ void kv_store(int ty, u8* head, const float* values, int n) {
    if (ty != WT_Q8_0) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) ((u16*)head)[i] = f32_to_f16(values[i]);
        return;
    }
    int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int blk = threadIdx.x / 32; blk < n / 32; blk += warps) {
        float v = values[32 * blk + lane];
        float amax = warp_max(fabsf(v));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        u8* b = head + 34 * blk;
        if (lane == 0) *(u16*)b = f32_to_f16(amax / 127.0f);
        b[2 + lane] = (u8)(i8)__float2int_rn(v * id);
    }
}
