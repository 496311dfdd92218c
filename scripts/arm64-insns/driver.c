/*
 * Runs dl_matmul `reps` times on one thread: ROWS x N_IN weights of TYPE (2 = Q4_0, 8 = Q8_0) against
 * TOKENS Q8_0 activations, from the arm64 libdairllm given. scripts/arm64-insns.sh runs it under qemu
 * with the counting plugin at two rep counts; the difference is the matmuls' instructions.
 *   driver LIB ROWS N_IN TOKENS REPS TYPE
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct dl_ctx dl_ctx;

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: driver LIB ROWS N_IN TOKENS REPS TYPE\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        fprintf(stderr, "driver: %s\n", dlerror());
        return 1;
    }
    dl_ctx *(*create)(int, int) = (dl_ctx * (*)(int, int)) dlsym(h, "dl_ctx_create");
    void (*destroy)(dl_ctx *) = (void (*)(dl_ctx *))dlsym(h, "dl_ctx_destroy");
    int (*matmul)(float *, int64_t, const void *, int64_t, int, const void *, int64_t, int64_t, int64_t, int64_t, dl_ctx *) =
        (int (*)(float *, int64_t, const void *, int64_t, int, const void *, int64_t, int64_t, int64_t, int64_t, dl_ctx *))dlsym(h, "dl_matmul");
    int (*quantize)(void *, const float *, int64_t, dl_ctx *) = (int (*)(void *, const float *, int64_t, dl_ctx *))dlsym(h, "dl_quantize_q8_0");
    const int64_t rows = atoll(argv[2]), n_in = atoll(argv[3]), n_tok = atoll(argv[4]);
    const int reps = atoi(argv[5]), type = atoi(argv[6]);
    const int64_t block = type == 8 ? 34 : 18, bytes = rows * (n_in / 32) * block;
    dl_ctx *ctx = create(1, -1);
    if (!ctx || !matmul || !quantize || (type != 2 && type != 8) || n_in % 32 || rows <= 0 || n_tok <= 0) {
        fprintf(stderr, "driver: bad arguments or library\n");
        return 2;
    }
    uint8_t *w = malloc((size_t)bytes);
    srand(1);
    for (int64_t i = 0; i < bytes; i++) w[i] = (uint8_t)rand();
    for (int64_t i = 0; i < bytes; i += block) w[i] = 0, w[i + 1] = 0x2c; /* scale 1/16 */
    float *xf = malloc((size_t)(n_in * n_tok) * 4), *out = malloc((size_t)(rows * n_tok) * 4);
    for (int64_t i = 0; i < n_in * n_tok; i++) xf[i] = (float)(rand() % 200 - 100) / 50.0f;
    void *x = malloc((size_t)(n_in / 32 * 34 * n_tok));
    quantize(x, xf, n_in * n_tok, ctx);
    int64_t check = 0;
    for (int r = 0; r < reps; r++) {
        matmul(out, rows, w, 0, type, x, n_in, 0, rows, n_tok, ctx);
        check += (int64_t)(out[0] * 1000);
    }
    /* integers only: printing a float with %g hung under qemu-aarch64 7.2 with this libc */
    fprintf(stderr, "check %lld\n", (long long)check);
    destroy(ctx);
    return 0;
}
