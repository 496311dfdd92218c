/*
 * dot_arm.h: NEON dot products for the aarch64 variants. Included by kernels.c after the scalar
 * references; each DL_HAVE_* macro makes kernels.c use the function defined here.
 *
 *  - "neon":    plain armv8-a (Cortex-A72). Int8 products use widening multiplies (SMULL/SMLAL)
 *               and pairwise widening adds (SADALP).
 *  - "dotprod": built with the dotprod extension (__ARM_FEATURE_DOTPROD, Cortex-A76); int8 products
 *               use SDOT.
 *
 * Semantics are those of the references: float products accumulated in float32 (only the summation
 * order differs); a Q8_0 / Q4_0 block is an exact int32 dot of its quants, scaled by
 * fp32(d_w) * fp32(d_x) and accumulated in float32. No half-precision arithmetic is used.
 */
#ifndef DAIRLLM_DOT_ARM_H
#define DAIRLLM_DOT_ARM_H

#include <arm_neon.h>

/* fp16 bits -> float (FCVT: exact, subnormals included). */
static inline float dla_h2f(uint16_t h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* fp16 -> float for a row (an F16 KV cache's key or value), exact */
#define DL_HAVE_F16_ROW
static inline void f16_row(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
    for (; i < n; i++) dst[i] = dla_h2f(src[i]);
}

/* ---- f32 ------------------------------------------------------------------------------------ */

#define DL_HAVE_DOT_F32
static inline float dot_f32(const float *w, const float *x, int64_t n) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
        a1 = vfmaq_f32(a1, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
        a2 = vfmaq_f32(a2, vld1q_f32(w + i + 8), vld1q_f32(x + i + 8));
        a3 = vfmaq_f32(a3, vld1q_f32(w + i + 12), vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

/* q . k_j for the 8 rows k_j = k + j * stride (n floats each) into out[0..8): one pass over q for the
 * eight rows, the sums reduced together with pairwise adds */
#define DL_HAVE_DOT8_F32
static inline void dot8_f32(float *out, const float *q, const float *k, int64_t stride, int64_t n) {
    float32x4_t a[8];
    for (int j = 0; j < 8; j++) a[j] = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t qv = vld1q_f32(q + i);
        for (int j = 0; j < 8; j++) a[j] = vfmaq_f32(a[j], qv, vld1q_f32(k + j * stride + i));
    }
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])));
    vst1q_f32(out + 4, vpaddq_f32(vpaddq_f32(a[4], a[5]), vpaddq_f32(a[6], a[7])));
    for (; i < n; i++)
        for (int j = 0; j < 8; j++) out[j] += q[i] * k[j * stride + i];
}

/* o += e[j] * v_j for the 8 rows v_j = v + j * stride, j = 0..7 in order, fused multiply-adds */
#define DL_HAVE_AXPY8_F32
static inline void axpy8_f32(float *o, const float *e, const float *v, int64_t stride, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t acc = vld1q_f32(o + i);
        for (int j = 0; j < 8; j++) acc = vfmaq_n_f32(acc, vld1q_f32(v + j * stride + i), e[j]);
        vst1q_f32(o + i, acc);
    }
    for (; i < n; i++)
        for (int j = 0; j < 8; j++) o[i] = fmaf(e[j], v[j * stride + i], o[i]);
}

/* ---- f16 (IEEE half, widened to f32 with FCVTL) ------------------------------------------- */

#define DL_HAVE_DOT_F16
static inline float dot_f16(const uint16_t *w, const uint16_t *x, int64_t n) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const float16x8_t w0 = vreinterpretq_f16_u16(vld1q_u16(w + i));
        const float16x8_t w1 = vreinterpretq_f16_u16(vld1q_u16(w + i + 8));
        const float16x8_t x0 = vreinterpretq_f16_u16(vld1q_u16(x + i));
        const float16x8_t x1 = vreinterpretq_f16_u16(vld1q_u16(x + i + 8));
        a0 = vfmaq_f32(a0, vcvt_f32_f16(vget_low_f16(w0)), vcvt_f32_f16(vget_low_f16(x0)));
        a1 = vfmaq_f32(a1, vcvt_high_f32_f16(w0), vcvt_high_f32_f16(x0));
        a2 = vfmaq_f32(a2, vcvt_f32_f16(vget_low_f16(w1)), vcvt_f32_f16(vget_low_f16(x1)));
        a3 = vfmaq_f32(a3, vcvt_high_f32_f16(w1), vcvt_high_f32_f16(x1));
    }
    for (; i + 4 <= n; i += 4) {
        const float32x4_t wf = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(w + i)));
        const float32x4_t xf = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i)));
        a0 = vfmaq_f32(a0, wf, xf);
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += dla_h2f(w[i]) * dla_h2f(x[i]);
    return s;
}

/* ---- bf16 (widened exactly by a 16-bit left shift) ----------------------------------------- */

