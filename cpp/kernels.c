/*
 * kernels.c: every kernel, compiled once per SIMD variant.
 *
 * The build compiles this file several times with different target flags and -DDL_VARIANT=<name>;
 * each compilation defines one table `dl_kernels_<name>`. With -DDL_SCALAR it is the plain reference
 * (no intrinsics, no auto-vectorisation); otherwise the dot products come from dot_x86.h / dot_arm.h
 * where the compiler flags enable an instruction set, and the rest is auto-vectorised C.
 */
#include "internal.h"

#ifndef DL_VARIANT
#error "compile with -DDL_VARIANT=<name>"
#endif

/* ---- dot products: generic versions (the scalar reference) ------------------------------- */

static inline __attribute__((unused)) float dot_f32_ref(const float *w, const float *x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static inline __attribute__((unused)) float dot_f16_ref(const uint16_t *w, const uint16_t *x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += dl_h2f(w[i]) * dl_h2f(x[i]);
    return s;
}

static inline __attribute__((unused)) float dot_bf16_ref(const uint16_t *w, const uint16_t *x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += dl_bf2f(w[i]) * dl_bf2f(x[i]);
    return s;
}

static inline __attribute__((unused)) float dot_q8_0_ref(const block_q8_0 *w, const block_q8_0 *x, int64_t nb) {
    float s = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t acc = 0;
        for (int j = 0; j < QK; j++) acc += (int32_t)w[b].q[j] * (int32_t)x[b].q[j];
        s += (dl_h2f(w[b].d) * dl_h2f(x[b].d)) * (float)acc;
    }
    return s;
}

static inline __attribute__((unused)) float dot_q4_0_ref(const block_q4_0 *w, const block_q8_0 *x, int64_t nb) {
    float s = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t acc = 0;
        for (int j = 0; j < QK / 2; j++) {
            acc += ((int32_t)(w[b].qs[j] & 15) - 8) * (int32_t)x[b].q[j];
            acc += ((int32_t)(w[b].qs[j] >> 4) - 8) * (int32_t)x[b].q[j + QK / 2];
        }
        s += (dl_h2f(w[b].d) * dl_h2f(x[b].d)) * (float)acc;
    }
    return s;
}

#if !defined(DL_SCALAR) && defined(__x86_64__)
#include "dot_x86.h"
#elif !defined(DL_SCALAR) && defined(__aarch64__)
#include "dot_arm.h"
#endif

#ifndef DL_HAVE_DOT_F32
#define dot_f32 dot_f32_ref
#endif
#ifndef DL_HAVE_AXPY8_F32
/* o += e[j] * v_j for the 8 rows v_j = v + j * stride, j = 0..7 in order */
static inline void axpy8_f32(float *o, const float *e, const float *v, int64_t stride, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = o[i];
        for (int j = 0; j < 8; j++) x = x + e[j] * v[j * stride + i];
        o[i] = x;
    }
}
#endif
#ifndef DL_HAVE_DOT8_F32
/* q . k_j for the 8 rows k_j = k + j * stride */
static inline void dot8_f32(float *out, const float *q, const float *k, int64_t stride, int64_t n) {
    for (int j = 0; j < 8; j++) out[j] = dot_f32(q, k + j * stride, n);
}
#endif
#ifndef DL_HAVE_F16_ROW
static inline void f16_row(float *dst, const uint16_t *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = dl_h2f(src[i]);
}
#endif
#ifndef DL_HAVE_DOT_F16
#define dot_f16 dot_f16_ref
#endif
#ifndef DL_HAVE_DOT_BF16
#define dot_bf16 dot_bf16_ref
#endif
#ifndef DL_HAVE_DOT_Q8_0
#define dot_q8_0 dot_q8_0_ref
#endif
#ifndef DL_HAVE_DOT_Q4_0
#define dot_q4_0 dot_q4_0_ref
#endif
/* Two rows against one activation row: shares the activation loads. */
#ifndef DL_HAVE_DOT2_Q4_0
static inline void dot2_q4_0(float *s, const block_q4_0 *w0, const block_q4_0 *w1, const block_q8_0 *x, int64_t nb) {
    s[0] = dot_q4_0(w0, x, nb);
    s[1] = dot_q4_0(w1, x, nb);
}
#endif
#ifndef DL_HAVE_DOT2_Q8_0
static inline void dot2_q8_0(float *s, const block_q8_0 *w0, const block_q8_0 *w1, const block_q8_0 *x, int64_t nb) {
    s[0] = dot_q8_0(w0, x, nb);
    s[1] = dot_q8_0(w1, x, nb);
}
#endif

