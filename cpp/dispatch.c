/*
 * dispatch.c: CPU features, variant choice, the persistent thread pool, and the exported API
 * (argument checks, then the work split over the pool's threads).
 *
 * Results never depend on the thread count: every output element is computed by the same code
 * whichever thread owns it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#if defined(__x86_64__)
#include <cpuid.h>
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

/* ---- variants and CPU features --------------------------------------------------------------- */

typedef struct {
    const dl_kernels *k;
    int (*supported)(void);
} variant_entry;

static int always(void) { return 1; }
static char g_features[256]; /* filled once by cpu_detect(); read-only afterwards */

#if defined(__x86_64__)
static int g_ssse3, g_avx2, g_avx512;
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
static void cpu_detect_arch(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const int sse3 = c & 1, ssse3 = (c >> 9) & 1, sse41 = (c >> 19) & 1, sse42 = (c >> 20) & 1, popcnt = (c >> 23) & 1;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    const int os_avx = (xcr0 & 0x6) == 0x6, os_avx512 = (xcr0 & 0xe6) == 0xe6;
    unsigned b7 = 0, c7 = 0;
    if (__get_cpuid_count(7, 0, &a, &b7, &c7, &d)) {
    }
    const int avx2 = (b7 >> 5) & 1, avx512f = (b7 >> 16) & 1, avx512bw = (b7 >> 30) & 1, avx512vl = (b7 >> 31) & 1;
    const int vnni = (c7 >> 11) & 1;
    g_ssse3 = sse3 && ssse3 && sse41 && sse42 && popcnt; /* x86-64-v2 */
    g_avx2 = os_avx && avx && avx2 && fma && f16c;
    g_avx512 = g_avx2 && os_avx512 && avx512f && avx512bw && avx512vl && vnni;
    snprintf(g_features, sizeof g_features, "sse2%s%s%s%s%s%s%s%s%s%s%s%s%s", sse3 ? " sse3" : "", ssse3 ? " ssse3" : "",
             sse41 ? " sse4.1" : "", sse42 ? " sse4.2" : "", popcnt ? " popcnt" : "", os_avx && avx ? " avx" : "", avx2 ? " avx2" : "",
             fma ? " fma" : "", f16c ? " f16c" : "", os_avx512 && avx512f ? " avx512f" : "", avx512bw ? " avx512bw" : "",
             avx512vl ? " avx512vl" : "", vnni ? " avx512vnni" : "");
}
static int has_ssse3(void) { return g_ssse3; }
static int has_avx2(void) { return g_avx2; }
static int has_avx512(void) { return g_avx512; }
static const variant_entry g_variants[] = {
    {&dl_kernels_scalar, always},
    {&dl_kernels_x86_64, always},
    {&dl_kernels_ssse3, has_ssse3},
    {&dl_kernels_avx2, has_avx2},
    {&dl_kernels_avx512, has_avx512},
};
#elif defined(__aarch64__)
static int g_dotprod;
static void cpu_detect_arch(void) {
    g_dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    snprintf(g_features, sizeof g_features, "neon%s", g_dotprod ? " dotprod" : "");
}
static int has_dotprod(void) { return g_dotprod; }
static const variant_entry g_variants[] = {
    {&dl_kernels_scalar, always},
    {&dl_kernels_neon, always},
    {&dl_kernels_dotprod, has_dotprod},
};
#else
static void cpu_detect_arch(void) { snprintf(g_features, sizeof g_features, "(no SIMD variants for this CPU)"); }
static const variant_entry g_variants[] = {{&dl_kernels_scalar, always}};
#endif

#define N_VARIANTS ((int)(sizeof g_variants / sizeof g_variants[0]))

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_default_variant;

static void cpu_detect(void) {
    cpu_detect_arch();
    g_default_variant = 0;
    for (int i = N_VARIANTS - 1; i >= 0; i--)
        if (g_variants[i].supported()) {
            g_default_variant = i;
            break;
        }
    const char *force = getenv("DAIRLLM_VARIANT");
    if (force && *force) {
        g_default_variant = -1;
        for (int i = 0; i < N_VARIANTS; i++)
            if (strcmp(force, g_variants[i].k->name) == 0 && g_variants[i].supported()) g_default_variant = i;
    }
}

int dl_abi_version(void) { return DL_ABI_VERSION; }
int dl_variant_count(void) { return N_VARIANTS; }
const char *dl_variant_name(int v) { return v >= 0 && v < N_VARIANTS ? g_variants[v].k->name : NULL; }
int dl_variant_supported(int v) {
    pthread_once(&g_once, cpu_detect);
    return v >= 0 && v < N_VARIANTS && g_variants[v].supported();
}
int dl_variant_default(void) {
    pthread_once(&g_once, cpu_detect);
    return g_default_variant;
}
const char *dl_cpu_features(void) {
    pthread_once(&g_once, cpu_detect);
    return g_features;
}

