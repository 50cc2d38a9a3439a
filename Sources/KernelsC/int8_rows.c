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

// The 6-bit scales (bytes 0-7) and mins (bytes 8-15) of a Q4_K or Q5_K super-block's eight
// sub-blocks, from its 12 packed bytes, four at a time in 32-bit words: scale j < 4 is the low 6 bits
// of byte j, scale j >= 4 the low nibble of byte j + 4 under the top 2 bits of byte j - 4; the mins
// likewise from bytes 4-7 and the high nibbles.
static inline void qk_scales(const uint8_t *q, uint64_t *scales, uint64_t *mins) {
    uint32_t u0, u1, u2;
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    *scales = (uint64_t)(u0 & 0x3F3F3F3Fu) | (uint64_t)((u2 & 0x0F0F0F0Fu) | ((u0 >> 2) & 0x30303030u)) << 32;
    *mins = (uint64_t)(u1 & 0x3F3F3F3Fu) | (uint64_t)(((u2 >> 4) & 0x0F0F0F0Fu) | ((u1 >> 2) & 0x30303030u)) << 32;
}

// Q4_K (144-byte super-blocks) and Q5_K (176: d, dmin, 12 scale bytes, 32 bytes of fifth bits, 128
// of nibbles) rows against activations quantised per super-block of 256 (`xd`, and `xs` the int16
// sum of each 16 values). Value v of a super-block (sub-block j = v / 32) goes into integer lane
// (v % 32) / 4 of eight as scale_j·q_v·x_v; lane L also gets min_L·(xs[2L] + xs[2L + 1]) apart. Per
// super-block each lane's two exact sums are converted to float and fused-multiply-added into the
// lane's accumulator, with d·xd and then −dmin·xd; the row's result is the fixed sum of the eight
// lanes (reduce8). Kernels' kQuantDotReference is the twin.
static inline int qk_level(const uint8_t *block, int five, int v) {
    const int c = v / 64, high = (v / 32) % 2, l = v % 32;
    int q = (block[(five ? 48 : 16) + 32 * c + l] >> (4 * high)) & 0x0F;
    if (five) q |= ((block[16 + l] >> (v / 32)) & 1) << 4;
    return q;
}

static void qk45_portable(const uint8_t *row, int superblocks, int five, const int8_t *xq, const float *xd, const int16_t *xs,
                          int stride, int tokens, float *out) {
    const int groups = stride / 16, supers = stride / 256, block_bytes = five ? 176 : 144;
    for (int t = 0; t < tokens; t++) {
        float acc[8] = {0};
        for (int b = 0; b < superblocks; b++) {
            const uint8_t *block = row + (long)b * block_bytes;
            const float d = sy_half((uint16_t)(block[0] | block[1] << 8)), dmin = sy_half((uint16_t)(block[2] | block[3] << 8));
            uint64_t scales, mins;
            qk_scales(block + 4, &scales, &mins);
            int32_t lanes[8] = {0};
            const int8_t *x = xq + (long)t * stride + b * 256;
            for (int v = 0; v < 256; v++) lanes[(v % 32) / 4] += (int32_t)((scales >> (8 * (v / 32))) & 0xFF) * qk_level(block, five, v) * x[v];
            const int16_t *s = xs + (long)t * groups + b * 16;
            const float dx = xd[(long)t * supers + b];
            for (int l = 0; l < 8; l++) {
                const int32_t m = (int32_t)((mins >> (8 * l)) & 0xFF) * (s[2 * l] + s[2 * l + 1]);
                acc[l] = fmaf((float)lanes[l], d * dx, acc[l]);
                acc[l] = fmaf((float)m, -dmin * dx, acc[l]);
            }
        }
        out[t] = reduce8(acc);
    }
}

