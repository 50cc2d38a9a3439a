#include "KernelsC.h"
#include "levels.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// Grouped Q8_0 and Q4_0 rows (see KernelsC.h) against grouped int8 activations. A group is 4
// blocks of 32 = 128 values; its 16 int32 lanes are lane L = 4k + j of block k: the products of the
// block's elements 4j..4j+3 and 16+4j..16+4j+3. Because every lane lies in one block, the whole
// group's products go through one vector of integer sums, one conversion and one multiply-add
// with (weight scale x activation scale) per lane, instead of one per block; the float16 scales sit
// together at the group's head, widened four at a time.
//
// The integer lanes are exact whatever the instructions, so every level gives the same floats:
// acc[L] = fma(float(lane sum L), dw[k] * dx[k], acc[L]) over the groups in order, then
// sy_reduce16 of the lanes.
// Kernels' groupedDotReference is the Swift twin, and tests hold the C to it bit for bit.

static void grouped_portable(const uint8_t *row, int groups, int q4, const int8_t *x, const float *dx, int stride, int tokens,
                             float *out) {
    const int group_bytes = q4 ? 72 : 136;
    for (int t = 0; t < tokens; t++) {
        float acc[16] = {0};
        for (int g = 0; g < groups; g++) {
            const uint8_t *group = row + (long)g * group_bytes;
            const int8_t *xg = x + (long)t * stride + 128 * g;
            for (int lane = 0; lane < 16; lane++) {
                const int k = lane / 4, j = lane % 4;
                int32_t sum = 0;
                for (int i = 0; i < 4; i++) {
                    const int e = 16 * k + 4 * j + i; // byte in the group's first (and second) halves
                    int w0, w1;
                    if (q4) {
                        w0 = (group[8 + e] & 0x0F) - 8;
                        w1 = (group[8 + e] >> 4) - 8;
                    } else {
                        w0 = (int8_t)(group[8 + e] ^ 0x80);
                        w1 = (int8_t)(group[8 + 64 + e] ^ 0x80);
                    }
                    sum += w0 * xg[e] + w1 * xg[64 + e];
                }
                uint16_t h;
                memcpy(&h, group + 2 * k, 2);
                const float s = sy_half(h) * dx[(long)t * (stride / 8) + 16 * g + lane];
                acc[lane] = __builtin_fmaf((float)sum, s, acc[lane]);
            }
        }
        out[t] = sy_reduce16(acc);
    }
}

#if defined(__x86_64__)

// One group's integer lane sums for AVX2, as two halves of 8 lanes (blocks 0-1, blocks 2-3).
// Q4_0: nibbles are unsigned (0..15), so maddubs cannot saturate (two products and two more from
// the other half stay below 2^13) and the activations' -8 x (sum of the lane's values), `corr`,
// restores the signed weights. Q8_0: xor 0x80 gives the signed values back; |w| x (x with w's
// sign) keeps maddubs below 2^15, and each half is widened to int32 before they add.
__attribute__((target("avx2,fma,f16c"), always_inline))
static inline __m256i lanes_avx2(const uint8_t *group, int q4, int half, const int8_t *xg, const int32_t *corr) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i x0 = _mm256_loadu_si256((const __m256i *)(xg + 32 * half));
    __m256i x1 = _mm256_loadu_si256((const __m256i *)(xg + 64 + 32 * half));
    if (q4) {
        const __m256i nibble = _mm256_set1_epi8(0x0F);
        __m256i raw = _mm256_loadu_si256((const __m256i *)(group + 8 + 32 * half));
        __m256i lo = _mm256_and_si256(raw, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble);
        __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1));
        return _mm256_add_epi32(_mm256_madd_epi16(pairs, ones), _mm256_loadu_si256((const __m256i *)(corr + 8 * half)));
    }
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(group + 8 + 32 * half)), flip);
    __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(group + 72 + 32 * half)), flip);
    __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0)), ones);
    __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1)), ones);
    return _mm256_add_epi32(p0, p1);
}

