/*
 * test_kernels.c: C-level tests (`zig build test`). Through the public API only, every variant this
 * CPU supports is checked against the scalar variant on odd sizes, with 1 to 4 threads, and the
 * maximum difference of each kernel is printed. Exits 1 on any mismatch.
 */
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

static int failures = 0, checks = 0;
static uint32_t rng = 12345;

static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return (float)rng / 2147483648.0f - 1.0f;
}

static void fill(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = frand() * scale;
}

static float max_abs(const float *a, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fabsf(a[i]) > m ? fabsf(a[i]) : m;
    return m;
}

/* |got - want| <= rel * max(1, max|want|), reported with the max difference */
static void expect_close(const char *what, const char *variant, const float *got, const float *want, int64_t n, float rel) {
    float d = 0;
    for (int64_t i = 0; i < n; i++) {
        const float e = fabsf(got[i] - want[i]);
        if (!(e <= d)) d = e != e ? INFINITY : e;
    }
    const float tol = rel * fmaxf(1.0f, max_abs(want, n));
    checks++;
    if (!(d <= tol)) {
        printf("FAIL %-28s %-8s maxdiff %.3g > %.3g\n", what, variant, d, tol);
        failures++;
    }
}

static void expect_ok(int status, const char *what) {
    checks++;
    if (status != DL_OK) {
        printf("FAIL %s returned %d\n", what, status);
        failures++;
    }
}

/* Weights of `type` for rows x cols from floats: conversions and Q8_0 through the scalar library,
 * Q4_0 blocks built directly. */
static void *make_weights(int type, int64_t rows, int64_t cols, dl_ctx *ref) {
    const int64_t n = rows * cols;
    float *f = malloc((size_t)n * sizeof(float));
    fill(f, n, 0.05f);
    void *w = malloc((size_t)(n / dl_type_block_values(type) * dl_type_block_bytes(type)));
    switch (type) {
    case DL_TYPE_F32: memcpy(w, f, (size_t)n * 4); break;
    case DL_TYPE_F16: dl_f32_to_f16(w, f, n, ref); break;
    case DL_TYPE_BF16: dl_f32_to_bf16(w, f, n, ref); break;
    case DL_TYPE_Q8_0: dl_quantize_q8_0(w, f, n, ref); break;
    case DL_TYPE_Q4_0:
        for (int64_t b = 0; b < n / QK; b++) {
            block_q4_0 *blk = (block_q4_0 *)w + b;
            blk->d = dl_f2h(0.01f + 0.001f * (float)(b % 7));
            for (int j = 0; j < QK / 2; j++) blk->qs[j] = (uint8_t)(rng = rng * 1103515245u + 12345u) ;
        }
        break;
    }
    free(f);
    return w;
}

static void *make_activation(int wtype, const float *x, int64_t n, dl_ctx *ref) {
    const int at = dl_type_activation(wtype);
    void *a = malloc((size_t)(n / dl_type_block_values(at) * dl_type_block_bytes(at)));
    switch (at) {
    case DL_TYPE_F32: memcpy(a, x, (size_t)n * 4); break;
    case DL_TYPE_F16: dl_f32_to_f16(a, x, n, ref); break;
    case DL_TYPE_BF16: dl_f32_to_bf16(a, x, n, ref); break;
    case DL_TYPE_Q8_0: dl_quantize_q8_0(a, x, n, ref); break;
    }
    return a;
}