/* ---- matmul ------------------------------------------------------------------------------ */

/* Rows go in pairs (two weight rows share each activation load); tokens loop inside a pair so the
 * pair's weights stay in L1 while every token row streams past them. */
#define MATMUL_PAIRS(WT, XT, row_bytes, x_bytes, nb, DOT, DOT2)                                     \
    do {                                                                                            \
        const uint8_t *wb = (const uint8_t *)w;                                                     \
        const uint8_t *xb = (const uint8_t *)x;                                                     \
        int64_t r = ra;                                                                             \
        for (; r + 1 < rb; r += 2) {                                                                \
            const WT *w0 = (const WT *)(wb + r * (row_bytes));                                      \
            const WT *w1 = (const WT *)(wb + (r + 1) * (row_bytes));                                \
            for (int64_t t = 0; t < n_tok; t++) {                                                   \
                float s[2];                                                                         \
                DOT2(s, w0, w1, (const XT *)(xb + t * (x_bytes)), nb);                              \
                out[t * ldo + (r - r0)] = s[0];                                                     \
                out[t * ldo + (r + 1 - r0)] = s[1];                                                 \
            }                                                                                       \
        }                                                                                           \
        for (; r < rb; r++) {                                                                       \
            const WT *w0 = (const WT *)(wb + r * (row_bytes));                                      \
            for (int64_t t = 0; t < n_tok; t++) out[t * ldo + (r - r0)] = DOT(w0, (const XT *)(xb + t * (x_bytes)), nb); \
        }                                                                                           \
    } while (0)

#define DOT2_GENERIC(DOT)                                                                           \
    static inline void dot2_generic_##DOT(float *s, const void *w0, const void *w1, const void *x, int64_t n) { \
        s[0] = DOT(w0, x, n);                                                                       \
        s[1] = DOT(w1, x, n);                                                                       \
    }
DOT2_GENERIC(dot_f32)
DOT2_GENERIC(dot_f16)
DOT2_GENERIC(dot_bf16)


#ifdef DL_HAVE_DOTR
/* DL_DOTR_ROWS weight rows at a time share every activation load (dotr_* from the arch header; its
 * `stride` is the distance between those rows). With DL_DOTR_STREAMS the rows of a call are spread
 * over the range, one per quarter: each quarter is then read as one long sequential stream, which
 * the hardware prefetcher follows, where four adjacent short rows (2048 values: 1152 bytes of Q4_0)
 * each end before it has ramped up (measured on Zen 3: 5.5 -> 9.5 GB/s for 2048-value rows). A
 * row's value does not depend on the rows it is computed with. */
#ifdef DL_DOTR_STREAMS
/* ... and DL_DOTR_TOKENS tokens at a time share each weight load (dotr_* take the token count) */
#define MATMUL_GROUPS(DOTR, row_bytes, nb)                                                          \
    enum { R_ = DL_DOTR_ROWS, T_ = DL_DOTR_TOKENS };                                                \
    const int64_t q = (rb - ra) / R_;                                                               \
    for (int64_t i = 0; i < q; i++) {                                                               \
        float s[R_ * T_];                                                                           \
        int64_t t = 0;                                                                              \
        for (; t + T_ <= n_tok; t += T_) {                                                          \
            DOTR(s, wb + (ra + i) * (row_bytes), q * (row_bytes), R_, xq + t * (nb), T_, (nb));     \
            for (int j = 0; j < T_; j++)                                                            \
                for (int k = 0; k < R_; k++) out[(t + j) * ldo + (ra + k * q + i - r0)] = s[j * R_ + k]; \
        }                                                                                           \
        for (; t < n_tok; t++) {                                                                    \
            DOTR(s, wb + (ra + i) * (row_bytes), q * (row_bytes), R_, xq + t * (nb), 1, (nb));      \
            for (int k = 0; k < R_; k++) out[t * ldo + (ra + k * q + i - r0)] = s[k];              \
        }                                                                                           \
    }                                                                                               \
    for (int64_t r = ra + R_ * q; r < rb; r++)                                                      \
        for (int64_t t = 0; t < n_tok; t++) DOTR(&out[t * ldo + (r - r0)], wb + r * (row_bytes), (row_bytes), 1, xq + t * (nb), 1, (nb));
