/*
 * dairllm.h: the only exported API of libdairllm.
 *
 * Conventions
 *  - Every kernel takes its output first, then input pointers, then sizes, then the context last.
 *  - Kernels allocate nothing and keep no state; the context owns the thread pool and the chosen
 *    SIMD variant. Every entry point checks its arguments and returns DL_OK (0) or a negative
 *    DL_E_* code; it never aborts.
 *  - Type ids are ggml's (GGUF's) type ids: F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30.
 *  - A matrix of n_out rows and n_in columns is stored row-major as in GGUF (ggml dims [n_in, n_out]):
 *    row r is n_in values (or n_in/32 blocks) at byte offset r * row_bytes(type, n_in).
 *
 * Blocks (GGUF layout, little-endian)
 *  - Q8_0: 34 bytes per 32 values: fp16 d, int8 q[32]; value = d * q.
 *  - Q4_0: 18 bytes per 32 values: fp16 d, uint8 qs[16]; value j = d * ((qs[j] & 15) - 8),
 *          value j + 16 = d * ((qs[j] >> 4) - 8).
 */
#ifndef DAIRLLM_H
#define DAIRLLM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DL_ABI_VERSION 3

#define DL_OK 0
#define DL_E_NULL (-1)     /* a required pointer is NULL */
#define DL_E_SIZE (-2)     /* a size is negative, zero where it must not be, or not a multiple of the block */
#define DL_E_RANGE (-3)    /* a row range [r0, r1) is empty or reversed, or ldo < r1 - r0 */
#define DL_E_TYPE (-4)     /* a type id that this kernel does not support */
#define DL_E_ARG (-5)      /* another argument is out of its domain (mode, head counts, ...) */

#define DL_TYPE_F32 0
#define DL_TYPE_F16 1
#define DL_TYPE_Q4_0 2
#define DL_TYPE_Q8_0 8
#define DL_TYPE_BF16 30

#define DL_ROPE_NORM 0 /* rotates adjacent pairs (x[2j], x[2j+1]): llama */
#define DL_ROPE_NEOX 2 /* rotates (x[j], x[j + n_rot/2]): qwen2, gpt-neox */

typedef struct dl_ctx dl_ctx;

/* ---- library, CPU and variants ---------------------------------------------------------- */
int dl_abi_version(void);
/* Variants compiled into this library, index 0 is always "scalar" (the reference). */
int dl_variant_count(void);
const char *dl_variant_name(int variant);
/* 1 when this CPU can run the variant. */
int dl_variant_supported(int variant);
/* The variant picked once from the CPU's features, or the one named by the environment variable
 * DAIRLLM_VARIANT when it is set and supported; -1 when DAIRLLM_VARIANT names an unknown or
 * unsupported variant. */
int dl_variant_default(void);
/* Space-separated CPU features relevant to the variants ("avx2 fma f16c avx512f ..."). */
const char *dl_cpu_features(void);

/* ---- context: thread pool + variant ----------------------------------------------------- */
/* n_threads >= 1 (the calling thread is one of them); variant -1 = dl_variant_default().
 * Returns NULL when the variant is unknown or unsupported or threads cannot be started. */
dl_ctx *dl_ctx_create(int n_threads, int variant);
void dl_ctx_destroy(dl_ctx *ctx);
int dl_ctx_threads(const dl_ctx *ctx);
int dl_ctx_variant(const dl_ctx *ctx);

/* ---- types ------------------------------------------------------------------------------ */
/* Values per block (1 for F32/F16/BF16, 32 for Q4_0/Q8_0) and bytes per block; 0 if unknown. */
int64_t dl_type_block_values(int type);
int64_t dl_type_block_bytes(int type);
/* The activation type a weight type's matmul wants: F32->F32, F16->F16, BF16->BF16,
 * Q4_0/Q8_0->Q8_0; -1 if unknown. */
int dl_type_activation(int type);

/* The share [out[0], out[1]) of n items that thread ith of nth gets: contiguous, in order,
 * sizes differing by at most one, the first n % nth threads one larger. */
int dl_split_range(int64_t *out, int64_t n, int64_t nth, int64_t ith);

/* ---- matrix x matrix (n_tok = 1: matrix x vector) --------------------------------------- */
/* For t in [0, n_tok) and r in [r0, r1):
 *   out[t * ldo + (r - r0)] = dot(row r of w, row t of x)
 * w: the matrix of type wtype, row r at byte w + r * ldw (ldw = 0: rows packed, ldw = row bytes of n_in;
 * a larger ldw reads a column slice of a wider matrix, w pointing at the slice's first column);
 * x: n_tok rows of n_in values in the activation type dl_type_activation(wtype) (Q8_0: n_in/32 blocks
 * per row). n_in must be a multiple of the weight block size. Q8_0/Q4_0 sum per block
 * fp32(d_w) * fp32(d_x) * (integer dot), like ggml. */
int dl_matmul(float *out, int64_t ldo, const void *w, int64_t ldw, int wtype, const void *x, int64_t n_in, int64_t r0,
              int64_t r1, int64_t n_tok, dl_ctx *ctx);