static void test_matmul(dl_ctx *ref, dl_ctx *ctx, const char *vn) {
    const int types[] = {DL_TYPE_F32, DL_TYPE_F16, DL_TYPE_BF16, DL_TYPE_Q8_0, DL_TYPE_Q4_0};
    const int64_t rows_list[] = {1, 31, 32, 33, 4095, 4096};
    for (int ti = 0; ti < 5; ti++) {
        const int type = types[ti];
        const int64_t bv = dl_type_block_values(type);
        /* quantized rows of 1, 31 and 33 blocks: kernels that take blocks in groups have a tail */
        const int64_t nins[] = {bv == 1 ? 33 : 32, bv == 1 ? 31 : 32 * 31, bv == 1 ? 1 : 32 * 33, 4096};
        for (int ni = 0; ni < 4; ni++)
            for (int ri = 0; ri < 6; ri++) {
                const int64_t n_in = nins[ni], rows = rows_list[ri], n_tok = rows > 1000 ? 1 : 3;
                if (rows > 1000 && n_in != 4096) continue;
                const int64_t r0 = rows > 4 ? 1 : 0, r1 = rows > 4 ? rows - 2 : rows, ldo = r1 - r0 + 3;
                void *w = make_weights(type, rows, n_in, ref);
                float *xf = malloc((size_t)(n_tok * n_in) * 4);
                fill(xf, n_tok * n_in, 1.0f);
                void *x = make_activation(type, xf, n_tok * n_in, ref);
                float *want = calloc((size_t)(n_tok * ldo), 4), *got = calloc((size_t)(n_tok * ldo), 4);
                expect_ok(dl_matmul(want, ldo, w, 0, type, x, n_in, r0, r1, n_tok, ref), "matmul (scalar)");
                expect_ok(dl_matmul(got, ldo, w, 0, type, x, n_in, r0, r1, n_tok, ctx), "matmul");
                char what[64];
                snprintf(what, sizeof what, "matmul type %d %lldx%lld", type, (long long)rows, (long long)n_in);
                expect_close(what, vn, got, want, n_tok * ldo, 1e-5f);
                free(w), free(xf), free(x), free(want), free(got);
            }
    }
}

/* A column slice of a wider matrix (ldw > row bytes, w at the slice's first column) gives the bits of
 * the same columns copied into rows of their own, and matches the scalar reference. */
static void test_slice(dl_ctx *ref, dl_ctx *ctx, const char *vn) {
    const int types[] = {DL_TYPE_F32, DL_TYPE_F16, DL_TYPE_BF16, DL_TYPE_Q8_0, DL_TYPE_Q4_0};
    const int64_t full = 4096, rows = 37, n_tok = 3, slices[][2] = {{1024, 2048}, {32 * 7, 32 * 33}, {32, 32}};
    for (int ti = 0; ti < 5; ti++)
        for (int si = 0; si < 3; si++) {
            const int type = types[ti];
            const int64_t c0 = slices[si][0], width = slices[si][1], r0 = 2, r1 = 35, ldo = r1 - r0 + 1;
            const int64_t bv = dl_type_block_values(type), bb = dl_type_block_bytes(type);
            const int64_t row_bytes = full / bv * bb, off = c0 / bv * bb, w_bytes = width / bv * bb;
            uint8_t *w = make_weights(type, rows, full, ref), *packed = malloc((size_t)(rows * w_bytes));
            for (int64_t r = 0; r < rows; r++) memcpy(packed + r * w_bytes, w + r * row_bytes + off, (size_t)w_bytes);
            float *xf = malloc((size_t)(n_tok * width) * 4);
            fill(xf, n_tok * width, 1.0f);
            void *x = make_activation(type, xf, n_tok * width, ref);
            float *want = calloc((size_t)(n_tok * ldo), 4), *a = calloc((size_t)(n_tok * ldo), 4), *b = calloc((size_t)(n_tok * ldo), 4);
            expect_ok(dl_matmul(want, ldo, w + off, row_bytes, type, x, width, r0, r1, n_tok, ref), "matmul slice (scalar)");
            expect_ok(dl_matmul(a, ldo, packed, 0, type, x, width, r0, r1, n_tok, ctx), "matmul packed");
            expect_ok(dl_matmul(b, ldo, w + off, row_bytes, type, x, width, r0, r1, n_tok, ctx), "matmul slice");
            char what[64];
            snprintf(what, sizeof what, "matmul slice type %d [%lld, +%lld)", type, (long long)c0, (long long)width);
            expect_close(what, vn, b, want, n_tok * ldo, 1e-5f);
            checks++;
            if (memcmp(a, b, (size_t)(n_tok * ldo) * 4) != 0) {
                printf("FAIL %s %-8s differs from the same columns packed\n", what, vn);
                failures++;
            }
            free(w), free(packed), free(xf), free(x), free(want), free(a), free(b);
        }
}

