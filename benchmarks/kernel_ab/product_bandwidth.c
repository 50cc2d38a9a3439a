// Bandwidth of expert-shaped products through two versions of one C kernel, linked in as A_... and
// B_... by run.sh. The matrix (rows x columns) has 24 copies, so every product reads its weights
// from memory as a routed expert does. The two versions alternate 20 times per token count (1-6),
// so both see the same noise, and each one's best is printed. Each thread takes its half of the
// rows in items sized as Kernels' RowItems sizes them, as the thread pool's shares do.
//
// Usage: product_bandwidth bf16|q8_0|q4_0|q4_k|q6_k THREADS [ROWS COLUMNS]   (1 or 2 threads; 3584 x
// 1024 by default). bf16 runs sy_rows_bf16_f32; q8_0 and q4_0 run sy_rows_grouped_q8 on grouped rows
// with int8 activations; q4_k and q6_k run sy_rows_q4_k_q8k / sy_rows_q6_k_q8k on GGUF's
// super-blocks with activations quantised per 256; four tokens a call as the engine calls them.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef void (*grouped_fn)(const void *, long, int, int, int, const int8_t *, const float *, const int32_t *, int, int, int,
                           float *, long);
void A_sy_rows_bf16_f32(const void *, long, int, int, const float *, int, int, float *, long, int);
void B_sy_rows_bf16_f32(const void *, long, int, int, const float *, int, int, float *, long, int);
void A_sy_rows_grouped_q8(const void *, long, int, int, int, const int8_t *, const float *, const int32_t *, int, int, int, float *,
                          long);
void A_sy_force_quantized_dot_level(int);
void B_sy_force_quantized_dot_level(int);
void B_sy_rows_grouped_q8(const void *, long, int, int, int, const int8_t *, const float *, const int32_t *, int, int, int, float *,
                          long);
typedef void (*super_fn)(const void *, long, int, int, const int8_t *, const float *, const int16_t *, int, int, float *, long);
void A_sy_rows_q4_k_q8k(const void *, long, int, int, const int8_t *, const float *, const int16_t *, int, int, float *, long);
void B_sy_rows_q4_k_q8k(const void *, long, int, int, const int8_t *, const float *, const int16_t *, int, int, float *, long);
void A_sy_rows_q6_k_q8k(const void *, long, int, int, const int8_t *, const float *, const int16_t *, int, int, float *, long);
void B_sy_rows_q6_k_q8k(const void *, long, int, int, const int8_t *, const float *, const int16_t *, int, int, float *, long);

enum { copies = 24, max_side = 8192, max_tokens = 6, repetitions = 20 };
enum kind { bf16, q8_0, q4_0, q4_k, q6_k };

static enum kind kind;
static int rows = 3584, columns = 1024, threads, item_rows;
static long row_bytes;
static uint8_t *weights;                                  // [copies][rows][row_bytes]
static float input[max_tokens * max_side];                // bf16: [tokens][columns]
static int8_t values[max_tokens * max_side];              // grouped: [tokens][columns]
static float lane_scales[max_tokens * max_side / 8];      // grouped: [tokens][columns / 8]
static int32_t corrections[max_tokens * max_side / 8];    // grouped: [tokens][columns / 8]
static float super_scales[max_tokens * max_side / 256];   // K-quants: [tokens][columns / 256]
static int16_t sums16[max_tokens * max_side / 16];        // K-quants: [tokens][columns / 16]
static float output[2][max_tokens * max_side];            // per thread: [tokens][rows]
static pthread_barrier_t barrier;
static int version, tokens;
static int tiles_from[2];                                 // per version: A_TILES_FROM, B_TILES_FROM

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void product(const uint8_t *at, int n, float *out) {
    if (kind == bf16) {
        (version ? B_sy_rows_bf16_f32 : A_sy_rows_bf16_f32)(at, row_bytes, n, columns / 32, input, columns, tokens, out, rows,
                                                        tiles_from[version]);
        return;
    }
    if (kind == q4_k || kind == q6_k) {
        super_fn f = kind == q4_k ? (version ? B_sy_rows_q4_k_q8k : A_sy_rows_q4_k_q8k) : (version ? B_sy_rows_q6_k_q8k : A_sy_rows_q6_k_q8k);
        for (int t0 = 0; t0 < tokens; t0 += 4) {
            const int t = tokens - t0 < 4 ? tokens - t0 : 4;
            f(at, row_bytes, n, columns / 256, values + t0 * columns, super_scales + t0 * columns / 256, sums16 + t0 * columns / 16,
              columns, t, out + t0 * rows, rows);
        }
        return;
    }
    grouped_fn f = version ? B_sy_rows_grouped_q8 : A_sy_rows_grouped_q8;
    for (int t0 = 0; t0 < tokens; t0 += 4) {
        const int t = tokens - t0 < 4 ? tokens - t0 : 4;
        f(at, row_bytes, n, columns / 128, kind == q4_0, values + t0 * columns, lane_scales + t0 * columns / 8,
          corrections + t0 * columns / 8, columns, t, tiles_from[version], out + t0 * rows, rows);
    }
}

