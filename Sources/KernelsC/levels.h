#ifndef SWITCHYARD_KERNELS_C_LEVELS_H
#define SWITCHYARD_KERNELS_C_LEVELS_H

// The integer kernels' level after sy_force_quantized_dot_level's cap (2 = AVX512-VNNI, 1 = AVX2,
// 0 = portable C): shared by the kernel files, not part of the module's interface.
int sy_integer_level_in_force(void);

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
