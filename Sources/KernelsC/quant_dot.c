#include "KernelsC.h"
#include "levels.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static int forced = -1;

static inline float reduce8(const float a[8]) {
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

// The 6-bit scales and mins of a Q4_K super-block's eight sub-blocks, from its 12 packed bytes.
static inline void q4k_scales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void q4k_portable(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const float *xs, int stride,
                         int tokens, float *out) {
    const int scales = stride / 32;
    for (int t = 0; t < tokens; t++) {
        float acc[8] = {0}, mins = 0;
        for (int b = 0; b < superblocks; b++) {
            const uint8_t *block = row + b * 144;
            uint16_t h;
            memcpy(&h, block, 2);
            float d = sy_half(h);
            memcpy(&h, block + 2, 2);
            float dmin = sy_half(h);
            uint8_t sc[8], mn[8];
            q4k_scales(block + 4, sc, mn);
            for (int j = 0; j < 8; j++) {
                const uint8_t *q = block + 16 + 32 * (j / 2);
                const int shift = (j % 2) * 4;
                const int8_t *x = xq + t * stride + b * 256 + 32 * j;
                float s = (d * (float)sc[j]) * xd[t * scales + b * 8 + j];
                for (int lane = 0; lane < 8; lane++) {
                    int32_t sum = 0;
                    for (int k = 0; k < 4; k++) sum += (int32_t)((q[4 * lane + k] >> shift) & 0x0F) * (int32_t)x[4 * lane + k];
                    acc[lane] = fmaf((float)sum, s, acc[lane]);
                }
            }
            for (int j = 0; j < 8; j++) mins = fmaf(dmin * (float)mn[j], xs[t * scales + b * 8 + j], mins);
        }
        out[t] = reduce8(acc) - mins;
    }
}

// Portable: the definition, lane by lane.
static void dot_portable(const uint8_t *row, int blocks, int q4, const int8_t *xq, const float *xd, int stride, int tokens, float *out) {
    const int block_bytes = q4 ? 18 : 34;
    for (int t = 0; t < tokens; t++) {
        float acc[8] = {0};
        for (int b = 0; b < blocks; b++) {
            const uint8_t *block = row + b * block_bytes;
            uint16_t h;
            memcpy(&h, block, 2);
            int8_t w[32];
            if (q4) {
                for (int j = 0; j < 16; j++) {
                    w[j] = (int8_t)((block[2 + j] & 0x0F) - 8);
                    w[j + 16] = (int8_t)((block[2 + j] >> 4) - 8);
                }
            } else {
                memcpy(w, block + 2, 32);
            }
            const int8_t *x = xq + t * stride + b * 32;
            float d = sy_half(h) * xd[t * (stride / 32) + b];
            for (int lane = 0; lane < 8; lane++) {
                int32_t s = 0;
                for (int k = 0; k < 4; k++) s += (int32_t)w[4 * lane + k] * (int32_t)x[4 * lane + k];
                acc[lane] = fmaf((float)s, d, acc[lane]);
            }
        }
        out[t] = reduce8(acc);
    }
}

#if defined(__x86_64__)

// A block's float16 scale, exact (levels.h says why not F16C).
static inline float half_exact(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return sy_half(h);
}

__attribute__((target("avx2,fma,f16c")))
static inline __m256i load_weights(const uint8_t *block, int q4) {
    if (q4) {
        __m128i packed = _mm_loadu_si128((const __m128i *)(block + 2));
        __m128i low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
        __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
        __m256i both = _mm256_set_m128i(high, low);
        return _mm256_sub_epi8(both, _mm256_set1_epi8(8));
    }
    return _mm256_loadu_si256((const __m256i *)(block + 2));
}

__attribute__((target("avx2,fma,f16c")))
static inline float reduce256(__m256 v) {
    float a[8];
    _mm256_storeu_ps(a, v);
    return reduce8(a);
}

// The kernels below are written once with the token count and format as constants and
// instantiated for each (always_inline with literal arguments), so the compiler keeps every
// accumulator in a register and unrolls the token loop: with a run-time count they lived on the
// stack and each block waited on a store and a reload.
#define SY_KERNEL_BODY(QUADS)                                                                      \
    const int block_bytes = q4 ? 18 : 34;                                                          \
    const int scales = stride / 32;                                                                \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                 \
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();                                 \
    for (int b = 0; b < blocks; b++) {                                                             \
        const uint8_t *block = row + b * block_bytes;                                              \
        float dw = half_exact(block);                                                                 \
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE);                                          \
        __m256i w = load_weights(block, q4);                                                       \
        __m256i aw = _mm256_sign_epi8(w, w); /* |w| as unsigned bytes */                           \
        for (int t = 0; t < tokens; t++) {                                                         \
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + t * stride + b * 32));           \
            __m256i sx = _mm256_sign_epi8(x, w); /* x with w's sign: |w| * sx = w * x */           \
            __m256 d = _mm256_set1_ps(dw * xd[t * scales + b]);                                    \
            __m256 f = _mm256_cvtepi32_ps(QUADS);                                                  \
            if (t == 0) acc0 = _mm256_fmadd_ps(f, d, acc0);                                        \
            if (t == 1) acc1 = _mm256_fmadd_ps(f, d, acc1);                                        \
            if (t == 2) acc2 = _mm256_fmadd_ps(f, d, acc2);                                        \
            if (t == 3) acc3 = _mm256_fmadd_ps(f, d, acc3);                                        \
        }                                                                                          \
    }                                                                                              \
    out[0] = reduce256(acc0);                                                                      \
    if (tokens > 1) out[1] = reduce256(acc1);                                                      \
    if (tokens > 2) out[2] = reduce256(acc2);                                                      \
    if (tokens > 3) out[3] = reduce256(acc3);

