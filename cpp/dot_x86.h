/*
 * dot_x86.h: x86-64 dot products for the avx2 (AVX2 + FMA + F16C), avx512 (F/BW/VL + VNNI), ssse3
 * (x86-64-v2: SSSE3, SSE4.1/4.2, POPCNT, no AVX) and x86_64 (SSE2) variants. Included by kernels.c
 * only; the compiler flags of the variant decide what is compiled.
 *
 * Q4_0 x Q8_0: the nibbles (0..15) are used as they are, unsigned (vpdpbusd with VNNI, (v)pmaddubsw
 * on AVX2 and SSSE3), and the "- 8" becomes "- 8 * sum(x)" per lane, computed once per activation block.
 */

/* An fp16 scale at an address of any alignment (a block's d). */
static inline __attribute__((unused)) uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return v;
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define DL_X86_AVX512 1
#else
#define DL_X86_AVX512 0
#endif

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

/* ---- float types ---- */
#define DL_HAVE_DOT_F32
static inline float dot_f32(const float *w, const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

/* q . k_j for the 8 rows k_j = k + j * stride (n floats each) into out[0..8): one pass over q for the
 * eight rows (8 independent FMA chains), the eight sums reduced together by a transpose of adds. With
 * AVX-512 the chains are 16 floats wide while 16 are left, each folded to 8 before the rest. */
#define DL_HAVE_DOT8_F32
static inline void dot8_f32(float *out, const float *q, const float *k, int64_t stride, int64_t n) {
    __m256 a[8];
    int64_t i = 0;
#if DL_X86_AVX512
    {
        __m512 z[8];
        for (int j = 0; j < 8; j++) z[j] = _mm512_setzero_ps();
        for (; i + 16 <= n; i += 16) {
            const __m512 qv = _mm512_loadu_ps(q + i);
            for (int j = 0; j < 8; j++) z[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k + j * stride + i), z[j]);
        }
        for (int j = 0; j < 8; j++) a[j] = _mm256_add_ps(_mm512_castps512_ps256(z[j]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z[j]), 1)));
    }
#else
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
#endif
    for (; i + 8 <= n; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + j * stride + i), a[j]);
    }
    /* hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7]: two rounds give row j's
     * two half sums in lanes j and j + 4 of the 128-bit halves, one add the totals in order */
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
    for (; i < n; i++)
        for (int j = 0; j < 8; j++) out[j] += q[i] * k[j * stride + i];
}

/* o += e[j] * v_j for the 8 rows v_j = v + j * stride, j = 0..7 in order, fused multiply-adds (16
 * floats per step with AVX-512: the same operations per element, so the same bits) */
#define DL_HAVE_AXPY8_F32
static inline void axpy8_f32(float *o, const float *e, const float *v, int64_t stride, int64_t n) {
    int64_t i = 0;
#if DL_X86_AVX512
    {
        __m512 ez[8];
        for (int j = 0; j < 8; j++) ez[j] = _mm512_set1_ps(e[j]);
        for (; i + 16 <= n; i += 16) {
            __m512 acc = _mm512_loadu_ps(o + i);
            for (int j = 0; j < 8; j++) acc = _mm512_fmadd_ps(ez[j], _mm512_loadu_ps(v + j * stride + i), acc);
            _mm512_storeu_ps(o + i, acc);
        }
    }
#endif
    __m256 ev[8];
    for (int j = 0; j < 8; j++) ev[j] = _mm256_set1_ps(e[j]);
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_loadu_ps(o + i);
        for (int j = 0; j < 8; j++) acc = _mm256_fmadd_ps(ev[j], _mm256_loadu_ps(v + j * stride + i), acc);
        _mm256_storeu_ps(o + i, acc);
    }
    for (; i < n; i++)
        for (int j = 0; j < 8; j++) o[i] = fmaf(e[j], v[j * stride + i], o[i]);
}

static inline __m256 load_f16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* fp16 -> float for a row (an F16 KV cache's key or value), exact (F16C) */
#define DL_HAVE_F16_ROW
static inline void f16_row(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16x8(src + i));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}
static inline __m256 load_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* F16 / BF16 rows are read one after the other (one stream), each step prefetching one line
 * DL_HALF_AHEAD bytes on. 1 KiB took one Zen 3 thread from 0.48-0.60 to 0.65-0.69 of the probe; on a
 * Zen 5 thread (avx512 variant, 4096 x 16384 F16, alternated) 1 KiB read 18-19 GB/s, 4 KiB 24-27,
 * 8 KiB 29-34 and 12-16 KiB 26-32, against a probe of 25-39. */
#if DL_X86_AVX512
#define DL_HALF_AHEAD 8192
#else
#define DL_HALF_AHEAD 1024
#endif
#define DOT_HALF(NAME, LOAD8, SCALAR)                                                               \
    static inline float NAME(const uint16_t *w, const uint16_t *x, int64_t n) {                     \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),       \
               a3 = _mm256_setzero_ps();                                                            \
        int64_t i = 0;                                                                              \
        for (; i + 32 <= n; i += 32) {                                                              \
            _mm_prefetch((const char *)(w + i) + DL_HALF_AHEAD, _MM_HINT_T0);                       \
            a0 = _mm256_fmadd_ps(LOAD8(w + i), LOAD8(x + i), a0);                                   \
            a1 = _mm256_fmadd_ps(LOAD8(w + i + 8), LOAD8(x + i + 8), a1);                           \
            a2 = _mm256_fmadd_ps(LOAD8(w + i + 16), LOAD8(x + i + 16), a2);                         \
            a3 = _mm256_fmadd_ps(LOAD8(w + i + 24), LOAD8(x + i + 24), a3);                         \
        }                                                                                           \
        for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LOAD8(w + i), LOAD8(x + i), a0);           \
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));           \
        for (; i < n; i++) s += SCALAR(w[i]) * SCALAR(x[i]);                                        \
        return s;                                                                                   \
    }
#define DL_HAVE_DOT_F16
DOT_HALF(dot_f16, load_f16x8, dl_h2f)
#define DL_HAVE_DOT_BF16
DOT_HALF(dot_bf16, load_bf16x8, dl_bf2f)

/* ---- quantized types: R weight rows at once (dotr_q4_0, dotr_q8_0), per variant below ---- */

static inline __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

#if DL_X86_AVX512
/*
 * AVX-512 Q4_0 / Q8_0 x Q8_0 over R weight rows at once (R <= 4), sharing every activation load.
 * Four blocks per 512-bit step: each 128-bit lane holds one block's 16 low (or high) nibbles, so a
 * lane's four int32 sums belong to one block. The fp16 scales of 16 blocks are read with word
 * permutes of plain loads (a gather only for a last group of fewer than 16) and converted together;
 * a permute spreads each block's dw*dx over its lanes.
 */
#define DL_HAVE_DOTR
#define DL_DOTR_ROWS 4
#define DL_DOTR_TOKENS 4
/* The DL_DOTR_ROWS rows of a call are one per quarter of the row range (DL_DOTR_STREAMS, kernels.c),
 * so each is the head of a long sequential stream, and each step of 4 blocks prefetches its bytes of
 * the stream DL_AHEAD bytes on (each group of 16 blocks until 2026-12-03: see tile_q). Measured on one
 * Zen 5 thread (a throwaway C harness, 6144 x 16384 Q8_0 and 11264 x 16384 Q4_0, alternated with the
 * previous library): 4 adjacent rows, each prefetching the
 * same place in the next 4 rows (into L2), read Q8_0 at 17-22 GB/s and Q4_0 at 27-30; the quarters
 * with 2-3 KiB ahead (into L1) at 24-28 and 28-32 against a probe of 31-34, with 1 KiB or 4-6 KiB
 * ahead slower, and with no software prefetch at all 15 (Q8_0). */
#define DL_DOTR_STREAMS 1
#define DL_AHEAD 3072

static inline __m512i load4x16(const uint8_t *p, int64_t stride) {
    __m512i z = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p));
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(p + stride)), 1);
    z = _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(p + 2 * stride)), 2);
    return _mm512_inserti32x4(z, _mm_loadu_si128((const __m128i *)(p + 3 * stride)), 3);
}

/* fp16 scales at offset 0 of up to 16 blocks `stride` bytes apart, as floats (lanes off in m are 0). */
static inline __m512 gather_scales(const uint8_t *p, int stride, __mmask16 m) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(stride));
    const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, p, 1);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
}

/* The fp16 scales of 16 whole Q4_0 blocks (288 bytes at p) as floats, without a gather: two pairs of
 * 64-byte loads and a word permute each (block j's scale is word 9j from the start of its half). */