#define DL_HAVE_DOT_BF16
static inline float dot_bf16(const uint16_t *w, const uint16_t *x, int64_t n) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint16x8_t w0 = vld1q_u16(w + i), w1 = vld1q_u16(w + i + 8);
        const uint16x8_t x0 = vld1q_u16(x + i), x1 = vld1q_u16(x + i + 8);
        a0 = vfmaq_f32(a0, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(w0), 16)),
                       vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(x0), 16)));
        a1 = vfmaq_f32(a1, vreinterpretq_f32_u32(vshll_high_n_u16(w0, 16)),
                       vreinterpretq_f32_u32(vshll_high_n_u16(x0, 16)));
        a2 = vfmaq_f32(a2, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(w1), 16)),
                       vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(x1), 16)));
        a3 = vfmaq_f32(a3, vreinterpretq_f32_u32(vshll_high_n_u16(w1, 16)),
                       vreinterpretq_f32_u32(vshll_high_n_u16(x1, 16)));
    }
    for (; i + 4 <= n; i += 4) {
        a0 = vfmaq_f32(a0, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(w + i), 16)),
                       vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(x + i), 16)));
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += dl_bf2f(w[i]) * dl_bf2f(x[i]);
    return s;
}

/* ---- Q8_0 x Q8_0 block dot: 32 products summed into the 4 lanes of an int32x4 ------------- */