__attribute__((target("avx2,fma,f16c"), always_inline))
static inline void dot_avx2_n(const uint8_t *row, int blocks, const int q4, const int8_t *xq, const float *xd, int stride,
                              const int tokens, float *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    SY_KERNEL_BODY(_mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones))
}

__attribute__((target("avx512vnni,avx512vl,avx512bw,avx2,fma,f16c"), always_inline))
static inline void dot_vnni_n(const uint8_t *row, int blocks, const int q4, const int8_t *xq, const float *xd, int stride,
                              const int tokens, float *out) {
    SY_KERNEL_BODY(_mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx))
}

#define SY_INSTANTIATE(NAME, KERNEL, TARGET)                                                       \
    __attribute__((target(TARGET)))                                                                \
    static void NAME(const uint8_t *row, int blocks, int q4, const int8_t *xq, const float *xd,    \
                     int stride, int tokens, float *out) {                                         \
        if (q4) {                                                                                  \
            switch (tokens) {                                                                      \
            case 1: KERNEL(row, blocks, 1, xq, xd, stride, 1, out); break;                         \
            case 2: KERNEL(row, blocks, 1, xq, xd, stride, 2, out); break;                         \
            case 3: KERNEL(row, blocks, 1, xq, xd, stride, 3, out); break;                         \
            default: KERNEL(row, blocks, 1, xq, xd, stride, 4, out); break;                        \
            }                                                                                      \
        } else {                                                                                   \
            switch (tokens) {                                                                      \
            case 1: KERNEL(row, blocks, 0, xq, xd, stride, 1, out); break;                         \
            case 2: KERNEL(row, blocks, 0, xq, xd, stride, 2, out); break;                         \
            case 3: KERNEL(row, blocks, 0, xq, xd, stride, 3, out); break;                         \
            default: KERNEL(row, blocks, 0, xq, xd, stride, 4, out); break;                        \
            }                                                                                      \
        }                                                                                          \
    }