#else
#define MATMUL_GROUPS(DOTR, row_bytes, nb)                                                          \
    int64_t r = ra;                                                                                 \
    for (; r + DL_DOTR_ROWS <= rb; r += DL_DOTR_ROWS)                                               \
        for (int64_t t = 0; t < n_tok; t++) {                                                       \
            float s[DL_DOTR_ROWS];                                                                  \
            DOTR(s, wb + r * (row_bytes), (row_bytes), DL_DOTR_ROWS, xq + t * (nb), (nb));          \
            for (int i = 0; i < DL_DOTR_ROWS; i++) out[t * ldo + (r + i - r0)] = s[i];              \
        }                                                                                           \
    for (; r < rb; r++)                                                                             \
        for (int64_t t = 0; t < n_tok; t++) DOTR(&out[t * ldo + (r - r0)], wb + r * (row_bytes), (row_bytes), 1, xq + t * (nb), (nb));
#endif
#define MATMUL_ROWS(DOTR, row_bytes, nb)                                                            \
    do {                                                                                            \
        const uint8_t *wb = (const uint8_t *)w;                                                     \
        const block_q8_0 *xq = (const block_q8_0 *)x;                                               \
        MATMUL_GROUPS(DOTR, row_bytes, nb)                                                          \
    } while (0)
#endif

#ifdef DL_PACKED_BY_ROWS
/* Q4_0 (or, where the variant has a Q8_0 packed path, Q8_0) against tokens packed by k_pack_q8_0, rows
 * grouped as in k_matmul; the tile finds token t's packing from its Q8_0 row (xt - xq = t * nb). */
static void k_matmul(float *out, int64_t ldo, const void *w, int64_t ldw, int wtype, const void *x, int64_t n_in, int64_t r0,
                     int64_t ra, int64_t rb, int64_t n_tok);
static void k_matmul_packed(float *out, int64_t ldo, const void *w, int64_t ldw, int wtype, const void *packed, const void *x,
                            int64_t n_in, int64_t r0, int64_t ra, int64_t rb, int64_t n_tok) {
#ifdef DL_HAVE_MATMUL_BLOCKED_Q8_0
    if (wtype == DL_TYPE_Q8_0 && matmul_blocked_q8_0(out, ldo, w, ldw, packed, x, n_in, r0, ra, rb, n_tok)) return;
#endif
#ifdef DL_HAVE_MATMUL_BLOCKED
    if (wtype == DL_TYPE_Q4_0 && matmul_blocked_q4_0(out, ldo, w, ldw, packed, x, n_in, r0, ra, rb, n_tok)) return;
#endif
    const int64_t nb = n_in / QK, pstride = pack_token_bytes(nb);
#define PACKED_OF(xt, nb_) ((const uint8_t *)packed + ((xt) - xq) / (nb_) * pstride)
#define DOTR_PACKED_Q4(s, wr, stride, R, xt, T, nb_) tile_q4_0(s, wr, stride, R, PACKED_OF(xt, nb_), pstride, xt, T, nb_)
#define DOTR_PACKED_Q8(s, wr, stride, R, xt, T, nb_) tile_q8_0(s, wr, stride, R, PACKED_OF(xt, nb_), pstride, xt, T, nb_)
    if (wtype == DL_TYPE_Q4_0) MATMUL_ROWS(DOTR_PACKED_Q4, ldw, nb);
#ifdef DL_PACKED_Q8_0_ROWS
    else if (wtype == DL_TYPE_Q8_0) MATMUL_ROWS(DOTR_PACKED_Q8, ldw, nb);
#endif
    else k_matmul(out, ldo, w, ldw, wtype, x, n_in, r0, ra, rb, n_tok);
#undef DOTR_PACKED_Q8
#undef DOTR_PACKED_Q4
#undef PACKED_OF
}
#endif

