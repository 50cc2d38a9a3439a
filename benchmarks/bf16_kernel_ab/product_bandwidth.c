// Bandwidth of bf16 products through two versions of sy_rows_bf16_f32, linked in as A_rows and
// B_rows by run.sh. The matrix (rows x columns) has 24 copies, so every product reads its weights
// from memory as a routed expert does. The two versions alternate 20 times per token count (1-6),
// so both see the same noise, and each one's best is printed. Rows are split between the threads
// in items of 256, as Kernels' RowItems does.
//
// Usage: product_bandwidth THREADS [ROWS COLUMNS]   (1 or 2 threads; 3584 x 1024 by default)
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

typedef void (*rows_fn)(const void *rows, long row_bytes, int nrows, int blocks, const float *x, int stride, int tokens, float *out,
                        long out_stride);
void A_rows(const void *, long, int, int, const float *, int, int, float *, long);
void B_rows(const void *, long, int, int, const float *, int, int, float *, long);

enum { copies = 24, max_side = 8192, max_tokens = 6, item_rows = 256, repetitions = 20 };

static int rows = 3584, columns = 1024, threads;
static uint16_t *weights;                                 // [copies][rows][columns] bf16
static float input[max_tokens * max_side];                // [tokens][columns]
static float output[2][max_tokens * max_side];            // per thread: [tokens][rows]
static pthread_barrier_t barrier;
static rows_fn kernel;
static int tokens;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// One product of every copy; this thread's share of the rows, the threads meeting after each copy.
static void products(int thread) {
    const int share = rows / threads, first = thread * share;
    for (int c = 0; c < copies; c++) {
        for (int r = first; r < first + share; r += item_rows) {
            const int n = first + share - r < item_rows ? first + share - r : item_rows;
            kernel((const char *)weights + ((size_t)c * rows + r) * columns * 2, columns * 2, n, columns / 32, input, columns, tokens,
                   output[thread] + r, rows);
        }
        pthread_barrier_wait(&barrier);
    }
}

// The second thread runs a round of products each time the main thread starts one.
static void *second_thread(void *unused) {
    (void)unused;
    for (;;) {
        pthread_barrier_wait(&barrier);
        products(1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    threads = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 3) {
        rows = atoi(argv[2]);
        columns = atoi(argv[3]);
    }
    if (threads < 1 || threads > 2 || rows < 2 || rows > max_side || rows % 2 || columns < 32 || columns > max_side || columns % 32) {
        fprintf(stderr, "usage: product_bandwidth 1|2 [ROWS COLUMNS]: an even number of rows and a multiple of 32 columns, up to %d\n",
                max_side);
        return 1;
    }
    const size_t bytes = (size_t)copies * rows * columns * 2;
    weights = aligned_alloc(2 << 20, bytes);
    if (!weights) return 1;
    madvise(weights, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < bytes / 2; i++) weights[i] = 0x3C00 | ((i * 2654435761u >> 25) & 127);  // small positive values
    for (int i = 0; i < max_tokens * max_side; i++) input[i] = (i % 7) * 0.125f - 0.375f;

    pthread_barrier_init(&barrier, NULL, threads);
    pthread_t helper;
    if (threads > 1) pthread_create(&helper, NULL, second_thread, NULL);
    double best[2][max_tokens + 1];
    for (int v = 0; v < 2; v++)
        for (int t = 0; t <= max_tokens; t++) best[v][t] = 1e9;
    for (int rep = 0; rep < repetitions; rep++)
        for (int t = 1; t <= max_tokens; t++)
            for (int v = 0; v < 2; v++) {
                kernel = v ? B_rows : A_rows;
                tokens = t;
                const double start = now();
                if (threads > 1) pthread_barrier_wait(&barrier);
                products(0);
                const double seconds = now() - start;
                if (seconds < best[v][t]) best[v][t] = seconds;
            }
    for (int v = 0; v < 2; v++) {
        printf("%s:", v ? "B" : "A");
        for (int t = 1; t <= max_tokens; t++) printf(" %5.1f", bytes / best[v][t] / 1e9);
        printf(" GB/s (tokens 1..%d)\n", max_tokens);
    }
    return 0;  // the second thread waits at the barrier; exiting ends it
}