/* w = (w0, w1), x = (x0, x1), 16 quants each. */
static inline int32x4_t dla_dot_q8(int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1) {
#ifdef __ARM_FEATURE_DOTPROD
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
    /* One product fits int16 (|-128 * -128| = 16384) but two may not: widen to int32 after each. */
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
    s = vpadalq_s16(s, vmull_high_s8(w0, x0));
    s = vpadalq_s16(s, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
    s = vpadalq_s16(s, vmull_high_s8(w1, x1));
    return s;
#endif
}

/* ---- Q4_0 and Q8_0 weights x Q8_0 activations: R rows x T tokens, groups of 4 blocks -------- */

/*
 * Per row, token and block the integer dot is exact, as in the reference: the nibbles (0..15) are
 * multiplied as they are (non-negative int8) and the "- 8" becomes "- 8 * sum(x)" per block, computed
 * once per group and token for all R rows (so no per-nibble subtraction). A group's 4 block dots are
 * reduced into one vector, lane j = block j, converted once and multiplied by the 4 blocks'
 * d_w * d_x (4 scales converted together): per block the reference's (d_w * d_x) * dot, summed in 4
 * lanes (blocks j mod 4). With dotprod a block is two SDOT; without it, four widening multiplies into
 * int16 (a lane sums 4 products of at most 15 * 128) and the group's four blocks are added pairwise in
 * int16 (16 products, at most 30720) before one widening. Blocks after the last whole group take the
 * reference. R rows share every activation load, T tokens every weight load and unpack; the rows are
 * `stride` bytes apart, each the head of its own sequential stream (DL_DOTR_STREAMS, kernels.c). A
 * row's value does not depend on the rows or tokens it is computed with.
 */
/* The loops over a group's 4 blocks are unrolled (DL_UNROLL, internal.h) so that the blocks stay in
 * registers (clang otherwise kept them as arrays on the stack: 25.3 instructions per block against
 * 14.8, counted under qemu). */
#define DL_HAVE_DOTR
#define DL_DOTR_ROWS 4
#ifdef __ARM_FEATURE_DOTPROD
#define DL_DOTR_TOKENS 2
#else
/* without dotprod two tokens' activations and the widened products spill: 21.6 instructions per block
 * and token (counted under qemu) against 14.7 one token at a time */
#define DL_DOTR_TOKENS 1
#endif
#define DL_DOTR_STREAMS 1

/* A tile's accumulators: 4 partial sums per (row, token), zeroed. */
static inline __attribute__((always_inline)) void dla_tile_zero(float32x4_t acc[][DL_DOTR_TOKENS], const int R, const int T) {
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = vdupq_n_f32(0.0f);
}

/* The fp16 values at p, p + stride, p + 2 stride, p + 3 stride, as 4 floats. */
static inline float32x4_t dla_scales4(const uint8_t *p, int64_t stride) {
    uint16_t h[4];
    DL_UNROLL for (int j = 0; j < 4; j++) memcpy(&h[j], p + j * stride, 2);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

/* A group's 4 Q8_0 blocks from xb: values 0..15 of block j in lo[j], values 16..31 in hi[j]. */
static inline __attribute__((always_inline)) void dla_load4(int8x16_t lo[4], int8x16_t hi[4], const block_q8_0 *xb) {
    DL_UNROLL for (int j = 0; j < 4; j++) {
        lo[j] = vld1q_s8(xb[j].q);
        hi[j] = vld1q_s8(xb[j].q + 16);
    }
}

/* Lane j = 8 * (sum of the 32 values of block j), j = 0..3. */
static inline int32x4_t dla_sum8(const block_q8_0 *x) {
    int16x8_t s[4];
    DL_UNROLL for (int j = 0; j < 4; j++) s[j] = vaddq_s16(vpaddlq_s8(vld1q_s8(x[j].q)), vpaddlq_s8(vld1q_s8(x[j].q + 16)));
    return vshlq_n_s32(vpaddlq_s16(vpaddq_s16(vpaddq_s16(s[0], s[1]), vpaddq_s16(s[2], s[3]))), 3);
}

/*
 * The activation side of a group (8 * the sums of its 4 blocks, their 4 scales as floats) does not
 * depend on the weight rows: dl_matmul packs it once per call for every token (k_pack_q8_0, in the
 * context's scratch; DL_PACK_GROUP_BYTES per group of 4 blocks; the tile reads the values themselves
 * from the Q8_0 rows) instead of once per 4 rows. The unpacked entry (dotr_q4_0, p = NULL) computes the
 * same values on the fly, so both give the same bits.
 */
#define DL_HAVE_PACKED_Q4_0
#define DL_PACK_MIN_TOKENS 1
#define DL_PACKED_BY_ROWS /* k_matmul_packed: kernels.c's row loop with tile_q4_0 */
/* a group also carries its 128 values for the batch path (matmul_blocked_q4_0): transposed with dotprod
 * (word k of register j = values 4j..4j+3 of block k), in order without (contiguous, where the Q8_0
 * rows put the 34-byte blocks' values 2 bytes off: one paired load per block instead of two) */
#define DL_PACK_GROUP_BYTES 160
#define DLA_BLOCKED_MIN_TOKENS 4 /* batches of fewer tokens take the tiles */
/* bytes of one packed token of nb blocks (whole groups of 4 only) */
static inline int64_t pack_token_bytes(int64_t nb) { return nb / 4 * DL_PACK_GROUP_BYTES; }

/* d[j] = word j of a0, a1, a2, a3: a 4 x 4 transpose of 32-bit words */
static inline __attribute__((always_inline)) void dla_transpose4(int8x16_t d[4], int8x16_t a0, int8x16_t a1, int8x16_t a2, int8x16_t a3) {
    const int32x4_t t0 = vtrn1q_s32(vreinterpretq_s32_s8(a0), vreinterpretq_s32_s8(a1)), t1 = vtrn2q_s32(vreinterpretq_s32_s8(a0), vreinterpretq_s32_s8(a1)),
                    t2 = vtrn1q_s32(vreinterpretq_s32_s8(a2), vreinterpretq_s32_s8(a3)), t3 = vtrn2q_s32(vreinterpretq_s32_s8(a2), vreinterpretq_s32_s8(a3));
    d[0] = vreinterpretq_s8_s64(vtrn1q_s64(vreinterpretq_s64_s32(t0), vreinterpretq_s64_s32(t2)));
    d[1] = vreinterpretq_s8_s64(vtrn1q_s64(vreinterpretq_s64_s32(t1), vreinterpretq_s64_s32(t3)));
    d[2] = vreinterpretq_s8_s64(vtrn2q_s64(vreinterpretq_s64_s32(t0), vreinterpretq_s64_s32(t2)));
    d[3] = vreinterpretq_s8_s64(vtrn2q_s64(vreinterpretq_s64_s32(t1), vreinterpretq_s64_s32(t3)));
}

static void k_pack_q8_0(void *dst, const void *x, int64_t nb, int64_t n_tok, int64_t batch) {
    /* the values only for the batch path (decode's single token reads them from the Q8_0 rows) */
    const int values = batch >= DLA_BLOCKED_MIN_TOKENS;
    for (int64_t t = 0; t < n_tok; t++) {
        const block_q8_0 *xt = (const block_q8_0 *)x + t * nb;
        uint8_t *o = (uint8_t *)dst + t * pack_token_bytes(nb);
        for (int64_t b = 0; b + 4 <= nb; b += 4, o += DL_PACK_GROUP_BYTES) {
            vst1q_s32((int32_t *)o, dla_sum8(xt + b));
            vst1q_f32((float *)(o + 16), dla_scales4((const uint8_t *)(xt + b), sizeof(block_q8_0)));
            if (!values) continue;
            int8x16_t xl[4], xh[4];
            dla_load4(xl, xh, xt + b);
#ifdef __ARM_FEATURE_DOTPROD
            /* X[j]: word k = values 4j..4j+3 of block k (j < 4), then values 16 + 4(j-4).. */
            int8x16_t u[4];
            dla_transpose4(u, xl[0], xl[1], xl[2], xl[3]);
            for (int j = 0; j < 4; j++) vst1q_s8((int8_t *)(o + 32 + 16 * j), u[j]);
            dla_transpose4(u, xh[0], xh[1], xh[2], xh[3]);
            for (int j = 0; j < 4; j++) vst1q_s8((int8_t *)(o + 96 + 16 * j), u[j]);
#else
            for (int j = 0; j < 4; j++) {
                vst1q_s8((int8_t *)(o + 32 + 32 * j), xl[j]);
                vst1q_s8((int8_t *)(o + 48 + 32 * j), xh[j]);
            }
#endif
        }
    }
}

/* The tile's loops over rows and tokens: unrolled with dotprod (instructions per block, counted under
 * qemu: 12.53 -> 11.72 for one token, 9.91 -> 9.59 for 64), kept rolled without it (13.77 -> 14.20). */
#ifdef __ARM_FEATURE_DOTPROD
#define DLA_TILE_UNROLL DL_UNROLL
#else
#define DLA_TILE_UNROLL
#endif

/* R weight rows (`stride` apart) against T tokens: x (Q8_0 rows, nb blocks apart) and, when `packed`
 * (a constant after inlining, so that each instance has one path), the same tokens' group sums and
 * scales at p (pstride bytes apart). */
static inline __attribute__((always_inline)) void tile_q4_0_impl(float *s, const uint8_t *w, int64_t stride, const int R,
                                                                 const uint8_t *p, int64_t pstride, const block_q8_0 *x,
                                                                 const int T, int64_t nb, const int packed) {
    const uint8x16_t m4 = vdupq_n_u8(15);
    float32x4_t acc[DL_DOTR_ROWS][DL_DOTR_TOKENS];
    dla_tile_zero(acc, R, T);
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        int8x16_t xl[DL_DOTR_TOKENS][4], xh[DL_DOTR_TOKENS][4];
        int32x4_t m8[DL_DOTR_TOKENS];
        float32x4_t dx[DL_DOTR_TOKENS];
        DLA_TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const block_q8_0 *xb = x + t * nb + b;
            dla_load4(xl[t], xh[t], xb);
            if (packed) {
                const uint8_t *pg = p + t * pstride + b / 4 * DL_PACK_GROUP_BYTES;
                m8[t] = vld1q_s32((const int32_t *)pg);
                dx[t] = vld1q_f32((const float *)(pg + 16));
            } else {
                m8[t] = dla_sum8(xb);
                dx[t] = dla_scales4((const uint8_t *)xb, sizeof(block_q8_0));
            }
        }
        DLA_TILE_UNROLL
        for (int r = 0; r < R; r++) {
            const uint8_t *wr = w + r * stride + b * sizeof(block_q4_0);
            int8x16_t lo[4], hi[4];
            DL_UNROLL for (int j = 0; j < 4; j++) {
                const uint8x16_t v = vld1q_u8(wr + j * sizeof(block_q4_0) + 2);
                lo[j] = vreinterpretq_s8_u8(vandq_u8(v, m4));
                hi[j] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
            }
            const float32x4_t sw = dla_scales4(wr, sizeof(block_q4_0));
            DLA_TILE_UNROLL
            for (int t = 0; t < T; t++) {
#ifdef __ARM_FEATURE_DOTPROD
                int32x4_t p[4];
                DL_UNROLL for (int j = 0; j < 4; j++) p[j] = vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo[j], xl[t][j]), hi[j], xh[t][j]);
                const int32x4_t d = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
#else
                int16x8_t p[4];
                DL_UNROLL for (int j = 0; j < 4; j++) {
                    int16x8_t q = vmull_s8(vget_low_s8(lo[j]), vget_low_s8(xl[t][j]));
                    q = vmlal_high_s8(q, lo[j], xl[t][j]);
                    q = vmlal_s8(q, vget_low_s8(hi[j]), vget_low_s8(xh[t][j]));
                    p[j] = vmlal_high_s8(q, hi[j], xh[t][j]);
                }
                const int32x4_t d = vpaddlq_s16(vpaddq_s16(vpaddq_s16(p[0], p[1]), vpaddq_s16(p[2], p[3])));
#endif
                acc[r][t] = vfmaq_f32(acc[r][t], vcvtq_f32_s32(vsubq_s32(d, m8[t])), vmulq_f32(sw, dx[t]));
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            s[t * R + r] = vaddvq_f32(acc[r][t]);
            if (b < nb) s[t * R + r] += dot_q4_0_ref((const block_q4_0 *)(w + r * stride) + b, x + t * nb + b, nb - b);
        }
}