// The same lanes with vpdpbusd on 256 bits, as the AVX512-VNNI tiles take them: unsigned weights
// (Q8_0's stored xor 0x80, Q4_0's nibbles) from `corr`, exact, so no saturation to avoid. AVX-VNNI's
// VEX form, and AVX512-VNNI's EVEX form (AVX512VL) for one row at a time on CPUs where the 512-bit
// tiles read memory more slowly at one or two tokens (KernelTuning.integerTilesFrom).
#define SY_LANES_DPBUSD(NAME, DPBUSD, TARGET)                                                      \
    __attribute__((target(TARGET), always_inline))                                                 \
    static inline __m256i NAME(const uint8_t *group, int q4, int half, const int8_t *xg, const int32_t *corr) { \
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xg + 32 * half));                        \
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xg + 64 + 32 * half));                   \
        __m256i s = _mm256_loadu_si256((const __m256i *)(corr + 8 * half));                        \
        if (q4) {                                                                                  \
            const __m256i nibble = _mm256_set1_epi8(0x0F);                                         \
            __m256i raw = _mm256_loadu_si256((const __m256i *)(group + 8 + 32 * half));            \
            s = DPBUSD(s, _mm256_and_si256(raw, nibble), x0);                                      \
            return DPBUSD(s, _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble), x1);             \
        }                                                                                          \
        s = DPBUSD(s, _mm256_loadu_si256((const __m256i *)(group + 8 + 32 * half)), x0);           \
        return DPBUSD(s, _mm256_loadu_si256((const __m256i *)(group + 72 + 32 * half)), x1);       \
    }

SY_LANES_DPBUSD(lanes_avxvnni, _mm256_dpbusd_avx_epi32, "avxvnni,avx2,fma,f16c")
SY_LANES_DPBUSD(lanes_vnni256, _mm256_dpbusd_epi32, "avx512vnni,avx512vl,avx2,fma,f16c")
#undef SY_LANES_DPBUSD

__attribute__((target("avx2,fma,f16c")))
static inline float reduce_ymm(__m256 lo, __m256 hi) {
    float a[16];
    _mm256_storeu_ps(a, lo);
    _mm256_storeu_ps(a + 8, hi);
    return sy_reduce16(a);
}

// One row against up to 4 tokens on 256-bit vectors, LANES (lanes_avx2 or lanes_avxvnni) making
// each half group's integer lane sums.
#define SY_GROUPED_YMM(NAME, LANES, TARGET)                                                        \
    __attribute__((target(TARGET), always_inline))                                                 \
    static inline void NAME(const uint8_t *row, int groups, const int q4, const int8_t *x, const float *dx, \
                            const int32_t *corr, int stride, const int tokens, float *out) {      \
        const int group_bytes = q4 ? 72 : 136;                                                     \
        const __m256i first = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);                           \
        const __m256i second = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);                          \
        __m256 lo[4], hi[4];                                                                       \
        for (int t = 0; t < 4; t++) lo[t] = hi[t] = _mm256_setzero_ps();                           \
        for (int g = 0; g < groups; g++) {                                                         \
            const uint8_t *group = row + (long)g * group_bytes;                                    \
            /* Every line the group spans, as the VNNI tiles do. */                                \
            __builtin_prefetch(group + SY_GROUPED_PREFETCH_DISTANCE);                              \
            if (!q4) __builtin_prefetch(group + SY_GROUPED_PREFETCH_DISTANCE + 64);                \
            __builtin_prefetch(group + SY_GROUPED_PREFETCH_DISTANCE + group_bytes - 1);            \
            __m256 d = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)group))); \
            __m256 d0 = _mm256_permutevar8x32_ps(d, first), d1 = _mm256_permutevar8x32_ps(d, second); \
            for (int t = 0; t < tokens; t++) {                                                     \
                const long at = (long)t * (stride / 8) + 16 * g;                                   \
                const int8_t *xg = x + (long)t * stride + 128 * g;                                 \
                __m256 f0 = _mm256_cvtepi32_ps(LANES(group, q4, 0, xg, corr + at));                \
                __m256 f1 = _mm256_cvtepi32_ps(LANES(group, q4, 1, xg, corr + at));                \
                lo[t] = _mm256_fmadd_ps(f0, _mm256_mul_ps(d0, _mm256_loadu_ps(dx + at)), lo[t]);   \
                hi[t] = _mm256_fmadd_ps(f1, _mm256_mul_ps(d1, _mm256_loadu_ps(dx + at + 8)), hi[t]); \
            }                                                                                      \
        }                                                                                          \
        for (int t = 0; t < tokens; t++) out[t] = reduce_ymm(lo[t], hi[t]);                        \
    }