static inline __m512 q4_scales16(const uint8_t *p) {
    static const uint16_t idx[32] = {0, 9, 18, 27, 36, 45, 54, 63, 0, 0, 0, 0, 0, 0, 0, 0,
                                     0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    static const uint16_t idx_hi[32] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 18, 27, 36, 45, 54, 63,
                                        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const __m512i lo = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)p), _mm512_loadu_si512((const void *)idx),
                                                 _mm512_loadu_si512((const void *)(p + 64)));
    const __m512i hi = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)(p + 144)), _mm512_loadu_si512((const void *)idx_hi),
                                                 _mm512_loadu_si512((const void *)(p + 208)));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_mask_blend_epi16(0xff00, lo, hi)));
}

/* The same for 16 whole Q8_0 blocks (544 bytes): four groups of four, scale j of a group at word 17j. */
static inline __m512 q8_scales16(const uint8_t *p) {
    static const uint16_t idx[4][32] = {
        {0, 17, 34, 51},
        {0, 0, 0, 0, 0, 17, 34, 51},
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 34, 51},
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 34, 51},
    };
    __m512i v = _mm512_setzero_si512();
    for (int k = 0; k < 4; k++) {
        const uint8_t *q = p + 136 * k;
        const __m512i g = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)q), _mm512_loadu_si512((const void *)idx[k]),
                                                    _mm512_loadu_si512((const void *)(q + 64)));
        v = _mm512_mask_blend_epi16((__mmask32)(0xfu << (4 * k)), v, g);
    }
    return _mm512_cvtph_ps(_mm512_castsi512_si256(v));
}

/*
 * Batches (prompt processing) with packed activations. A batch is compute-bound, and tile_q4_0 on rows spends
 * almost half its work preparing activation steps again for every group of weight rows. dl_matmul
 * therefore packs the Q8_0 activation rows once per call into the order the kernel consumes
 * (k_pack_q8_0) in the context's scratch, and the kernel only loads them. Per token, 64-byte aligned:
 * for each group of 4 whole blocks, DL_PACK_GROUP_BYTES = 192 bytes:
 *   [0, 64)    the 4 blocks' values 0..15, block j in 128-bit lane j   (load4x16 of q + 0)
 *   [64, 128)  their values 16..31                                   (load4x16 of q + 16)
 *   [128, 192) -8 * (sum of the lane's 8 values), 16 int32: turns unsigned nibbles into nibble - 8
 * then every block's scale as a float (nb of them, padded to a multiple of 16). Blocks after the last
 * whole group (nb % 4) are not packed as groups: the kernel reads them from the rows.
 * Every value is the one tile_q4_0 computes and is combined in the same order, so a batch gives
 * the same bits as its tokens one by one (the product of a weight and an activation scale is taken
 * once per 16 blocks and spread over the lanes, instead of spreading both and multiplying per step:
 * the same products, one fewer multiply per step on the busiest execution ports).
 */
#define DL_HAVE_PACKED_Q4_0
#define DL_PACK_MIN_TOKENS 1
#define DL_PACKED_BY_ROWS /* k_matmul_packed: kernels.c's row loop with tile_q4_0, or matmul_blocked_q4_0 */
#define DL_PACK_GROUP_BYTES 192
/* bytes of one packed token of nb blocks */
static inline int64_t pack_token_bytes(int64_t nb) { return nb / 4 * DL_PACK_GROUP_BYTES + (nb + 15) / 16 * 64; }

static void k_pack_q8_0(void *dst, const void *x, int64_t nb, int64_t n_tok, int64_t batch) {
    (void)batch;
    const __m512i c8 = _mm512_set1_epi8(8), zero = _mm512_setzero_si512();
    const int64_t ng = nb / 4;
    for (int64_t t = 0; t < n_tok; t++) {
        const block_q8_0 *xt = (const block_q8_0 *)x + t * nb;
        uint8_t *o = (uint8_t *)dst + t * pack_token_bytes(nb);
        float *sc = (float *)(o + ng * DL_PACK_GROUP_BYTES);
        for (int64_t b = 0; b + 4 <= nb; b += 4, o += DL_PACK_GROUP_BYTES) {
            const uint8_t *xb = (const uint8_t *)(xt + b);
            const __m512i lo = load4x16(xb + 2, 34), hi = load4x16(xb + 18, 34);
            const __m512i neg = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, c8, lo), c8, hi));
            _mm512_store_si512((void *)o, lo);
            _mm512_store_si512((void *)(o + 64), hi);
            _mm512_store_si512((void *)(o + 128), neg);
        }
        for (int64_t b = 0; b < (nb + 15) / 16 * 16; b++) sc[b] = b < nb ? f16_scalar(xt[b].d) : 0.0f;
    }
}

/* The nibble bytes of Q4_0 blocks 4q..4q+3 of a group of 16 (288 bytes at p), block j's 16 bytes in
 * 128-bit lane j (as load4x16(p + 72q + 2, 18)): two 64-byte loads and one word permute instead of four
 * loads and three inserts. Block 4q + j's bytes are words 36q + 9j + 1 .. + 8, in the registers at
 * bytes 64q and 64(q + 1); the last register is loaded masked to the group's end. */
static inline __attribute__((always_inline)) __m512i q4_quad(const uint8_t *p, const int q, const __m512i idx) {
    const __m512i a = _mm512_loadu_si512((const void *)(p + 64 * q));
    const __m512i b = q == 3 ? _mm512_maskz_loadu_epi16(0xffff, (const void *)(p + 256)) : _mm512_loadu_si512((const void *)(p + 64 * (q + 1)));
    return _mm512_permutex2var_epi16(a, _mm512_add_epi16(idx, _mm512_set1_epi16((short)(4 * q))), b);
}

/*
 * R weight rows (R <= 4, `row_bytes` apart) of Q4_0 (q4) or Q8_0 weights against T tokens (Q4_0: T <= 4,
 * Q8_0: T <= 2, more would spill): x (Q8_0 rows, nb blocks apart) and, when p is not NULL, the same
 * tokens packed by k_pack_q8_0 (pstride bytes apart), whose steps are then loaded instead of prepared:
 * s[t * R + r]. Four blocks per step, block k + j in 128-bit lane j, against the activations' values
 * 0..15 (xlo) and 16..31 (xhi) of the same blocks:
 *   Q4_0: the nibbles (q4_quad; and, shift + and) as they are, unsigned; "- 8" becomes "- 8 * sum(x)"
 *         per lane (neg);
 *   Q8_0: the values 0..15 and 16..31 of four blocks (load4x16) + 128, unsigned; "- 128 * sum(x)" is
 *         16 times the same neg. One conversion, one scale spread and one multiply-add per step serve
 *         four blocks (two-block steps before 2026-12-02: a 64-token batch 0.53 -> 0.38 ns per block
 *         and token).
 * Each weight step is loaded and unpacked once for all T tokens, each activation step once for all R
 * rows. With one token the products d_w * d_x are taken once per 16 blocks and spread over the lanes
 * per step (the same products: the bits do not change with T, nor with packing).
 * Whether p is given and whether a group is whole are constants in each copy of the steps (tile_q,
 * tile_group), and a whole Q4_0 group's four steps are unrolled: compiled as one loop, with those
 * tests and q4_quad's last-step test inside it and its pointers spilled, the steps took 1.13 cycles
 * per Q4_0 block and row (4 rows, one token, in L2, one Zen 5 thread at ~3.6 GHz); straight,
 * 0.86-0.91. (Q8_0 steps unrolled too: a 64-token batch, two tokens per tile, 0.35 -> 0.47 ns per
 * block and token; not unrolled 0.34.)
 * Each step prefetches its own bytes of each row DL_AHEAD on (once per group of 16 blocks, 5-9
 * prefetches per row at a time, before: with the straight steps that burst read slower from memory).
 * Both changes against the previous library (one thread, alternated in one process): from memory
 * (11264 x 16384 Q4_0, 6144 x 16384 Q8_0) Q4_0 0.44-0.47 ns per block against 0.43-0.48, Q8_0
 * 0.78-0.86 against 0.84-0.94; from L3 (5632 x 2048 and 2048 x 5632 Q4_0, a decode layer's shapes)
 * 59-62 GB/s against 46-47. Not kept: word permutes of 64-byte loads for the Q8_0
 * steps (4 loads, 2 permutes instead of 8 loads and 6 inserts): 62 -> 73 GB/s in L2, but 33 -> 21
 * from memory (their loads straddle cache lines); aligned 64-byte loads for q4_quad: no faster.
 */
/* One step of tile_q: blocks b..b+3, the k-th to k+3-th of a group of g whose scales are sx and sw
 * (see tile_group). */