/* the packed entry (k_matmul_packed) */
static inline __attribute__((always_inline)) void tile_q4_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const uint8_t *p, int64_t pstride, const block_q8_0 *x,
                                                            const int T, int64_t nb) {
    tile_q4_0_impl(s, w, stride, R, p, pstride, x, T, nb, 1);
}

/* the unpacked entry (k_matmul) */
static inline __attribute__((always_inline)) void dotr_q4_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    tile_q4_0_impl(s, w, stride, R, NULL, 0, x, T, nb, 0);
}

/*
 * Q4_0 batches (4 tokens or more, rows of whole groups up to 32768 values): the weights of a row are
 * unpacked once per batch into a stack buffer (per group of 4 blocks, 144 bytes: 128 bytes of nibbles,
 * then the 4 scales as floats) and every token of the batch is taken against it, DLA_BT tokens and
 * DLA_BR rows at a time, so the nibbles are split once per row instead of once per tile.
 *  - dotprod: the nibbles are stored transposed like the packed activations (8 registers whose word k
 *    holds 4 nibbles of block k), so 8 SDOT accumulate the 4 blocks' dots straight into the 4 lanes of
 *    one register: no zeroing per block and no pairwise adds, where the tile needs 4 zeroed registers
 *    and 3 ADDP per group.
 *  - neon (no dotprod): the nibbles are stored in order (block j's low nibbles, then its high ones),
 *    the activations packed in order too (paired loads), and the tile's widening multiplies and
 *    pairwise adds take them: what the batch saves is the unpacking and most loads. Instructions per
 *    row, token and block, 64 tokens (scripts/arm64-insns.sh --cpu cortex-a72): 13.56 -> 8.83.
 * Per (row, token) the integers and the float operations are the tile's, in the same order, so a batch
 * gives the same bits as its tokens one at a time.
 */