/* ---- thread pool -------------------------------------------------------------------------------- */

#define DL_MAX_THREADS 256
#define DL_SPIN 4000 /* pause iterations a worker spins before it sleeps */

typedef void (*task_fn)(void *arg, int64_t part, int64_t n_parts);

typedef struct {
    dl_ctx *ctx;
    int ith;
} worker_arg;

/*
 * A task is cut into n_parts fixed parts (the same cut whoever runs them, so results never depend on
 * scheduling). Threads claim parts from a counter; the caller claims too, and waits only for parts
 * that another thread has claimed. A worker that the OS has not scheduled yet (another process on
 * the core, a slow wake-up) therefore never delays a call: the caller does its parts instead.
 *
 * `claim` packs the task generation (high 32 bits) and the next part (low 32 bits), so a late worker
 * can never claim a part of a newer task with the function of an older one: a new task is published
 * only after every part of the previous one has finished.
 */
struct dl_ctx {
    const dl_kernels *k;
    int variant;
    int n_threads;
    task_fn fn; /* the current task: written before `claim` is published */
    void *arg;
    int64_t n_parts;
    _Atomic uint64_t claim;
    atomic_llong done;
    atomic_int stop;
    atomic_int sleepers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t threads[DL_MAX_THREADS];
    worker_arg args[DL_MAX_THREADS];
    void *scratch; /* DL_SCRATCH_BYTES, 64-byte aligned, when the variant packs activations */
};

/* Packed batch activations (see dl_matmul): big enough for a 64-token prompt of 2048-wide rows in
 * one piece, small enough to stay in a core's L2 while the weight rows stream past it. */
#define DL_SCRATCH_BYTES (512 * 1024)

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Claims and runs parts of the task of generation `gen` until none is left. */
static void run_parts(dl_ctx *ctx, uint32_t gen) {
    uint64_t c = atomic_load_explicit(&ctx->claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(c >> 32) != gen || (int64_t)(uint32_t)c >= ctx->n_parts) return;
        if (atomic_compare_exchange_weak_explicit(&ctx->claim, &c, c + 1, memory_order_acq_rel, memory_order_acquire)) {
            ctx->fn(ctx->arg, (int64_t)(uint32_t)c, ctx->n_parts);
            atomic_fetch_add_explicit(&ctx->done, 1, memory_order_release);
            c = atomic_load_explicit(&ctx->claim, memory_order_acquire);
        }
    }
}

static void *worker_main(void *p) {
    dl_ctx *ctx = ((const worker_arg *)p)->ctx;
    uint32_t seen = 0;
    for (;;) {
        int spins = 0;
        uint32_t g;
        while ((g = (uint32_t)(atomic_load_explicit(&ctx->claim, memory_order_acquire) >> 32)) == seen) {
            if (atomic_load_explicit(&ctx->stop, memory_order_acquire)) return NULL;
            if (++spins < DL_SPIN) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&ctx->mu);
            atomic_fetch_add(&ctx->sleepers, 1);
            while ((uint32_t)(atomic_load(&ctx->claim) >> 32) == seen && !atomic_load(&ctx->stop)) pthread_cond_wait(&ctx->cv, &ctx->mu);
            atomic_fetch_sub(&ctx->sleepers, 1);
            pthread_mutex_unlock(&ctx->mu);
            spins = 0;
        }
        seen = g;
        run_parts(ctx, g);
    }
}

/* Runs fn(arg, part, n_parts) for every part in [0, n_parts) on the pool and the calling thread; the
 * threads claim parts one at a time, so with more parts than threads a faster thread takes more. */
static void pool_run_parts(dl_ctx *ctx, task_fn fn, void *arg, int64_t n_parts) {
    if (n_parts <= 1 || ctx->n_threads <= 1) {
        for (int64_t i = 0; i < n_parts; i++) fn(arg, i, n_parts);
        return;
    }
    ctx->fn = fn;
    ctx->arg = arg;
    ctx->n_parts = n_parts;
    atomic_store_explicit(&ctx->done, 0, memory_order_relaxed);
    const uint32_t gen = (uint32_t)(atomic_load_explicit(&ctx->claim, memory_order_relaxed) >> 32) + 1;
    atomic_store(&ctx->claim, (uint64_t)gen << 32); /* seq_cst: ordered before the sleepers check */
    if (atomic_load(&ctx->sleepers) > 0) {
        pthread_mutex_lock(&ctx->mu);
        pthread_cond_broadcast(&ctx->cv);
        pthread_mutex_unlock(&ctx->mu);
    }
    run_parts(ctx, gen);
    int spins = 0;
    while (atomic_load_explicit(&ctx->done, memory_order_acquire) < n_parts) {
        if (++spins < DL_SPIN) cpu_relax();
        else sched_yield();
    }
}