static inline __attribute__((always_inline)) void tile_step(__m512 acc[DL_DOTR_ROWS][DL_DOTR_TOKENS], const uint8_t *wg,
                                                            int64_t row_bytes, const int R, const uint8_t *p, int64_t pstride,
                                                            const block_q8_0 *x, const int T, int64_t nb, const int q4,
                                                            int64_t b, const int64_t k, const int64_t g, const int P,
                                                            const __m512 sx[DL_DOTR_TOKENS], const __m512 sw[DL_DOTR_ROWS]) {
    const int64_t bb = q4 ? 18 : 34; /* bytes per weight block */
    const __m512i m4 = _mm512_set1_epi8(15), c8 = _mm512_set1_epi8(8), c128 = _mm512_set1_epi8((char)0x80);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    static const uint16_t qw[32] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                                    28, 29, 30, 31, 32, 33, 34, 35};
    const __m512i lane = _mm512_add_epi32(spread, _mm512_set1_epi32((int)k));
    __m512i xlo[DL_DOTR_TOKENS], xhi[DL_DOTR_TOKENS], neg[DL_DOTR_TOKENS];
    __m512 lx[DL_DOTR_TOKENS];
    for (int t = 0; t < T; t++) {
        if (P) {
            const uint8_t *pb = p + t * pstride + b / 4 * DL_PACK_GROUP_BYTES;
            xlo[t] = _mm512_load_si512((const void *)pb);
            xhi[t] = _mm512_load_si512((const void *)(pb + 64));
            neg[t] = _mm512_load_si512((const void *)(pb + 128));
        } else {
            const uint8_t *xb = (const uint8_t *)(x + t * nb + b);
            xlo[t] = load4x16(xb + 2, 34);
            xhi[t] = load4x16(xb + 18, 34);
            /* -8 * sum(x) per lane: turns unsigned nibbles into (nibble - 8) */
            neg[t] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, c8, xlo[t]), c8, xhi[t]));
        }
        if (!q4) neg[t] = _mm512_slli_epi32(neg[t], 4); /* -128 * sum(x) */
        if (T > 1) lx[t] = _mm512_permutexvar_ps(lane, sx[t]);
    }
    for (int r = 0; r < R; r++) {
        const uint8_t *wq = wg + r * row_bytes;
        __m512i lo, hi;
        for (int64_t o = 0; o < 4 * bb; o += 64) _mm_prefetch((const char *)wq + bb * k + DL_AHEAD + o, _MM_HINT_T0);
        if (q4) {
            const __m512i q = g == 16 ? q4_quad(wq, (int)(k / 4), _mm512_loadu_si512((const void *)qw)) : load4x16(wq + 18 * k + 2, 18);
            lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        } else {
            lo = _mm512_xor_si512(load4x16(wq + 34 * k + 2, 34), c128);
            hi = _mm512_xor_si512(load4x16(wq + 34 * k + 18, 34), c128);
        }
        const __m512 lw = _mm512_permutexvar_ps(lane, sw[r]);
        for (int t = 0; t < T; t++) {
            const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(neg[t], lo, xlo[t]), hi, xhi[t]);
            acc[r][t] = _mm512_fmadd_ps(T == 1 ? lw : _mm512_mul_ps(lw, lx[t]), _mm512_cvtepi32_ps(d), acc[r][t]);
        }
    }
}

/* Blocks b..b+g-1 of tile_q (g = 16, or 4, 8 or 12 at the end of a row): the scales of the group,
 * then its steps, unrolled for a whole Q4_0 group (g and P are constants at each call). */
static inline __attribute__((always_inline)) void tile_group(__m512 acc[DL_DOTR_ROWS][DL_DOTR_TOKENS], const uint8_t *w,
                                                             int64_t row_bytes, const int R, const uint8_t *p, int64_t pstride,
                                                             const block_q8_0 *x, const int T, int64_t nb, const int q4,
                                                             int64_t b, const int64_t g, const int P) {
    const int64_t bb = q4 ? 18 : 34; /* bytes per weight block */
    const __mmask16 m = (__mmask16)((1u << g) - 1);
    __m512 sx[DL_DOTR_TOKENS], sw[DL_DOTR_ROWS];
    for (int t = 0; t < T; t++) {
        const uint8_t *xt = (const uint8_t *)(x + t * nb + b);
        sx[t] = P ? _mm512_load_ps((const void *)(p + t * pstride + nb / 4 * DL_PACK_GROUP_BYTES + b * 4))
                  : g == 16 ? q8_scales16(xt) : gather_scales(xt, 34, m);
    }
    for (int r = 0; r < R; r++) {
        const uint8_t *wr = w + r * row_bytes + b * bb;
        sw[r] = g == 16 ? (q4 ? q4_scales16(wr) : q8_scales16(wr)) : gather_scales(wr, (int)bb, m);
        if (T == 1) sw[r] = _mm512_mul_ps(sw[r], sx[0]);
    }
    const uint8_t *wg = w + b * bb;
    if (g == 16 && q4) {
        tile_step(acc, wg, row_bytes, R, p, pstride, x, T, nb, q4, b, 0, 16, P, sx, sw);
        tile_step(acc, wg, row_bytes, R, p, pstride, x, T, nb, q4, b + 4, 4, 16, P, sx, sw);
        tile_step(acc, wg, row_bytes, R, p, pstride, x, T, nb, q4, b + 8, 8, 16, P, sx, sw);
        tile_step(acc, wg, row_bytes, R, p, pstride, x, T, nb, q4, b + 12, 12, 16, P, sx, sw);
    } else
        for (int64_t k = 0; k < g; k += 4) tile_step(acc, wg, row_bytes, R, p, pstride, x, T, nb, q4, b + k, k, g, P, sx, sw);
}

static inline __attribute__((always_inline)) void tile_rows(float *s, const uint8_t *w, int64_t row_bytes, const int R,
                                                            const uint8_t *p, int64_t pstride, const block_q8_0 *x, const int T,
                                                            int64_t nb, const int q4, const int P) {
    __m512 acc[DL_DOTR_ROWS][DL_DOTR_TOKENS];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; nb - b >= 16; b += 16) tile_group(acc, w, row_bytes, R, p, pstride, x, T, nb, q4, b, 16, P);
    if (nb - b >= 4) {
        const int64_t g = (nb - b) & ~(int64_t)3;
        tile_group(acc, w, row_bytes, R, p, pstride, x, T, nb, q4, b, g, P);
        b += g;
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            s[t * R + r] = _mm512_reduce_add_ps(acc[r][t]);
            if (b < nb)
                s[t * R + r] += q4 ? dot_q4_0_ref((const block_q4_0 *)(w + r * row_bytes) + b, x + t * nb + b, nb - b)
                                   : dot_q8_0_ref((const block_q8_0 *)(w + r * row_bytes) + b, x + t * nb + b, nb - b);
        }
}
static inline __attribute__((always_inline)) void tile_q(float *s, const uint8_t *w, int64_t row_bytes, const int R,
                                                         const uint8_t *p, int64_t pstride, const block_q8_0 *x, const int T,
                                                         int64_t nb, const int q4) {
    if (p) tile_rows(s, w, row_bytes, R, p, pstride, x, T, nb, q4, 1);
    else tile_rows(s, w, row_bytes, R, NULL, 0, x, T, nb, q4, 0);
}
static inline __attribute__((always_inline)) void tile_q4_0(float *s, const uint8_t *w, int64_t row_bytes, const int R,
                                                            const uint8_t *p, int64_t pstride, const block_q8_0 *x,
                                                            const int T, int64_t nb) {
    tile_q(s, w, row_bytes, R, p, pstride, x, T, nb, 1);
}
/* Q8_0: two tokens at a time */
static inline __attribute__((always_inline)) void tile_q8_0(float *s, const uint8_t *w, int64_t row_bytes, const int R,
                                                            const uint8_t *p, int64_t pstride, const block_q8_0 *x,
                                                            const int T, int64_t nb) {
    for (int t = 0; t < T; t += 2)
        tile_q(s + t * R, w, row_bytes, R, p ? p + t * pstride : NULL, pstride, x + t * nb, T - t < 2 ? 1 : 2, nb, 0);
}

/* R weight rows (R <= 2) against T packed tokens (T <= 4): s[t * R + r]. Weight steps are loaded and
 * unpacked once for all T tokens. 2 x 4 measured best on Zen 4 (2 x 8 and 4 x 4 need more than the 32
 * registers once the compiler keeps the tokens' loads in registers, and spill). */