#define DL_HAVE_MATMUL_BLOCKED
#define DLA_BLOCKED_MAX_GROUPS 256 /* n_in <= 32768: 36 KiB of stack per row */
#define DLA_UNPACKED_GROUP_BYTES 144
#define DLA_BR 2 /* rows */
#define DLA_BT 3 /* tokens (without dotprod: 8.83 instructions per row, token and block; 2: 9.21, 2 x 3 rows: 9.18) */

/* One unpacked group of 4 blocks at o: values 0..15 of block j in lo[j], 16..31 in hi[j], transposed
 * with dotprod (word k of register j = 4 values of block k), in order without; then the 4 scales. */
static inline __attribute__((always_inline)) void dla_store_unpacked(uint8_t *o, const int8x16_t lo[4], const int8x16_t hi[4], float32x4_t sw) {
#ifdef __ARM_FEATURE_DOTPROD
    int8x16_t u[4];
    dla_transpose4(u, lo[0], lo[1], lo[2], lo[3]);
    for (int j = 0; j < 4; j++) vst1q_s8((int8_t *)(o + 16 * j), u[j]);
    dla_transpose4(u, hi[0], hi[1], hi[2], hi[3]);
    for (int j = 0; j < 4; j++) vst1q_s8((int8_t *)(o + 64 + 16 * j), u[j]);
#else
    for (int j = 0; j < 4; j++) {
        vst1q_s8((int8_t *)(o + 32 * j), lo[j]);
        vst1q_s8((int8_t *)(o + 32 * j + 16), hi[j]);
    }
#endif
    vst1q_f32((float *)(o + 128), sw);
}

static inline void dla_unpack_row_q4_0(uint8_t *o, const uint8_t *wr, int64_t ng) {
    const uint8x16_t m4 = vdupq_n_u8(15);
    for (int64_t g = 0; g < ng; g++, o += DLA_UNPACKED_GROUP_BYTES, wr += 4 * sizeof(block_q4_0)) {
        int8x16_t lo[4], hi[4];
        for (int j = 0; j < 4; j++) {
            const uint8x16_t v = vld1q_u8(wr + j * sizeof(block_q4_0) + 2);
            lo[j] = vreinterpretq_s8_u8(vandq_u8(v, m4));
            hi[j] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
        }
        dla_store_unpacked(o, lo, hi, dla_scales4(wr, sizeof(block_q4_0)));
    }
}

/* R unpacked rows (u, ustride apart) of Q4_0 (q4) or Q8_0 against T packed tokens (p, pstride apart),
 * ng groups, into s[t * R + r] (the groups only: the caller adds the blocks after the last whole group) */
