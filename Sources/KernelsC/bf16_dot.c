#include "KernelsC.h"
#include "levels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// ---- bf16 rows against bf16 activations: AVX512-BF16's vdpbf16ps ----
//
// llama.cpp's BF16 path: the activations are rounded to bf16 once per product, and each vdpbf16ps
// multiplies 32 weight-activation pairs into 16 float lanes (lane i takes pair 2i+1, then pair
// 2i: two rounded adds of exact products, denormals flushed), twice the work of widening the
// weights and multiplying in f32. Weights and activations stay in their natural order (a lane's
// pair is adjacent in both). Each lane sum is reduced in the kernels' fixed order (sy_reduce16), so
// Kernels' dotRowBF16Rounded, its Swift twin, gives the same bits, and a token's result never
// depends on the tokens or rows it shares a tile with.

#if defined(__x86_64__)

static int dp_detected = -1;

int sy_bf16dp_level(void) {
    if (dp_detected < 0) {
        __builtin_cpu_init();
        dp_detected = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    }
    int forced = sy_forced_level();
    // A cap below AVX-512 (the tests' way to run the Swift paths) turns it off too.
    return forced >= 0 && forced < SY_LEVEL_AVX512_VNNI ? 0 : dp_detected;
}

// R rows x T tokens (constants after inlining): R x T accumulators, each weight vector serving T
// tokens and each activation vector R rows. 4 x 6 = 24 accumulators, 4 weight vectors and one
// activation vector fit AVX-512's 32 registers.
__attribute__((target("avx512f,avx512bf16"), always_inline))
static inline void dp_tile(const uint8_t *rows, long row_bytes, int blocks, const uint16_t *x, int stride, float *out, long out_stride,
                           const int R, const int T) {
    __m512 acc[4][6];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int k = 0; k < blocks; k++) {
        __m512i w[4];
        for (int r = 0; r < R; r++) {
            const uint8_t *p = rows + r * row_bytes + 64 * k;
            // The next tile's rows (the next row's, one row at a time), as the f32 tile fetches
            // them: a fixed distance past each row lands in the row below when rows are short
            // (2 KiB at 1024 columns), which this tile reads already, and left the stream unfetched
            // (2 tokens from memory, 1 thread, AMD EPYC Zen 5: 13.4 GB/s against the f32 tile's 22.9).
            __builtin_prefetch(p + R * row_bytes);
            w[r] = _mm512_loadu_si512((const void *)p);
        }
        for (int t = 0; t < T; t++) {
            __m512i a = _mm512_loadu_si512((const void *)(x + (long)t * stride + 32 * k));
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)w[r], (__m512bh)a);
        }
    }
    float lanes[16];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            _mm512_storeu_ps(lanes, acc[r][t]);
            out[t * out_stride + r] = sy_reduce16(lanes);
        }
}

#define SY_DP_TOKENS 6

__attribute__((target("avx512f,avx512bf16")))
static void dp_rows(const uint8_t *rows, long row_bytes, int blocks, const uint16_t *x, int stride, float *out, long out_stride, int nrows,
                    int tokens) {
    // Specialised per token count, so every accumulator is a register.
#define SY_DP_CASE(R)                                                                                   \
    switch (tokens) {                                                                                   \
    case 1: dp_tile(rows, row_bytes, blocks, x, stride, out, out_stride, R, 1); break;                 \
    case 2: dp_tile(rows, row_bytes, blocks, x, stride, out, out_stride, R, 2); break;                 \
    case 3: dp_tile(rows, row_bytes, blocks, x, stride, out, out_stride, R, 3); break;                 \
    case 4: dp_tile(rows, row_bytes, blocks, x, stride, out, out_stride, R, 4); break;                 \
    case 5: dp_tile(rows, row_bytes, blocks, x, stride, out, out_stride, R, 5); break;                 \
    default: dp_tile(rows, row_bytes, blocks, x, stride, out, out_stride, R, 6); break;                \
    }
    if (nrows == 4) {
        SY_DP_CASE(4)
    } else {
        SY_DP_CASE(1)
    }
#undef SY_DP_CASE
}

void sy_rows_bf16_bf16(const void *base, long row_bytes, int nrows, int blocks, const uint16_t *x, int stride, int tokens, int tiles_from,
                       float *out, long out_stride) {
    for (int t0 = 0; t0 < tokens; t0 += SY_DP_TOKENS) {
        const int count = tokens - t0 < SY_DP_TOKENS ? tokens - t0 : SY_DP_TOKENS;
        int r = 0;
        for (; count >= tiles_from && r + 4 <= nrows; r += 4)
            dp_rows((const uint8_t *)base + r * row_bytes, row_bytes, blocks, x + (long)t0 * stride, stride, out + t0 * out_stride + r,
                    out_stride, 4, count);
        for (; r < nrows; r++)
            dp_rows((const uint8_t *)base + r * row_bytes, row_bytes, blocks, x + (long)t0 * stride, stride, out + t0 * out_stride + r,
                    out_stride, 1, count);
    }
}

#else

int sy_bf16dp_level(void) { return 0; }

void sy_rows_bf16_bf16(const void *base, long row_bytes, int nrows, int blocks, const uint16_t *x, int stride, int tokens, int tiles_from,
                       float *out, long out_stride) {
    (void)base; (void)row_bytes; (void)nrows; (void)blocks; (void)x; (void)stride; (void)tokens; (void)tiles_from; (void)out; (void)out_stride;
}

#endif