static void k_matmul(float *out, int64_t ldo, const void *w, int64_t ldw, int wtype, const void *x, int64_t n_in, int64_t r0,
                     int64_t ra, int64_t rb, int64_t n_tok) {
    switch (wtype) {
    case DL_TYPE_F32:
        MATMUL_PAIRS(float, float, ldw, n_in * 4, n_in, dot_f32, dot2_generic_dot_f32);
        break;
    case DL_TYPE_F16:
        MATMUL_PAIRS(uint16_t, uint16_t, ldw, n_in * 2, n_in, dot_f16, dot2_generic_dot_f16);
        break;
    case DL_TYPE_BF16:
        MATMUL_PAIRS(uint16_t, uint16_t, ldw, n_in * 2, n_in, dot_bf16, dot2_generic_dot_bf16);
        break;
#ifdef DL_HAVE_DOTR
    case DL_TYPE_Q8_0:
        MATMUL_ROWS(dotr_q8_0, ldw, n_in / QK);
        break;
    case DL_TYPE_Q4_0: /* batches of 4+ blocks per row take k_matmul_packed (dispatch.c) */
        MATMUL_ROWS(dotr_q4_0, ldw, n_in / QK);
        break;
#else
    case DL_TYPE_Q8_0:
        MATMUL_PAIRS(block_q8_0, block_q8_0, ldw, n_in / QK * 34, n_in / QK, dot_q8_0, dot2_q8_0);
        break;
    case DL_TYPE_Q4_0:
        MATMUL_PAIRS(block_q4_0, block_q8_0, ldw, n_in / QK * 34, n_in / QK, dot_q4_0, dot2_q4_0);
        break;
#endif
    }
}

/* ---- normalisation, activations, element-wise -------------------------------------------- */

/* Element i of the output depends only on element i of the inputs, and the output may be an input
 * (the model works in place). The compiler cannot know that exact aliasing is harmless and vectorises
 * such loops only behind a runtime overlap check that in-place calls fail, so they ran scalar (10x
 * slower for SwiGLU). EACH_ELEMENT tells it the iterations are independent. The scalar reference
 * variant is left as it is. */
#if defined(__clang__) && !defined(DL_SCALAR)
#define EACH_ELEMENT _Pragma("clang loop vectorize(assume_safety)")
#else
#define EACH_ELEMENT
#endif

/* The squares are float32 and summed in double, as llama.cpp does. The reference adds them in order,
 * as llama.cpp's loop; the SIMD variants keep 8 running sums (element i into sum i mod 8), which breaks
 * the chain of dependent double adds (4 cycles each: 128 rows of 4096 took 0.56 ms on one Zen 3 thread,
 * 0.8x the design's NumPy figure; 0.29 ms with 8 sums). The two orders differ by ~1e-14 relative
 * (about sqrt(n) double roundings), against float32's 6e-8 between neighbours: the rounded mean is
 * the same float unless the sum lies that close to a rounding boundary, of the order of one row in
 * ten million. */
static double sum_squares(const float *x, int64_t n) {
    double sum = 0.0;
    int64_t i = 0;
#ifndef DL_SCALAR
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)(x[i + j] * x[i + j]);
    sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
#endif
    for (; i < n; i++) sum += (double)(x[i] * x[i]);
    return sum;
}

static void k_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    const double sum = sum_squares(x, n);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    if (w) {
        EACH_ELEMENT for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
    } else {
        EACH_ELEMENT for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale;
    }
}

static void k_softmax(float *out, const float *x, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float e = expf(x[i] - m);
        out[i] = e;
        sum += (double)e;
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) out[i] *= inv;
}