SY_GROUPED_YMM(grouped_avx2_n, lanes_avx2, "avx2,fma,f16c")
SY_GROUPED_YMM(grouped_avxvnni_n, lanes_avxvnni, "avxvnni,avx2,fma,f16c")
SY_GROUPED_YMM(grouped_vnni256_n, lanes_vnni256, "avx512vnni,avx512vl,avx2,fma,f16c")
#undef SY_GROUPED_YMM

// AVX512-VNNI: dpbusd takes unsigned weights, so Q8_0's are stored xor 0x80 (value + 128) and
// Q4_0's nibbles as they are; each token's lane sums start from `corr`, -128 or -8 times the sum of
// the lane's activations, which makes them the signed weights' sums exactly.
//
// Tiles of 4 rows (1 for rows left over): each token's activations are loaded once per tile, and
// the core streams the tile's rows at once, prefetching the next tile's as the bf16 tiles do. Each
// row's accumulator sees the same operations whatever the tile, so the bits do not depend on it.
__attribute__((target("avx512vnni,avx512bw,avx512f,avx2,fma,f16c"), always_inline))
static inline void grouped_vnni_tile_n(const uint8_t *row, long row_bytes, int groups, const int q4, const int8_t *x,
                                       const float *dx, const int32_t *corr, int stride, const int rows, const int tokens,
                                       float *out, long out_stride) {
    const int group_bytes = q4 ? 72 : 136;
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        __m512 d[4];
        __m512i w0[4], w1[4];
        for (int r = 0; r < rows; r++) {
            const uint8_t *group = row + r * row_bytes + (long)g * group_bytes;
            // Every line the next tile's group spans (136 or 72 bytes: up to 3 or 2 lines); with
            // only its first one or two, one line a row in 17 (Q8_0) or 9 (Q4_0) went unfetched.
            __builtin_prefetch(group + rows * row_bytes);
            if (!q4) __builtin_prefetch(group + rows * row_bytes + 64);
            __builtin_prefetch(group + rows * row_bytes + group_bytes - 1);
            d[r] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)group))));
            if (q4) {
                __m512i raw = _mm512_loadu_si512((const void *)(group + 8));
                w0[r] = _mm512_and_si512(raw, nibble);
                w1[r] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            } else {
                w0[r] = _mm512_loadu_si512((const void *)(group + 8));
                w1[r] = _mm512_loadu_si512((const void *)(group + 72));
            }
        }
        for (int t = 0; t < tokens; t++) {
            const long at = (long)t * (stride / 8) + 16 * g;
            const int8_t *xg = x + (long)t * stride + 128 * g;
            const __m512i c = _mm512_loadu_si512((const void *)(corr + at));
            const __m512i x0 = _mm512_loadu_si512((const void *)xg), x1 = _mm512_loadu_si512((const void *)(xg + 64));
            const __m512 scale = _mm512_loadu_ps(dx + at);
            for (int r = 0; r < rows; r++) {
                __m512i s = _mm512_dpbusd_epi32(c, w0[r], x0);
                s = _mm512_dpbusd_epi32(s, w1[r], x1);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d[r], scale), acc[r][t]);
            }
        }
    }
    float lanes[4][4][16];
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < tokens; t++) _mm512_storeu_ps(lanes[r][t], acc[r][t]);
    for (int t = 0; t < tokens; t++)
        for (int r = 0; r < rows; r++) out[t * out_stride + r] = sy_reduce16(lanes[r][t]);
}