#define DL_PACK_ROWS 2
#define DL_PACK_TOKENS 4
static inline __attribute__((always_inline)) void tile_q4_0_packed(float *s, const uint8_t *w, int64_t ldw, const int R,
                                                                   const uint8_t *p, int64_t pstride, const int T,
                                                                   const block_q8_0 *x, int64_t nb) {
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 acc[DL_PACK_ROWS][DL_PACK_TOKENS];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    const int64_t ng = nb / 4;
    int64_t b = 0;
    while (nb - b >= 4) {
        const int64_t g = nb - b >= 16 ? 16 : (nb - b) & ~(int64_t)3;
        const __mmask16 m = (__mmask16)((1u << g) - 1);
        __m512 sc[DL_PACK_ROWS][DL_PACK_TOKENS]; /* weight scale x activation scale, 16 blocks */
        for (int r = 0; r < R; r++) {
            const uint8_t *wr = w + r * ldw + b * 18;
            const __m512 sw = g == 16 ? q4_scales16(wr) : gather_scales(wr, 18, m);
            for (int t = 0; t < T; t++)
                sc[r][t] = _mm512_mul_ps(sw, _mm512_load_ps((const void *)(p + t * pstride + ng * DL_PACK_GROUP_BYTES + b * 4)));
            for (int64_t o = 0; o < 288; o += 64) _mm_prefetch((const char *)wr + R * ldw + o, _MM_HINT_T1);
        }
        for (int64_t k = 0; k < g; k += 4, b += 4) {
            const __m512i lane = _mm512_add_epi32(spread, _mm512_set1_epi32((int)k));
            const uint8_t *pb = p + (b / 4) * DL_PACK_GROUP_BYTES;
            __m512i lo[DL_PACK_ROWS], hi[DL_PACK_ROWS];
            for (int r = 0; r < R; r++) {
                const __m512i q = load4x16(w + r * ldw + b * 18 + 2, 18);
                lo[r] = _mm512_and_si512(q, m4);
                hi[r] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
            }
            for (int t = 0; t < T; t++) {
                const uint8_t *pt = pb + t * pstride;
                const __m512i xlo = _mm512_load_si512((const void *)pt), xhi = _mm512_load_si512((const void *)(pt + 64));
                const __m512i neg = _mm512_load_si512((const void *)(pt + 128));
                for (int r = 0; r < R; r++) {
                    const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(neg, lo[r], xlo), hi[r], xhi);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_permutexvar_ps(lane, sc[r][t]), _mm512_cvtepi32_ps(d), acc[r][t]);
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            s[t * R + r] = _mm512_reduce_add_ps(acc[r][t]);
            if (b < nb) s[t * R + r] += dot_q4_0_ref((const block_q4_0 *)(w + r * ldw) + b, x + t * nb + b, nb - b);
        }
}

/* Rows [ra, rb) of a Q4_0 matmul against n_tok tokens packed at `packed` (x: the same tokens as Q8_0
 * rows, for the blocks after the last whole group), in tiles of DL_PACK_ROWS adjacent rows x
 * DL_PACK_TOKENS tokens; 0 for fewer tokens than a tile (the caller then takes tile_q4_0 over rows one
 * per quarter of the range, each a stream prefetched ahead: a matrix x vector is read from memory). */
#define DL_HAVE_MATMUL_BLOCKED
static int matmul_blocked_q4_0(float *out, int64_t ldo, const void *w, int64_t ldw, const void *packed, const void *x,
                               int64_t n_in, int64_t r0, int64_t ra, int64_t rb, int64_t n_tok) {
    enum { R = DL_PACK_ROWS, T = DL_PACK_TOKENS };
    if (n_tok < T) return 0;
    const int64_t nb = n_in / QK, pstride = pack_token_bytes(nb);
    const uint8_t *wb = (const uint8_t *)w, *pk = (const uint8_t *)packed;
    const block_q8_0 *xq = (const block_q8_0 *)x;
    float s[R * T];
    int64_t r = ra;
    for (; r + R <= rb; r += R) {
        int64_t t = 0;
        for (; t + T <= n_tok; t += T) {
            tile_q4_0_packed(s, wb + r * ldw, ldw, R, pk + t * pstride, pstride, T, xq + t * nb, nb);
            for (int j = 0; j < T; j++)
                for (int i = 0; i < R; i++) out[(t + j) * ldo + (r + i - r0)] = s[j * R + i];
        }
        for (; t < n_tok; t++) {
            tile_q4_0_packed(s, wb + r * ldw, ldw, R, pk + t * pstride, pstride, 1, xq + t * nb, nb);
            for (int i = 0; i < R; i++) out[t * ldo + (r + i - r0)] = s[i];
        }
    }
    for (; r < rb; r++) {
        int64_t t = 0;
        for (; t + T <= n_tok; t += T) {
            tile_q4_0_packed(s, wb + r * ldw, ldw, 1, pk + t * pstride, pstride, T, xq + t * nb, nb);
            for (int j = 0; j < T; j++) out[(t + j) * ldo + (r - r0)] = s[j];
        }
        for (; t < n_tok; t++)
            tile_q4_0_packed(&out[t * ldo + (r - r0)], wb + r * ldw, ldw, 1, pk + t * pstride, pstride, 1, xq + t * nb, nb);
    }
    return 1;
}

static inline __attribute__((always_inline)) void dotr_q4_0(float *s, const uint8_t *w, int64_t row_bytes, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    tile_q4_0(s, w, row_bytes, R, NULL, 0, x, T, nb);
}

static inline __attribute__((always_inline)) void dotr_q8_0(float *s, const uint8_t *w, int64_t row_bytes, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    tile_q8_0(s, w, row_bytes, R, NULL, 0, x, T, nb);
}
#define DL_PACK_Q8_0_MIN_TOKENS 1
#define DL_PACKED_Q8_0_ROWS /* k_matmul_packed: kernels.c's row loop with tile_q8_0 */
#endif

#if !DL_X86_AVX512
/*
 * AVX2 Q4_0 / Q8_0 x Q8_0: a tile of R weight rows (R <= 4) and T activation rows (T <= 2). Each
 * activation block is loaded once for all rows, each weight block once for all tokens. Per row, token
 * and block the integer dot is exact:
 *   Q4_0: vpmaddubsw takes the nibbles (0..15) as they are, unsigned, against the signed activations;
 *         "- 8" becomes "- 8 * sum(x)" per lane, computed once per activation block for all rows. Two
 *         blocks per 256-bit step (dotr_q4_0 below).
 *   Q8_0: the sign trick, |w| (unsigned) times x * sign(w); one block per 256-bit step.
 * The fp16 scales of 8 blocks are gathered into one vector per row and per token, converted together
 * and multiplied: no per-block scalar conversion.
 * Every (row, token) is combined in the same order whatever R and T are, so results do not depend on
 * how rows and tokens are grouped (thread count, row ranges, batch or token by token). The R rows are
 * `stride` bytes apart, each the head of its own sequential stream (DL_DOTR_STREAMS, kernels.c); each
 * group of 8 blocks prefetches its row's stream DL_AHEAD bytes on.
 */
#define DL_HAVE_DOTR
#define DL_DOTR_ROWS 4
#define DL_DOTR_TOKENS 2
#define DL_DOTR_STREAMS 1
#define DL_AHEAD 512

/* The fp16 values at p, p + stride, ..., p + 7 * stride, as 8 floats (word inserts from memory:
 * measured 20 % faster per block than assembling them in general-purpose registers). */
static inline __m256 scales8(const uint8_t *p, int64_t stride) {
    __m128i h = _mm_cvtsi32_si128(load_u16(p));
    h = _mm_insert_epi16(h, load_u16(p + stride), 1);
    h = _mm_insert_epi16(h, load_u16(p + 2 * stride), 2);
    h = _mm_insert_epi16(h, load_u16(p + 3 * stride), 3);
    h = _mm_insert_epi16(h, load_u16(p + 4 * stride), 4);
    h = _mm_insert_epi16(h, load_u16(p + 5 * stride), 5);
    h = _mm_insert_epi16(h, load_u16(p + 6 * stride), 6);
    h = _mm_insert_epi16(h, load_u16(p + 7 * stride), 7);
    return _mm256_cvtph_ps(h);
}

/* d_w * d_x of rows w (R of them, `stride` apart) and tokens x (T of them, nb blocks apart) for the
 * g (<= 8) blocks from the start of w and x, into sc[r][t][0 .. g); prefetches the rows' streams. */
static inline __attribute__((always_inline)) void tile_scales(float sc[][DL_DOTR_TOKENS][8], const uint8_t *w, int64_t stride,
                                                              int64_t block_bytes, const int R, const block_q8_0 *x, const int T,
                                                              int64_t nb, int64_t g) {
    if (g == 8) {
        __m256 sx[DL_DOTR_TOKENS];
        for (int t = 0; t < T; t++) sx[t] = scales8((const uint8_t *)(x + t * nb), 34);
        for (int r = 0; r < R; r++) {
            const uint8_t *wr = w + r * stride;
            const __m256 sw = scales8(wr, block_bytes);
            for (int t = 0; t < T; t++) _mm256_storeu_ps(sc[r][t], _mm256_mul_ps(sw, sx[t]));
            for (int64_t o = 0; o < 8 * block_bytes; o += 64) _mm_prefetch((const char *)wr + DL_AHEAD + o, _MM_HINT_T0);
        }
    } else {
        for (int64_t j = 0; j < g; j++)
            for (int r = 0; r < R; r++)
                for (int t = 0; t < T; t++) sc[r][t][j] = f16_scalar(load_u16(w + r * stride + j * block_bytes)) * f16_scalar(x[t * nb + j].d);
    }
}

/* A tile's accumulators: 8 partial sums per (row, token), zeroed, then summed into s[t * R + r]. */
static inline __attribute__((always_inline)) void tile_zero(__m256 acc[][DL_DOTR_TOKENS], const int R, const int T) {
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
}
static inline __attribute__((always_inline)) void tile_sums(float *s, __m256 acc[][DL_DOTR_TOKENS], const int R, const int T) {
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) s[t * R + r] = hsum256(acc[r][t]);
}