SY_INSTANTIATE(dot_avx2, dot_avx2_n, "avx2,fma,f16c")
SY_INSTANTIATE(dot_vnni, dot_vnni_n, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")

// Q4_K rows against activations quantised per block of 32: for every sub-block j of 32 values,
// lane i of the int32 sum holds q·x over elements 4i..4i+3 (q unsigned 0..15, so no sign trick),
// converted to float and fused-multiply-added with (d·scale_j)·xd_j; the mins contribute
// (dmin·min_j)·xs_j (xs = xd × the block's sum of int8 values), accumulated in a scalar with fmaf.
#define SY_Q4K_BODY(QUADS)                                                                         \
    const int scales = stride / 32;                                                                \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                 \
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();                                 \
    float mins[4] = {0, 0, 0, 0};                                                                  \
    const __m256i nibble = _mm256_set1_epi8(0x0F);                                                 \
    for (int b = 0; b < superblocks; b++) {                                                        \
        const uint8_t *block = row + b * 144;                                                      \
        float d = half_exact(block), dmin = half_exact(block + 2);                                     \
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE);                                          \
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 64);                                     \
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 128);                                    \
        uint8_t sc[8], mn[8];                                                                      \
        q4k_scales(block + 4, sc, mn);                                                             \
        for (int c = 0; c < 4; c++) {                                                              \
            __m256i q = _mm256_loadu_si256((const __m256i *)(block + 16 + 32 * c));                \
            __m256i lo = _mm256_and_si256(q, nibble);                                              \
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);                        \
            float s0 = d * (float)sc[2 * c], s1 = d * (float)sc[2 * c + 1];                        \
            for (int t = 0; t < tokens; t++) {                                                     \
                const int8_t *x = xq + t * stride + b * 256 + 64 * c;                              \
                const float *xdt = xd + t * scales + b * 8 + 2 * c;                                \
                __m256i x0 = _mm256_loadu_si256((const __m256i *)x);                               \
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + 32));                        \
                __m256 f0 = _mm256_cvtepi32_ps(QUADS(lo, x0));                                     \
                __m256 f1 = _mm256_cvtepi32_ps(QUADS(hi, x1));                                     \
                __m256 d0 = _mm256_set1_ps(s0 * xdt[0]), d1 = _mm256_set1_ps(s1 * xdt[1]);         \
                if (t == 0) { acc0 = _mm256_fmadd_ps(f0, d0, acc0); acc0 = _mm256_fmadd_ps(f1, d1, acc0); } \
                if (t == 1) { acc1 = _mm256_fmadd_ps(f0, d0, acc1); acc1 = _mm256_fmadd_ps(f1, d1, acc1); } \
                if (t == 2) { acc2 = _mm256_fmadd_ps(f0, d0, acc2); acc2 = _mm256_fmadd_ps(f1, d1, acc2); } \
                if (t == 3) { acc3 = _mm256_fmadd_ps(f0, d0, acc3); acc3 = _mm256_fmadd_ps(f1, d1, acc3); } \
            }                                                                                      \
        }                                                                                          \
        for (int t = 0; t < tokens; t++) {                                                         \
            const float *xst = xs + t * scales + b * 8;                                            \
            for (int j = 0; j < 8; j++) mins[t] = fmaf(dmin * (float)mn[j], xst[j], mins[t]);       \
        }                                                                                          \
    }                                                                                              \
    out[0] = reduce256(acc0) - mins[0];                                                            \
    if (tokens > 1) out[1] = reduce256(acc1) - mins[1];                                            \
    if (tokens > 2) out[2] = reduce256(acc2) - mins[2];                                            \
    if (tokens > 3) out[3] = reduce256(acc3) - mins[3];

#define SY_MADDUBS(U, S) _mm256_madd_epi16(_mm256_maddubs_epi16(U, S), _mm256_set1_epi16(1))
#define SY_DPBUSD(U, S) _mm256_dpbusd_epi32(_mm256_setzero_si256(), U, S)

__attribute__((target("avx2,fma,f16c"), always_inline))
static inline void q4k_avx2_n(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const float *xs,
                              int stride, const int tokens, float *out) {
    SY_Q4K_BODY(SY_MADDUBS)
}

__attribute__((target("avx512vnni,avx512vl,avx512bw,avx2,fma,f16c"), always_inline))
static inline void q4k_vnni_n(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const float *xs,
                              int stride, const int tokens, float *out) {
    SY_Q4K_BODY(SY_DPBUSD)
}