static inline __attribute__((always_inline)) void dla_tile_unpacked(float *s, const uint8_t *u, int64_t ustride, const int R,
                                                                    const uint8_t *p, int64_t pstride, const int T, int64_t ng,
                                                                    const int q4) {
    float32x4_t acc[DLA_BR][DLA_BT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *ug = u + g * DLA_UNPACKED_GROUP_BYTES, *pg = p + g * DL_PACK_GROUP_BYTES;
        int32x4_t d[DLA_BR][DLA_BT];
#ifdef __ARM_FEATURE_DOTPROD
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) d[r][t] = vdupq_n_s32(0);
        DL_UNROLL for (int j = 0; j < 8; j++) {
            int8x16_t wv[DLA_BR];
            for (int r = 0; r < R; r++) wv[r] = vld1q_s8((const int8_t *)(ug + r * ustride + 16 * j));
            for (int t = 0; t < T; t++) {
                const int8x16_t xv = vld1q_s8((const int8_t *)(pg + t * pstride + 32 + 16 * j));
                for (int r = 0; r < R; r++) d[r][t] = vdotq_s32(d[r][t], wv[r], xv);
            }
        }
#else
        /* Q4_0: block j's 32 products into int16 lanes (4 products of at most 15 * 128 each), the 4
         * blocks added pairwise (16 products, at most 30720) and widened: lane j = block j's dot.
         * Q8_0: one product fits int16, two may not (-128 * -128 twice), so each widening multiply is
         * widened again into int32 (SADALP), 4 partial sums per block, the 4 blocks added pairwise.
         * Either way a (row, token)'s blocks are reduced as soon as two are done (all four kept apart,
         * clang spilled: Q4_0 9.32 instructions per row, token and block against 8.83) */
        int16x8_t h[DLA_BR][DLA_BT], h01[DLA_BR][DLA_BT]; /* Q4_0: block 0 or 2; blocks 0 and 1 added pairwise */
        int32x4_t e[DLA_BR][DLA_BT], e01[DLA_BR][DLA_BT]; /* Q8_0: the same */
        DL_UNROLL for (int j = 0; j < 4; j++) {
            int8x16_t wl[DLA_BR], wh[DLA_BR];
            for (int r = 0; r < R; r++) {
                wl[r] = vld1q_s8((const int8_t *)(ug + r * ustride + 32 * j));
                wh[r] = vld1q_s8((const int8_t *)(ug + r * ustride + 32 * j + 16));
            }
            for (int t = 0; t < T; t++) {
                const int8x16_t xl = vld1q_s8((const int8_t *)(pg + t * pstride + 32 + 32 * j));
                const int8x16_t xh = vld1q_s8((const int8_t *)(pg + t * pstride + 48 + 32 * j));
                for (int r = 0; r < R; r++) {
                    if (q4) {
                        int16x8_t v = vmull_s8(vget_low_s8(wl[r]), vget_low_s8(xl));
                        v = vmlal_high_s8(v, wl[r], xl);
                        v = vmlal_s8(v, vget_low_s8(wh[r]), vget_low_s8(xh));
                        v = vmlal_high_s8(v, wh[r], xh);
                        if (j == 0 || j == 2) h[r][t] = v;
                        else if (j == 1) h01[r][t] = vpaddq_s16(h[r][t], v);
                        else d[r][t] = vpaddlq_s16(vpaddq_s16(h01[r][t], vpaddq_s16(h[r][t], v)));
                    } else {
                        int32x4_t v = vpaddlq_s16(vmull_s8(vget_low_s8(wl[r]), vget_low_s8(xl)));
                        v = vpadalq_s16(v, vmull_high_s8(wl[r], xl));
                        v = vpadalq_s16(v, vmull_s8(vget_low_s8(wh[r]), vget_low_s8(xh)));
                        v = vpadalq_s16(v, vmull_high_s8(wh[r], xh));
                        if (j == 0 || j == 2) e[r][t] = v;
                        else if (j == 1) e01[r][t] = vpaddq_s32(e[r][t], v);
                        else d[r][t] = vpaddq_s32(e01[r][t], vpaddq_s32(e[r][t], v));
                    }
                }
            }
        }
#endif
        for (int t = 0; t < T; t++) {
            const float32x4_t dx = vld1q_f32((const float *)(pg + t * pstride + 16));
            /* Q4_0: the nibbles were taken unsigned, "- 8" is "- 8 * sum(x)" per block */
            const int32x4_t m8 = q4 ? vld1q_s32((const int32_t *)(pg + t * pstride)) : vdupq_n_s32(0);
            for (int r = 0; r < R; r++) {
                const float32x4_t sw = vld1q_f32((const float *)(ug + r * ustride + 128));
                acc[r][t] = vfmaq_f32(acc[r][t], vcvtq_f32_s32(q4 ? vsubq_s32(d[r][t], m8) : d[r][t]), vmulq_f32(sw, dx));
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) s[t * R + r] = vaddvq_f32(acc[r][t]);
}
/* the tile's instances: DLA_BR x DLA_BT, DLA_BR x 1, 1 x DLA_BT, 1 x 1, per weight type */
typedef void (*dla_tile_fn)(float *s, const uint8_t *u, int64_t ustride, const uint8_t *p, int64_t pstride, int64_t ng);
#define DLA_TILE_UNPACKED(TYPE, Q4, NAME, R, T)                                                                             \
    static __attribute__((noinline)) void dla_tile_##TYPE##_##NAME(float *s, const uint8_t *u, int64_t ustride,             \
                                                                   const uint8_t *p, int64_t pstride, int64_t ng) {        \
        dla_tile_unpacked(s, u, ustride, R, p, pstride, T, ng, Q4);                                                         \
    }
#define DLA_TILES(TYPE, Q4)                          \
    DLA_TILE_UNPACKED(TYPE, Q4, rt, DLA_BR, DLA_BT) \
    DLA_TILE_UNPACKED(TYPE, Q4, r1, DLA_BR, 1)      \
    DLA_TILE_UNPACKED(TYPE, Q4, 1t, 1, DLA_BT)      \
    DLA_TILE_UNPACKED(TYPE, Q4, 11, 1, 1)
DLA_TILES(q4_0, 1)
DLA_TILES(q8_0, 0)
#undef DLA_TILES
#undef DLA_TILE_UNPACKED

/* Rows [ra, rb) of a Q4_0 (q4) or Q8_0 matmul against n_tok packed tokens (x: the same tokens as Q8_0
 * rows, for the blocks after the last whole group); 0 when the shape is not for this path. */