/* One part per thread (at most n_parts threads). */
static void pool_run(dl_ctx *ctx, task_fn fn, void *arg, int64_t n_parts) {
    if (n_parts > ctx->n_threads) n_parts = ctx->n_threads;
    pool_run_parts(ctx, fn, arg, n_parts);
}

dl_ctx *dl_ctx_create(int n_threads, int variant) {
    pthread_once(&g_once, cpu_detect);
    if (variant == -1) variant = g_default_variant;
    if (n_threads < 1 || n_threads > DL_MAX_THREADS || !dl_variant_supported(variant)) return NULL;
    dl_ctx *ctx = (dl_ctx *)calloc(1, sizeof(dl_ctx));
    if (!ctx) return NULL;
    ctx->k = g_variants[variant].k;
    ctx->variant = variant;
    ctx->n_threads = 1;
    if (ctx->k->pack_q8_0 && !(ctx->scratch = aligned_alloc(64, DL_SCRATCH_BYTES))) {
        free(ctx);
        return NULL;
    }
    pthread_mutex_init(&ctx->mu, NULL);
    pthread_cond_init(&ctx->cv, NULL);
    for (int i = 1; i < n_threads; i++) {
        ctx->args[i].ctx = ctx;
        ctx->args[i].ith = i;
        if (pthread_create(&ctx->threads[i], NULL, worker_main, &ctx->args[i]) != 0) {
            dl_ctx_destroy(ctx);
            return NULL;
        }
        pthread_setname_np(ctx->threads[i], "dairllm-pool"); /* what top and /proc/<pid>/task/<tid>/comm show */
        ctx->n_threads = i + 1;
    }
    return ctx;
}

void dl_ctx_destroy(dl_ctx *ctx) {
    if (!ctx) return;
    pthread_mutex_lock(&ctx->mu);
    atomic_store(&ctx->stop, 1);
    pthread_cond_broadcast(&ctx->cv);
    pthread_mutex_unlock(&ctx->mu);
    for (int i = 1; i < ctx->n_threads; i++) pthread_join(ctx->threads[i], NULL);
    pthread_mutex_destroy(&ctx->mu);
    pthread_cond_destroy(&ctx->cv);
    free(ctx->scratch);
    free(ctx);
}

int dl_ctx_threads(const dl_ctx *ctx) { return ctx ? ctx->n_threads : 0; }
int dl_ctx_variant(const dl_ctx *ctx) { return ctx ? ctx->variant : -1; }

/* ---- types and splitting ------------------------------------------------------------------------- */

int64_t dl_type_block_values(int type) {
    switch (type) {
    case DL_TYPE_F32: case DL_TYPE_F16: case DL_TYPE_BF16: return 1;
    case DL_TYPE_Q8_0: case DL_TYPE_Q4_0: return QK;
    default: return 0;
    }
}

int64_t dl_type_block_bytes(int type) {
    switch (type) {
    case DL_TYPE_F32: return 4;
    case DL_TYPE_F16: case DL_TYPE_BF16: return 2;
    case DL_TYPE_Q8_0: return sizeof(block_q8_0);
    case DL_TYPE_Q4_0: return sizeof(block_q4_0);
    default: return 0;
    }
}

int dl_type_activation(int type) {
    switch (type) {
    case DL_TYPE_F32: case DL_TYPE_F16: case DL_TYPE_BF16: return type;
    case DL_TYPE_Q8_0: case DL_TYPE_Q4_0: return DL_TYPE_Q8_0;
    default: return -1;
    }
}

static void split_range(int64_t n, int64_t nth, int64_t ith, int64_t *a, int64_t *b) {
    const int64_t base = n / nth, extra = n % nth;
    *a = ith * base + (ith < extra ? ith : extra);
    *b = *a + base + (ith < extra ? 1 : 0);
}

int dl_split_range(int64_t *out, int64_t n, int64_t nth, int64_t ith) {
    if (!out) return DL_E_NULL;
    if (n < 0 || nth < 1 || ith < 0 || ith >= nth) return DL_E_ARG;
    split_range(n, nth, ith, &out[0], &out[1]);
    return DL_OK;
}

/* Threads worth using for `work` units of roughly equal cost (about one multiply-add each). */
static int64_t threads_for(const dl_ctx *ctx, int64_t items, int64_t work) {
    const int64_t min_work_per_thread = 1 << 15;
    int64_t nth = work / min_work_per_thread;
    if (nth > items) nth = items;
    if (nth > ctx->n_threads) nth = ctx->n_threads;
    return nth < 1 ? 1 : nth;
}

#define CHECK(cond, code)                                                                                   \
    do {                                                                                                    \
        if (!(cond)) return (code);                                                                         \
    } while (0)

/* ---- matmul ------------------------------------------------------------------------------------- */