// One product of every copy; this thread's share of the rows, the threads meeting after each copy.
static void products(int thread) {
    const int share = rows / threads, first = thread * share;
    for (int c = 0; c < copies; c++) {
        for (int r = first; r < first + share; r += item_rows) {
            const int n = first + share - r < item_rows ? first + share - r : item_rows;
            product(weights + ((size_t)c * rows + r) * row_bytes, n, output[thread] + r);
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
    // A_LEVEL / B_LEVEL cap a version's integer kernels (1 AVX2, 2 AVX-VNNI, 3 AVX512-VNNI): two
    // paths of one tree side by side (`A_LEVEL=1 B_LEVEL=2 run.sh q8_0 . .`).
    if (getenv("A_LEVEL")) A_sy_force_quantized_dot_level(atoi(getenv("A_LEVEL")));
    if (getenv("B_LEVEL")) B_sy_force_quantized_dot_level(atoi(getenv("B_LEVEL")));
    const char *k = argc > 1 ? argv[1] : "";
    kind = !strcmp(k, "bf16") ? bf16 : !strcmp(k, "q8_0") ? q8_0 : !strcmp(k, "q4_0") ? q4_0 : !strcmp(k, "q4_k") ? q4_k : !strcmp(k, "q6_k") ? q6_k : -1;
    // A_TILES_FROM / B_TILES_FROM: the grouped kernels' token count from which AVX512-VNNI takes
    // rows in 4-row tiles (the engine's KernelTuning.integerTilesFrom, measured at load by
    // TileChoice; 1, tiles at every count, unless set; a large value keeps one row at a time); for
    // bf16, sy_rows_bf16_f32's count from which passes take 5 tokens (5 unless set, the engine's
    // default).
    tiles_from[0] = tiles_from[1] = kind == bf16 ? 5 : 1;
    if (getenv("A_TILES_FROM")) tiles_from[0] = atoi(getenv("A_TILES_FROM"));
    if (getenv("B_TILES_FROM")) tiles_from[1] = atoi(getenv("B_TILES_FROM"));
    threads = argc > 2 ? atoi(argv[2]) : 0;
    if (argc > 4) {
        rows = atoi(argv[3]);
        columns = atoi(argv[4]);
    }
    const int multiple = kind == bf16 ? 32 : kind == q4_k || kind == q6_k ? 256 : 128;
    if ((int)kind < 0 || threads < 1 || threads > 2 || rows < 2 || rows > max_side || rows % 2 || columns < multiple ||
        columns > max_side || columns % multiple) {
        fprintf(stderr, "usage: product_bandwidth bf16|q8_0|q4_0|q4_k|q6_k 1|2 [ROWS COLUMNS]: an even number of rows and a multiple of %d columns, up to %d\n",
                multiple, max_side);
        return 1;
    }
    row_bytes = kind == bf16 ? columns * 2L
                : kind == q4_k ? (long)(columns / 256) * 144
                : kind == q6_k ? (long)(columns / 256) * 210
                               : (long)(columns / 128) * (kind == q8_0 ? 136 : 72);
    // As RowItems: at most 256 rows or 512 KiB an item, at least 8 rows, about 8 items a thread.
    item_rows = (rows / (threads * 8) + 1);
    if (item_rows > (512 << 10) / row_bytes) item_rows = (512 << 10) / row_bytes;
    if (item_rows > 256) item_rows = 256;
    if (item_rows < 8) item_rows = 8;
    item_rows = (item_rows + 3) / 4 * 4;
    const size_t bytes = (size_t)copies * rows * row_bytes;
    weights = aligned_alloc(2 << 20, (bytes + (2 << 20) - 1) / (2 << 20) * (2 << 20));
    if (!weights) return 1;
    madvise(weights, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < bytes; i++) weights[i] = (uint8_t)(i * 2654435761u >> 24);
    if (kind == bf16) {
        uint16_t *w = (uint16_t *)weights;
        for (size_t i = 0; i < bytes / 2; i++) w[i] = 0x3C00 | ((i * 2654435761u >> 25) & 127);  // small positive values
    } else if (kind == q4_k || kind == q6_k) {
        // Float16 d (and Q4_K's dmin) of 1/1024 keep the sums finite.
        const long block = kind == q4_k ? 144 : 210;
        for (size_t b = 0; b < bytes / block; b++) {
            uint16_t *s = (uint16_t *)(weights + b * block + (kind == q4_k ? 0 : 208));
            s[0] = 0x1400;
            if (kind == q4_k) s[1] = 0x1400;
        }
    } else {
        // Float16 scales of 1.0 at each group's head keep the sums finite.
        for (size_t g = 0; g < bytes / (row_bytes / (columns / 128)); g++) {
            uint16_t *s = (uint16_t *)(weights + g * (row_bytes / (columns / 128)));
            for (int b = 0; b < 4; b++) s[b] = 0x3C00;
        }
    }
    for (int i = 0; i < max_tokens * max_side; i++) {
        input[i] = (i % 7) * 0.125f - 0.375f;
        values[i] = (int8_t)(i % 13 - 6);
    }
    for (int i = 0; i < max_tokens * max_side / 8; i++) {
        lane_scales[i] = 0.01f;
        corrections[i] = -(i % 5);
    }
    for (int i = 0; i < max_tokens * max_side / 256; i++) super_scales[i] = 0.01f;
    for (int i = 0; i < max_tokens * max_side / 16; i++) sums16[i] = (int16_t)(i % 31 - 15);

    pthread_barrier_init(&barrier, NULL, threads);
    pthread_t helper;
    if (threads > 1) pthread_create(&helper, NULL, second_thread, NULL);
    double best[2][max_tokens + 1];
    for (int v = 0; v < 2; v++)
        for (int t = 0; t <= max_tokens; t++) best[v][t] = 1e9;
    for (int rep = 0; rep < repetitions; rep++)
        for (int t = 1; t <= max_tokens; t++)
            for (int v = 0; v < 2; v++) {
                version = v;
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