/*
 * e^x for SiLU and SwiGLU, written so that the compiler vectorises it: no libm call, no branch, only
 * adds, multiplies, a float-to-int conversion and a select. With -ffp-contract=off every variant,
 * vectorised or not, computes the same bits. x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2),
 * e^r by its degree-7 Taylor polynomial in Horner form (truncation error < 1.2e-7 relative), times 2^n
 * built in the exponent field. Below -87.34 (where e^x < FLT_MIN) the result is 0; above 88.72 it is
 * +inf. Relative error below 3e-7 against exp in double (test_kernels.c checks it over the range).
 */
static inline float dl_vexpf(float x) {
    const float xc = x < -87.33654f ? -87.33654f : (x > 88.72283f ? 88.72283f : x);
    const float t = xc * 1.44269504f + 12582912.0f; /* round(x / ln2) in the low mantissa bits */
    const float nf = t - 12582912.0f;
    const float r = (xc - nf * 0.693145752f) - nf * 1.42860677e-6f;
    float p = 1.98412698e-4f; /* 1/7! */
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n for n in [-126, 128]: 2^128 is not a float, so n > 0 is applied as 2^(n-1) * 2 (exact) */
    const int32_t n = (int32_t)nf, up = n > 0;
    const float y = p * dl_bits_to_f32((uint32_t)(n - up + 127) << 23);
    const float yy = up ? y * 2.0f : y;
    return x < -87.33654f ? 0.0f : (x > 88.72283f ? INFINITY : yy);
}

static void k_silu(float *out, const float *x, int64_t n) {
    EACH_ELEMENT for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + dl_vexpf(-x[i]));
}

static void k_gelu(float *out, const float *x, int64_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + tanhf(c * v * (1.0f + 0.044715f * v * v)));
    }
}

static void k_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    EACH_ELEMENT for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + dl_vexpf(-gate[i])) * up[i];
}

static void k_add(float *out, const float *a, const float *b, int64_t n) {
    EACH_ELEMENT for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void k_mul(float *out, const float *a, const float *b, int64_t n) {
    EACH_ELEMENT for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

static void k_scale(float *out, const float *x, float s, int64_t n) {
    EACH_ELEMENT for (int64_t i = 0; i < n; i++) out[i] = x[i] * s;
}

static void k_rope(float *out, const float *x, int32_t pos, const float *freqs, int64_t n_heads, int64_t head_dim,
                   int64_t n_rot, int mode) {
    if (out != x) memcpy(out, x, (size_t)(n_heads * head_dim) * sizeof(float));
    const int64_t half = n_rot / 2;
    for (int64_t j = 0; j < half; j++) {
        const float angle = (float)pos * freqs[j];
        const float c = cosf(angle), s = sinf(angle);
        const int64_t ia = mode == DL_ROPE_NEOX ? j : 2 * j;
        const int64_t ib = mode == DL_ROPE_NEOX ? j + half : 2 * j + 1;
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = out + h * head_dim;
            const float a = v[ia], b = v[ib];
            v[ia] = a * c - b * s;
            v[ib] = a * s + b * c;
        }
    }
}

/* Keys scored per step of the attention's online softmax (a stack array: kernels allocate nothing). */
#define DL_ATTN_CHUNK 64
#define DL_ATTN_MAX_HEAD_DIM 256 /* F16 rows converted in stack buffers up to this width */

/* Eight consecutive cache rows from position p as floats: in place (F32), or converted into buf (F16,
 * head_dim <= DL_ATTN_MAX_HEAD_DIM), or copied into buf (F32, `copy`: rows that several items read
 * in turn; eight rows kv_stride apart, e.g. 16 KiB for 32 heads of 128, fall into the same L1 cache
 * sets, and each item's pass would fetch them from L2 again); *stride gets the distance between them. */
static inline const float *rows8_f32(float buf[][DL_ATTN_MAX_HEAD_DIM], const void *cache, int f16, int copy, int64_t p,
                                     int64_t kv_stride, int64_t head_dim, int64_t *stride) {
    if (f16) {
        for (int i = 0; i < 8; i++) f16_row(buf[i], (const uint16_t *)cache + (p + i) * kv_stride, head_dim);
        *stride = DL_ATTN_MAX_HEAD_DIM;
        return buf[0];
    }
    if (copy) {
        for (int i = 0; i < 8; i++) memcpy(buf[i], (const float *)cache + (p + i) * kv_stride, (size_t)head_dim * sizeof(float));
        *stride = DL_ATTN_MAX_HEAD_DIM;
        return buf[0];
    }
    *stride = kv_stride;
    return (const float *)cache + p * kv_stride;
}

/* The largest of s[0..n) (n <= DL_ATTN_CHUNK): eight running maxima, then the eight together; the same
 * value in any order (for scores that are numbers), without one chain of n dependent compares. */
static inline float chunk_max(const float *s, int64_t n) {
    float m8[8];
    for (int i = 0; i < 8; i++) m8[i] = -INFINITY;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int i = 0; i < 8; i++) m8[i] = s[j + i] > m8[i] ? s[j + i] : m8[i];
    for (; j < n; j++) m8[0] = s[j] > m8[0] ? s[j] : m8[0];
    float m = m8[0];
    for (int i = 1; i < 8; i++) m = m8[i] > m ? m8[i] : m;
    return m;
}

