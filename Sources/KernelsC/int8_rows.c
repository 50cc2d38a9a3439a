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

// Q4_K rows against activations quantised per super-block of 256 (`xd`, and `xs` the int16 sum of
// each 16 values): per super-block the integer totals Σ_j scale_j·Σ q·x and Σ_j min_j·Σ x (over
// sub-blocks j of 32) are exact in int32, each converted to float once and fused-multiply-added
// with d·xd and dmin·xd; the result is the first sum less the second. Kernels' q4kDotReference is
// the twin.
static void q4k_portable(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs, int stride,
                         int tokens, float *out) {
    const int groups = stride / 16, supers = stride / 256;
    for (int t = 0; t < tokens; t++) {
        float acc = 0, mins = 0;
        for (int b = 0; b < superblocks; b++) {
            const uint8_t *block = row + b * 144;
            uint16_t h;
            memcpy(&h, block, 2);
            const float d = sy_half(h);
            memcpy(&h, block + 2, 2);
            const float dmin = sy_half(h);
            uint8_t sc[8], mn[8];
            q4k_scales(block + 4, sc, mn);
            int32_t total = 0, minTotal = 0;
            for (int j = 0; j < 8; j++) {
                const uint8_t *q = block + 16 + 32 * (j / 2);
                const int shift = (j % 2) * 4;
                const int8_t *x = xq + t * stride + b * 256 + 32 * j;
                int32_t sum = 0;
                for (int l = 0; l < 32; l++) sum += (int32_t)((q[l] >> shift) & 0x0F) * (int32_t)x[l];
                total += sum * sc[j];
                minTotal += mn[j] * (xs[t * groups + b * 16 + 2 * j] + xs[t * groups + b * 16 + 2 * j + 1]);
            }
            const float dx = xd[t * supers + b];
            acc = fmaf((float)total, d * dx, acc);
            mins = fmaf((float)minTotal, dmin * dx, mins);
        }
        out[t] = acc - mins;
    }
}

