/* internal.h: block layouts, the per-variant kernel table, scalar fp16/bf16 helpers. Not exported. */
#ifndef DAIRLLM_INTERNAL_H
#define DAIRLLM_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dairllm.h"

#define QK 32 /* values per Q8_0 / Q4_0 block */

/* query heads sharing one pass over a KV head's keys and values in the attention kernel */
#define DL_ATTN_MAX_GROUP 16

typedef struct {
    uint16_t d;     /* fp16 scale */
    int8_t q[QK];   /* value = d * q */
} block_q8_0;

typedef struct {
    uint16_t d;          /* fp16 scale */
    uint8_t qs[QK / 2];  /* value j = d * ((qs[j] & 15) - 8), value j+16 = d * ((qs[j] >> 4) - 8) */
} block_q4_0;

_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");

/* One SIMD variant: single-threaded kernels over a part of the work; the pool splits the work. */
typedef struct dl_kernels {
    const char *name;
    /* rows [ra, rb) of the matmul, written at out[t * ldo + (r - r0)] */
    void (*matmul)(float *out, int64_t ldo, const void *w, int64_t ldw, int wtype, const void *x, int64_t n_in, int64_t r0,
                   int64_t ra, int64_t rb, int64_t n_tok);
    void (*rmsnorm)(float *out, const float *x, const float *w, int64_t n, float eps); /* one row */
    void (*softmax)(float *out, const float *x, int64_t n);                             /* one row */
    void (*silu)(float *out, const float *x, int64_t n);
    void (*gelu)(float *out, const float *x, int64_t n);
    void (*swiglu)(float *out, const float *gate, const float *up, int64_t n);
    void (*add)(float *out, const float *a, const float *b, int64_t n);
    void (*mul)(float *out, const float *a, const float *b, int64_t n);
    void (*scale)(float *out, const float *x, float s, int64_t n);
    /* one token: n_heads heads of head_dim at angle pos * freqs[j] */
    void (*rope)(float *out, const float *x, int32_t pos, const float *freqs, int64_t n_heads, int64_t head_dim,
                 int64_t n_rot, int mode);
    /* nt tokens x nh consecutive query heads (nt * nh <= DL_ATTN_MAX_GROUP) that share one KV head
     * (k, v already offset to it): item (i, h) is the head_dim floats at q + i * q_stride + h * head_dim
     * (out likewise) and attends to the first n_kv[i] positions */
    void (*attention)(float *out, const float *q, int64_t q_stride, const void *k, const void *v, int kv_type,
                      const int64_t *n_kv, int64_t nt, int64_t head_dim, int64_t kv_stride, float scale, int64_t nh);
    void (*quantize_q8_0)(void *out, const float *x, int64_t n);
    void (*dequantize)(float *out, const void *x, int type, int64_t n);
    void (*f32_to_f16)(uint16_t *out, const float *x, int64_t n);
    void (*f16_to_f32)(float *out, const uint16_t *x, int64_t n);
    void (*f32_to_bf16)(uint16_t *out, const float *x, int64_t n);
    uint64_t (*read_sum)(const void *buf, int64_t bytes); /* bandwidth probe */
    /* Optional (NULL when the variant has none): Q4_0 (and, where pack_q8_0_min_tokens > 0, Q8_0) matmuls
     * against activations packed once per call (layouts in dot_x86.h and dot_arm.h). pack_q8_0 packs n_tok
     * Q8_0 rows of nb blocks, pack_bytes(nb) bytes each, out of a matmul of `batch` tokens (a thread packs
     * part of them; what a layout needs may depend on the whole batch); matmul_packed computes rows [ra, rb)
     * like matmul, reading x only for blocks the packing leaves out. */
    void (*pack_q8_0)(void *dst, const void *x, int64_t nb, int64_t n_tok, int64_t batch);
    int64_t (*pack_bytes)(int64_t nb);
    int64_t pack_min_tokens;      /* Q4_0 matmuls of fewer tokens read x as it is */
    int64_t pack_q8_0_min_tokens; /* Q8_0 weights: the same; 0 = never packed */
    int64_t pack_q8_0_max_blocks; /* Q8_0 rows of more blocks are not packed (their path reads x); 0 = no limit */
    void (*matmul_packed)(float *out, int64_t ldo, const void *w, int64_t ldw, int wtype, const void *packed, const void *x,
                          int64_t n_in, int64_t r0, int64_t ra, int64_t rb, int64_t n_tok);
} dl_kernels;

/* ---- scalar conversions (exact, IEEE round to nearest even) ---- */
static inline float dl_bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t dl_f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float dl_h2f(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return dl_bits_to_f32(sign | 0x7f800000u | (man << 13)); /* inf / nan */
    if (exp != 0) return dl_bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
    if (man == 0) return dl_bits_to_f32(sign);
    /* subnormal: man * 2^-24 (exact in float) */
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
}

static inline uint16_t dl_f2h(float f) {
    const uint32_t u = dl_f32_to_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? (uint16_t)(0x7e00 | ((a >> 13) & 0x3ff)) : 0x7c00);
    if (a >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520: overflow to inf */
    if (a >= 0x38800000u) {                      /* normal half */
        const uint32_t mant_odd = (a >> 13) & 1;
        const uint32_t r = a + 0xfffu + mant_odd;
        return sign | (uint16_t)((r - 0x38000000u) >> 13);
    }
    /* subnormal half (or zero): value / 2^-24 rounded to nearest even */
    const float v = dl_bits_to_f32(a) * 16777216.0f; /* exact: a power-of-two scale */
    return sign | (uint16_t)nearbyintf(v);
}

static inline float dl_bf2f(uint16_t h) { return dl_bits_to_f32((uint32_t)h << 16); }

static inline uint16_t dl_f2bf(float f) {
    const uint32_t u = dl_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ---- variant naming: kernels.c is compiled once per variant with DL_VARIANT set ---- */
/* Fully unrolls the next loop (at most 4 iterations): tile loops over a kernel's rows, tokens and
 * blocks whose counts are constants after inlining. Without it clang kept such loops rolled, with the
 * per-row accumulators and unpacked blocks in stack arrays (the AVX2 Q4_0 tile: 8-11 % slower per
 * block with its weights in cache; the NEON tiles: 25.3 instructions per block against 14.8). */
#if defined(__clang__)
#define DL_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define DL_UNROLL _Pragma("GCC unroll 4")
#else
#define DL_UNROLL
#endif

#define DL_CAT2(a, b) a##b
#define DL_CAT(a, b) DL_CAT2(a, b)
#define DL_STR2(a) #a
#define DL_STR(a) DL_STR2(a)

extern const dl_kernels dl_kernels_scalar;
#if defined(__x86_64__)
extern const dl_kernels dl_kernels_x86_64;
extern const dl_kernels dl_kernels_ssse3;
extern const dl_kernels dl_kernels_avx2;
extern const dl_kernels dl_kernels_avx512;
#elif defined(__aarch64__)
extern const dl_kernels dl_kernels_neon;
extern const dl_kernels dl_kernels_dotprod;
#endif

#endif