/* Q8_0 / Q4_0 scales of every fp16 kind (zero, -0, subnormals, the largest subnormal, the smallest and
 * largest normal, negative), the same in every block of a weight row (rows 0..15) or of a token (tokens
 * 0..15), the other side's scales normal: kernels that convert scales in vectors must give the
 * reference's products. Each output is compared on its own, so that a tiny one counts as much as a
 * large one. */
static void test_scales(dl_ctx *ref, dl_ctx *ctx, const char *vn) {
    static const uint16_t kinds[] = {0x0000, 0x8000, 0x0001, 0x0155, 0x03ff, 0x8203, 0x0400, 0x1c00,
                                     0x2e66, 0xb800, 0x3c00, 0x7bff, 0xc4d2, 0x2001, 0x0010, 0x9c00};
    const uint16_t normal = 0x2419; /* 0.0157 */
    const int types[] = {DL_TYPE_Q8_0, DL_TYPE_Q4_0};
    const int64_t n_in = 32 * 37, rows = 17, n_tok = 17, nb = n_in / QK;
    for (int ti = 0; ti < 2; ti++) {
        const int type = types[ti];
        const int64_t bb = dl_type_block_bytes(type);
        uint8_t *w = make_weights(type, rows, n_in, ref);
        for (int64_t b = 0; b < rows * nb; b++) memcpy(w + b * bb, b / nb < 16 ? &kinds[b / nb] : &normal, 2);
        float *xf = malloc((size_t)(n_tok * n_in) * 4);
        fill(xf, n_tok * n_in, 1.0f);
        uint8_t *x = make_activation(type, xf, n_tok * n_in, ref);
        for (int64_t b = 0; b < n_tok * nb; b++) memcpy(x + b * 34, b / nb < 16 ? &kinds[b / nb] : &normal, 2);
        float *want = calloc((size_t)(n_tok * rows), 4), *got = calloc((size_t)(n_tok * rows), 4);
        expect_ok(dl_matmul(want, rows, w, 0, type, x, n_in, 0, rows, n_tok, ref), "matmul scales (scalar)");
        expect_ok(dl_matmul(got, rows, w, 0, type, x, n_in, 0, rows, n_tok, ctx), "matmul scales");
        /* the sums run in different orders, so the tolerance scales with the size of the terms, sum |w_i x_i|
         * (the result itself can be far smaller when they cancel) */
        float *wr = malloc((size_t)n_in * 4), *xr = malloc((size_t)n_in * 4);
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = 0; r < rows; r++)
                if (t == 16 || r == 16) {
                    char what[64];
                    snprintf(what, sizeof what, "matmul type %d scales %04x x %04x", type, r < 16 ? kinds[r] : normal,
                             t < 16 ? kinds[t] : normal);
                    expect_ok(dl_dequantize(wr, w + r * nb * bb, type, n_in, ref), "dequantize weights");
                    expect_ok(dl_dequantize(xr, x + t * nb * 34, DL_TYPE_Q8_0, n_in, ref), "dequantize activations");
                    double mag = 0;
                    for (int64_t i = 0; i < n_in; i++) mag += fabs((double)wr[i] * (double)xr[i]);
                    const float e = fabsf(got[t * rows + r] - want[t * rows + r]), tol = 1e-5f * (float)fmax(1.0, mag);
                    checks++;
                    if (!(e <= tol)) {
                        printf("FAIL %-28s %-8s diff %.3g > %.3g (1e-5 of sum |w x| = %.3g)\n", what, vn, e, tol, mag);
                        failures++;
                    }
                }
        free(wr), free(xr);
        free(w), free(xf), free(x), free(want), free(got);
    }
}

/* A batch gives the same bits as its tokens one at a time, whatever path the batch takes (tiles,
 * packed activations, several packed pieces when one token's packing is large). */
