// The block-quantized weight types decoded 32 at a time: chunk c of a row is a legacy block,
// or sub-block c % 8 of k-quant super-block c / 8 (elements 32c..32c + 32). cuda/matmul.cu's
// products decode each chunk with its scales read once; tests/cuda_decode_host.rs compiles
// this file for the host and checks it against vibrant's own decoders.

template <int TY> __device__ __forceinline__ void decode_chunk(const u8* row, int c, float* w);

template <> __device__ __forceinline__ void decode_chunk<WT_Q4_0>(const u8* row, int c, float* w) {
    const u8* b = row + 18 * c;
    float d = f16_at(b);
    for (int l = 0; l < 16; l++) {
        int q = b[2 + l];
        w[l] = d * (float)((q & 0xF) - 8);
        w[l + 16] = d * (float)((q >> 4) - 8);
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q4_1>(const u8* row, int c, float* w) {
    const u8* b = row + 20 * c;
    float d = f16_at(b), m = f16_at(b + 2);
    for (int l = 0; l < 16; l++) {
        int q = b[4 + l];
        w[l] = d * (float)(q & 0xF) + m;
        w[l + 16] = d * (float)(q >> 4) + m;
    }
}

__device__ __forceinline__ u32 u32_at(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q5_0>(const u8* row, int c, float* w) {
    const u8* b = row + 22 * c;
    float d = f16_at(b);
    u32 qh = u32_at(b + 2);
    for (int l = 0; l < 16; l++) {
        int q = b[6 + l];
        // Signed: qh is unsigned, and so would the difference be.
        int lo = (q & 0xF) | (int)(((qh >> l) & 1) << 4);
        int hi = (q >> 4) | (int)(((qh >> (l + 16)) & 1) << 4);
        w[l] = d * (float)(lo - 16);
        w[l + 16] = d * (float)(hi - 16);
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q5_1>(const u8* row, int c, float* w) {
    const u8* b = row + 24 * c;
    float d = f16_at(b), m = f16_at(b + 2);
    u32 qh = u32_at(b + 4);
    for (int l = 0; l < 16; l++) {
        int q = b[8 + l];
        w[l] = d * (float)((q & 0xF) | (((qh >> l) & 1) << 4)) + m;
        w[l + 16] = d * (float)((q >> 4) | (((qh >> (l + 16)) & 1) << 4)) + m;
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q8_0>(const u8* row, int c, float* w) {
    const u8* b = row + 34 * c;
    float d = f16_at(b);
    for (int l = 0; l < 32; l++) w[l] = d * (float)(i8)b[2 + l];
}

// The k-quants: chunk c is sub-block j = c % 8 of super-block c / 8 (elements 32j..32j+32).
template <> __device__ __forceinline__ void decode_chunk<WT_Q2_K>(const u8* row, int c, float* w) {
    const u8* b = row + 84 * (c / 8);
    int j = c % 8, h = j / 4, s = j % 4;
    float d = f16_at(b + 80), dmin = f16_at(b + 82);
    for (int half = 0; half < 2; half++) {
        u8 sc = b[2 * j + half];
        float scale = d * (float)(sc & 0xF), min = dmin * (float)(sc >> 4);
        for (int l = 16 * half; l < 16 * half + 16; l++)
            w[l] = scale * (float)((b[16 + 32 * h + l] >> (2 * s)) & 3) - min;
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q3_K>(const u8* row, int c, float* w) {
    const u8* b = row + 110 * (c / 8);
    int j = c % 8, h = j / 4, s = j % 4;
    float d = f16_at(b + 108);
    const u8* sc = b + 96;
    for (int half = 0; half < 2; half++) {
        int g = 2 * j + half;
        int low = g < 8 ? (sc[g] & 0xF) : (sc[g - 8] >> 4);
        int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        float scale = d * (float)((low | (high << 4)) - 32);
        for (int l = 16 * half; l < 16 * half + 16; l++) {
            int q = ((b[32 + 32 * h + l] >> (2 * s)) & 3) - (((b[l] >> j) & 1) ? 0 : 4);
            w[l] = scale * (float)q;
        }
    }
}

// q4_K and q5_K blocks (144 and 176 bytes) keep their nibbles 4-byte aligned: word loads.
template <> __device__ __forceinline__ void decode_chunk<WT_Q4_K>(const u8* row, int c, float* w) {
    const u8* b = row + 144 * (c / 8);
    int j = c % 8, shift = 4 * (j % 2);
    float scale, min;
    k4_scale_min(b, j, &scale, &min);
    const u32* qs = (const u32*)(b + 16 + 32 * (j / 2));
    for (int k = 0; k < 8; k++) {
        u32 q = qs[k] >> shift;
        for (int i = 0; i < 4; i++) w[4 * k + i] = scale * (float)((q >> (8 * i)) & 0xF) - min;
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q5_K>(const u8* row, int c, float* w) {
    const u8* b = row + 176 * (c / 8);
    int j = c % 8, shift = 4 * (j % 2);
    float scale, min;
    k4_scale_min(b, j, &scale, &min);
    const u32* qs = (const u32*)(b + 48 + 32 * (j / 2));
    const u32* qh = (const u32*)(b + 16);
    for (int k = 0; k < 8; k++) {
        u32 q = qs[k] >> shift, h = qh[k] >> j;
        for (int i = 0; i < 4; i++) {
            int v = ((q >> (8 * i)) & 0xF) | (((h >> (8 * i)) & 1) << 4);
            w[4 * k + i] = scale * (float)v - min;
        }
    }
}

template <> __device__ __forceinline__ void decode_chunk<WT_Q6_K>(const u8* row, int c, float* w) {
    const u8* b = row + 210 * (c / 8);
    int j = c % 8, n = j / 4, quarter = j % 4;
    const u8* ql = b + 64 * n + 32 * (quarter & 1);
    const u8* qh = b + 128 + 32 * n;
    const i8* sc = (const i8*)(b + 192) + 8 * n + 2 * quarter;
    float d = f16_at(b + 208);
    int low_shift = quarter >= 2 ? 4 : 0;
    for (int half = 0; half < 2; half++) {
        float scale = d * (float)sc[half];
        for (int l = 16 * half; l < 16 * half + 16; l++) {
            int q = ((ql[l] >> low_shift) & 0xF) | (((qh[l] >> (2 * quarter)) & 3) << 4);
            w[l] = scale * (float)(q - 32);
        }
    }
}