typedef struct {
    const dl_kernels *k;
    float *out;
    int64_t ldo;
    const void *w;
    int64_t ldw;
    int wtype;
    const void *x;
    int64_t n_in, r0, r1, n_tok;
    const void *packed; /* the tokens packed by pack_q8_0, or NULL */
} matmul_task;

/*
 * Parts of a matrix x vector over `rows` rows of `row_bytes` when `nth` threads are worth using: up to
 * 4 per thread, each at least DL_MATMUL_PART_BYTES of weights (its four row streams stay long enough
 * for the hardware prefetcher). Threads claim parts as they finish, so two threads of unequal speed
 * (SMT siblings, a preempted vCPU) finish together instead of the faster one waiting. Batches (two or
 * more tokens: compute-bound, the packed activations stay in L2) take up to 8 parts per thread of at
 * least DL_MATMUL_PART_ROWS rows: with one part per thread, the thread on the slower SMT sibling set
 * the pace of every prompt matmul (a 64-token batch over a TinyLlama layer's matrices on 2 threads,
 * old and new library alternated in one process, 20 rounds: paired median 1.01-1.16x, 0.6-16 %
 * faster, never slower). A row's value does not depend on its part.
 */
#define DL_MATMUL_PART_BYTES (256 * 1024)
#define DL_MATMUL_PART_ROWS 32
static int64_t matmul_parts(int64_t nth, int64_t rows, int64_t row_bytes, int64_t n_tok) {
    if (nth <= 1) return nth;
    const int64_t most = (n_tok > 1 ? 8 : 4) * nth;
    int64_t parts = n_tok > 1 ? rows / DL_MATMUL_PART_ROWS : rows * row_bytes / DL_MATMUL_PART_BYTES;
    if (parts > most) parts = most;
    return parts < nth ? nth : parts;
}

static void matmul_part(void *p, int64_t ith, int64_t nth) {
    const matmul_task *t = (const matmul_task *)p;
    int64_t a, b;
    split_range(t->r1 - t->r0, nth, ith, &a, &b);
    if (a >= b) return;
    if (t->packed)
        t->k->matmul_packed(t->out, t->ldo, t->w, t->ldw, t->wtype, t->packed, t->x, t->n_in, t->r0, t->r0 + a, t->r0 + b, t->n_tok);
    else
        t->k->matmul(t->out, t->ldo, t->w, t->ldw, t->wtype, t->x, t->n_in, t->r0, t->r0 + a, t->r0 + b, t->n_tok);
}

typedef struct {
    const dl_kernels *k;
    uint8_t *dst;
    const block_q8_0 *x;
    int64_t nb, n_tok;
} pack_task;

static void pack_part(void *p, int64_t ith, int64_t nth) {
    const pack_task *t = (const pack_task *)p;
    int64_t a, b;
    split_range(t->n_tok, nth, ith, &a, &b);
    if (a < b) t->k->pack_q8_0(t->dst + a * t->k->pack_bytes(t->nb), t->x + a * t->nb, t->nb, b - a, t->n_tok);
}

/* Tokens per packed piece of a matmul: as many as the scratch holds, in whole tiles of 8; 0 when the
 * variant does not pack, packs only batches of more tokens, a row is shorter than the packing's
 * group, or one token does not fit. */
static int64_t packed_tokens(const dl_ctx *ctx, int wtype, int64_t n_in, int64_t n_tok) {
    if (!ctx->scratch || n_in / QK < 4) return 0;
    const int64_t least = wtype == DL_TYPE_Q4_0 ? ctx->k->pack_min_tokens : wtype == DL_TYPE_Q8_0 ? ctx->k->pack_q8_0_min_tokens : 0;
    if (least <= 0 || n_tok < least) return 0;
    if (wtype == DL_TYPE_Q8_0 && ctx->k->pack_q8_0_max_blocks > 0 && n_in / QK > ctx->k->pack_q8_0_max_blocks) return 0;
    const int64_t per = ctx->k->pack_bytes(n_in / QK);
    if (per <= 0) return 0;
    const int64_t fit = DL_SCRATCH_BYTES / per;
    return fit >= 8 ? fit / 8 * 8 : fit;
}

