#include "KernelsC.h"
#include "levels.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// ---- bf16 rows against float32 activations ----
//
// The C twin of Kernels' dotRowBF16 (MatMul.swift), for the prefetch instruction Swift cannot
// spell: 32 bf16 load as 16 uint32 lanes; lane << 16 is the even element and lane & 0xFFFF0000 the
// odd one; activations are permuted per block of 32 (16 even-indexed values, then 16 odd). Each
// token has one 16-lane accumulator (two ymm on AVX2, one zmm on AVX-512) taking the even product
// then the odd one, fused; the result is ((lanes i + i+8) folded to 4 as i + i+4) summed as
// (b0 + b1) + (b2 + b3), exactly the Swift kernel's order, so the two agree bit for bit.

#if defined(__x86_64__)

__attribute__((target("avx2,fma")))
static inline float bf16_reduce16(__m256 lo, __m256 hi) {
    __m256 a = _mm256_add_ps(lo, hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    float v[4];
    _mm_storeu_ps(v, b);
    return (v[0] + v[1]) + (v[2] + v[3]);
}

__attribute__((target("avx2,fma"), always_inline))
static inline void bf16_avx2_n(const uint8_t *row, int blocks, const float *x, int stride, const int tokens, float *out) {
    const __m256i mask = _mm256_set1_epi32((int)0xFFFF0000u);
    __m256 lo0 = _mm256_setzero_ps(), hi0 = _mm256_setzero_ps(), lo1 = _mm256_setzero_ps(), hi1 = _mm256_setzero_ps();
    __m256 lo2 = _mm256_setzero_ps(), hi2 = _mm256_setzero_ps(), lo3 = _mm256_setzero_ps(), hi3 = _mm256_setzero_ps();
    for (int k = 0; k < blocks; k++) {
        const uint8_t *w = row + 64 * k;
        __builtin_prefetch(w + SY_PREFETCH_DISTANCE);
        __m256i r0 = _mm256_loadu_si256((const __m256i *)w), r1 = _mm256_loadu_si256((const __m256i *)(w + 32));
        __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(r0, 16)), e1 = _mm256_castsi256_ps(_mm256_slli_epi32(r1, 16));
        __m256 o0 = _mm256_castsi256_ps(_mm256_and_si256(r0, mask)), o1 = _mm256_castsi256_ps(_mm256_and_si256(r1, mask));
#define SY_BF16_TOKEN(T, LO, HI)                                                                   \
        if (tokens > T) {                                                                          \
            const float *xt = x + (long)T * stride + 32 * k;                                       \
            LO = _mm256_fmadd_ps(e0, _mm256_loadu_ps(xt), LO);                                     \
            HI = _mm256_fmadd_ps(e1, _mm256_loadu_ps(xt + 8), HI);                                 \
            LO = _mm256_fmadd_ps(o0, _mm256_loadu_ps(xt + 16), LO);                                \
            HI = _mm256_fmadd_ps(o1, _mm256_loadu_ps(xt + 24), HI);                                \
        }
        SY_BF16_TOKEN(0, lo0, hi0)
        SY_BF16_TOKEN(1, lo1, hi1)
        SY_BF16_TOKEN(2, lo2, hi2)
        SY_BF16_TOKEN(3, lo3, hi3)
#undef SY_BF16_TOKEN
    }
    out[0] = bf16_reduce16(lo0, hi0);
    if (tokens > 1) out[1] = bf16_reduce16(lo1, hi1);
    if (tokens > 2) out[2] = bf16_reduce16(lo2, hi2);
    if (tokens > 3) out[3] = bf16_reduce16(lo3, hi3);
}

