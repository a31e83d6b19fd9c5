// Shared by every kernel file: vibrant prepends it to each source before NVRTC compiles it, so
// that no include path (and no CUDA toolkit headers) is needed at run time. The sizes the Rust
// side launches with (MM_TOKENS, MV_WARPS, ATT_THREADS, MAX_HEAD_DIM) come as -D options from
// src/backend/cuda/mod.rs's KERNEL_CONSTANTS.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// ggml's type ids of the weight types the kernels decode (src/quant).
// -inf without math.h.
#define NEG_INF __int_as_float(0xff800000)

#define WT_F32 0
#define WT_F16 1
#define WT_Q4_0 2
#define WT_Q4_1 3
#define WT_Q5_0 6
#define WT_Q5_1 7
#define WT_Q8_0 8
#define WT_Q2_K 10
#define WT_Q3_K 11
#define WT_Q4_K 12
#define WT_Q5_K 13
#define WT_Q6_K 14
#define WT_BF16 30

// Half conversions in PTX: cuda_fp16.h is not needed (nor shipped with NVRTC). Compiled for
// the host (tests/cuda_decode_host.rs), they convert the bits by hand (IEEE binary16, round
// to nearest even), so any C++17 compiler builds them.
__device__ __forceinline__ float f16_to_f32(u16 h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    u32 sign = (u32)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    u32 bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        // Subnormal: normalise the mantissa.
        int e = 113;
        while (!(man & 0x400)) {
            man <<= 1;
            e--;
        }
        bits = sign | ((u32)e << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
#endif
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
#ifdef __CUDA_ARCH__
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    u32 x;
    __builtin_memcpy(&x, &f, 4);
    u32 sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xFF, man = x & 0x7FFFFF;
    if (exp == 0xFF) return (u16)(sign | 0x7C00 | (man ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 0x1F) return (u16)(sign | 0x7C00);
    if (e <= 0) {
        if (e < -10) return (u16)sign;
        man |= 0x800000;
        int shift = 14 - e;
        u32 half = man >> shift, rest = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (u16)(sign | half);
    }
    u32 half = ((u32)e << 10) | (man >> 13), rest = man & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;
    return (u16)(sign | half);
#endif
}

// Blocks are packed without padding (34-byte q8_0 blocks): their f16 fields are read by bytes.
__device__ __forceinline__ float f16_at(const u8* p) {
    return f16_to_f32((u16)p[0] | ((u16)p[1] << 8));
}

// The scale and minimum of sub-block j of the q4_K/q5_K block at b: d and dmin (its first
// two f16s) times the sub-block's 6-bit scale and min (ggml's get_scale_min_k4).
__device__ __forceinline__ void k4_scale_min(const u8* b, int j, float* scale, float* min) {
    const u8* q = b + 4;
    float sc, m;
    if (j < 4) {
        sc = (float)(q[j] & 63);
        m = (float)(q[j + 4] & 63);
    } else {
        sc = (float)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
    *scale = f16_at(b) * sc;
    *min = f16_at(b + 2) * m;
}

// The 4-bit level of element e (0..32) of a legacy block's 16 bytes of nibbles: the low
// nibbles hold elements 0..16, the high ones 16..32.
__device__ __forceinline__ int nibble32(const u8* qs, int e) {
    return e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
}

// The 5-bit level of element e of a q5_0/q5_1 block: bit e of the little-endian u32 qh is its
// fifth bit.
__device__ __forceinline__ int level5(const u8* qh, const u8* qs, int e) {
    return nibble32(qs, e) | (((qh[e / 8] >> (e % 8)) & 1) << 4);
}

// Value i of a weight row of type ty, decoded from ggml's block layout as the file stores it.
__device__ float weight_at(int ty, const u8* row, int i) {
    switch (ty) {
    case WT_F32:
        return ((const float*)row)[i];
    case WT_F16:
        return f16_to_f32(((const u16*)row)[i]);
    case WT_BF16:
        return __uint_as_float((u32)((const u16*)row)[i] << 16);
    case WT_Q4_0: {
        const u8* b = row + 18 * (i / 32);
        return f16_at(b) * (float)(nibble32(b + 2, i % 32) - 8);
    }
    case WT_Q4_1: {
        const u8* b = row + 20 * (i / 32);
        return (float)nibble32(b + 4, i % 32) * f16_at(b) + f16_at(b + 2);
    }
    case WT_Q5_0: {
        const u8* b = row + 22 * (i / 32);
        return (float)(level5(b + 2, b + 6, i % 32) - 16) * f16_at(b);
    }
    case WT_Q5_1: {
        const u8* b = row + 24 * (i / 32);
        return (float)level5(b + 4, b + 8, i % 32) * f16_at(b) + f16_at(b + 2);
    }
    case WT_Q8_0: {
        const u8* b = row + 34 * (i / 32);
        return f16_at(b) * (float)(i8)b[2 + i % 32];
    }
    case WT_Q2_K: {
        // scales[16], qs[64], d, dmin: element 128h + 32s + l is bits 2s..2s+2 of qs[32h + l];
        // group e / 16 has scale d · (sc & 15) and minimum dmin · (sc >> 4).
        const u8* b = row + 84 * (i / 256);
        int e = i % 256, h = e / 128, s = (e % 128) / 32, l = e % 32;
        int q = (b[16 + 32 * h + l] >> (2 * s)) & 3;
        u8 sc = b[e / 16];
        return f16_at(b + 80) * (float)(sc & 0xF) * (float)q - f16_at(b + 82) * (float)(sc >> 4);
    }
    case WT_Q3_K: {
        // hmask[32], qs[64], scales[12], d: low bits as in q2_K; the high bit of element e is
        // bit e / 32 of hmask[e % 32], clear meaning -4; 16 six-bit scales, offset by 32.
        const u8* b = row + 110 * (i / 256);
        int e = i % 256, h = e / 128, s = (e % 128) / 32, l = e % 32, g = e / 16;
        int q = ((b[32 + 32 * h + l] >> (2 * s)) & 3) - (((b[l] >> (e / 32)) & 1) ? 0 : 4);
        const u8* sc = b + 96;
        int low = g < 8 ? (sc[g] & 0xF) : (sc[g - 8] >> 4);
        int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        return f16_at(b + 108) * (float)((low | (high << 4)) - 32) * (float)q;
    }
    case WT_Q4_K: {
        const u8* b = row + 144 * (i / 256);
        int e = i % 256, g = e / 64, w = e % 64, hi = w >= 32;
        u8 q = b[16 + 32 * g + w % 32];
        float scale, min;
        k4_scale_min(b, 2 * g + hi, &scale, &min);
        int nib = hi ? q >> 4 : q & 0xF;
        return scale * (float)nib - min;
    }
    case WT_Q5_K: {
        const u8* b = row + 176 * (i / 256);
        int e = i % 256, g = e / 64, w = e % 64, hi = w >= 32, l = w % 32;
        u8 q = b[48 + 32 * g + l];
        float scale, min;
        k4_scale_min(b, 2 * g + hi, &scale, &min);
        int v = (hi ? q >> 4 : q & 0xF) + (((b[16 + l] >> (2 * g + hi)) & 1) << 4);
        return scale * (float)v - min;
    }
    case WT_Q6_K: {
        const u8* b = row + 210 * (i / 256);
        int e = i % 256, n = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
        const u8* ql = b + 64 * n;
        const u8* qh = b + 128 + 32 * n;
        const i8* sc = (const i8*)(b + 192) + 8 * n;
        u8 low = (quarter & 1) ? ql[l + 32] : ql[l];
        int nib = quarter >= 2 ? low >> 4 : low & 0xF;
        int q = (nib | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
        return f16_at(b + 208) * (float)sc[l / 16 + 2 * quarter] * (float)q;
    }
    default:
        // Every ggml type vibrant reads is above (GgmlType in src/quant/types.rs).
        return 0.0f;
    }
}

// Every kernel calls this first, before it touches memory that an earlier kernel writes or
// reads. In a decode step's graph, kernels are programmatic dependents of the one before them
// (Hopper and later; graph.rs): a kernel may start once all of the earlier one's blocks have,
// so that its launch overlaps their end, and this waits until every earlier grid has finished
// and its writes are visible. Elsewhere it does nothing.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024), given to every thread.
// Every thread of the block must call it.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float s = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(s);
}

__device__ float block_max(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float s = lane < warps ? partial[lane] : NEG_INF;
    return warp_max(s);
}

// Block b of 32 activations rounded to 8 bits for cuda/matmul_q8.cu's products (llama.cpp's
// q8_1), v in each lane of a warp: its bytes q[32b..] and (d, d · Σ q).
__device__ __forceinline__ void quantize_block(float v, i8* q, float2* ds, u64 b) {
    int lane = threadIdx.x % 32;
    float amax = warp_max(fabsf(v));
    float d = amax / 127.0f;
    int qi = amax == 0.0f ? 0 : __float2int_rn(v / d);
    q[32 * b + lane] = (i8)qi;
    int sum = qi;
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) ds[b] = make_float2(d, d * (float)sum);
}

// Two floats as an f16x2 word: `lo` in the low half, as mma.sync reads a pair of elements.
__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
#ifdef __CUDA_ARCH__
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16);
#endif
}

// c += a · b on tensor cores (compute capability 8.0 and up; the host launches the kernels
// that use it only there): a 16×16 f16 tile of A in row order (4 words a lane), a 16×8 one of
// B in column order (2 words), c 16×8 in f32 (4 a lane), in mma.sync's fragment layouts.
__device__ __forceinline__ void mma_16x8x16(float* c, const u32* a, const u32* b) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