// Q6_K rows against activations quantised per super-block of 256 (one scale `xd` per 256, and
// `xs`: the int16 sum of each 16 int8 values). Value v (q the unsigned level 0-63, scale v / 16)
// goes into integer lane (v % 32) / 4 of eight as scale·q_v·x_v, less 32·(scale_2L·xs[2L] +
// scale_2L+1·xs[2L + 1]) for lane L: exact in int32. Per super-block each lane is converted to
// float and fused-multiply-added with d·xd into the lane's accumulator; the result is reduce8 of
// the lanes. Kernels' kQuantDotReference is the twin.
static inline int q6k_unsigned(const uint8_t *block, int v) {
    const int g = v / 128, s = (v % 128) / 32, l = v % 32;
    const int low = (block[64 * g + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0F;
    const int high = (block[128 + 32 * g + l] >> (2 * s)) & 3;
    return low | high << 4;
}

static void q6k_portable(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs, int stride,
                         int tokens, float *out) {
    const int groups = stride / 16, supers = stride / 256;
    for (int t = 0; t < tokens; t++) {
        float acc[8] = {0};
        for (int b = 0; b < superblocks; b++) {
            const uint8_t *block = row + (long)b * 210;
            const float d = sy_half((uint16_t)(block[208] | block[209] << 8));
            const int8_t *sc = (const int8_t *)block + 192;
            const int8_t *x = xq + (long)t * stride + b * 256;
            const int16_t *s = xs + (long)t * groups + b * 16;
            int32_t lanes[8];
            for (int l = 0; l < 8; l++) lanes[l] = -32 * (sc[2 * l] * s[2 * l] + sc[2 * l + 1] * s[2 * l + 1]);
            for (int v = 0; v < 256; v++) lanes[(v % 32) / 4] += sc[v / 16] * q6k_unsigned(block, v) * x[v];
            const float dx = xd[(long)t * supers + b];
            for (int l = 0; l < 8; l++) acc[l] = fmaf((float)lanes[l], d * dx, acc[l]);
        }
        out[t] = reduce8(acc);
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


// Two float16 values (d and dmin) widened at once by F16C, from a 32-bit load moved into a fresh
// register (vmovd), so there is no merge into a live one (levels.h); vcvtph2ps is exact.
__attribute__((target("avx2,fma,f16c")))
static inline __m128 halves_f16c(const uint8_t *p) {
    int32_t pair;
    memcpy(&pair, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(pair));
}

__attribute__((target("avx2,fma,f16c")))
static inline float half_f16c(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
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
        float dw = q4 == 2 ? e8m0_half(block[0]) : half_f16c(block);                              \
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

// Adds p to the accumulator of token t (a literal in every instantiation, so the branches fold).
#define SY_ADD_TOKEN(t, p)                                         \
    do {                                                           \
        if ((t) == 0) sum0 = _mm256_add_epi32(sum0, (p));          \
        if ((t) == 1) sum1 = _mm256_add_epi32(sum1, (p));          \
        if ((t) == 2) sum2 = _mm256_add_epi32(sum2, (p));          \
        if ((t) == 3) sum3 = _mm256_add_epi32(sum3, (p));          \
    } while (0)

// The AVX2 form of qk45_portable: maddubs of the levels (0-15, or 0-31 with Q5_K's fifth bit) with
// x, then the int16 pairs times the sub-block's scale added into the eight int32 lanes (ACC: madd
// and add on AVX2; one vpdpwssd where there is VNNI, the same exact sums); the mins by one madd with
// the 16-value sums; per super-block one conversion and two multiply-adds per token into float
// lanes, summed across lanes once per row.
#define SY_ACC_TOKEN(t, ACC, pa, sa, pb, sb)                                                       \
    do {                                                                                           \
        if ((t) == 0) sum0 = ACC(ACC(sum0, pa, sa), pb, sb);                                       \
        if ((t) == 1) sum1 = ACC(ACC(sum1, pa, sa), pb, sb);                                       \
        if ((t) == 2) sum2 = ACC(ACC(sum2, pa, sa), pb, sb);                                       \
        if ((t) == 3) sum3 = ACC(ACC(sum3, pa, sa), pb, sb);                                       \
    } while (0)

#define SY_QK45(NAME, ACC, TARGET)                                                                 \
    __attribute__((target(TARGET), always_inline))                                                 \
    static inline void NAME(const uint8_t *row, int superblocks, const int five, const int8_t *xq, const float *xd, \
                            const int16_t *xs, int stride, const int tokens, float *out) {         \
        const int groups = stride / 16, supers = stride / 256, block_bytes = five ? 176 : 144, nibbles = five ? 48 : 16; \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps(); \
        const __m256i nibble = _mm256_set1_epi8(0x0F), fifth = _mm256_set1_epi8(0x10);           \
        /* Int16 lanes of one scale: bytes 2j, 2j + 1 of the eight scales widened to int16. */     \
        const __m256i pick_even[4] = {_mm256_set1_epi16(0x0100), _mm256_set1_epi16(0x0504), _mm256_set1_epi16(0x0908), _mm256_set1_epi16(0x0D0C)}; \
        const __m256i pick_odd[4] = {_mm256_set1_epi16(0x0302), _mm256_set1_epi16(0x0706), _mm256_set1_epi16(0x0B0A), _mm256_set1_epi16(0x0F0E)}; \
        for (int b = 0; b < superblocks; b++) {                                                    \
            const uint8_t *block = row + (long)b * block_bytes;                                    \
            __builtin_prefetch(block + SY_PREFETCH_DISTANCE);                                      \
            __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 64);                                 \
            __builtin_prefetch(block + SY_PREFETCH_DISTANCE + 128);                                \
            const __m128 dd = halves_f16c(block);                                                  \
            const float d = _mm_cvtss_f32(dd), dmin = _mm_cvtss_f32(_mm_movehdup_ps(dd));          \
            uint64_t packed_scales, packed_mins;                                                   \
            qk_scales(block + 4, &packed_scales, &packed_mins);                                    \
            const __m256i scales16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)packed_scales))); \
            /* Min j in int16 lanes 2j and 2j + 1, against the two 16-value sums of sub-block j. */ \
            const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(_mm_cvtsi64_si128((long long)packed_mins), \
                                                                          _mm_cvtsi64_si128((long long)packed_mins))); \
            const __m256i high_bits = five ? _mm256_loadu_si256((const __m256i *)(block + 16)) : _mm256_setzero_si256(); \
            __m256i sum0 = _mm256_setzero_si256(), sum1 = _mm256_setzero_si256();                 \
            __m256i sum2 = _mm256_setzero_si256(), sum3 = _mm256_setzero_si256();                 \
            for (int c = 0; c < 4; c++) {                                                          \
                const __m256i q = _mm256_loadu_si256((const __m256i *)(block + nibbles + 32 * c)); \
                __m256i lo = _mm256_and_si256(q, nibble);                                          \
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);                    \
                if (five) {                                                                        \
                    /* Bit 2c (then 2c + 1) of each byte moved to bit 4; what crosses bytes is masked off. */ \
                    const int k = 2 * c;                                                           \
                    const __m256i b0 = k <= 4 ? _mm256_slli_epi16(high_bits, 4 - k) : _mm256_srli_epi16(high_bits, k - 4); \
                    const __m256i b1 = k + 1 <= 4 ? _mm256_slli_epi16(high_bits, 3 - k) : _mm256_srli_epi16(high_bits, k - 3); \
                    lo = _mm256_or_si256(lo, _mm256_and_si256(b0, fifth));                         \
                    hi = _mm256_or_si256(hi, _mm256_and_si256(b1, fifth));                         \
                }                                                                                  \
                const __m256i s0 = _mm256_shuffle_epi8(scales16, pick_even[c]), s1 = _mm256_shuffle_epi8(scales16, pick_odd[c]); \
                for (int t = 0; t < tokens; t++) {                                                 \
                    const int8_t *x = xq + (long)t * stride + b * 256 + 64 * c;                    \
                    const __m256i x0 = _mm256_loadu_si256((const __m256i *)x);                     \
                    const __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + 32));              \
                    SY_ACC_TOKEN(t, ACC, _mm256_maddubs_epi16(lo, x0), s0, _mm256_maddubs_epi16(hi, x1), s1); \
                }                                                                                  \
            }                                                                                      \
            for (int t = 0; t < tokens; t++) {                                                     \
                const __m256i bs = _mm256_loadu_si256((const __m256i *)(xs + (long)t * groups + b * 16)); \
                const __m256 m = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, bs));                \
                const __m256i sum = t == 0 ? sum0 : t == 1 ? sum1 : t == 2 ? sum2 : sum3;          \
                const float dx = xd[(long)t * supers + b];                                         \
                const __m256 scale = _mm256_set1_ps(d * dx), offset = _mm256_set1_ps(-dmin * dx);  \
                if (t == 0) acc0 = _mm256_fmadd_ps(m, offset, _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc0)); \
                if (t == 1) acc1 = _mm256_fmadd_ps(m, offset, _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc1)); \
                if (t == 2) acc2 = _mm256_fmadd_ps(m, offset, _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc2)); \
                if (t == 3) acc3 = _mm256_fmadd_ps(m, offset, _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc3)); \
            }                                                                                      \
        }                                                                                          \
        out[0] = reduce256(acc0);                                                                  \
        if (tokens > 1) out[1] = reduce256(acc1);                                                  \
        if (tokens > 2) out[2] = reduce256(acc2);                                                  \
        if (tokens > 3) out[3] = reduce256(acc3);                                                  \
    }