// The tile's row count, format and token count become constants in each copy.
#define SY_TILE_CASES(ROWS)                                                                        \
    switch (4 * (q4 != 0) + (tokens < 4 ? tokens : 4) - 1) {                                       \
    case 0: grouped_vnni_tile_n(row, row_bytes, groups, 0, x, dx, corr, stride, ROWS, 1, out, out_stride); break; \
    case 1: grouped_vnni_tile_n(row, row_bytes, groups, 0, x, dx, corr, stride, ROWS, 2, out, out_stride); break; \
    case 2: grouped_vnni_tile_n(row, row_bytes, groups, 0, x, dx, corr, stride, ROWS, 3, out, out_stride); break; \
    case 3: grouped_vnni_tile_n(row, row_bytes, groups, 0, x, dx, corr, stride, ROWS, 4, out, out_stride); break; \
    case 4: grouped_vnni_tile_n(row, row_bytes, groups, 1, x, dx, corr, stride, ROWS, 1, out, out_stride); break; \
    case 5: grouped_vnni_tile_n(row, row_bytes, groups, 1, x, dx, corr, stride, ROWS, 2, out, out_stride); break; \
    case 6: grouped_vnni_tile_n(row, row_bytes, groups, 1, x, dx, corr, stride, ROWS, 3, out, out_stride); break; \
    default: grouped_vnni_tile_n(row, row_bytes, groups, 1, x, dx, corr, stride, ROWS, 4, out, out_stride); break; \
    }

__attribute__((target("avx512vnni,avx512bw,avx512f,avx2,fma,f16c")))
static void grouped_vnni_tile(const uint8_t *row, long row_bytes, int groups, int q4, const int8_t *x, const float *dx,
                              const int32_t *corr, int stride, int rows, int tokens, float *out, long out_stride) {
    if (rows == 4) {
        SY_TILE_CASES(4)
    } else {
        SY_TILE_CASES(1)
    }
}
#undef SY_TILE_CASES

// Both the format and the token count become constants in each copy of the kernel.
#define SY_GROUPED_YMM_CASES(NAME, KERNEL, TARGET)                                                 \
    __attribute__((target(TARGET)))                                                                \
    static void NAME(const uint8_t *row, int groups, int q4, const int8_t *x, const float *dx, const int32_t *corr, \
                     int stride, int tokens, float *out) {                                         \
        switch (4 * (q4 != 0) + (tokens < 4 ? tokens : 4) - 1) {                                   \
        case 0: KERNEL(row, groups, 0, x, dx, corr, stride, 1, out); break;                        \
        case 1: KERNEL(row, groups, 0, x, dx, corr, stride, 2, out); break;                        \
        case 2: KERNEL(row, groups, 0, x, dx, corr, stride, 3, out); break;                        \
        case 3: KERNEL(row, groups, 0, x, dx, corr, stride, 4, out); break;                        \
        case 4: KERNEL(row, groups, 1, x, dx, corr, stride, 1, out); break;                        \
        case 5: KERNEL(row, groups, 1, x, dx, corr, stride, 2, out); break;                        \
        case 6: KERNEL(row, groups, 1, x, dx, corr, stride, 3, out); break;                        \
        default: KERNEL(row, groups, 1, x, dx, corr, stride, 4, out); break;                       \
        }                                                                                          \
    }

SY_GROUPED_YMM_CASES(grouped_avx2, grouped_avx2_n, "avx2,fma,f16c")
SY_GROUPED_YMM_CASES(grouped_avxvnni, grouped_avxvnni_n, "avxvnni,avx2,fma,f16c")
SY_GROUPED_YMM_CASES(grouped_vnni256, grouped_vnni256_n, "avx512vnni,avx512vl,avx2,fma,f16c")
#undef SY_GROUPED_YMM_CASES

// Round half away from zero: nearest-even, then exact ties (x - even = ±0.5) step away from zero,
// as QuantizedActivations.roundedToInt8 does.
__attribute__((target("avx512f,avx512bw"), always_inline))
static inline __m512i rounded_epi32(__m512 x) {
    const __m512 even = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 dropped = _mm512_sub_ps(x, even);
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 up = _mm512_cmp_ps_mask(dropped, _mm512_set1_ps(0.5f), _CMP_EQ_OQ) & _mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ);
    __mmask16 down = _mm512_cmp_ps_mask(dropped, _mm512_set1_ps(-0.5f), _CMP_EQ_OQ) & _mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ);
    __m512 r = _mm512_mask_add_ps(even, up, even, _mm512_set1_ps(1.0f));
    r = _mm512_mask_sub_ps(r, down, r, _mm512_set1_ps(1.0f));
    return _mm512_cvtps_epi32(r);
}