static void test_batch(dl_ctx *ref, dl_ctx *ctx, const char *vn) {
    const int types[] = {DL_TYPE_F32, DL_TYPE_F16, DL_TYPE_Q8_0, DL_TYPE_Q4_0};
    /* Q4_0 on AVX2: 768 and 4096 take the blocked path from 4 tokens on, 32768 is its largest row
     * (128 groups of 8 blocks), 65536 and rows of whole blocks but not whole groups take the row tiles;
     * Q4_0 and Q8_0 on NEON: 32768 is the blocked path's largest row (256 groups of 4), 1184 has a tail */
    const int64_t nins[] = {32 * 5, 32 * 37, 32 * 24, 4096, 32768, 65536}, toks[] = {2, 4, 7, 8, 9, 17, 20};
    for (int ti = 0; ti < 4; ti++)
        for (int ni = 0; ni < 6; ni++) {
            const int type = types[ti];
            const int64_t n_in = nins[ni], rows = 7, r0 = 1, r1 = 6, ldo = 6;
            if (type != DL_TYPE_Q4_0 && type != DL_TYPE_Q8_0 && n_in >= 16384) continue;
            void *w = make_weights(type, rows, n_in, ref);
            const int at = dl_type_activation(type);
            const int64_t xrow = n_in / dl_type_block_values(at) * dl_type_block_bytes(at);
            for (int ki = 0; ki < 7; ki++) {
                const int64_t n_tok = toks[ki];
                float *xf = malloc((size_t)(n_tok * n_in) * 4);
                fill(xf, n_tok * n_in, 1.0f);
                uint8_t *x = make_activation(type, xf, n_tok * n_in, ref);
                float *a = calloc((size_t)(n_tok * ldo), 4), *b = calloc((size_t)(n_tok * ldo), 4);
                expect_ok(dl_matmul(a, ldo, w, 0, type, x, n_in, r0, r1, n_tok, ctx), "matmul batch");
                for (int64_t t = 0; t < n_tok; t++)
                    expect_ok(dl_matmul(b + t * ldo, ldo, w, 0, type, x + t * xrow, n_in, r0, r1, 1, ctx), "matmul token");
                checks++;
                if (memcmp(a, b, (size_t)(n_tok * ldo) * 4) != 0) {
                    printf("FAIL matmul batch type %d n_in %lld n_tok %lld %-8s differs from token by token\n", type,
                           (long long)n_in, (long long)n_tok, vn);
                    failures++;
                }
                free(xf), free(x), free(a), free(b);
            }
            free(w);
        }
}