static inline __attribute__((always_inline)) int dla_matmul_blocked(float *out, int64_t ldo, const void *w, int64_t ldw, const void *packed,
                                                                    const void *x, int64_t n_in, int64_t r0, int64_t ra, int64_t rb,
                                                                    int64_t n_tok, const int q4, void (*unpack)(uint8_t *, const uint8_t *, int64_t),
                                                                    dla_tile_fn tile_rt, dla_tile_fn tile_r1, dla_tile_fn tile_1t,
                                                                    dla_tile_fn tile_11) {
    const int64_t nb = n_in / QK, ng = nb / 4, pstride = pack_token_bytes(nb);
    if (n_tok < DLA_BLOCKED_MIN_TOKENS || ng > DLA_BLOCKED_MAX_GROUPS || ng == 0) return 0;
    enum { R = DLA_BR, T = DLA_BT };
    __attribute__((aligned(16))) uint8_t u[R][DLA_BLOCKED_MAX_GROUPS * DLA_UNPACKED_GROUP_BYTES];
    const int64_t ustride = DLA_BLOCKED_MAX_GROUPS * DLA_UNPACKED_GROUP_BYTES;
    const uint8_t *pk = (const uint8_t *)packed, *wb = (const uint8_t *)w;
    const block_q8_0 *xq = (const block_q8_0 *)x;
    float s[R * T];
    /* the tile's tail: blocks after the last whole group, by the reference, as the tiles do */
#define TAIL(rr, tt)                                                                                                       \
    (4 * ng == nb ? 0.0f                                                                                                   \
     : q4         ? dot_q4_0_ref((const block_q4_0 *)(wb + (rr) * ldw) + 4 * ng, xq + (tt) * nb + 4 * ng, nb - 4 * ng) \
                  : dot_q8_0_ref((const block_q8_0 *)(wb + (rr) * ldw) + 4 * ng, xq + (tt) * nb + 4 * ng, nb - 4 * ng))
    int64_t r = ra;
    for (; r + R <= rb; r += R) {
        for (int i = 0; i < R; i++) unpack(u[i], wb + (r + i) * ldw, ng);
        int64_t t = 0;
        for (; t + T <= n_tok; t += T) {
            tile_rt(s, u[0], ustride, pk + t * pstride, pstride, ng);
            for (int j = 0; j < T; j++)
                for (int i = 0; i < R; i++) out[(t + j) * ldo + (r + i - r0)] = s[j * R + i] + TAIL(r + i, t + j);
        }
        for (; t < n_tok; t++) {
            tile_r1(s, u[0], ustride, pk + t * pstride, pstride, ng);
            for (int i = 0; i < R; i++) out[t * ldo + (r + i - r0)] = s[i] + TAIL(r + i, t);
        }
    }
    for (; r < rb; r++) {
        unpack(u[0], wb + r * ldw, ng);
        int64_t t = 0;
        for (; t + T <= n_tok; t += T) {
            tile_1t(s, u[0], ustride, pk + t * pstride, pstride, ng);
            for (int j = 0; j < T; j++) out[(t + j) * ldo + (r - r0)] = s[j] + TAIL(r, t + j);
        }
        for (; t < n_tok; t++) {
            tile_11(s, u[0], ustride, pk + t * pstride, pstride, ng);
            out[t * ldo + (r - r0)] = s[0] + TAIL(r, t);
        }
    }
#undef TAIL
    return 1;
}

static int matmul_blocked_q4_0(float *out, int64_t ldo, const void *w, int64_t ldw, const void *packed, const void *x,
                               int64_t n_in, int64_t r0, int64_t ra, int64_t rb, int64_t n_tok) {
    return dla_matmul_blocked(out, ldo, w, ldw, packed, x, n_in, r0, ra, rb, n_tok, 1, dla_unpack_row_q4_0, dla_tile_q4_0_rt,
                              dla_tile_q4_0_r1, dla_tile_q4_0_1t, dla_tile_q4_0_11);
}

/*
 * Q8_0 batches take the same path. With dotprod a row's 4-block groups are transposed once per batch
 * (the values are int8 already: no unpacking, only the transpose; 144 bytes per group like Q4_0's), and
 * 8 SDOT per group and token fill one register with the 4 blocks' exact dots, where the tile
 * (dotr_q8_0) takes two SDOT per block into zeroed registers and 3 ADDP per group. Without dotprod the
 * values are copied in order (paired loads from then on) and the tile's widening multiplies take them.
 * The float operations per (row, token) are the tile's (the dot converted, times d_w * d_x, into 4
 * lanes, the reference for the blocks after the last group), so the bits are the same.
 */
#define DL_HAVE_MATMUL_BLOCKED_Q8_0
#define DL_PACK_Q8_0_MIN_TOKENS DLA_BLOCKED_MIN_TOKENS
/* longer rows take the tiles on the Q8_0 rows as they are: packing them would be wasted */
#define DL_PACK_Q8_0_MAX_BLOCKS (DLA_BLOCKED_MAX_GROUPS * 4 + 3)
static inline void dla_unpack_row_q8_0(uint8_t *o, const uint8_t *wr, int64_t ng) {
    for (int64_t g = 0; g < ng; g++, o += DLA_UNPACKED_GROUP_BYTES, wr += 4 * sizeof(block_q8_0)) {
        int8x16_t lo[4], hi[4];
        dla_load4(lo, hi, (const block_q8_0 *)wr);
        dla_store_unpacked(o, lo, hi, dla_scales4(wr, sizeof(block_q8_0)));
    }
}