__attribute__((target("avx512f,avx512bw")))
static void quantize_grouped_avx512(const float *input, long input_stride, int columns, int tokens, int q4, int8_t *values,
                                    float *scales, int32_t *corrections) {
    const int32_t k = q4 ? -8 : -128;
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
    for (int t = 0; t < tokens; t++) {
        const float *x = input + (long)t * input_stride;
        for (int b = 0; b < columns / 32; b++) {
            const int g = b / 4, block = b % 4;
            const __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
            const __m512 a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v0), magnitude));
            const __m512 a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v1), magnitude));
            const float m = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
            const float d = m / 127;
            const float id = d != 0 ? 1 / d : 0;
            const __m512i q0 = rounded_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
            const __m512i q1 = rounded_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
            int8_t *target = values + (long)t * columns + 128 * g + 16 * block;
            _mm_storeu_si128((__m128i *)target, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(target + 64), _mm512_cvtepi32_epi8(q1));
            int32_t sums[16];
            _mm512_storeu_si512((void *)sums, _mm512_add_epi32(q0, q1));
            const long lanes = (long)t * (columns / 8) + 16 * g + 4 * block;
            for (int j = 0; j < 4; j++) {
                scales[lanes + j] = d;
                corrections[lanes + j] = k * (sums[4 * j] + sums[4 * j + 1] + sums[4 * j + 2] + sums[4 * j + 3]);
            }
        }
    }
}
#endif

int sy_quantize_grouped(const float *input, long input_stride, int columns, int tokens, int q4, int8_t *values, float *scales,
                        int32_t *corrections) {
#if defined(__x86_64__)
    if (sy_integer_level_in_force() == SY_LEVEL_AVX512_VNNI) {
        quantize_grouped_avx512(input, input_stride, columns, tokens, q4, values, scales, corrections);
        return 1;
    }
#endif
    (void)input; (void)input_stride; (void)columns; (void)tokens; (void)q4; (void)values; (void)scales; (void)corrections;
    return 0;
}

void sy_rows_grouped_q8(const void *base, long row_bytes, int nrows, int groups, int q4, const int8_t *x, const float *dx,
                        const int32_t *corr, int stride, int tokens, int tiles_from, float *out, long out_stride) {
    float sums[4];
    const int level = sy_integer_level_in_force();
    int r = 0;
#if defined(__x86_64__)
    if (level == SY_LEVEL_AVX512_VNNI && tokens >= tiles_from) {
        while (r < nrows) {
            const int tile = nrows - r >= 4 ? 4 : 1;
            grouped_vnni_tile((const uint8_t *)base + r * row_bytes, row_bytes, groups, q4, x, dx, corr, stride, tile, tokens, out + r,
                              out_stride);
            r += tile;
        }
        return;
    }
#endif
    for (; r < nrows; r++) {
        const uint8_t *row = (const uint8_t *)base + r * row_bytes;
#if defined(__x86_64__)
        if (level == SY_LEVEL_AVX512_VNNI) {
            grouped_vnni256(row, groups, q4, x, dx, corr, stride, tokens, sums);
        } else if (level == SY_LEVEL_AVX_VNNI) {
            grouped_avxvnni(row, groups, q4, x, dx, corr, stride, tokens, sums);
        } else if (level == SY_LEVEL_AVX2) {
            grouped_avx2(row, groups, q4, x, dx, corr, stride, tokens, sums);
        } else {
            grouped_portable(row, groups, q4, x, dx, stride, tokens, sums);
        }
#else
        (void)level; (void)corr;
        grouped_portable(row, groups, q4, x, dx, stride, tokens, sums);
#endif
        for (int t = 0; t < tokens; t++) out[t * out_stride + r] = sums[t];
    }
}