static void test_elementwise(dl_ctx *ref, dl_ctx *ctx, const char *vn) {
    const int64_t sizes[] = {1, 31, 32, 33, 4095, 4096};
    for (int si = 0; si < 6; si++) {
        const int64_t n = sizes[si], rows = 3, m = n * rows;
        float *x = malloc((size_t)m * 4), *y = malloc((size_t)m * 4), *g = malloc((size_t)n * 4);
        float *a = malloc((size_t)m * 4), *b = malloc((size_t)m * 4);
        fill(x, m, 1.0f), fill(y, m, 4.0f), fill(g, n, 1.0f);
#define BOTH(CALL_A, CALL_B, NAME, REL)                                                                   \
    expect_ok(CALL_A, NAME);                                                                              \
    expect_ok(CALL_B, NAME);                                                                              \
    expect_close(NAME, vn, b, a, m, REL)
        BOTH(dl_rmsnorm(a, x, g, n, rows, 1e-5f, ref), dl_rmsnorm(b, x, g, n, rows, 1e-5f, ctx), "rmsnorm", 1e-6f);
        BOTH(dl_softmax(a, y, n, rows, ref), dl_softmax(b, y, n, rows, ctx), "softmax", 1e-6f);
        BOTH(dl_silu(a, y, m, ref), dl_silu(b, y, m, ctx), "silu", 0.0f); /* same bits in every variant */
        BOTH(dl_gelu(a, y, m, ref), dl_gelu(b, y, m, ctx), "gelu", 1e-6f);
        BOTH(dl_swiglu(a, y, x, m, ref), dl_swiglu(b, y, x, m, ctx), "swiglu", 0.0f);
        BOTH(dl_add(a, x, y, m, ref), dl_add(b, x, y, m, ctx), "add", 0.0f);
        BOTH(dl_mul(a, x, y, m, ref), dl_mul(b, x, y, m, ctx), "mul", 0.0f);
        BOTH(dl_scale(a, x, 0.3f, m, ref), dl_scale(b, x, 0.3f, m, ctx), "scale", 0.0f);
        /* in place (out == an input), as the model calls them: the same bits as out of place */
#define IN_PLACE(NAME, CALL_OUT, CALL_IN)                                                                 \
    do {                                                                                                  \
        memcpy(b, y, (size_t)m * 4);                                                                      \
        expect_ok(CALL_OUT, NAME);                                                                        \
        expect_ok(CALL_IN, NAME);                                                                         \
        checks++;                                                                                         \
        if (memcmp(a, b, (size_t)m * 4) != 0) {                                                           \
            printf("FAIL %s in place %-8s differs from out of place (n=%lld)\n", NAME, vn, (long long)m); \
            failures++;                                                                                   \
        }                                                                                                 \
    } while (0)
        IN_PLACE("silu", dl_silu(a, y, m, ctx), dl_silu(b, b, m, ctx));
        IN_PLACE("swiglu", dl_swiglu(a, y, x, m, ctx), dl_swiglu(b, b, x, m, ctx));
        IN_PLACE("add", dl_add(a, y, x, m, ctx), dl_add(b, b, x, m, ctx));
        IN_PLACE("mul", dl_mul(a, y, x, m, ctx), dl_mul(b, b, x, m, ctx));
        IN_PLACE("scale", dl_scale(a, y, 0.3f, m, ctx), dl_scale(b, b, 0.3f, m, ctx));
        IN_PLACE("rmsnorm", dl_rmsnorm(a, y, g, n, rows, 1e-5f, ctx), dl_rmsnorm(b, b, g, n, rows, 1e-5f, ctx));
        if (n % QK == 0) {
            uint8_t *qa = malloc((size_t)(m / QK * 34)), *qb = malloc((size_t)(m / QK * 34));
            expect_ok(dl_quantize_q8_0(qa, y, m, ref), "quantize");
            expect_ok(dl_quantize_q8_0(qb, y, m, ctx), "quantize");
            if (memcmp(qa, qb, (size_t)(m / QK * 34)) != 0) {
                printf("FAIL quantize_q8_0 %-8s not bit-identical (n=%lld)\n", vn, (long long)m);
                failures++;
            }
            free(qa), free(qb);
        }
        free(x), free(y), free(g), free(a), free(b);
    }
}

/* SiLU's exp is dairllm's own polynomial (kernels.c): every variant against exact math in double, over
 * the whole float range that matters, both tails and the points where the exponent changes. */
static void test_silu_accuracy(dl_ctx *ctx, const char *vn) {
    enum { N = 4099 };
    static float x[N], y[N];
    for (int i = 0; i < N - 8; i++) x[i] = -100.0f + 200.0f * (float)i / (float)(N - 9);
    const float edge[8] = {-87.34f, -87.33f, -88.73f, 88.37f, 88.72f, 88.73f, 1e-30f, -0.0f};
    for (int i = 0; i < 8; i++) x[N - 8 + i] = edge[i];
    expect_ok(dl_silu(y, x, N, ctx), "silu");
    double worst = 0;
    for (int i = 0; i < N; i++) {
        const double want = (double)x[i] / (1.0 + exp(-(double)x[i]));
        const double err = fabs((double)y[i] - want);
        /* relative error, or absolute where the result is below the normal floats (the tail flushed to 0) */
        const double e = fabs(want) > 1e-30 ? err / fabs(want) : err;
        if (!(e <= worst)) worst = e != e ? INFINITY : e;
    }
    checks++;
    if (!(worst <= 4e-7)) {
        printf("FAIL silu accuracy %-8s worst relative error %.3g > 4e-7\n", vn, worst);
        failures++;
    }
}