int dl_matmul(float *out, int64_t ldo, const void *w, int64_t ldw, int wtype, const void *x, int64_t n_in, int64_t r0,
              int64_t r1, int64_t n_tok, dl_ctx *ctx) {
    CHECK(out && w && x && ctx, DL_E_NULL);
    const int64_t bv = dl_type_block_values(wtype);
    CHECK(bv > 0, DL_E_TYPE);
    CHECK(n_in > 0 && n_tok > 0 && n_in % bv == 0, DL_E_SIZE);
    CHECK(r0 >= 0 && r1 > r0 && ldo >= r1 - r0, DL_E_RANGE);
    const int64_t row_bytes = n_in / bv * dl_type_block_bytes(wtype);
    if (ldw == 0) ldw = row_bytes;
    CHECK(ldw >= row_bytes, DL_E_ARG);
    const int64_t piece = packed_tokens(ctx, wtype, n_in, n_tok);
    if (piece > 0) {
        /* pack the activations once (shared by every thread), then every thread's rows read them */
        const int64_t nb = n_in / QK;
        for (int64_t t0 = 0; t0 < n_tok; t0 += piece) {
            const int64_t nt = n_tok - t0 < piece ? n_tok - t0 : piece;
            const block_q8_0 *xt = (const block_q8_0 *)x + t0 * nb;
            pack_task pk = {ctx->k, (uint8_t *)ctx->scratch, xt, nb, nt};
            pool_run(ctx, pack_part, &pk, threads_for(ctx, nt, nt * n_in));
            matmul_task t = {ctx->k, out + t0 * ldo, ldo, w, ldw, wtype, xt, n_in, r0, r1, nt, ctx->scratch};
            pool_run_parts(ctx, matmul_part, &t, matmul_parts(threads_for(ctx, r1 - r0, (r1 - r0) * n_in * nt), r1 - r0, row_bytes, nt));
        }
        return DL_OK;
    }
    matmul_task t = {ctx->k, out, ldo, w, ldw, wtype, x, n_in, r0, r1, n_tok, NULL};
    pool_run_parts(ctx, matmul_part, &t, matmul_parts(threads_for(ctx, r1 - r0, (r1 - r0) * n_in * n_tok), r1 - r0, row_bytes, n_tok));
    return DL_OK;
}

/* ---- row-wise and element-wise ops ----------------------------------------------------------------- */

typedef struct {
    const dl_kernels *k;
    int op;
    float *out;
    const float *a, *b;
    float s;
    int64_t n, n_rows;
} rows_task;

enum { OP_RMSNORM, OP_SOFTMAX, OP_SILU, OP_GELU, OP_SWIGLU, OP_ADD, OP_MUL, OP_SCALE };

static void rows_part(void *p, int64_t ith, int64_t nth) {
    const rows_task *t = (const rows_task *)p;
    int64_t a, b;
    if (t->op == OP_RMSNORM || t->op == OP_SOFTMAX) {
        split_range(t->n_rows, nth, ith, &a, &b);
        for (int64_t r = a; r < b; r++) {
            if (t->op == OP_RMSNORM) t->k->rmsnorm(t->out + r * t->n, t->a + r * t->n, t->b, t->n, t->s);
            else t->k->softmax(t->out + r * t->n, t->a + r * t->n, t->n);
        }
        return;
    }
    split_range(t->n, nth, ith, &a, &b);
    if (a >= b) return;
    const int64_t m = b - a;
    switch (t->op) {
    case OP_SILU: t->k->silu(t->out + a, t->a + a, m); break;
    case OP_GELU: t->k->gelu(t->out + a, t->a + a, m); break;
    case OP_SWIGLU: t->k->swiglu(t->out + a, t->a + a, t->b + a, m); break;
    case OP_ADD: t->k->add(t->out + a, t->a + a, t->b + a, m); break;
    case OP_MUL: t->k->mul(t->out + a, t->a + a, t->b + a, m); break;
    case OP_SCALE: t->k->scale(t->out + a, t->a + a, t->s, m); break;
    }
}

static int run_rows(dl_ctx *ctx, int op, float *out, const float *a, const float *b, float s, int64_t n, int64_t n_rows,
                    int64_t cost_per_value) {
    const int64_t items = (op == OP_RMSNORM || op == OP_SOFTMAX) ? n_rows : n;
    rows_task t = {ctx->k, op, out, a, b, s, n, n_rows};
    pool_run(ctx, rows_part, &t, threads_for(ctx, items, n * n_rows * cost_per_value));
    return DL_OK;
}

int dl_rmsnorm(float *out, const float *x, const float *w, int64_t n, int64_t n_rows, float eps, dl_ctx *ctx) {
    CHECK(out && x && ctx, DL_E_NULL);
    CHECK(n > 0 && n_rows > 0, DL_E_SIZE);
    return run_rows(ctx, OP_RMSNORM, out, x, w, eps, n, n_rows, 2);
}
int dl_softmax(float *out, const float *x, int64_t n, int64_t n_rows, dl_ctx *ctx) {
    CHECK(out && x && ctx, DL_E_NULL);
    CHECK(n > 0 && n_rows > 0, DL_E_SIZE);
    return run_rows(ctx, OP_SOFTMAX, out, x, NULL, 0.0f, n, n_rows, 16);
}
#define UNARY(NAME, OP, COST)                                                                               \
    int NAME(float *out, const float *x, int64_t n, dl_ctx *ctx) {                                         \
        CHECK(out && x && ctx, DL_E_NULL);                                                                  \
        CHECK(n > 0, DL_E_SIZE);                                                                            \
        return run_rows(ctx, OP, out, x, NULL, 0.0f, n, 1, COST);                                          \
    }
