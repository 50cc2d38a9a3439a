// Measured throughput of the dot-product instructions the kernels use, to check llvm-mca's models
// on the CPU at hand: 12 independent accumulators, so latency never binds.
//   clang -O2 benchmarks/mca/throughput.c -o /tmp/throughput && /tmp/throughput
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define KEEP12(a) __asm__ volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]), "+v"(a[6]), "+v"(a[7]), "+v"(a[8]), "+v"(a[9]), "+v"(a[10]), "+v"(a[11]))

__attribute__((target("avx512f,avx512bf16"))) static double bf16_dot(long n) {
    __m512 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3f003f00);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
        KEEP12(a);
    }
    return (now() - t) / (n * 12.0);
}

__attribute__((target("avx512f,fma"))) static double f32_fma(long n) {
    __m512 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.5f);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
        KEEP12(a);
    }
    return (now() - t) / (n * 12.0);
}

__attribute__((target("avx512f,avx512vnni"))) static double int8_dot(long n) {
    __m512i a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
    __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
    double t = now();
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
        KEEP12(a);
    }
    return (now() - t) / (n * 12.0);
}

int main(void) {
    __builtin_cpu_init();
    const long n = 20000000;
    for (int round = 0; round < 3; round++) {
        printf("vfmadd231ps zmm %.3f ns", f32_fma(n) * 1e9);
        if (__builtin_cpu_supports("avx512bf16")) printf(", vdpbf16ps zmm %.3f ns", bf16_dot(n) * 1e9);
        if (__builtin_cpu_supports("avx512vnni")) printf(", vpdpbusd zmm %.3f ns", int8_dot(n) * 1e9);
        printf(" (each, 12 independent chains)\n");
    }
    return 0;
}