__attribute__((target("avx512f,avx2,fma")))
static inline float bf16_reduce512(__m512 v) {
    return bf16_reduce16(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void bf16_avx512_n(const uint8_t *row, int blocks, const float *x, int stride, const int tokens, float *out) {
    const __m512i mask = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int k = 0; k < blocks; k++) {
        const uint8_t *w = row + 64 * k;
        __builtin_prefetch(w + SY_PREFETCH_DISTANCE);
        __m512i r = _mm512_loadu_si512((const void *)w);
        __m512 e = _mm512_castsi512_ps(_mm512_slli_epi32(r, 16)), o = _mm512_castsi512_ps(_mm512_and_si512(r, mask));
#define SY_BF16_TOKEN(T, A)                                                                        \
        if (tokens > T) {                                                                          \
            const float *xt = x + (long)T * stride + 32 * k;                                       \
            A = _mm512_fmadd_ps(e, _mm512_loadu_ps(xt), A);                                        \
            A = _mm512_fmadd_ps(o, _mm512_loadu_ps(xt + 16), A);                                   \
        }
        SY_BF16_TOKEN(0, a0)
        SY_BF16_TOKEN(1, a1)
        SY_BF16_TOKEN(2, a2)
        SY_BF16_TOKEN(3, a3)
#undef SY_BF16_TOKEN
    }
    out[0] = bf16_reduce512(a0);
    if (tokens > 1) out[1] = bf16_reduce512(a1);
    if (tokens > 2) out[2] = bf16_reduce512(a2);
    if (tokens > 3) out[3] = bf16_reduce512(a3);
}

#define SY_INSTANTIATE_BF16(NAME, KERNEL, TARGET)                                                  \
    __attribute__((target(TARGET)))                                                                \
    static void NAME(const uint8_t *row, int blocks, const float *x, int stride, int tokens, float *out) { \
        switch (tokens) {                                                                          \
        case 1: KERNEL(row, blocks, x, stride, 1, out); break;                                     \
        case 2: KERNEL(row, blocks, x, stride, 2, out); break;                                     \
        case 3: KERNEL(row, blocks, x, stride, 3, out); break;                                     \
        default: KERNEL(row, blocks, x, stride, 4, out); break;                                    \
        }                                                                                          \
    }

SY_INSTANTIATE_BF16(bf16_avx2, bf16_avx2_n, "avx2,fma")
SY_INSTANTIATE_BF16(bf16_avx512, bf16_avx512_n, "avx512f,avx2,fma")

static int bf16_detected = -1;

int sy_bf16_level(void) {
    if (bf16_detected < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) {
            bf16_detected = 2;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            bf16_detected = 1;
        } else {
            bf16_detected = 0;
        }
    }
    // An integer cap below AVX-512 (AVX-VNNI, AVX2) allows these kernels AVX2 (1); a cap of 0, none.
    int forced = sy_forced_level();
    int cap = forced < 0 || forced >= SY_LEVEL_AVX512_VNNI ? 2 : forced >= SY_LEVEL_AVX2 ? 1 : 0;
    return cap < bf16_detected ? cap : bf16_detected;
}

#define SY_TILE_TOKENS 5
// A tile of 4 rows x up to 5 tokens, one accumulator per row and token, each taking exactly the
// operations of bf16_avx512_n's accumulator for that row and token (the even product, then the odd
// one, per block; the same final sum), so a token's result does not depend on the tokens it shares
// a product with, nor on whether its row went through a tile. One row makes one chain of dependent
// multiply-adds per token, which the multiply-add latency holds to a fraction of the machine's
// rate (decode and batched decode then cannot keep enough loads in flight to reach the memory's
// bandwidth); four rows make four independent chains per token. Each weight vector loaded serves
// every token, each activation vector four rows. At 5 tokens: 20 accumulators, 4 rows and their 4
// widened halves, 1 activation vector and the mask fit the 32 registers; with 4 x 6 clang spilled
// the accumulators. Single thread, weights in L2, 5 tokens: 19 multiply-adds a cycle of 32,
// against 12 for the one-row kernel.
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void bf16_tile_n(const uint8_t *row, long row_bytes, int blocks, const float *x, int stride, const int tokens, float *out,
                               long out_stride) {
    const __m512i mask = _mm512_set1_epi32((int)0xFFFF0000u);
    const uint8_t *r0 = row, *r1 = row + row_bytes, *r2 = row + 2 * row_bytes, *r3 = row + 3 * row_bytes;
    const float *x0 = x, *x1 = x + stride, *x2 = x + 2 * (long)stride, *x3 = x + 3 * (long)stride, *x4 = x + 4 * (long)stride;
#define SY_ZERO4(T) __m512 a0##T = _mm512_setzero_ps(), a1##T = _mm512_setzero_ps(), a2##T = _mm512_setzero_ps(), a3##T = _mm512_setzero_ps();
    SY_ZERO4(0) SY_ZERO4(1) SY_ZERO4(2) SY_ZERO4(3) SY_ZERO4(4)
#undef SY_ZERO4
    for (int k = 0; k < blocks; k++) {
        // Decode streams these rows from memory (prefill finds them in L2): fetch the next tile's
        // rows, one tile ahead. A fixed distance past each row would land in the row below it,
        // which this tile is reading already when rows are short (2 KiB: gate and up).
        __builtin_prefetch(r0 + 64 * k + 4 * row_bytes);
        __builtin_prefetch(r1 + 64 * k + 4 * row_bytes);
        __builtin_prefetch(r2 + 64 * k + 4 * row_bytes);
        __builtin_prefetch(r3 + 64 * k + 4 * row_bytes);
        __m512i raw0 = _mm512_loadu_si512((const void *)(r0 + 64 * k)), raw1 = _mm512_loadu_si512((const void *)(r1 + 64 * k));
        __m512i raw2 = _mm512_loadu_si512((const void *)(r2 + 64 * k)), raw3 = _mm512_loadu_si512((const void *)(r3 + 64 * k));
        __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(raw0, 16)), w1 = _mm512_castsi512_ps(_mm512_slli_epi32(raw1, 16));
        __m512 w2 = _mm512_castsi512_ps(_mm512_slli_epi32(raw2, 16)), w3 = _mm512_castsi512_ps(_mm512_slli_epi32(raw3, 16));
#define SY_FMA4(T, XP)                                                                             \
        if (tokens > T) {                                                                          \
            __m512 v = _mm512_loadu_ps(XP);                                                        \
            a0##T = _mm512_fmadd_ps(w0, v, a0##T); a1##T = _mm512_fmadd_ps(w1, v, a1##T);          \
            a2##T = _mm512_fmadd_ps(w2, v, a2##T); a3##T = _mm512_fmadd_ps(w3, v, a3##T);          \
        }
        SY_FMA4(0, x0 + 32 * k) SY_FMA4(1, x1 + 32 * k) SY_FMA4(2, x2 + 32 * k) SY_FMA4(3, x3 + 32 * k) SY_FMA4(4, x4 + 32 * k)
        w0 = _mm512_castsi512_ps(_mm512_and_si512(raw0, mask)); w1 = _mm512_castsi512_ps(_mm512_and_si512(raw1, mask));
        w2 = _mm512_castsi512_ps(_mm512_and_si512(raw2, mask)); w3 = _mm512_castsi512_ps(_mm512_and_si512(raw3, mask));
        SY_FMA4(0, x0 + 32 * k + 16) SY_FMA4(1, x1 + 32 * k + 16) SY_FMA4(2, x2 + 32 * k + 16) SY_FMA4(3, x3 + 32 * k + 16)
        SY_FMA4(4, x4 + 32 * k + 16)
#undef SY_FMA4
    }
    // Out of registers first: with the reductions inlined here, clang kept the accumulators on
    // the stack through the whole loop.
    float lanes[20][16];