// Q6_K rows against activations quantised per super-block of 256 (one scale `xd` per 256, and
// `xs`: the int16 sum of each 16 int8 values). Per super-block the integer total
// Σ_s scale_s·Σ q·x − 32·Σ_s scale_s·xs_s (q the unsigned levels 0-63) is exact in int32 whatever
// the order of its sums; it is converted to float once and fused-multiply-added with d·xd.
// Kernels' q6kDotReference is the twin.
static inline int q6k_unsigned(const uint8_t *block, int g, int s, int l) {
    const int low = (block[64 * g + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0F;
    const int high = (block[128 + 32 * g + l] >> (2 * s)) & 3;
    return low | high << 4;
}

static void q6k_portable(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs, int stride,
                         int tokens, float *out) {
    const int groups = stride / 16, supers = stride / 256;
    for (int t = 0; t < tokens; t++) {
        float acc = 0;
        for (int b = 0; b < superblocks; b++) {
            const uint8_t *block = row + b * 210;
            const float d = sy_half((uint16_t)(block[208] | block[209] << 8));
            const int8_t *sc = (const int8_t *)block + 192;
            int32_t total = 0;
            for (int g = 0; g < 2; g++) {
                for (int s = 0; s < 4; s++) {
                    const int8_t *x = xq + t * stride + b * 256 + 128 * g + 32 * s;
                    for (int half = 0; half < 2; half++) {
                        int32_t sum = 0;
                        for (int l = 16 * half; l < 16 * half + 16; l++) sum += q6k_unsigned(block, g, s, l) * (int32_t)x[l];
                        total += sum * sc[8 * g + 2 * s + half];
                    }
                }
            }
            int32_t offset = 0;
            for (int j = 0; j < 16; j++) offset += (int32_t)sc[j] * xs[t * groups + b * 16 + j];
            total -= 32 * offset;
            acc = fmaf((float)total, d * xd[t * supers + b], acc);
        }
        out[t] = acc;
    }
}

// MXFP4's E2M1 codes as their doubled values (exact int8), and its E8M0 scale halved to match.
static const int8_t mxfp4_doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static inline float e8m0_half(uint8_t e) {
    uint32_t bits = e >= 2 ? (uint32_t)(e - 1) << 23 : (e == 1 ? 0x00400000u : 0x00200000u);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// The weight format of a row kernel: Q8_0, Q4_0 (q4 = 1) or MXFP4 (q4 = 2), GGUF's blocks.
static inline int format_block_bytes(int q4) { return q4 == 2 ? 17 : q4 ? 18 : 34; }

// Portable: the definition, lane by lane.
static void dot_portable(const uint8_t *row, int blocks, int q4, const int8_t *xq, const float *xd, int stride, int tokens, float *out) {
    const int block_bytes = format_block_bytes(q4);
    for (int t = 0; t < tokens; t++) {
        float acc[8] = {0};
        for (int b = 0; b < blocks; b++) {
            const uint8_t *block = row + b * block_bytes;
            uint16_t h;
            memcpy(&h, block, 2);
            int8_t w[32];
            float dw;
            if (q4 == 2) {
                for (int j = 0; j < 16; j++) {
                    w[j] = mxfp4_doubled[block[1 + j] & 0x0F];
                    w[j + 16] = mxfp4_doubled[block[1 + j] >> 4];
                }
                dw = e8m0_half(block[0]);
            } else if (q4) {
                for (int j = 0; j < 16; j++) {
                    w[j] = (int8_t)((block[2 + j] & 0x0F) - 8);
                    w[j + 16] = (int8_t)((block[2 + j] >> 4) - 8);
                }
            } else {
                memcpy(w, block + 2, 32);
            }
            if (q4 != 2) dw = sy_half(h);
            const int8_t *x = xq + t * stride + b * 32;
            float d = dw * xd[t * (stride / 32) + b];
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
    if (q4 == 2) {
        // Codes to doubled values by a byte shuffle of the 16-entry table.
        const __m256i table = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                               0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
        __m128i packed = _mm_loadu_si128((const __m128i *)(block + 1));
        __m128i low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
        __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
        return _mm256_shuffle_epi8(table, _mm256_set_m128i(high, low));
    }
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
    const int block_bytes = format_block_bytes(q4);                                                \
    const int scales = stride / 32;                                                                \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                 \
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();                                 \
    for (int b = 0; b < blocks; b++) {                                                             \
        const uint8_t *block = row + b * block_bytes;                                              \
        float dw = q4 == 2 ? e8m0_half(block[0]) : half_exact(block);                              \
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

// One format (a literal) for every token count 1-4, each instantiated with its constants.
#define SY_TOKEN_CASES(KERNEL, FORMAT)                                                         \
    switch (tokens) {                                                                          \
    case 1: KERNEL(row, blocks, FORMAT, xq, xd, stride, 1, out); break;                        \
    case 2: KERNEL(row, blocks, FORMAT, xq, xd, stride, 2, out); break;                        \
    case 3: KERNEL(row, blocks, FORMAT, xq, xd, stride, 3, out); break;                        \
    default: KERNEL(row, blocks, FORMAT, xq, xd, stride, 4, out); break;                       \
    }

#define SY_INSTANTIATE(NAME, KERNEL, TARGET)                                                   \
    __attribute__((target(TARGET)))                                                            \
    static void NAME(const uint8_t *row, int blocks, int q4, const int8_t *xq, const float *xd, \
                     int stride, int tokens, float *out) {                                     \
        if (q4 == 2) {                                                                         \
            SY_TOKEN_CASES(KERNEL, 2)                                                          \
        } else if (q4) {                                                                       \
            SY_TOKEN_CASES(KERNEL, 1)                                                          \
        } else {                                                                               \
            SY_TOKEN_CASES(KERNEL, 0)                                                          \
        }                                                                                      \
    }

SY_INSTANTIATE(dot_avx2, dot_avx2_n, "avx2,fma,f16c")
SY_INSTANTIATE(dot_vnni, dot_vnni_n, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")

__attribute__((target("avx2,fma,f16c")))
static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// The AVX2 form of q4k_portable: maddubs of the nibbles (0-15) with x, madd with the sub-block's
// scale into int32 lanes summed over the super-block; the mins' total from the 16-value sums.
__attribute__((target("avx2,fma,f16c"), always_inline))
static inline void q4k_avx2_n(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs,
                              int stride, const int tokens, float *out) {
    const int groups = stride / 16, supers = stride / 256;
    float acc[4] = {0, 0, 0, 0}, mins[4] = {0, 0, 0, 0};
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    for (int b = 0; b < superblocks; b++) {
        const uint8_t *block = row + b * 144;
        const float d = half_exact(block), dmin = half_exact(block + 2);
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE);
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 64);
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 128);
        uint8_t sc[8], mn[8];
        q4k_scales(block + 4, sc, mn);
        __m256i sum0 = _mm256_setzero_si256(), sum1 = _mm256_setzero_si256();
        __m256i sum2 = _mm256_setzero_si256(), sum3 = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(block + 16 + 32 * c));
            const __m256i lo = _mm256_and_si256(q, nibble);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
            const __m256i s0 = _mm256_set1_epi16(sc[2 * c]), s1 = _mm256_set1_epi16(sc[2 * c + 1]);
            for (int t = 0; t < tokens; t++) {
                const int8_t *x = xq + t * stride + b * 256 + 64 * c;
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)x);
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + 32));
                const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0),
                                                   _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1));
                if (t == 0) sum0 = _mm256_add_epi32(sum0, p);
                if (t == 1) sum1 = _mm256_add_epi32(sum1, p);
                if (t == 2) sum2 = _mm256_add_epi32(sum2, p);
                if (t == 3) sum3 = _mm256_add_epi32(sum3, p);
            }
        }
        // Each min against both of its sub-block's 16-value sums: min j in int16 lanes 2j and 2j + 1.
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)mn),
                                                                      _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)));
        for (int t = 0; t < tokens; t++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(xs + t * groups + b * 16));
            const int32_t minTotal = hsum_epi32(_mm256_madd_epi16(mins16, bs));
            const __m256i sum = t == 0 ? sum0 : t == 1 ? sum1 : t == 2 ? sum2 : sum3;
            const float dx = xd[t * supers + b];
            acc[t] = fmaf((float)hsum_epi32(sum), d * dx, acc[t]);
            mins[t] = fmaf((float)minTotal, dmin * dx, mins[t]);
        }
    }
    for (int t = 0; t < tokens; t++) out[t] = acc[t] - mins[t];
}