#define BINARY(NAME, OP, COST)                                                                              \
    int NAME(float *out, const float *a, const float *b, int64_t n, dl_ctx *ctx) {                         \
        CHECK(out && a && b && ctx, DL_E_NULL);                                                             \
        CHECK(n > 0, DL_E_SIZE);                                                                            \
        return run_rows(ctx, OP, out, a, b, 0.0f, n, 1, COST);                                             \
    }
UNARY(dl_silu, OP_SILU, 16)
UNARY(dl_gelu, OP_GELU, 16)
BINARY(dl_swiglu, OP_SWIGLU, 16)
BINARY(dl_add, OP_ADD, 1)
BINARY(dl_mul, OP_MUL, 1)

int dl_scale(float *out, const float *x, float s, int64_t n, dl_ctx *ctx) {
    CHECK(out && x && ctx, DL_E_NULL);
    CHECK(n > 0, DL_E_SIZE);
    return run_rows(ctx, OP_SCALE, out, x, NULL, s, n, 1, 1);
}

/* ---- RoPE ------------------------------------------------------------------------------------------ */

typedef struct {
    const dl_kernels *k;
    float *out;
    const float *x;
    const int32_t *pos;
    const float *freqs;
    int64_t n_tok, n_heads, head_dim, n_rot;
    int mode;
} rope_task;

static void rope_part(void *p, int64_t ith, int64_t nth) {
    const rope_task *t = (const rope_task *)p;
    int64_t a, b;
    split_range(t->n_tok, nth, ith, &a, &b);
    const int64_t row = t->n_heads * t->head_dim;
    for (int64_t i = a; i < b; i++)
        t->k->rope(t->out + i * row, t->x + i * row, t->pos[i], t->freqs, t->n_heads, t->head_dim, t->n_rot, t->mode);
}

int dl_rope(float *out, const float *x, const int32_t *pos, const float *freqs, int64_t n_tok, int64_t n_heads,
            int64_t head_dim, int64_t n_rot, int mode, dl_ctx *ctx) {
    CHECK(out && x && pos && freqs && ctx, DL_E_NULL);
    CHECK(n_tok > 0 && n_heads > 0 && head_dim > 0, DL_E_SIZE);
    CHECK(n_rot >= 0 && n_rot <= head_dim && n_rot % 2 == 0, DL_E_ARG);
    CHECK(mode == DL_ROPE_NORM || mode == DL_ROPE_NEOX, DL_E_ARG);
    rope_task t = {ctx->k, out, x, pos, freqs, n_tok, n_heads, head_dim, n_rot, mode};
    pool_run(ctx, rope_part, &t, threads_for(ctx, n_tok, n_tok * n_heads * head_dim * 8));
    return DL_OK;
}

/* ---- attention --------------------------------------------------------------------------------------- */

typedef struct {
    const dl_kernels *k;
    float *out;
    const float *q;
    const uint8_t *kc, *vc;
    int kv_type;
    const int32_t *pos;
    int64_t n_q, n_heads, group, head_dim, kv_stride, elt;
    int64_t sub; /* query heads per work item: a whole KV group, or a part of it when there are few groups */
    int64_t nt;  /* queries (tokens) per work item */
    float scale;
} attn_task;

static void attn_part(void *p, int64_t ith, int64_t nth) {
    const attn_task *t = (const attn_task *)p;
    const int64_t per_q = t->n_heads / t->sub; /* work items per block of nt queries */
    const int64_t blocks = (t->n_q + t->nt - 1) / t->nt;
    int64_t a, b, n_kv[DL_ATTN_MAX_GROUP];
    split_range(blocks * per_q, nth, ith, &a, &b);
    /* the blocks of queries of one group of heads are consecutive items: that KV head's keys and
     * values stay in cache from one block to the next */
    for (int64_t i = a; i < b; i++) {
        const int64_t q0 = i % blocks * t->nt, h = i / blocks * t->sub, g = h / t->group;
        const int64_t nt = t->n_q - q0 < t->nt ? t->n_q - q0 : t->nt;
        for (int64_t j = 0; j < nt; j++) n_kv[j] = (int64_t)t->pos[q0 + j] + 1;
        const int64_t off = (q0 * t->n_heads + h) * t->head_dim;
        t->k->attention(t->out + off, t->q + off, t->n_heads * t->head_dim, t->kc + g * t->head_dim * t->elt,
                        t->vc + g * t->head_dim * t->elt, t->kv_type, n_kv, nt, t->head_dim, t->kv_stride, t->scale, t->sub);
    }
}

/* Query heads per attention work item: the query heads of one KV head share a pass over its keys and
 * values (up to DL_ATTN_MAX_GROUP of them), halved while that leaves fewer than two items per thread. */