static int matmul_blocked_q8_0(float *out, int64_t ldo, const void *w, int64_t ldw, const void *packed, const void *x,
                               int64_t n_in, int64_t r0, int64_t ra, int64_t rb, int64_t n_tok) {
    return dla_matmul_blocked(out, ldo, w, ldw, packed, x, n_in, r0, ra, rb, n_tok, 0, dla_unpack_row_q8_0, dla_tile_q8_0_rt,
                              dla_tile_q8_0_r1, dla_tile_q8_0_1t, dla_tile_q8_0_11);
}


/* Q8_0 x Q8_0 on the same tile: each block's exact int32 dot (dla_dot_q8), a group's 4 reduced into
 * one vector (lane j = block j), converted once and multiplied by the 4 blocks' d_w * d_x. */
/* One weight row's group of 4 blocks at wr against T tokens' group (values xl/xh, scales dx). */
static inline __attribute__((always_inline)) void dla_q8_row(float32x4_t acc[DL_DOTR_TOKENS], const uint8_t *wr,
                                                             int8x16_t xl[][4], int8x16_t xh[][4], const float32x4_t dx[],
                                                             const int T) {
    int8x16_t wl[4], wh[4];
    dla_load4(wl, wh, (const block_q8_0 *)wr);
    const float32x4_t sw = dla_scales4(wr, sizeof(block_q8_0));
    for (int t = 0; t < T; t++) {
        int32x4_t p[4];
        DL_UNROLL for (int j = 0; j < 4; j++) p[j] = dla_dot_q8(wl[j], wh[j], xl[t][j], xh[t][j]);
        const int32x4_t d = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
        acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(d), vmulq_f32(sw, dx[t]));
    }
}

static inline __attribute__((always_inline)) void dotr_q8_0(float *s, const uint8_t *w, int64_t stride, const int R,
                                                            const block_q8_0 *x, const int T, int64_t nb) {
    float32x4_t acc[DL_DOTR_ROWS][DL_DOTR_TOKENS];
    dla_tile_zero(acc, R, T);
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        int8x16_t xl[DL_DOTR_TOKENS][4], xh[DL_DOTR_TOKENS][4];
        float32x4_t dx[DL_DOTR_TOKENS];
        for (int t = 0; t < T; t++) {
            const block_q8_0 *xb = x + t * nb + b;
            dla_load4(xl[t], xh[t], xb);
            dx[t] = dla_scales4((const uint8_t *)xb, sizeof(block_q8_0));
        }
#ifdef __ARM_FEATURE_DOTPROD
        if (T == 1) { /* one token: the rows unrolled (11.5 -> 10.6 instructions per block under qemu) */
            DL_UNROLL for (int r = 0; r < R; r++) dla_q8_row(acc[r], w + r * stride + b * sizeof(block_q8_0), xl, xh, dx, 1);
        } else /* a batch: rolled (unrolled: 8.7 -> 9.3) */
#endif
            for (int r = 0; r < R; r++) dla_q8_row(acc[r], w + r * stride + b * sizeof(block_q8_0), xl, xh, dx, T);
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            s[t * R + r] = vaddvq_f32(acc[r][t]);
            if (b < nb) s[t * R + r] += dot_q8_0_ref((const block_q8_0 *)(w + r * stride) + b, x + t * nb + b, nb - b);
        }
}

/* ---- read-bandwidth probe ------------------------------------------------------------------ */

/* Reads every byte (bytes a multiple of 256) with 16-byte loads; returns the sum of the u64 words,
 * the same value as the generic version. Four independent accumulators, one per 64-byte quarter. */
#define DL_HAVE_READ_SUM
static uint64_t k_read_sum(const void *buf, int64_t bytes) {
    const uint64_t *p = (const uint64_t *)buf;
    uint64x2_t s0 = vdupq_n_u64(0), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < bytes / 8; i += 32) { /* 32 words = 256 bytes */
        const uint64_t *q = p + i;
        s0 = vaddq_u64(s0, vaddq_u64(vaddq_u64(vld1q_u64(q + 0), vld1q_u64(q + 2)),
                                     vaddq_u64(vld1q_u64(q + 4), vld1q_u64(q + 6))));
        s1 = vaddq_u64(s1, vaddq_u64(vaddq_u64(vld1q_u64(q + 8), vld1q_u64(q + 10)),
                                     vaddq_u64(vld1q_u64(q + 12), vld1q_u64(q + 14))));
        s2 = vaddq_u64(s2, vaddq_u64(vaddq_u64(vld1q_u64(q + 16), vld1q_u64(q + 18)),
                                     vaddq_u64(vld1q_u64(q + 20), vld1q_u64(q + 22))));
        s3 = vaddq_u64(s3, vaddq_u64(vaddq_u64(vld1q_u64(q + 24), vld1q_u64(q + 26)),
                                     vaddq_u64(vld1q_u64(q + 28), vld1q_u64(q + 30))));
    }
    return vaddvq_u64(vaddq_u64(vaddq_u64(s0, s1), vaddq_u64(s2, s3)));
}

#endif