/* The fp16 scales of 8 consecutive Q4_0 blocks (144 bytes at p) as floats. Block k's scale is word k
 * of the 16 bytes at p + 16k (18k = 16k + 2k): four 32-byte loads and word blends gather them, with
 * no per-block insert (measured 0.1 ns per block faster than scales8 on Zen 3). */
static inline __m256 q4_scales8(const uint8_t *p) {
    const __m256i a = load256(p), b = load256(p + 32), c = load256(p + 64), d = load256(p + 96);
    /* 128-bit lane 0: words 0, 2, 4, 6 in place; lane 1: words 1, 3, 5, 7 */
    const __m256i e = _mm256_blend_epi16(_mm256_blend_epi16(a, b, 0x0C), _mm256_blend_epi16(c, d, 0xC0), 0xF0);
    return _mm256_cvtph_ps(_mm_blend_epi16(_mm256_castsi256_si128(e), _mm256_extracti128_si256(e, 1), 0xAA));
}

/* 16 bytes at a in the low 128 bits, 16 bytes at b in the high */
static inline __m256i load2x16(const void *a, const void *b) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)), _mm_loadu_si128((const __m128i *)b), 1);
}

/*
 * Q4_0 on AVX2: s[t * R + r] = row r . token t, groups of 8 blocks, one block per 32-bit lane. The
 * activations of a group are packed (pack_group8) into the order the weights are unpacked in:
 *   [0, 256)    8 registers X[j]: dword b = values 4j..4j+3 (j < 4) or 16+4(j-4)..16+4(j-4)+3 of block b
 *   [256, 288)  8 int32: 8 * (sum of block b's values)
 *   [288, 320)  8 floats: block b's scale d_x
 * The weights of a group are loaded as four registers (blocks k and k + 4 in the two halves) and a
 * 4 x 4 transpose of dwords in each half (transpose4) puts dword j of block b in dword b of register j;
 * an and (low nibbles) and a shift + and (high nibbles) then give 8 registers in X's order
 * (q4_unpack8). Eight vpmaddubsw take the nibbles (0..15) as they are, unsigned, against the signed
 * activations, seven vpaddw sum them in int16 (at most 16 products of 15 * 128 per lane: no
 * overflow), one vpmaddwd widens lane b to block b's dot, and "- 8" becomes "- 8 * sum(x)": the exact
 * integer dot of every block. One conversion and one multiply-add per group then add (d_w * d_x) * dot
 * per block, summed in 8 lanes (blocks j mod 8). (The pairs used to be reduced by three vphaddw instead
 * of the transpose: vphaddw issues once per 2 cycles on Zen 3, the transpose's vpunpck twice per cycle
 * on pipes the multiplies do not use; for one token both cost the same, batches gain, see below.)
 * dl_matmul packs every token once per call (k_pack_q8_0: the activations are shared by all rows);
 * dotr_q4_0 (the unpacked entry) packs each group on the fly into the same layout, so both give the
 * same bits. Blocks after the last whole group take one block per register. Every (row, token) is
 * combined in the same order whatever R and T.
 */
/* d[j] = dword j of a0, a1, a2, a3 in each 128-bit half: a 4 x 4 transpose of dwords per half */
static inline __attribute__((always_inline)) void transpose4(__m256i d[4], __m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i t0 = _mm256_unpacklo_epi32(a0, a1), t1 = _mm256_unpackhi_epi32(a0, a1), t2 = _mm256_unpacklo_epi32(a2, a3),
                  t3 = _mm256_unpackhi_epi32(a2, a3);
    d[0] = _mm256_unpacklo_epi64(t0, t2);
    d[1] = _mm256_unpackhi_epi64(t0, t2);
    d[2] = _mm256_unpacklo_epi64(t1, t3);
    d[3] = _mm256_unpackhi_epi64(t1, t3);
}

#define DL_HAVE_PACKED_Q4_0
#define DL_PACK_MIN_TOKENS 1
#define DL_PACKED_BY_ROWS /* k_matmul_packed: kernels.c's row loop with tile_q4_0 */
#define DL_PACK_GROUP_BYTES 320
/* bytes of one packed token of nb blocks (whole groups of 8 only) */
static inline int64_t pack_token_bytes(int64_t nb) { return nb / 8 * DL_PACK_GROUP_BYTES; }

static inline __attribute__((always_inline)) void pack_group8(uint8_t *o, const block_q8_0 *x) {
    const __m256i c8 = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    /* X[j]: dword b = dword j of block b's 32 values, the values 0..15 (dwords 0..3) and 16..31 apart */
    __m256i u[8];
    transpose4(u, load2x16(x[0].q, x[4].q), load2x16(x[1].q, x[5].q), load2x16(x[2].q, x[6].q), load2x16(x[3].q, x[7].q));
    transpose4(u + 4, load2x16(x[0].q + 16, x[4].q + 16), load2x16(x[1].q + 16, x[5].q + 16), load2x16(x[2].q + 16, x[6].q + 16),
               load2x16(x[3].q + 16, x[7].q + 16));
    __m256i s = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        _mm256_storeu_si256((__m256i *)(o + 32 * j), u[j]);
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c8, u[j]));
    }
    _mm256_storeu_si256((__m256i *)(o + 256), _mm256_madd_epi16(s, ones));
    _mm256_storeu_ps((float *)(o + 288), scales8((const uint8_t *)x, 34));
}

static void k_pack_q8_0(void *dst, const void *x, int64_t nb, int64_t n_tok, int64_t batch) {
    (void)batch;
    for (int64_t t = 0; t < n_tok; t++) {
        const block_q8_0 *xt = (const block_q8_0 *)x + t * nb;
        uint8_t *o = (uint8_t *)dst + t * pack_token_bytes(nb);
        for (int64_t b = 0; b + 8 <= nb; b += 8, o += DL_PACK_GROUP_BYTES) pack_group8(o, xt + b);
    }
}

/* The nibbles of 8 Q4_0 blocks at w in the packed activations' order: q[j] (j < 4) holds values
 * 4j..4j+3 of block b in dword b, q[j + 4] values 16+4j..16+4j+3 (the high nibbles of the same bytes).
 * Blocks k and k + 4 share a register, transposed per half (transpose4). */
static inline __attribute__((always_inline)) void q4_unpack8(__m256i q[8], const uint8_t *w) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i d[4];
    transpose4(d, load2x16(w + 2, w + 4 * 18 + 2), load2x16(w + 18 + 2, w + 5 * 18 + 2), load2x16(w + 2 * 18 + 2, w + 6 * 18 + 2),
               load2x16(w + 3 * 18 + 2, w + 7 * 18 + 2));
    for (int j = 0; j < 4; j++) {
        q[j] = _mm256_and_si256(d[j], m4);
        q[j + 4] = _mm256_and_si256(_mm256_srli_epi16(d[j], 4), m4);
    }
}

/* R weight rows (`stride` apart) against T tokens: x (Q8_0 rows, nb blocks apart) and, when p is not
 * NULL, the same tokens packed (pstride bytes apart). */
static inline __attribute__((always_inline)) void tile_q4_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const uint8_t *p, int64_t pstride, const block_q8_0 *x,
                                                            const int T, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(15), c8 = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    __attribute__((aligned(32))) uint8_t local[DL_DOTR_TOKENS][DL_PACK_GROUP_BYTES];
    __m256 acc[DL_DOTR_ROWS][DL_DOTR_TOKENS];
    tile_zero(acc, R, T);
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const uint8_t *px[DL_DOTR_TOKENS];
        for (int t = 0; t < T; t++) {
            if (p) {
                px[t] = p + t * pstride + b / 8 * DL_PACK_GROUP_BYTES;
            } else {
                pack_group8(local[t], x + t * nb + b);
                px[t] = local[t];
            }
        }
        DL_UNROLL
        for (int r = 0; r < R; r++) {
            const uint8_t *wr = w + r * stride + b * 18;
            for (int64_t o = 0; o < 8 * 18; o += 64) _mm_prefetch((const char *)wr + DL_AHEAD + o, _MM_HINT_T0);
            __m256i q[8];
            q4_unpack8(q, wr);
            const __m256 sw = q4_scales8(wr);
            DL_UNROLL
            for (int t = 0; t < T; t++) {
                __m256i s = _mm256_maddubs_epi16(q[0], load256(px[t]));
                for (int j = 1; j < 8; j++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(q[j], load256(px[t] + 32 * j)));
                const __m256i dt = _mm256_sub_epi32(_mm256_madd_epi16(s, ones), load256(px[t] + 256));
                acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(sw, _mm256_loadu_ps((const float *)(px[t] + 288))),
                                            _mm256_cvtepi32_ps(dt), acc[r][t]);
            }
        }
    }
    /* the last nb % 8 blocks, one per register */
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4); /* high 128 bits: the high nibbles */
    for (; b < nb; b++) {
        __m256i qx[DL_DOTR_TOKENS], sum8[DL_DOTR_TOKENS];
        for (int t = 0; t < T; t++) {
            qx[t] = load256(x[t * nb + b].q);
            sum8[t] = _mm256_madd_epi16(_mm256_maddubs_epi16(c8, qx[t]), ones); /* 8 * (sum of each 4-byte lane) */
        }
        for (int r = 0; r < R; r++) {
            const uint8_t *wb = w + r * stride + b * 18;
            const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(wb + 2)));
            const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(raw, shift), m4);
            const float dw = f16_scalar(load_u16(wb));
            for (int t = 0; t < T; t++) {
                const __m256i d = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(q, qx[t]), ones), sum8[t]);
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * f16_scalar(x[t * nb + b].d)), _mm256_cvtepi32_ps(d), acc[r][t]);
            }
        }
    }
    tile_sums(s, acc, R, T);
}