#define SY_MADD_ADD(sum, pairs, scales) _mm256_add_epi32((sum), _mm256_madd_epi16((pairs), (scales)))
SY_QK45(qk45_avx2_n, SY_MADD_ADD, "avx2,fma,f16c")
SY_QK45(qk45_avxvnni_n, _mm256_dpwssd_avx_epi32, "avxvnni,avx2,fma,f16c")
SY_QK45(qk45_vnni_n, _mm256_dpwssd_epi32, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")
#undef SY_MADD_ADD
#undef SY_QK45
#undef SY_ACC_TOKEN

// Q4_K (five = 0) and Q5_K (five = 1) at each level, as the token-count instantiations take them.
#define SY_QK45_FORMAT(NAME, KERNEL, FIVE, TARGET)                                                 \
    __attribute__((target(TARGET), always_inline))                                                 \
    static inline void NAME(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs, \
                            int stride, const int tokens, float *out) {                            \
        KERNEL(row, superblocks, FIVE, xq, xd, xs, stride, tokens, out);                           \
    }
SY_QK45_FORMAT(q4k_avx2_n, qk45_avx2_n, 0, "avx2,fma,f16c")
SY_QK45_FORMAT(q5k_avx2_n, qk45_avx2_n, 1, "avx2,fma,f16c")
SY_QK45_FORMAT(q4k_avxvnni_n, qk45_avxvnni_n, 0, "avxvnni,avx2,fma,f16c")
SY_QK45_FORMAT(q5k_avxvnni_n, qk45_avxvnni_n, 1, "avxvnni,avx2,fma,f16c")
SY_QK45_FORMAT(q4k_vnni_n, qk45_vnni_n, 0, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")
SY_QK45_FORMAT(q5k_vnni_n, qk45_vnni_n, 1, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")
#undef SY_QK45_FORMAT

// The super-block kernels for each token count 1-4 (literal arguments: see SY_KERNEL_BODY's note).
#define SY_INSTANTIATE_SUPER(NAME, KERNEL, TARGET)                                                 \
    __attribute__((target(TARGET)))                                                                \
    static void NAME(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd,       \
                     const int16_t *xs, int stride, int tokens, float *out) {                      \
        switch (tokens) {                                                                          \
        case 1: KERNEL(row, superblocks, xq, xd, xs, stride, 1, out); break;                       \
        case 2: KERNEL(row, superblocks, xq, xd, xs, stride, 2, out); break;                       \
        case 3: KERNEL(row, superblocks, xq, xd, xs, stride, 3, out); break;                       \
        default: KERNEL(row, superblocks, xq, xd, xs, stride, 4, out); break;                      \
        }                                                                                          \
    }

SY_INSTANTIATE_SUPER(q4k_avx2, q4k_avx2_n, "avx2,fma,f16c")
SY_INSTANTIATE_SUPER(q5k_avx2, q5k_avx2_n, "avx2,fma,f16c")
SY_INSTANTIATE_SUPER(q4k_avxvnni, q4k_avxvnni_n, "avxvnni,avx2,fma,f16c")
SY_INSTANTIATE_SUPER(q5k_avxvnni, q5k_avxvnni_n, "avxvnni,avx2,fma,f16c")
SY_INSTANTIATE_SUPER(q4k_vnni, q4k_vnni_n, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")
SY_INSTANTIATE_SUPER(q5k_vnni, q5k_vnni_n, "avx512vnni,avx512vl,avx512bw,avx2,fma,f16c")

// The AVX2 form of q6k_portable: maddubs of the unsigned levels with x (pairs, in int16), madd
// with each half's scale into the eight int32 lanes; the offset from the 16-value sums by one madd;
// per super-block one conversion and one multiply-add per token into float lanes.
__attribute__((target("avx2,fma,f16c"), always_inline))
static inline void q6k_avx2_n(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs,
                              int stride, const int tokens, float *out) {
    const int groups = stride / 16, supers = stride / 256;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    const __m256i nibble = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    for (int b = 0; b < superblocks; b++) {
        const uint8_t *block = row + (long)b * 210;
        const float d = half_f16c(block + 208);
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
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + (long)t * stride + b * 256 + 128 * g + 32 * s));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scale16);
                    SY_ADD_TOKEN(t, p);
                }
            }
        }
        for (int t = 0; t < tokens; t++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(xs + (long)t * groups + b * 16));
            const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(scales16, bs), 5);
            const __m256i sum = t == 0 ? sum0 : t == 1 ? sum1 : t == 2 ? sum2 : sum3;
            const __m256 lanes = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, offset));
            const __m256 scale = _mm256_set1_ps(d * xd[(long)t * supers + b]);
            if (t == 0) acc0 = _mm256_fmadd_ps(lanes, scale, acc0);
            if (t == 1) acc1 = _mm256_fmadd_ps(lanes, scale, acc1);
            if (t == 2) acc2 = _mm256_fmadd_ps(lanes, scale, acc2);
            if (t == 3) acc3 = _mm256_fmadd_ps(lanes, scale, acc3);
        }
    }
    out[0] = reduce256(acc0);
    if (tokens > 1) out[1] = reduce256(acc1);
    if (tokens > 2) out[2] = reduce256(acc2);
    if (tokens > 3) out[3] = reduce256(acc3);
}