/* The sum of s[0..n) (n <= DL_ATTN_CHUNK) in eight running sums added pairwise at the end: the same
 * order in every variant and grouping, without one chain of n dependent adds. */
static inline float chunk_sum(const float *s, int64_t n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int i = 0; i < 8; i++) a[i] += s[j + i];
    for (; j < n; j++) a[0] += s[j];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/*
 * Attention of a group of query items that share one KV head: nt tokens x nh query heads
 * (grouped-query attention, and the tokens of a prompt; nt * nh <= DL_ATTN_MAX_GROUP). For each item
 * softmax(q . K^T * scale) . V over its own n_kv[i] positions, online over chunks of DL_ATTN_CHUNK
 * keys. Each key and value row is read (and, from an F16 cache, converted) once for all the items
 * that reach it instead of once per item: at long contexts the KV cache is read group-size times
 * less, and a prompt's tokens share their passes over the keys (with many KV heads, e.g. 32 heads of
 * 128 interleaved per position, a head's rows are 16 KiB apart and do not stay in cache from one
 * query to the next). Per item and chunk: the scores (eight keys per pass over q, dot8_f32, for the
 * item's whole eights; the rest one at a time), their maximum (the running sums are rescaled when it
 * grows), e^(s - max) for the chunk with dl_vexpf, then out += e_j * v_j in key order (eight keys per
 * pass, axpy8_f32, then one at a time). Every item takes the same steps whatever it is grouped with,
 * so the results do not depend on the grouping.
 */