static inline __attribute__((always_inline)) void dotr_q4_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    tile_q4_0(s, w, stride, R, NULL, 0, x, T, nb);
}

/*
 * Q4_0 batches (DL_BLOCKED_MIN_TOKENS tokens or more, whole groups of 8 blocks, rows up to 32768
 * values; 64 tokens on 1 thread: 18944-value rows (Qwen2.5-7B's down projection) 1.43x the row tiles,
 * 32768-value rows 1.18x, where the scratch packs 8 tokens at a time): the weights of
 * DL_BLOCKED_ROWS rows are unpacked once (q4_unpack8, 288 bytes per group: 8 x 32 bytes of nibbles, then
 * the 8 scales as floats) into a buffer on the stack, and every token of the batch is taken against that
 * buffer, DL_BLOCKED_TOKENS at a time: per group, each register of nibbles is loaded once for the
 * tokens, each register of activations once for the rows. Unpacking once per row instead of once per
 * tile of 2 tokens, and no vphaddw, took a 64-token batch from 15 to ~9 cycles per row, token and group
 * of 8 blocks (Zen 3). The arithmetic per (row, token) is tile_q4_0's: the same integers, the same
 * scale products, added into the same 8 lanes in the same order, so the bits are the same.
 */
#define DL_HAVE_MATMUL_BLOCKED
#define DL_BLOCKED_MIN_TOKENS 4
#define DL_BLOCKED_ROWS 2
#define DL_BLOCKED_TOKENS 4
#define DL_BLOCKED_MAX_GROUPS 128 /* n_in <= 32768: 2 x 36 KiB of stack */
#define DL_UNPACKED_GROUP_BYTES 288
#define DL_BLOCKED_CHUNK_BYTES (256 * 1024)

static inline void unpack_row_q4_0(uint8_t *o, const uint8_t *wr, int64_t ng) {
    for (int64_t g = 0; g < ng; g++, o += DL_UNPACKED_GROUP_BYTES, wr += 8 * 18) {
        __m256i q[8];
        q4_unpack8(q, wr);
        for (int j = 0; j < 8; j++) _mm256_store_si256((__m256i *)(o + 32 * j), q[j]);
        _mm256_store_ps((float *)(o + 256), q4_scales8(wr));
    }
}

/* vpmaddubsw with its signed operand read from memory: one fused instruction per row. Written as
 * intrinsics, the compiler loads a token's register once for the rows and then needs a separate load
 * instruction; the fused form measured 3.5 % faster per tile on Zen 3 (the j loop is bound by
 * instructions issued, not by loads). */
static inline __attribute__((always_inline)) __m256i maddubs_mem(__m256i u, const uint8_t *p) {
    __m256i m;
    __asm__("vpmaddubsw %2, %1, %0" : "=x"(m) : "x"(u), "m"(*(const __m256i *)p));
    return m;
}

/* R unpacked rows (u, ustride apart) against T packed tokens (p, pstride apart) over ng groups, into the
 * sums s[t * R + r]. The 8-lane accumulators live in memory (acc): the 8 running integer sums of a
 * group already take half the registers. */
static inline __attribute__((always_inline)) void tile_unpacked(float *s, float *acc, const uint8_t *u, int64_t ustride,
                                                                const int R, const uint8_t *p, int64_t pstride, const int T,
                                                                int64_t ng) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < R * T; i++) _mm256_store_ps(acc + 8 * i, _mm256_setzero_ps());
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *ug = u + g * DL_UNPACKED_GROUP_BYTES, *pg = p + g * DL_PACK_GROUP_BYTES;
        /* the 8 registers of nibbles j against each token, summed in int16 (at most 16 products of
         * 15 * 128 per lane); j = 0 starts the sums, the rest stays a loop: unrolled, clang spilled the
         * sums and a tile took 17 cycles per row, token and group instead of 8.5 */
        __m256i s8[DL_BLOCKED_ROWS][DL_BLOCKED_TOKENS];
        {
            __m256i q[DL_BLOCKED_ROWS];
            for (int r = 0; r < R; r++) q[r] = _mm256_load_si256((const __m256i *)(ug + r * ustride));
            for (int t = 0; t < T; t++) {
                const __m256i xv = _mm256_load_si256((const __m256i *)(pg + t * pstride));
                for (int r = 0; r < R; r++) s8[r][t] = _mm256_maddubs_epi16(q[r], xv);
            }
        }
#pragma nounroll
        for (int j = 1; j < 8; j++) {
            __m256i q[DL_BLOCKED_ROWS];
            for (int r = 0; r < R; r++) q[r] = _mm256_load_si256((const __m256i *)(ug + r * ustride + 32 * j));
            for (int t = 0; t < T; t++)
                for (int r = 0; r < R; r++) s8[r][t] = _mm256_add_epi16(s8[r][t], maddubs_mem(q[r], pg + t * pstride + 32 * j));
        }
        for (int t = 0; t < T; t++) {
            const __m256 sx = _mm256_load_ps((const float *)(pg + t * pstride + 288));
            const __m256i sum8 = _mm256_load_si256((const __m256i *)(pg + t * pstride + 256));
            for (int r = 0; r < R; r++) {
                const __m256i d = _mm256_sub_epi32(_mm256_madd_epi16(s8[r][t], ones), sum8);
                const __m256 sw = _mm256_load_ps((const float *)(ug + r * ustride + 256));
                float *a = acc + 8 * (t * R + r);
                _mm256_store_ps(a, _mm256_fmadd_ps(_mm256_mul_ps(sw, sx), _mm256_cvtepi32_ps(d), _mm256_load_ps(a)));
            }
        }
    }
    for (int i = 0; i < R * T; i++) s[i] = hsum256(_mm256_load_ps(acc + 8 * i));
}
#define TILE_UNPACKED(R, T)                                                                                        \
    static __attribute__((noinline)) void tile_unpacked_##R##x##T(float *s, float *acc, const uint8_t *u, int64_t ustride, \
                                                                  const uint8_t *p, int64_t pstride, int64_t ng) {     \
        tile_unpacked(s, acc, u, ustride, R, p, pstride, T, ng);                                                   \
    }
TILE_UNPACKED(2, 4)
TILE_UNPACKED(2, 1)
TILE_UNPACKED(1, 4)
TILE_UNPACKED(1, 1)
#undef TILE_UNPACKED

/* Rows [ra, rb) of a Q4_0 matmul against n_tok packed tokens; 0 when the shape is not for this path
 * (the caller then takes the row tiles). */