#define SY_INSTANTIATE_Q4K(NAME, KERNEL, TARGET)                                                   \
    __attribute__((target(TARGET)))                                                                \
    static void NAME(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd,       \
                     const float *xs, int stride, int tokens, float *out) {                        \
        switch (tokens) {                                                                          \
        case 1: KERNEL(row, superblocks, xq, xd, xs, stride, 1, out); break;                       \
        case 2: KERNEL(row, superblocks, xq, xd, xs, stride, 2, out); break;                       \
        case 3: KERNEL(row, superblocks, xq, xd, xs, stride, 3, out); break;                       \
        default: KERNEL(row, superblocks, xq, xd, xs, stride, 4, out); break;                      \
        }                                                                                          \
    }

SY_INSTANTIATE_Q4K(q4k_avx2, q4k_avx2_n, "avx2,fma,f16c")
SY_INSTANTIATE_Q4K(q4k_vnni, q4k_vnni_n, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")

static int detected = -1;

int sy_quantized_dot_level(void) {
    if (detected < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
            detected = 2;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
            detected = 1;
        } else {
            detected = 0;
        }
    }
    return detected;
}

void sy_force_quantized_dot_level(int level) {
    // A level below the best caps every kernel family (integer and bf16); anything else lifts the cap.
    forced = level < sy_quantized_dot_level() ? level : -1;
}

#else

int sy_quantized_dot_level(void) { return 0; }

void sy_force_quantized_dot_level(int level) { (void)level; }

#endif

typedef void (*row_kernel)(const uint8_t *, int, int, const int8_t *, const float *, int, int, float *);

int sy_integer_level_in_force(void) {
#if defined(__x86_64__)
    return forced >= 0 ? forced : sy_quantized_dot_level();
#else
    return 0;
#endif
}

static row_kernel chosen_kernel(void) {
#if defined(__x86_64__)
    switch (sy_integer_level_in_force()) {
    case 2: return dot_vnni;
    case 1: return dot_avx2;
    default: return dot_portable;
    }
#else
    return dot_portable;
#endif
}

static void rows(const void *base, long row_bytes, int nrows, int blocks, int q4, const int8_t *xq, const float *xd, int stride,
                 int tokens, float *out, long out_stride) {
    row_kernel kernel = chosen_kernel();
    float sums[4];
    for (int r = 0; r < nrows; r++) {
        kernel((const uint8_t *)base + r * row_bytes, blocks, q4, xq, xd, stride, tokens, sums);
        for (int t = 0; t < tokens; t++) out[t * out_stride + r] = sums[t];
    }
}

void sy_rows_q8_0_q8(const void *base, long row_bytes, int nrows, int blocks, const int8_t *xq, const float *xd, int stride,
                     int tokens, float *out, long out_stride) {
    rows(base, row_bytes, nrows, blocks, 0, xq, xd, stride, tokens, out, out_stride);
}

void sy_rows_q4_0_q8(const void *base, long row_bytes, int nrows, int blocks, const int8_t *xq, const float *xd, int stride,
                     int tokens, float *out, long out_stride) {
    rows(base, row_bytes, nrows, blocks, 1, xq, xd, stride, tokens, out, out_stride);
}

typedef void (*q4k_kernel)(const uint8_t *, int, const int8_t *, const float *, const float *, int, int, float *);

void sy_rows_q4_k_q8(const void *base, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                     const float *xs, int stride, int tokens, float *out, long out_stride) {
    q4k_kernel kernel = q4k_portable;
#if defined(__x86_64__)
    switch (sy_integer_level_in_force()) {
    case 2: kernel = q4k_vnni; break;
    case 1: kernel = q4k_avx2; break;
    default: break;
    }
#endif
    float sums[4];
    for (int r = 0; r < nrows; r++) {
        kernel((const uint8_t *)base + r * row_bytes, superblocks, xq, xd, xs, stride, tokens, sums);
        for (int t = 0; t < tokens; t++) out[t * out_stride + r] = sums[t];
    }
}

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
    int level = bf16_detected;
    return forced >= 0 && forced < level ? forced : level;
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