static void k_attention(float *out, const float *q, int64_t q_stride, const void *k, const void *v, int kv_type,
                        const int64_t *n_kv, int64_t nt, int64_t head_dim, int64_t kv_stride, float scale, int64_t nh) {
    enum { G = DL_ATTN_MAX_GROUP };
    float m[G], l[G], s[G][DL_ATTN_CHUNK];
    const float *qp[G];
    float *op[G];
    int64_t n[G], eights[G];
    /* an F16 cache's keys and values are converted to float a row at a time (vectorised where the
     * variant has an fp16 conversion) and then take the F32 path; rows wider than the buffers take
     * the element-by-element path */
    const int f16 = kv_type == DL_TYPE_F16, rows = f16 && head_dim <= DL_ATTN_MAX_HEAD_DIM, by8 = !f16 || rows;
    float buf[8][DL_ATTN_MAX_HEAD_DIM];
    const int64_t ni = nt * nh;
    const int copy = !f16 && ni > 1 && head_dim <= DL_ATTN_MAX_HEAD_DIM;
    int64_t max_kv = 0;
    for (int64_t i = 0; i < nt; i++) {
        max_kv = n_kv[i] > max_kv ? n_kv[i] : max_kv;
        for (int64_t h = 0; h < nh; h++) {
            const int64_t it = i * nh + h;
            qp[it] = q + i * q_stride + h * head_dim;
            op[it] = out + i * q_stride + h * head_dim;
            m[it] = -INFINITY, l[it] = 0.0f;
            for (int64_t d = 0; d < head_dim; d++) op[it][d] = 0.0f;
        }
    }
    for (int64_t p0 = 0; p0 < max_kv; p0 += DL_ATTN_CHUNK) {
        int64_t nmax = 0, first1 = DL_ATTN_CHUNK; /* the longest item's keys; the first key taken one at a time */
        for (int64_t it = 0; it < ni; it++) {
            const int64_t left = n_kv[it / nh] - p0; /* item it is query it / nh */
            n[it] = left < 0 ? 0 : left > DL_ATTN_CHUNK ? DL_ATTN_CHUNK : left;
            eights[it] = by8 ? n[it] / 8 * 8 : 0;
            nmax = n[it] > nmax ? n[it] : nmax;
            if (eights[it] < n[it] && eights[it] < first1) first1 = eights[it];
        }
        /* eight keys at a time: one pass over each item's q scores them all */
        for (int64_t j0 = 0; by8 && j0 + 8 <= nmax; j0 += 8) {
            int64_t ks;
            const float *kr = rows8_f32(buf, k, f16, copy, p0 + j0, kv_stride, head_dim, &ks);
            for (int64_t it = 0; it < ni; it++) {
                if (j0 + 8 > eights[it]) continue;
                float *sh = s[it] + j0;
                dot8_f32(sh, qp[it], kr, ks, head_dim);
                for (int i = 0; i < 8; i++) sh[i] *= scale;
            }
        }
        /* each item's last keys (and rows too wide for the buffers) one at a time */
        for (int64_t j = first1; j < nmax; j++) {
            const float *kr = NULL;
            const uint16_t *kp = NULL;
            if (rows) {
                f16_row(buf[0], (const uint16_t *)k + (p0 + j) * kv_stride, head_dim);
                kr = buf[0];
            } else if (f16) {
                kp = (const uint16_t *)k + (p0 + j) * kv_stride;
            } else {
                kr = (const float *)k + (p0 + j) * kv_stride;
            }
            for (int64_t it = 0; it < ni; it++) {
                if (j < eights[it] || j >= n[it]) continue;
                float x;
                if (kr) {
                    x = dot_f32(qp[it], kr, head_dim);
                } else {
                    x = 0.0f;
                    for (int64_t d = 0; d < head_dim; d++) x += qp[it][d] * dl_h2f(kp[d]);
                }
                s[it][j] = x * scale;
            }
        }
        for (int64_t it = 0; it < ni; it++) {
            if (n[it] == 0) continue;
            const float cm = chunk_max(s[it], n[it]);
            if (cm > m[it]) {
                const float c = dl_vexpf(m[it] - cm); /* 0 on the first chunk (m = -inf) */
                for (int64_t d = 0; d < head_dim; d++) op[it][d] *= c;
                l[it] *= c;
                m[it] = cm;
            }
            const float mi = m[it];
            float *si = s[it];
            EACH_ELEMENT for (int64_t j = 0; j < n[it]; j++) si[j] = dl_vexpf(si[j] - mi);
            l[it] += chunk_sum(si, n[it]);
        }
        /* eight keys per pass over each item's out, added in key order */
        for (int64_t j0 = 0; by8 && j0 + 8 <= nmax; j0 += 8) {
            int64_t vs;
            const float *vr = rows8_f32(buf, v, f16, copy, p0 + j0, kv_stride, head_dim, &vs);
            for (int64_t it = 0; it < ni; it++)
                if (j0 + 8 <= eights[it]) axpy8_f32(op[it], s[it] + j0, vr, vs, head_dim);
        }
        /* then each item's last keys one at a time, in key order */
        for (int64_t j = first1; j < nmax; j++) {
            for (int64_t it = 0; it < ni; it++) {
                if (j < eights[it] || j >= n[it]) continue;
                const float e = s[it][j];
                float *o = op[it];
                if (f16) {
                    const uint16_t *vp = (const uint16_t *)v + (p0 + j) * kv_stride;
                    for (int64_t d = 0; d < head_dim; d++) o[d] += e * dl_h2f(vp[d]);
                } else {
                    const float *vp = (const float *)v + (p0 + j) * kv_stride;
                    for (int64_t d = 0; d < head_dim; d++) o[d] += e * vp[d];
                }
            }
        }
    }
    for (int64_t it = 0; it < ni; it++) {
        const float inv = l[it] > 0.0f ? 1.0f / l[it] : 0.0f;
        for (int64_t d = 0; d < head_dim; d++) op[it][d] *= inv;
    }
}