static int matmul_blocked_q4_0(float *out, int64_t ldo, const void *w, int64_t ldw, const void *packed, const void *x,
                               int64_t n_in, int64_t r0, int64_t ra, int64_t rb, int64_t n_tok) {
    (void)x; /* only whole groups take this path */
    const int64_t nb = n_in / QK, ng = nb / 8, pstride = pack_token_bytes(nb);
    if (n_tok < DL_BLOCKED_MIN_TOKENS || nb % 8 || ng > DL_BLOCKED_MAX_GROUPS || pstride % 32 || (uintptr_t)packed % 32) return 0;
    enum { R = DL_BLOCKED_ROWS, T = DL_BLOCKED_TOKENS };
    __attribute__((aligned(32))) uint8_t u[R][DL_BLOCKED_MAX_GROUPS * DL_UNPACKED_GROUP_BYTES];
    const uint8_t *pk = (const uint8_t *)packed;
    const int64_t ustride = DL_BLOCKED_MAX_GROUPS * DL_UNPACKED_GROUP_BYTES;
    float s[R * T];
    __attribute__((aligned(32))) float acc[R * T * 8];
    /* tokens in chunks whose packing stays well inside a 512 KiB L2 (the rows are unpacked again for
     * each chunk) */
    int64_t chunk = DL_BLOCKED_CHUNK_BYTES / pstride / T * T;
    if (chunk < 4 * T) chunk = 4 * T; /* long rows: fewer unpackings rather than a chunk inside L2 */
    for (int64_t ta = 0; ta < n_tok; ta += chunk) {
        const int64_t tb = n_tok - ta < chunk ? n_tok : ta + chunk;
        int64_t r = ra;
        for (; r + R <= rb; r += R) {
            for (int i = 0; i < R; i++) unpack_row_q4_0(u[i], (const uint8_t *)w + (r + i) * ldw, ng);
            /* the next rows come from memory while these are computed */
            if (r + 2 * R <= rb)
                for (int i = 0; i < R; i++)
                    for (int64_t o = 0; o < ng * 8 * 18; o += 64) _mm_prefetch((const char *)w + (r + R + i) * ldw + o, _MM_HINT_T0);
            int64_t t = ta;
            for (; t + T <= tb; t += T) {
                tile_unpacked_2x4(s, acc, u[0], ustride, pk + t * pstride, pstride, ng);
                for (int j = 0; j < T; j++)
                    for (int i = 0; i < R; i++) out[(t + j) * ldo + (r + i - r0)] = s[j * R + i];
            }
            for (; t < tb; t++) {
                tile_unpacked_2x1(s, acc, u[0], ustride, pk + t * pstride, pstride, ng);
                for (int i = 0; i < R; i++) out[t * ldo + (r + i - r0)] = s[i];
            }
        }
        for (; r < rb; r++) {
            unpack_row_q4_0(u[0], (const uint8_t *)w + r * ldw, ng);
            int64_t t = ta;
            for (; t + T <= tb; t += T) {
                tile_unpacked_1x4(s, acc, u[0], ustride, pk + t * pstride, pstride, ng);
                for (int j = 0; j < T; j++) out[(t + j) * ldo + (r - r0)] = s[j];
            }
            for (; t < tb; t++) tile_unpacked_1x1(&out[t * ldo + (r - r0)], acc, u[0], ustride, pk + t * pstride, pstride, ng);
        }
    }
    return 1;
}

static inline __attribute__((always_inline)) void dotr_q8_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[DL_DOTR_ROWS][DL_DOTR_TOKENS];
    tile_zero(acc, R, T);
    float sc[DL_DOTR_ROWS][DL_DOTR_TOKENS][8];
    for (int64_t b = 0; b < nb; b += 8) {
        const int64_t g = nb - b < 8 ? nb - b : 8;
        tile_scales(sc, w + b * 34, stride, 34, R, x + b, T, nb, g);
        for (int64_t j = 0; j < g; j++) {
            __m256i qx[DL_DOTR_TOKENS];
            for (int t = 0; t < T; t++) qx[t] = load256(x[t * nb + b + j].q);
            for (int r = 0; r < R; r++) {
                const __m256i q = load256(w + r * stride + (b + j) * 34 + 2), aq = _mm256_sign_epi8(q, q);
                for (int t = 0; t < T; t++) {
                    const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(qx[t], q)), ones);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_broadcast_ss(&sc[r][t][j]), _mm256_cvtepi32_ps(d), acc[r][t]);
                }
            }
        }
    }
    tile_sums(s, acc, R, T);
}
#endif

/* ---- activation quantisation, bit-identical to the scalar one ---- */
#define DL_HAVE_QUANTIZE_Q8_0
#define RND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static void k_quantize_q8_0(void *out, const float *x, int64_t n) {
    block_q8_0 *y = (block_q8_0 *)out;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16),
               v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = dl_f2h(amax / 127.0f);
        const __m256 mid = _mm256_set1_ps(id);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mid), RND));
        const __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mid), RND));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mid), RND));
        const __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mid), RND));
        /* packs interleave the 128-bit lanes; the permute puts the 32 bytes back in order */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)y[b].q, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
}

/* ---- bandwidth probe: wide loads into four independent sums, with a software prefetch ahead ---- */
#define DL_HAVE_READ_SUM
static uint64_t k_read_sum(const void *buf, int64_t bytes) {
    const uint8_t *p = (const uint8_t *)buf;
#if DL_X86_AVX512
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < bytes; i += 256) {
        /* software prefetch 4 KiB ahead, as the matmul kernels do: the probe must be the best reader */
        for (int o = 0; o < 256; o += 64) _mm_prefetch((const char *)p + i + 4096 + o, _MM_HINT_T1);
        s0 = _mm512_add_epi64(s0, _mm512_loadu_si512((const void *)(p + i)));
        s1 = _mm512_add_epi64(s1, _mm512_loadu_si512((const void *)(p + i + 64)));
        s2 = _mm512_add_epi64(s2, _mm512_loadu_si512((const void *)(p + i + 128)));
        s3 = _mm512_add_epi64(s3, _mm512_loadu_si512((const void *)(p + i + 192)));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
#else
    /* four sequential streams, one per quarter, each prefetched 512 bytes on: the AVX2 matmul's access
     * pattern, and on Zen 3 10 % faster than one stream prefetched 4 KiB ahead (13.9 vs 12.7 GB/s) */
    const int64_t q = bytes / 4 / 64 * 64;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < q; i += 64) {
        for (int k = 0; k < 4; k++) _mm_prefetch((const char *)p + k * q + i + 512, _MM_HINT_T0);
        s0 = _mm256_add_epi64(s0, _mm256_add_epi64(load256(p + i), load256(p + i + 32)));
        s1 = _mm256_add_epi64(s1, _mm256_add_epi64(load256(p + q + i), load256(p + q + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_add_epi64(load256(p + 2 * q + i), load256(p + 2 * q + i + 32)));
        s3 = _mm256_add_epi64(s3, _mm256_add_epi64(load256(p + 3 * q + i), load256(p + 3 * q + i + 32)));
    }
    for (int64_t i = 4 * q; i + 32 <= bytes; i += 32) s0 = _mm256_add_epi64(s0, load256(p + i));
    const __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t l[4];
    _mm256_storeu_si256((__m256i *)l, s);
    return l[0] + l[1] + l[2] + l[3];
#endif
}

#elif defined(__SSE2__)
#include <immintrin.h>

/*
 * 128-bit Q4_0 / Q8_0 x Q8_0 for x86-64 CPUs without AVX2, in two variants: ssse3 (x86-64-v2: Core 2
 * from Penryn on, Nehalem, Sandy/Ivy Bridge, AMD Bulldozer to Steamroller) and x86_64 (SSE2 only:
 * AMD K8/K10, the first Core 2). The AVX2 tile with 128-bit vectors: R weight rows (R <= 4, each the
 * head of its own stream, DL_DOTR_STREAMS) x T activation rows (T <= 2), a block as two 16-byte
 * halves, groups of 4 blocks. Per row, token and block the integer dot is exact:
 *   ssse3, Q4_0: pmaddubsw on the unsigned nibbles and "- 8 * sum(x)" (computed once per activation
 *                block for all rows), kept in int16 until a group's 4 blocks are reduced;
 *   ssse3, Q8_0: the sign trick, |w| (unsigned) times x * sign(w);
 *   x86_64:      weights (nibble - 8, or the Q8_0 values) and activations sign-extended to int16,
 *                pmaddwd (the activations once per group for all rows).
 * A group's 4 block dots are reduced into one vector, lane j = block j (phadd, or a transpose on
 * SSE2), converted and multiplied by the 4 blocks' d_w * d_x once: per block the reference's
 * (d_w * d_x) * (float)dot, summed in 4 lanes (blocks j mod 4) instead of one. Without F16C the fp16
 * scales are converted by h2f4, bit for bit dl_h2f. The blocks after the last whole group (nb mod 4)
 * take the reference. A row's value does not depend on the rows or tokens it is computed with.
 */
#define DL_HAVE_DOTR
#define DL_DOTR_ROWS 4
#define DL_DOTR_TOKENS 2
#define DL_DOTR_STREAMS 1
#define DL_AHEAD 512

static inline __m128i load128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

/* fp16 in the low half of each 32-bit lane -> float: the bits of dl_h2f (subnormals, inf, NaN). */
static inline __m128 h2f4(__m128i h) {
    const __m128i em = _mm_and_si128(h, _mm_set1_epi32(0x7fff)), e = _mm_and_si128(h, _mm_set1_epi32(0x7c00));
    const __m128i bias = _mm_set1_epi32(112 << 23);
    __m128i n = _mm_add_epi32(_mm_slli_epi32(em, 13), bias);                               /* normal: rebias */
    n = _mm_add_epi32(n, _mm_and_si128(_mm_cmpeq_epi32(e, _mm_set1_epi32(0x7c00)), bias)); /* inf, NaN: 255 */
    const __m128 sub = _mm_mul_ps(_mm_cvtepi32_ps(em), _mm_set1_ps(0x1p-24f));           /* zero, subnormal */
    const __m128 z = _mm_castsi128_ps(_mm_cmpeq_epi32(e, _mm_setzero_si128()));
    const __m128 v = _mm_or_ps(_mm_and_ps(z, sub), _mm_andnot_ps(z, _mm_castsi128_ps(n)));
    return _mm_or_ps(v, _mm_castsi128_ps(_mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x8000)), 16)));
}

