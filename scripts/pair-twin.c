// The C twin of a root and one worker decoding (scripts/bench-twin.ts builds and runs it): what this
// machine allows a tensor-parallel pair, with none of the runtime around the kernels. The same
// matmuls through dl_matmul as a node of a TinyLlama-shape Q4_0 model does (random weights: the
// speed does not depend on them), half of every layer's matrices per process (q/k/v and gate/up by
// rows, the output and down projections by columns as contiguous copies, half the logits), and two
// exchanges of a Q8_0 partial (2176 bytes) per layer and one per token over TCP on 127.0.0.1; or the
// whole of every matrix in one process with 2 threads. Norms, RoPE and attention are left out of both.
//
//   pair-twin single TOKENS            one process, 2 threads, the whole model
//   pair-twin pair TOKENS POLL         two processes, 1 thread each, on CPU 0 and 1 (POLL 1: busy-poll)
//
// Prints "tokens_per_s X exchange_us Y write_us Z" (node 0 for the pair; the exchange is the mean time
// from the start of a write to the end of the matching read, the write its syscall alone).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dairllm.h"

enum { DIM = 2048, FFN = 5632, LAYERS = 22, VOCAB = 32000, KV = 256, MSG = 2176, WARM = 8 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* rows x cols of Q4_0 with valid small fp16 scales */
static uint8_t *matrix(int64_t rows, int64_t cols, unsigned seed) {
    const size_t n = (size_t)(rows * (cols / 32) * 18);
    uint8_t *m = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!m) die("aligned_alloc");
    for (size_t i = 0; i < n; i++) m[i] = (uint8_t)((seed = seed * 1103515245u + 12345u) >> 16);
    for (size_t o = 0; o < n; o += 18) m[o] = 0, m[o + 1] = 0x1c;
    return m;
}

typedef struct {
    uint8_t *wq, *wk, *wv, *wo, *w1, *w3, *w2;
} layer;

static int g_poll;
static double g_xt, g_wt;
static long g_xn;

static void exchange(int fd, const uint8_t *out, uint8_t *in) {
    if (fd < 0) return;
    const double t0 = now();
    if (write(fd, out, MSG) != MSG) die("write");
    g_wt += now() - t0;
    size_t got = 0;
    while (got < MSG) {
        const ssize_t r = recv(fd, in + got, MSG - got, g_poll ? MSG_DONTWAIT : 0);
        if (r > 0) got += (size_t)r;
        else if (r == 0) exit(1);
        else if (errno != EAGAIN && errno != EWOULDBLOCK) die("recv");
    }
    g_xt += now() - t0;
    g_xn++;
}

/* x (n_in values) quantized once, then each of the `count` Q4_0 matrices (rows[i] x n_in) times it */
static void matvecs(dl_ctx *ctx, float *y, uint8_t *xq, const float *x, int64_t n_in, int count, uint8_t *const ws[],
                    const int64_t rows[]) {
    dl_quantize_q8_0(xq, x, n_in, ctx);
    for (int i = 0; i < count; i++) dl_matmul(y, rows[i], ws[i], 0, DL_TYPE_Q4_0, xq, n_in, 0, rows[i], 1, ctx);
}

static void run(int nodes, int threads, int fd, int cpu, int tokens, int print) {
    if (cpu >= 0) {
        cpu_set_t s;
        CPU_ZERO(&s);
        CPU_SET(cpu, &s);
        if (sched_setaffinity(0, sizeof s, &s)) die("sched_setaffinity");
    }
    dl_ctx *ctx = dl_ctx_create(threads, -1);
    if (!ctx) die("dl_ctx_create");
    const int h = nodes;
    layer L[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        const unsigned s = (unsigned)(l * 8 + cpu + 2);
        L[l] = (layer){matrix(DIM / h, DIM, s), matrix(KV / h, DIM, s + 1), matrix(KV / h, DIM, s + 2), matrix(DIM, DIM / h, s + 3),
                       matrix(FFN / h, DIM, s + 4), matrix(FFN / h, DIM, s + 5), matrix(DIM, FFN / h, s + 6)};
    }
    uint8_t *out_w = matrix(VOCAB / h, DIM, 99);
    float *x = calloc(FFN, 4), *y = calloc(VOCAB, 4);
    static uint8_t xq[FFN / 32 * 34], mine[MSG], theirs[MSG];
    for (int i = 0; i < FFN; i++) x[i] = (float)(i % 7) * 0.1f;
    double t0 = 0;
    for (int t = 0; t < tokens + WARM; t++) {
        if (t == WARM) t0 = now(), g_xt = g_wt = 0, g_xn = 0;
        for (int l = 0; l < LAYERS; l++) {
            const layer *W = &L[l];
            matvecs(ctx, y, xq, x, DIM, 3, (uint8_t *const[]){W->wq, W->wk, W->wv}, (const int64_t[]){DIM / h, KV / h, KV / h});
            matvecs(ctx, y, xq, x, DIM / h, 1, (uint8_t *const[]){W->wo}, (const int64_t[]){DIM});
            exchange(fd, mine, theirs);
            matvecs(ctx, y, xq, x, DIM, 2, (uint8_t *const[]){W->w1, W->w3}, (const int64_t[]){FFN / h, FFN / h});
            matvecs(ctx, y, xq, x, FFN / h, 1, (uint8_t *const[]){W->w2}, (const int64_t[]){DIM});
            exchange(fd, mine, theirs);
        }
        matvecs(ctx, y, xq, x, DIM, 1, (uint8_t *const[]){out_w}, (const int64_t[]){VOCAB / h});
        exchange(fd, mine, theirs);
    }
    const double dt = now() - t0;
    if (print)
        printf("tokens_per_s %.2f exchange_us %.1f write_us %.1f\n", tokens / dt, g_xn ? g_xt / g_xn * 1e6 : 0.0,
               g_xn ? g_wt / g_xn * 1e6 : 0.0);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: pair-twin single TOKENS | pair TOKENS POLL\n");
        return 2;
    }
    const int tokens = atoi(argv[2]);
    if (!strcmp(argv[1], "single")) {
        run(1, 2, -1, -1, tokens, 1);
        return 0;
    }
    g_poll = argc > 3 && atoi(argv[3]) != 0;
    const int one = 1;
    const int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (struct sockaddr *)&a, &len)) die("listen");
    const pid_t p = fork();
    if (p < 0) die("fork");
    if (p == 0) {
        const int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a)) die("connect");
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        run(2, 1, c, 1, tokens, 0);
        return 0;
    }
    const int s = accept(ls, 0, 0);
    if (s < 0) die("accept");
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    run(2, 1, s, 0, tokens, 1);
    int status = 0;
    waitpid(p, &status, 0);
    return status == 0 ? 0 : 1;
}