static void test_rope_attention(dl_ctx *ref, dl_ctx *ctx, const char *vn) {
    const int64_t n_tok = 4, heads = 8, kv_heads = 2, hd = 64, n_kv = 33, stride = kv_heads * hd;
    const int32_t pos[4] = {0, 5, 17, 32};
    float freqs[32];
    for (int j = 0; j < 32; j++) freqs[j] = powf(10000.0f, -2.0f * (float)j / 64.0f);
    const int64_t m = n_tok * heads * hd;
    float *q = malloc((size_t)m * 4), *a = malloc((size_t)m * 4), *b = malloc((size_t)m * 4);
    float *k = malloc((size_t)(n_kv * stride) * 4), *v = malloc((size_t)(n_kv * stride) * 4);
    fill(q, m, 1.0f), fill(k, n_kv * stride, 1.0f), fill(v, n_kv * stride, 1.0f);
    for (int mode = 0; mode <= 2; mode += 2) {
        expect_ok(dl_rope(a, q, pos, freqs, n_tok, heads, hd, hd, mode, ref), "rope");
        expect_ok(dl_rope(b, q, pos, freqs, n_tok, heads, hd, hd, mode, ctx), "rope");
        expect_close("rope", vn, b, a, m, 1e-6f);
    }
    expect_ok(dl_attention(a, q, k, v, DL_TYPE_F32, pos, n_tok, heads, kv_heads, hd, stride, 0.125f, ref), "attention");
    expect_ok(dl_attention(b, q, k, v, DL_TYPE_F32, pos, n_tok, heads, kv_heads, hd, stride, 0.125f, ctx), "attention");
    expect_close("attention", vn, b, a, m, 1e-5f);
    free(q), free(a), free(b), free(k), free(v);
}

/* Grouped-query attention takes the query heads of a KV head, and consecutive queries, in one pass over
 * its keys and values, or part of them when there are few items per thread: the bits must not depend
 * on the grouping (the thread count; every query alone), for F32 and F16 caches, group sizes 8, 7, 16
 * and 32 (split), 1, 3 and 20 queries with different context lengths. */