/* The fp16 values at p, p + stride, p + 2 stride, p + 3 stride, as 4 floats. */
static inline __m128 scales4(const uint8_t *p, int64_t stride) {
    __m128i h = _mm_cvtsi32_si128(load_u16(p));
    h = _mm_insert_epi16(h, load_u16(p + stride), 2);
    h = _mm_insert_epi16(h, load_u16(p + 2 * stride), 4);
    h = _mm_insert_epi16(h, load_u16(p + 3 * stride), 6);
    return h2f4(h);
}

static inline float hsum128(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
    return _mm_cvtss_f32(v);
}

#if defined(__SSSE3__)
/* One activation block, prepared once per group for all rows: its two halves, and for Q4_0
 * 8 * (sum of each pair of values) in int16. */
typedef struct { __m128i lo, hi, s8; } xblock;
static inline __attribute__((always_inline)) xblock prep_x(const block_q8_0 *xb, const int q4) {
    xblock p = {load128(xb->q), load128(xb->q + 16), _mm_setzero_si128()};
    if (q4) {
        const __m128i c8 = _mm_set1_epi8(8);
        p.s8 = _mm_add_epi16(_mm_maddubs_epi16(c8, p.lo), _mm_maddubs_epi16(c8, p.hi));
    }
    return p;
}
/* One weight block: Q4_0 its nibbles (0..15) pairing with x's two halves; Q8_0 its values and |values|. */
typedef struct { __m128i lo, hi, alo, ahi; } wblock;
static inline __attribute__((always_inline)) wblock prep_w(const uint8_t *wb, const int q4) {
    wblock p;
    if (q4) {
        const __m128i q = load128(wb + 2), m4 = _mm_set1_epi8(15);
        p.lo = _mm_and_si128(q, m4), p.hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
        p.alo = p.ahi = _mm_setzero_si128();
    } else {
        p.lo = load128(wb + 2), p.hi = load128(wb + 18);
        p.alo = _mm_abs_epi8(p.lo), p.ahi = _mm_abs_epi8(p.hi);
    }
    return p;
}
/* Q4_0: 8 sums of 4 products (nibble - 8) * x, |.| <= 4096, exact in int16 (the adds wrap).
 * Q8_0: 4 int32 sums of 8 products (pmaddubsw pairs reach 32512, so no int16 sum of two). */
static inline __attribute__((always_inline)) __m128i block_dot(const wblock *w, const xblock *x, const int q4) {
    if (q4) return _mm_sub_epi16(_mm_add_epi16(_mm_maddubs_epi16(w->lo, x->lo), _mm_maddubs_epi16(w->hi, x->hi)), x->s8);
    const __m128i ones = _mm_set1_epi16(1);
    return _mm_add_epi32(_mm_madd_epi16(_mm_maddubs_epi16(w->alo, _mm_sign_epi8(x->lo, w->lo)), ones),
                         _mm_madd_epi16(_mm_maddubs_epi16(w->ahi, _mm_sign_epi8(x->hi, w->hi)), ones));
}
/* The 4 blocks' dots, lane j = block j. Q4_0: two pairwise int16 adds (16 products, |.| <= 16384). */
static inline __attribute__((always_inline)) __m128i reduce4(const __m128i d[4], const int q4) {
    if (q4) return _mm_madd_epi16(_mm_hadd_epi16(_mm_hadd_epi16(d[0], d[1]), _mm_hadd_epi16(d[2], d[3])), _mm_set1_epi16(1));
    return _mm_hadd_epi32(_mm_hadd_epi32(d[0], d[1]), _mm_hadd_epi32(d[2], d[3]));
}
#else
static inline __m128i sext_lo(__m128i v) { return _mm_srai_epi16(_mm_unpacklo_epi8(v, v), 8); }
static inline __m128i sext_hi(__m128i v) { return _mm_srai_epi16(_mm_unpackhi_epi8(v, v), 8); }
/* A block's 32 values as 4 vectors of int16 (values 0..7, 8..15, 16..23, 24..31). */
typedef struct { __m128i v[4]; } xblock, wblock;
static inline wblock sext_block(__m128i a, __m128i b) { return (wblock){{sext_lo(a), sext_hi(a), sext_lo(b), sext_hi(b)}}; }
static inline __attribute__((always_inline)) xblock prep_x(const block_q8_0 *xb, const int q4) {
    (void)q4;
    return sext_block(load128(xb->q), load128(xb->q + 16));
}
static inline __attribute__((always_inline)) wblock prep_w(const uint8_t *wb, const int q4) {
    if (!q4) return sext_block(load128(wb + 2), load128(wb + 18));
    const __m128i q = load128(wb + 2), m4 = _mm_set1_epi8(15), c8 = _mm_set1_epi8(8);
    return sext_block(_mm_sub_epi8(_mm_and_si128(q, m4), c8), _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), c8));
}
static inline __attribute__((always_inline)) __m128i block_dot(const wblock *w, const xblock *x, const int q4) {
    (void)q4;
    return _mm_add_epi32(_mm_add_epi32(_mm_madd_epi16(w->v[0], x->v[0]), _mm_madd_epi16(w->v[1], x->v[1])),
                         _mm_add_epi32(_mm_madd_epi16(w->v[2], x->v[2]), _mm_madd_epi16(w->v[3], x->v[3])));
}
/* The 4 blocks' dots, lane j = block j: a 4 x 4 transpose folded into the adds. */
static inline __attribute__((always_inline)) __m128i reduce4(const __m128i d[4], const int q4) {
    (void)q4;
    const __m128i a = _mm_add_epi32(_mm_unpacklo_epi32(d[0], d[1]), _mm_unpackhi_epi32(d[0], d[1]));
    const __m128i b = _mm_add_epi32(_mm_unpacklo_epi32(d[2], d[3]), _mm_unpackhi_epi32(d[2], d[3]));
    return _mm_add_epi32(_mm_unpacklo_epi64(a, b), _mm_unpackhi_epi64(a, b));
}
#endif

/* s[t * R + r] = row r . token t, for Q4_0 (q4) or Q8_0 weights. */
static inline __attribute__((always_inline)) void dotr_128(float *s, const uint8_t *w, int64_t stride, const int R,
                                                           const block_q8_0 *x, const int T, int64_t nb, const int q4) {
    const int64_t bb = q4 ? 18 : 34;
    __m128 acc[DL_DOTR_ROWS][DL_DOTR_TOKENS];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m128 sx[DL_DOTR_TOKENS];
        xblock xp[DL_DOTR_TOKENS][4];
        DL_UNROLL
        for (int t = 0; t < T; t++) {
            sx[t] = scales4((const uint8_t *)(x + t * nb + b), 34);
            DL_UNROLL
            for (int j = 0; j < 4; j++) xp[t][j] = prep_x(x + t * nb + b + j, q4);
        }
        DL_UNROLL
        for (int r = 0; r < R; r++) {
            const uint8_t *wr = w + r * stride + b * bb;
            const __m128 sw = scales4(wr, bb);
            for (int64_t o = 0; o < 4 * bb; o += 64) _mm_prefetch((const char *)wr + DL_AHEAD + o, _MM_HINT_T0);
            __m128i d[DL_DOTR_TOKENS][4];
            DL_UNROLL
            for (int j = 0; j < 4; j++) {
                const wblock wp = prep_w(wr + j * bb, q4);
                DL_UNROLL
                for (int t = 0; t < T; t++) d[t][j] = block_dot(&wp, &xp[t][j], q4);
            }
            DL_UNROLL
            for (int t = 0; t < T; t++) acc[r][t] = _mm_add_ps(acc[r][t], _mm_mul_ps(_mm_mul_ps(sw, sx[t]), _mm_cvtepi32_ps(reduce4(d[t], q4))));
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            const uint8_t *wr = w + r * stride;
            s[t * R + r] = hsum128(acc[r][t]);
            if (b < nb)
                s[t * R + r] += q4 ? dot_q4_0_ref((const block_q4_0 *)wr + b, x + t * nb + b, nb - b)
                                   : dot_q8_0_ref((const block_q8_0 *)wr + b, x + t * nb + b, nb - b);
        }
}

static inline __attribute__((always_inline)) void dotr_q4_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    dotr_128(s, w, stride, R, x, T, nb, 1);
}
static inline __attribute__((always_inline)) void dotr_q8_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    dotr_128(s, w, stride, R, x, T, nb, 0);
}

#endif