/* ---- normalisation and activations (float32) -------------------------------------------- */
/* Element-wise and row-wise kernels may run in place: out may equal an input (not overlap it partly).
 * Per row of n: out = x * (1 / sqrtf(mean(x^2) + eps)) * w   (w may be NULL: no weight).
 * Squares are float32, summed in double (the scalar reference in order, as llama.cpp; the SIMD variants
 * in 8 running sums, a few double ulps apart); the mean is rounded to float32 (as llama.cpp). */
int dl_rmsnorm(float *out, const float *x, const float *w, int64_t n, int64_t n_rows, float eps, dl_ctx *ctx);
/* Per row of n: out = softmax(x) (max subtracted). */
int dl_softmax(float *out, const float *x, int64_t n, int64_t n_rows, dl_ctx *ctx);
int dl_silu(float *out, const float *x, int64_t n, dl_ctx *ctx);                      /* x / (1 + e^-x) */
int dl_gelu(float *out, const float *x, int64_t n, dl_ctx *ctx);                      /* tanh approximation */
int dl_swiglu(float *out, const float *gate, const float *up, int64_t n, dl_ctx *ctx); /* silu(gate) * up */
int dl_add(float *out, const float *a, const float *b, int64_t n, dl_ctx *ctx);
int dl_mul(float *out, const float *a, const float *b, int64_t n, dl_ctx *ctx);
int dl_scale(float *out, const float *x, float s, int64_t n, dl_ctx *ctx);

/* ---- RoPE -------------------------------------------------------------------------------- */
/* x, out: n_tok rows of n_heads * head_dim (out may equal x). For token t, head h, j < n_rot/2:
 * angle = pos[t] * freqs[j]; the pair (a, b) -> (a cos - b sin, a sin + b cos), where the pair is
 * (x[2j], x[2j+1]) for DL_ROPE_NORM and (x[j], x[j + n_rot/2]) for DL_ROPE_NEOX. Dimensions >= n_rot
 * are copied. freqs holds n_rot/2 values (e.g. freq_base^(-2j/n_rot), with any rope scaling folded in). */
int dl_rope(float *out, const float *x, const int32_t *pos, const float *freqs, int64_t n_tok, int64_t n_heads,
            int64_t head_dim, int64_t n_rot, int mode, dl_ctx *ctx);

/* ---- attention over a KV cache ---------------------------------------------------------- */
/* q, out: n_q rows of n_heads * head_dim. k, v: cache rows (one per position) of kv_stride elements
 * of kv_type (F32 or F16), KV head g at element offset g * head_dim. Query t attends to positions
 * 0..pos[t] (causal); query head h reads KV head h / (n_heads / n_kv_heads).
 * out = softmax(scale * q.k) . v, softmax computed online (max-rescaled), all in float32. */
int dl_attention(float *out, const float *q, const void *k, const void *v, int kv_type, const int32_t *pos,
                 int64_t n_q, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t kv_stride, float scale,
                 dl_ctx *ctx);

/* ---- conversions ------------------------------------------------------------------------ */
/* n floats -> n/32 Q8_0 blocks: amax = max|x|, d = fp16(amax / 127), q = round-half-even(x * (127 / amax)),
 * q = 0 when amax = 0. Bit-identical in every variant (llama.cpp's activation quantisation). */
int dl_quantize_q8_0(void *out, const float *x, int64_t n, dl_ctx *ctx);
/* n values of type (F32, F16, BF16, Q8_0, Q4_0) -> float32. */
int dl_dequantize(float *out, const void *x, int type, int64_t n, dl_ctx *ctx);
int dl_f32_to_f16(uint16_t *out, const float *x, int64_t n, dl_ctx *ctx);  /* round to nearest even */
int dl_f16_to_f32(float *out, const uint16_t *x, int64_t n, dl_ctx *ctx);
int dl_f32_to_bf16(uint16_t *out, const float *x, int64_t n, dl_ctx *ctx); /* round to nearest even, NaN kept */

/* ---- measurement ------------------------------------------------------------------------ */
/* Reads `bytes` of buf (a multiple of 256) `iters` times with the context's
 * threads, using the widest loads the variant has. out[0] = best seconds of one full read,
 * out[1] = a checksum (so the reads cannot be optimised away). */
int dl_probe_read(double *out, const void *buf, int64_t bytes, int iters, dl_ctx *ctx);

/* ---- memory ---------------------------------------------------------------------------- */
/* Drops the pages lying wholly inside [p, p + bytes) from this process (madvise MADV_DONTNEED); a
 * later read faults them in again from the file. Only for read-only file mappings (MAP_PRIVATE,
 * never written): anonymous or written memory would read back as zeros. DL_E_ARG when the kernel
 * refuses. */
int dl_release_pages(const void *p, int64_t bytes);

/* dst = rows runs of row_bytes, the r-th from src + r * src_stride (src_stride >= row_bytes): a column
 * slice of a row-major matrix into rows of its own. dst and src must not overlap. Both ranges are
 * faulted in first with one madvise each (MADV_POPULATE_WRITE / _READ, where the kernel has them)
 * rather than a fault per page; the copy is split over the context's threads. */
int dl_copy_rows(void *dst, const void *src, int64_t rows, int64_t row_bytes, int64_t src_stride, dl_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