static int64_t attn_heads_per_item(int64_t group, int64_t items_per_head, int64_t nth) {
    int64_t sub = group;
    while (sub > DL_ATTN_MAX_GROUP && sub % 2 == 0) sub /= 2;
    if (sub > DL_ATTN_MAX_GROUP) sub = 1;
    while (sub % 2 == 0 && items_per_head / sub < 2 * nth) sub /= 2;
    return sub;
}

/* Queries per attention work item: consecutive queries (a prompt's tokens) of the same heads share
 * the passes over their keys too, up to DL_ATTN_MAX_GROUP items per pass, halved while that leaves
 * fewer than two items per thread. */
static int64_t attn_tokens_per_item(int64_t n_q, int64_t sub, int64_t items_per_block, int64_t nth) {
    int64_t nt = DL_ATTN_MAX_GROUP / sub;
    if (nt > n_q) nt = n_q;
    while (nt > 1 && (n_q + nt - 1) / nt * items_per_block < 2 * nth) nt /= 2;
    return nt < 1 ? 1 : nt;
}

int dl_attention(float *out, const float *q, const void *k, const void *v, int kv_type, const int32_t *pos,
                 int64_t n_q, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t kv_stride, float scale,
                 dl_ctx *ctx) {
    CHECK(out && q && k && v && pos && ctx, DL_E_NULL);
    CHECK(kv_type == DL_TYPE_F32 || kv_type == DL_TYPE_F16, DL_E_TYPE);
    CHECK(n_q > 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0, DL_E_SIZE);
    CHECK(n_heads % n_kv_heads == 0 && kv_stride >= n_kv_heads * head_dim, DL_E_ARG);
    int64_t max_pos = 0;
    for (int64_t i = 0; i < n_q; i++) {
        CHECK(pos[i] >= 0, DL_E_ARG);
        if (pos[i] > max_pos) max_pos = pos[i];
    }
    const int64_t group = n_heads / n_kv_heads, work = n_q * n_heads * (max_pos + 1) * head_dim * 2;
    const int64_t nth = threads_for(ctx, n_q * n_heads, work);
    const int64_t sub = attn_heads_per_item(group, n_q * n_heads, nth);
    const int64_t nt = attn_tokens_per_item(n_q, sub, n_heads / sub, nth);
    attn_task t = {ctx->k, out, q, (const uint8_t *)k, (const uint8_t *)v, kv_type, pos, n_q, n_heads,
                   group, head_dim, kv_stride, kv_type == DL_TYPE_F16 ? 2 : 4, sub, nt, scale};
    pool_run(ctx, attn_part, &t, threads_for(ctx, (n_q + nt - 1) / nt * (n_heads / sub), work));
    return DL_OK;
}

/* ---- conversions ------------------------------------------------------------------------------------- */

typedef struct {
    const dl_kernels *k;
    int op, type;
    void *out;
    const void *x;
    int64_t n, unit; /* values per item: the split never cuts a block */
} conv_task;

enum { CV_Q8_0, CV_DEQUANT, CV_TO_F16, CV_TO_F32, CV_TO_BF16 };

static void conv_part(void *p, int64_t ith, int64_t nth) {
    const conv_task *t = (const conv_task *)p;
    int64_t a, b;
    split_range(t->n / t->unit, nth, ith, &a, &b);
    if (a >= b) return;
    const int64_t i0 = a * t->unit, m = (b - a) * t->unit;
    switch (t->op) {
    case CV_Q8_0:
        t->k->quantize_q8_0((block_q8_0 *)t->out + a, (const float *)t->x + i0, m);
        break;
    case CV_DEQUANT:
        t->k->dequantize((float *)t->out + i0, (const uint8_t *)t->x + a * dl_type_block_bytes(t->type), t->type, m);
        break;
    case CV_TO_F16: t->k->f32_to_f16((uint16_t *)t->out + i0, (const float *)t->x + i0, m); break;
    case CV_TO_F32: t->k->f16_to_f32((float *)t->out + i0, (const uint16_t *)t->x + i0, m); break;
    case CV_TO_BF16: t->k->f32_to_bf16((uint16_t *)t->out + i0, (const float *)t->x + i0, m); break;
    }
}

static int run_conv(dl_ctx *ctx, int op, int type, void *out, const void *x, int64_t n, int64_t unit) {
    CHECK(out && x && ctx, DL_E_NULL);
    CHECK(n > 0 && n % unit == 0, DL_E_SIZE);
    conv_task t = {ctx->k, op, type, out, x, n, unit};
    pool_run(ctx, conv_part, &t, threads_for(ctx, n / unit, n * 2));
    return DL_OK;
}