static void test_attention_groups(int vi) {
    const int64_t shapes[][3] = {{32, 4, 64}, {28, 4, 32}, {16, 1, 64}, {32, 1, 16}, {6, 6, 48}};
    for (int si = 0; si < 5; si++) {
        const int64_t heads = shapes[si][0], kv_heads = shapes[si][1], hd = shapes[si][2], n_kv = 77, stride = kv_heads * hd;
        for (int kt = 0; kt < 2; kt++) {
            const int kv_type = kt ? DL_TYPE_F16 : DL_TYPE_F32, elt = kt ? 2 : 4;
            for (int64_t n_q = 1; n_q <= 20; n_q = n_q == 1 ? 3 : n_q == 3 ? 20 : 21) {
                int32_t pos[20] = {76, 40, 3};
                if (n_q == 20)
                    for (int i = 0; i < 20; i++) pos[i] = 76 - 3 * i;
                const int64_t m = n_q * heads * hd;
                float *q = malloc((size_t)m * 4), *kf = malloc((size_t)(n_kv * stride) * 4), *vf = malloc((size_t)(n_kv * stride) * 4);
                void *k = malloc((size_t)(n_kv * stride) * (size_t)elt), *v = malloc((size_t)(n_kv * stride) * (size_t)elt);
                fill(q, m, 1.0f), fill(kf, n_kv * stride, 1.0f), fill(vf, n_kv * stride, 1.0f);
                if (kt) {
                    dl_ctx *c1 = dl_ctx_create(1, vi);
                    expect_ok(dl_f32_to_f16((uint16_t *)k, kf, n_kv * stride, c1), "f32_to_f16");
                    expect_ok(dl_f32_to_f16((uint16_t *)v, vf, n_kv * stride, c1), "f32_to_f16");
                    dl_ctx_destroy(c1);
                } else {
                    memcpy(k, kf, (size_t)(n_kv * stride) * 4), memcpy(v, vf, (size_t)(n_kv * stride) * 4);
                }
                float *want = malloc((size_t)m * 4), *got = malloc((size_t)m * 4);
                for (int nth = 1; nth <= 4; nth++) {
                    dl_ctx *ctx = dl_ctx_create(nth, vi);
                    expect_ok(dl_attention(nth == 1 ? want : got, q, k, v, kv_type, pos, n_q, heads, kv_heads, hd, stride, 0.125f, ctx), "attention");
                    dl_ctx_destroy(ctx);
                    if (nth == 1) continue;
                    checks++;
                    if (memcmp(want, got, (size_t)m * 4) != 0) {
                        printf("FAIL attention %-8s %lld heads / %lld KV heads x %lld, %s, %lld queries: %d threads differ from 1\n", dl_variant_name(vi),
                               (long long)heads, (long long)kv_heads, (long long)hd, kt ? "F16" : "F32", (long long)n_q, nth);
                        failures++;
                    }
                }
                /* each query alone gives the bits it gets in the batch */
                dl_ctx *c2 = dl_ctx_create(2, vi);
                for (int64_t i = 0; i < n_q; i++) {
                    expect_ok(dl_attention(got, q + i * heads * hd, k, v, kv_type, pos + i, 1, heads, kv_heads, hd, stride, 0.125f, c2), "attention");
                    checks++;
                    if (memcmp(want + i * heads * hd, got, (size_t)(heads * hd) * 4) != 0) {
                        printf("FAIL attention %-8s %lld heads / %lld KV heads x %lld, %s: query %lld of %lld alone differs from the batch\n",
                               dl_variant_name(vi), (long long)heads, (long long)kv_heads, (long long)hd, kt ? "F16" : "F32", (long long)i, (long long)n_q);
                        failures++;
                    }
                }
                dl_ctx_destroy(c2);
                free(q), free(kf), free(vf), free(k), free(v), free(want), free(got);
            }
        }
    }
}

int main(void) {
    printf("CPU features: %s\n", dl_cpu_features());
    dl_ctx *ref = dl_ctx_create(1, 0);
    if (!ref) return 1;
    for (int vi = 0; vi < dl_variant_count(); vi++) {
        if (!dl_variant_supported(vi)) {
            printf("skip %s (not supported by this CPU)\n", dl_variant_name(vi));
            continue;
        }
        test_attention_groups(vi);
        for (int nth = 1; nth <= 4; nth++) {
            dl_ctx *ctx = dl_ctx_create(nth, vi);
            const int before = failures;
            test_matmul(ref, ctx, dl_variant_name(vi));
            test_slice(ref, ctx, dl_variant_name(vi));
            test_scales(ref, ctx, dl_variant_name(vi));
            test_batch(ref, ctx, dl_variant_name(vi));
            test_elementwise(ref, ctx, dl_variant_name(vi));
            test_silu_accuracy(ctx, dl_variant_name(vi));
            test_rope_attention(ref, ctx, dl_variant_name(vi));
            printf("%-8s %d thread(s): %s\n", dl_variant_name(vi), nth, failures == before ? "ok" : "FAILED");
            dl_ctx_destroy(ctx);
        }
    }
    /* argument checks return codes, never crash */
    float out[4];
    if (dl_matmul(out, 4, out, 0, DL_TYPE_Q4_0, out, 33, 0, 1, 1, ref) != DL_E_SIZE) failures++;
    if (dl_matmul(out, 4, out, 0, 3, out, 32, 0, 1, 1, ref) != DL_E_TYPE) failures++;
    if (dl_matmul(out, 4, NULL, 0, DL_TYPE_F32, out, 4, 0, 1, 1, ref) != DL_E_NULL) failures++;
    if (dl_ctx_create(1, 99) != NULL) failures++;
    dl_ctx_destroy(ref);
    checks += 4;
    printf("C kernel checks: %d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