SY_INSTANTIATE_SUPER(q6k_avx2, q6k_avx2_n, "avx2,fma,f16c")


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

typedef void (*super_kernel)(const uint8_t *, int, const int8_t *, const float *, const int16_t *, int, int, float *);

static void q4k_portable_rows(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs, int stride,
                              int tokens, float *out) {
    qk45_portable(row, superblocks, 0, xq, xd, xs, stride, tokens, out);
}

static void q5k_portable_rows(const uint8_t *row, int superblocks, const int8_t *xq, const float *xd, const int16_t *xs, int stride,
                              int tokens, float *out) {
    qk45_portable(row, superblocks, 1, xq, xd, xs, stride, tokens, out);
}

static void super_rows(super_kernel kernel, const void *base, long row_bytes, int nrows, int superblocks, const int8_t *xq,
                       const float *xd, const int16_t *xs, int stride, int tokens, float *out, long out_stride) {
    float sums[4];
    for (int r = 0; r < nrows; r++) {
        kernel((const uint8_t *)base + r * row_bytes, superblocks, xq, xd, xs, stride, tokens, sums);
        for (int t = 0; t < tokens; t++) out[t * out_stride + r] = sums[t];
    }
}

#if defined(__x86_64__)
#define SY_SUPER_KERNEL(AVX2, PORTABLE) (sy_integer_level_in_force() >= SY_LEVEL_AVX2 ? AVX2 : PORTABLE)
// Q4_K and Q5_K: vpdpwssd where there is VNNI (AVX512-VNNI's EVEX form on 256 bits, or AVX-VNNI).
static super_kernel qk45_kernel(int five) {
    switch (sy_integer_level_in_force()) {
    case SY_LEVEL_AVX512_VNNI: return five ? q5k_vnni : q4k_vnni;
    case SY_LEVEL_AVX_VNNI: return five ? q5k_avxvnni : q4k_avxvnni;
    case SY_LEVEL_AVX2: return five ? q5k_avx2 : q4k_avx2;
    default: return five ? q5k_portable_rows : q4k_portable_rows;
    }
}
#else
#define SY_SUPER_KERNEL(AVX2, PORTABLE) PORTABLE
static super_kernel qk45_kernel(int five) { return five ? q5k_portable_rows : q4k_portable_rows; }
#endif

void sy_rows_q4_k_q8k(const void *base, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride) {
    super_rows(qk45_kernel(0), base, row_bytes, nrows, superblocks, xq, xd, xs, stride, tokens, out,
               out_stride);
}

void sy_rows_q5_k_q8k(const void *base, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride) {
    super_rows(qk45_kernel(1), base, row_bytes, nrows, superblocks, xq, xd, xs, stride, tokens, out,
               out_stride);
}

void sy_rows_q6_k_q8k(const void *base, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride) {
    super_rows(SY_SUPER_KERNEL(q6k_avx2, q6k_portable), base, row_bytes, nrows, superblocks, xq, xd, xs, stride, tokens, out,
               out_stride);
}