int dl_quantize_q8_0(void *out, const float *x, int64_t n, dl_ctx *ctx) { return run_conv(ctx, CV_Q8_0, DL_TYPE_Q8_0, out, x, n, QK); }
int dl_dequantize(float *out, const void *x, int type, int64_t n, dl_ctx *ctx) {
    const int64_t bv = dl_type_block_values(type);
    CHECK(bv > 0, DL_E_TYPE);
    return run_conv(ctx, CV_DEQUANT, type, out, x, n, bv);
}
int dl_f32_to_f16(uint16_t *out, const float *x, int64_t n, dl_ctx *ctx) { return run_conv(ctx, CV_TO_F16, 0, out, x, n, 1); }
int dl_f16_to_f32(float *out, const uint16_t *x, int64_t n, dl_ctx *ctx) { return run_conv(ctx, CV_TO_F32, 0, out, x, n, 1); }
int dl_f32_to_bf16(uint16_t *out, const float *x, int64_t n, dl_ctx *ctx) { return run_conv(ctx, CV_TO_BF16, 0, out, x, n, 1); }

/* ---- bandwidth probe ----------------------------------------------------------------------------------- */

typedef struct {
    const dl_kernels *k;
    const uint8_t *buf;
    int64_t chunks; /* 256-byte chunks */
    uint64_t sums[DL_MAX_THREADS];
} probe_task;

static void probe_part(void *p, int64_t ith, int64_t nth) {
    probe_task *t = (probe_task *)p;
    int64_t a, b;
    split_range(t->chunks, nth, ith, &a, &b);
    if (a < b) t->sums[ith] += t->k->read_sum(t->buf + a * 256, (b - a) * 256);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int dl_probe_read(double *out, const void *buf, int64_t bytes, int iters, dl_ctx *ctx) {
    CHECK(out && buf && ctx, DL_E_NULL);
    CHECK(bytes >= 256 && bytes % 256 == 0 && iters >= 1, DL_E_SIZE);
    probe_task t;
    memset(&t, 0, sizeof t);
    t.k = ctx->k;
    t.buf = (const uint8_t *)buf;
    t.chunks = bytes / 256;
    double best = 1e30;
    for (int i = 0; i < iters; i++) {
        const double t0 = now_s();
        pool_run(ctx, probe_part, &t, ctx->n_threads);
        const double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    uint64_t sum = 0;
    for (int i = 0; i < DL_MAX_THREADS; i++) sum += t.sums[i];
    out[0] = best;
    out[1] = (double)sum;
    return DL_OK;
}

/* ---- memory ------------------------------------------------------------------------------------------ */

int dl_release_pages(const void *p, int64_t bytes) {
    CHECK(p, DL_E_NULL);
    CHECK(bytes >= 0, DL_E_SIZE);
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + (uintptr_t)bytes) & ~(page - 1);
    if (b > a && madvise((void *)a, b - a, MADV_DONTNEED) != 0) return DL_E_ARG;
    return DL_OK;
}

/* MADV_POPULATE_READ / _WRITE (Linux 5.14): fault a range in with one call instead of a fault per page;
 * older kernels refuse them (EINVAL) and the copy then faults page by page as before. */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static void populate(const void *p, int64_t bytes, int advice) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + (uintptr_t)bytes) & ~(page - 1);
    if (b > a) (void)madvise((void *)a, b - a, advice);
}

typedef struct {
    uint8_t *dst;
    const uint8_t *src;
    int64_t rows, row_bytes, stride;
} copy_task;

static void copy_part(void *arg, int64_t ith, int64_t nth) {
    const copy_task *t = (const copy_task *)arg;
    int64_t a, b;
    split_range(t->rows, nth, ith, &a, &b);
    if (t->stride == t->row_bytes) {
        if (b > a) memcpy(t->dst + a * t->row_bytes, t->src + a * t->row_bytes, (size_t)((b - a) * t->row_bytes));
        return;
    }
    for (int64_t r = a; r < b; r++) memcpy(t->dst + r * t->row_bytes, t->src + r * t->stride, (size_t)t->row_bytes);
}

int dl_copy_rows(void *dst, const void *src, int64_t rows, int64_t row_bytes, int64_t src_stride, dl_ctx *ctx) {
    CHECK(dst && src && ctx, DL_E_NULL);
    CHECK(rows >= 0 && row_bytes >= 0 && src_stride >= row_bytes, DL_E_SIZE);
    if (rows == 0 || row_bytes == 0) return DL_OK;
    const int64_t bytes = rows * row_bytes;
    populate(dst, bytes, MADV_POPULATE_WRITE);
    populate(src, (rows - 1) * src_stride + row_bytes, MADV_POPULATE_READ);
    copy_task t = {(uint8_t *)dst, (const uint8_t *)src, rows, row_bytes, src_stride};
    /* memory-bound: every thread, in parts of at least 1 MiB */
    int64_t parts = bytes / (1 << 20);
    if (parts > ctx->n_threads) parts = ctx->n_threads;
    pool_run(ctx, copy_part, &t, parts < 1 ? 1 : parts);
    return DL_OK;
}