// The super-block kernels for each token count 1-4 (literal arguments: see SY_KERNEL_BODY's note).
#define SY_INSTANTIATE_SUPER(NAME, KERNEL)                                                         \
    __attribute__((target("avx2,fma,f16c")))                                                       \
    static void NAME(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd,       \
                     const int16_t *xs, int stride, int tokens, float *out) {                      \
        switch (tokens) {                                                                          \
        case 1: KERNEL(row, superblocks, xq, xd, xs, stride, 1, out); break;                       \
        case 2: KERNEL(row, superblocks, xq, xd, xs, stride, 2, out); break;                       \
        case 3: KERNEL(row, superblocks, xq, xd, xs, stride, 3, out); break;                       \
        default: KERNEL(row, superblocks, xq, xd, xs, stride, 4, out); break;                      \
        }                                                                                          \
    }

SY_INSTANTIATE_SUPER(q4k_avx2, q4k_avx2_n)

// The AVX2 form of q6k_portable: maddubs of the unsigned levels with x (pairs, in int16), madd
// with each half's scale into int32 lanes summed over the super-block; the offset term from the
// 16-value sums by one madd; then the same exact total, conversion and fused multiply-add.

__attribute__((target("avx2,fma,f16c"), always_inline))
static inline void q6k_avx2_n(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs,
                              int stride, const int tokens, float *out) {
    const int groups = stride / 16, supers = stride / 256;
    float acc[4] = {0, 0, 0, 0};
    const __m256i nibble = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    for (int b = 0; b < superblocks; b++) {
        const uint8_t *block = row + b * 210;
        const float d = half_exact(block + 208);
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE);
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 64);
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 128);
        __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 192);
        const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(block + 192)));
        __m256i sum0 = _mm256_setzero_si256(), sum1 = _mm256_setzero_si256();
        __m256i sum2 = _mm256_setzero_si256(), sum3 = _mm256_setzero_si256();
        for (int g = 0; g < 2; g++) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(block + 64 * g));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(block + 64 * g + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(block + 128 + 32 * g));
            // This group's eight scales as int16 in both halves; each step's pair picked by a shuffle.
            const __m256i groupScales = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(block + 192 + 8 * g))));
            for (int s = 0; s < 4; s++) {
                const __m256i lowBytes = (s % 2) ? ql1 : ql0;
                const __m256i low = _mm256_and_si256(s / 2 ? _mm256_srli_epi16(lowBytes, 4) : lowBytes, nibble);
                const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * s), three);
                const __m256i q = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
                // Low half: scale 2s (bytes 4s, 4s + 1) in every int16 lane; high half: scale 2s + 1.
                const __m256i pick = _mm256_setr_epi8(4 * s, 4 * s + 1, 4 * s, 4 * s + 1, 4 * s, 4 * s + 1, 4 * s, 4 * s + 1,
                                                      4 * s, 4 * s + 1, 4 * s, 4 * s + 1, 4 * s, 4 * s + 1, 4 * s, 4 * s + 1,
                                                      4 * s + 2, 4 * s + 3, 4 * s + 2, 4 * s + 3, 4 * s + 2, 4 * s + 3, 4 * s + 2, 4 * s + 3,
                                                      4 * s + 2, 4 * s + 3, 4 * s + 2, 4 * s + 3, 4 * s + 2, 4 * s + 3, 4 * s + 2, 4 * s + 3);
                const __m256i scale16 = _mm256_shuffle_epi8(groupScales, pick);
                for (int t = 0; t < tokens; t++) {
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + t * stride + b * 256 + 128 * g + 32 * s));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scale16);
                    if (t == 0) sum0 = _mm256_add_epi32(sum0, p);
                    if (t == 1) sum1 = _mm256_add_epi32(sum1, p);
                    if (t == 2) sum2 = _mm256_add_epi32(sum2, p);
                    if (t == 3) sum3 = _mm256_add_epi32(sum3, p);
                }
            }
        }
        for (int t = 0; t < tokens; t++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(xs + t * groups + b * 16));
            const int32_t offset = hsum_epi32(_mm256_madd_epi16(scales16, bs));
            const __m256i sum = t == 0 ? sum0 : t == 1 ? sum1 : t == 2 ? sum2 : sum3;
            const int32_t total = hsum_epi32(sum) - 32 * offset;
            acc[t] = fmaf((float)total, d * xd[t * supers + b], acc[t]);
        }
    }
    for (int t = 0; t < tokens; t++) out[t] = acc[t];
}

