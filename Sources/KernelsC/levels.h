#ifndef SWITCHYARD_KERNELS_C_LEVELS_H
#define SWITCHYARD_KERNELS_C_LEVELS_H

// The integer kernels' levels: AVX512-VNNI, AVX-VNNI (vpdpbusd on 256 bits, VEX-encoded: CPUs with
// it and without AVX-512, as Intel's since Alder Lake), AVX2 (maddubs), portable C.
#define SY_LEVEL_AVX512_VNNI 3
#define SY_LEVEL_AVX_VNNI 2
#define SY_LEVEL_AVX2 1
// sy_integer_level_in_force (KernelsC.h) is the level after sy_force_quantized_dot_level's cap (a
// cap of SY_LEVEL_AVX_VNNI on a CPU without AVX-VNNI runs AVX2).
// The cap sy_force_quantized_dot_level set (-1: none), which the bf16 kernels honour too.
int sy_forced_level(void);

#include <stdint.h>
#include <string.h>

// IEEE binary16 to binary32, exact (subnormals included), without the F16C instruction, for the
// portable kernels. (The vector kernels use vcvtph2ps on a value moved into a fresh register by
// vmovd: clang compiles _cvtsh_ss to a vpinsrw into whatever register is at hand, which chained
// blocks to an accumulator; and this function's round trip through a general register stalled the
// K-quant kernels at every super-block, a third of Q4_K_M's decode time on Zen 4.) Shifting the
// exponent and mantissa into a float and multiplying by 2^112 rebiases normal and subnormal halves
// exactly; infinities and NaNs keep their bits.
static inline float sy_half(uint16_t h) {
    uint32_t magnitude = (uint32_t)(h & 0x7FFF) << 13, sign = (uint32_t)(h & 0x8000) << 16, bits;
    if ((h & 0x7C00) == 0x7C00) {
        bits = sign | 0x7F800000 | (magnitude & 0x007FFFFF);
    } else {
        float f;
        memcpy(&f, &magnitude, 4);
        f *= 0x1p112f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

// The sum of 16 lanes in the kernels' fixed order: lanes i + i+8, then i + i+4, then
// (0 + 1) + (2 + 3); the Swift twins sum in the same order.
static inline float sy_reduce16(const float a[16]) {
    float b[8], c[4];
    for (int i = 0; i < 8; i++) b[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) c[i] = b[i] + b[i + 4];
    return (c[0] + c[1]) + (c[2] + c[3]);
}

#ifndef SY_PREFETCH_DISTANCE
// Weights stream from memory once per token: the hardware prefetcher alone left the decode kernels
// waiting on their loads (1.2x slower on two cores here); 2 KiB ahead measured best of 0.25-4 KiB.
#define SY_PREFETCH_DISTANCE 2048
#endif

#ifndef SY_GROUPED_PREFETCH_DISTANCE
// The grouped kernels get through a cache line in fewer cycles, so they prefetch further ahead:
// 8 KiB measured best of 2-16 KiB (Q4_0 tg128 109 -> 117 tok/s here).
#define SY_GROUPED_PREFETCH_DISTANCE 8192
#endif

#endif