#define SY_STORE4(T)                                                                               \
    if (tokens > T) {                                                                              \
        _mm512_storeu_ps(lanes[4 * T + 0], a0##T); _mm512_storeu_ps(lanes[4 * T + 1], a1##T);      \
        _mm512_storeu_ps(lanes[4 * T + 2], a2##T); _mm512_storeu_ps(lanes[4 * T + 3], a3##T);      \
    }
    SY_STORE4(0) SY_STORE4(1) SY_STORE4(2) SY_STORE4(3) SY_STORE4(4)
#undef SY_STORE4
    for (int t = 0; t < tokens; t++)
        for (int r = 0; r < 4; r++) out[t * out_stride + r] = sy_reduce16(lanes[4 * t + r]);
}

__attribute__((target("avx512f,avx2,fma")))
static void bf16_tile(const uint8_t *row, long row_bytes, int blocks, const float *x, int stride, int tokens, float *out, long out_stride) {
    switch (tokens) {
    case 1: bf16_tile_n(row, row_bytes, blocks, x, stride, 1, out, out_stride); break;
    case 2: bf16_tile_n(row, row_bytes, blocks, x, stride, 2, out, out_stride); break;
    case 3: bf16_tile_n(row, row_bytes, blocks, x, stride, 3, out, out_stride); break;
    case 4: bf16_tile_n(row, row_bytes, blocks, x, stride, 4, out, out_stride); break;
    default: bf16_tile_n(row, row_bytes, blocks, x, stride, 5, out, out_stride); break;
    }
}

void sy_rows_bf16_f32(const void *base, long row_bytes, int nrows, int blocks, const float *x, int stride, int tokens, float *out,
                      long out_stride, int tile_from) {
    const int level = sy_bf16_level();
    void (*kernel)(const uint8_t *, int, const float *, int, int, float *) = level == 2 ? bf16_avx512 : bf16_avx2;
    // Tokens per pass over the rows: below `tile_from` a pass takes 4 tokens (the one-row kernel's
    // most) and reads the rows from memory once per 4 tokens; from it on, 5 (the caller keeps a
    // block of rows small enough for the core's L2, where the later passes find them).
    const int step = level == 2 && tokens >= tile_from && tokens >= SY_TILE_TOKENS ? SY_TILE_TOKENS : 4;
    float sums[4];
    for (int t0 = 0; t0 < tokens; t0 += step) {
        const int count = tokens - t0 < step ? tokens - t0 : step;
        int r = 0;
        if (level == 2)
            for (; r + 4 <= nrows; r += 4)
                bf16_tile((const uint8_t *)base + r * row_bytes, row_bytes, blocks, x + (long)t0 * stride, stride, count, out + t0 * out_stride + r,
                          out_stride);
        for (; r < nrows; r++) {
            for (int t = t0; t < t0 + count; t += 4) {
                const int n = t0 + count - t < 4 ? t0 + count - t : 4;
                kernel((const uint8_t *)base + r * row_bytes, blocks, x + (long)t * stride, stride, n, sums);
                for (int i = 0; i < n; i++) out[(t + i) * out_stride + r] = sums[i];
            }
        }
    }
}

#else

int sy_bf16_level(void) { return 0; }

void sy_rows_bf16_f32(const void *base, long row_bytes, int nrows, int blocks, const float *x, int stride, int tokens, float *out,
                      long out_stride, int tile_from) {
    (void)tile_from;
    (void)base; (void)row_bytes; (void)nrows; (void)blocks; (void)x; (void)stride; (void)tokens; (void)out; (void)out_stride;
}

#endif