SY_INSTANTIATE_SUPER(q6k_avx2, q6k_avx2_n)


static int detected = -1, avx_vnni = 0;

int sy_quantized_dot_level(void) {
    if (detected < 0) {
        __builtin_cpu_init();
        const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        avx_vnni = avx2 && __builtin_cpu_supports("avxvnni");
        if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
            detected = SY_LEVEL_AVX512_VNNI;
        } else if (avx_vnni) {
            detected = SY_LEVEL_AVX_VNNI;
        } else if (avx2) {
            detected = SY_LEVEL_AVX2;
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

int sy_forced_level(void) { return forced; }

int sy_integer_level_in_force(void) {
#if defined(__x86_64__)
    const int level = forced >= 0 ? forced : sy_quantized_dot_level();
    // A CPU with AVX512-VNNI may lack AVX-VNNI (Ice Lake): capped there, it runs AVX2.
    return level == SY_LEVEL_AVX_VNNI && !avx_vnni ? SY_LEVEL_AVX2 : level;
#else
    return 0;
#endif
}

static row_kernel chosen_kernel(void) {
#if defined(__x86_64__)
    // The ungrouped rows (the disk tier's, as stored) have no AVX-VNNI path: AVX2 there.
    switch (sy_integer_level_in_force()) {
    case SY_LEVEL_AVX512_VNNI: return dot_vnni;
    case SY_LEVEL_AVX_VNNI:
    case SY_LEVEL_AVX2: return dot_avx2;
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

void sy_rows_mxfp4_q8(const void *base, long row_bytes, int nrows, int blocks, const int8_t *xq, const float *xd, int stride,
                      int tokens, float *out, long out_stride) {
    rows(base, row_bytes, nrows, blocks, 2, xq, xd, stride, tokens, out, out_stride);
}

typedef void (*q4k_kernel)(const uint8_t *, int, const int8_t *, const float *, const int16_t *, int, int, float *);

void sy_rows_q4_k_q8k(const void *base, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride) {
    q4k_kernel kernel = q4k_portable;
#if defined(__x86_64__)
    if (sy_integer_level_in_force() >= SY_LEVEL_AVX2) kernel = q4k_avx2;
#endif
    float sums[4];
    for (int r = 0; r < nrows; r++) {
        kernel((const uint8_t *)base + r * row_bytes, superblocks, xq, xd, xs, stride, tokens, sums);
        for (int t = 0; t < tokens; t++) out[t * out_stride + r] = sums[t];
    }
}

typedef void (*q6k_kernel)(const uint8_t *, int, const int8_t *, const float *, const int16_t *, int, int, float *);

void sy_rows_q6_k_q8k(const void *base, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride) {
    q6k_kernel kernel = q6k_portable;
#if defined(__x86_64__)
    if (sy_integer_level_in_force() >= SY_LEVEL_AVX2) kernel = q6k_avx2;
#endif
    float sums[4];
    for (int r = 0; r < nrows; r++) {
        kernel((const uint8_t *)base + r * row_bytes, superblocks, xq, xd, xs, stride, tokens, sums);
        for (int t = 0; t < tokens; t++) out[t * out_stride + r] = sums[t];
    }
}