/* ---- conversions --------------------------------------------------------------------------- */

#ifndef DL_HAVE_QUANTIZE_Q8_0
static void k_quantize_q8_0(void *out, const float *x, int64_t n) {
    block_q8_0 *y = (block_q8_0 *)out;
    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) {
            const float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[b].d = dl_f2h(amax / 127.0f);
        for (int j = 0; j < QK; j++) y[b].q[j] = (int8_t)nearbyintf(xb[j] * id);
    }
}
#endif

static void k_f16_to_f32(float *out, const uint16_t *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = dl_h2f(x[i]);
}

static void k_f32_to_f16(uint16_t *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = dl_f2h(x[i]);
}

static void k_f32_to_bf16(uint16_t *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = dl_f2bf(x[i]);
}

static void k_dequantize(float *out, const void *x, int type, int64_t n) {
    switch (type) {
    case DL_TYPE_F32:
        memcpy(out, x, (size_t)n * sizeof(float));
        break;
    case DL_TYPE_F16:
        k_f16_to_f32(out, (const uint16_t *)x, n);
        break;
    case DL_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) out[i] = dl_bf2f(((const uint16_t *)x)[i]);
        break;
    case DL_TYPE_Q8_0:
        for (int64_t b = 0; b < n / QK; b++) {
            const block_q8_0 *blk = (const block_q8_0 *)x + b;
            const float d = dl_h2f(blk->d);
            for (int j = 0; j < QK; j++) out[b * QK + j] = d * (float)blk->q[j];
        }
        break;
    case DL_TYPE_Q4_0:
        for (int64_t b = 0; b < n / QK; b++) {
            const block_q4_0 *blk = (const block_q4_0 *)x + b;
            const float d = dl_h2f(blk->d);
            for (int j = 0; j < QK / 2; j++) {
                out[b * QK + j] = d * (float)((blk->qs[j] & 15) - 8);
                out[b * QK + j + QK / 2] = d * (float)((blk->qs[j] >> 4) - 8);
            }
        }
        break;
    }
}

#ifndef DL_HAVE_READ_SUM
static uint64_t k_read_sum(const void *buf, int64_t bytes) {
    const uint64_t *p = (const uint64_t *)buf;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = 0; i < bytes / 8; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    return s0 + s1 + s2 + s3;
}
#endif

#ifdef DL_HAVE_PACKED_Q4_0
static int64_t k_pack_bytes(int64_t nb) { return pack_token_bytes(nb); }
#endif

const dl_kernels DL_CAT(dl_kernels_, DL_VARIANT) = {
    .name = DL_STR(DL_VARIANT),
    .matmul = k_matmul,
    .rmsnorm = k_rmsnorm,
    .softmax = k_softmax,
    .silu = k_silu,
    .gelu = k_gelu,
    .swiglu = k_swiglu,
    .add = k_add,
    .mul = k_mul,
    .scale = k_scale,
    .rope = k_rope,
    .attention = k_attention,
    .quantize_q8_0 = k_quantize_q8_0,
    .dequantize = k_dequantize,
    .f32_to_f16 = k_f32_to_f16,
    .f16_to_f32 = k_f16_to_f32,
    .f32_to_bf16 = k_f32_to_bf16,
    .read_sum = k_read_sum,
#ifdef DL_HAVE_PACKED_Q4_0
    .pack_q8_0 = k_pack_q8_0,
    .pack_bytes = k_pack_bytes,
    .pack_min_tokens = DL_PACK_MIN_TOKENS,
#ifdef DL_PACK_Q8_0_MIN_TOKENS
    .pack_q8_0_min_tokens = DL_PACK_Q8_0_MIN_TOKENS,
#endif
#ifdef DL_PACK_Q8_0_MAX_BLOCKS
    .pack_q8_0_max_blocks = DL_PACK_Q8_0_MAX_BLOCKS,
#endif
    .matmul_packed = k_matmul_packed,
#endif
};
