#ifndef SWITCHYARD_KERNELS_C_H
#define SWITCHYARD_KERNELS_C_H

#include <stdint.h>

// Integer dot products of quantised weight rows with up to four rows of activations quantised
// per block of 32 (int8 values `xq` [tokens][stride], float scales `xd` [tokens][stride / 32]).
// For every block and token, lane i (of 8) of the int32 sum holds the products of elements
// 4i..4i+3; the lanes are converted to float and fused-multiply-added with weight scale x
// activation scale into 8 float accumulators per token; the result is
// ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)). The Swift twins in Kernels (QuantizedDot.swift)
// compute exactly this, and tests check the two agree bit for bit.
//
// Q8_0 rows: blocks of a float16 scale and 32 int8. Q4_0 rows: blocks of a float16 scale and 16
// bytes, element j in the low nibble of byte j and element j + 16 in the high one, value minus 8.
// `nrows` consecutive rows `row_bytes` apart: out[t * out_stride + r] for row r and token t, one
// call per block of rows.
void sy_rows_q8_0_q8(const void *rows, long row_bytes, int nrows, int blocks, const int8_t *xq, const float *xd, int stride,
                     int tokens, float *out, long out_stride);
void sy_rows_q4_0_q8(const void *rows, long row_bytes, int nrows, int blocks, const int8_t *xq, const float *xd, int stride,
                     int tokens, float *out, long out_stride);
// MXFP4 rows (GGUF's blocks: an E8M0 scale byte, 16 bytes of E2M1 codes) against int8 activations,
// as the two above; the codes' doubled values are exact int8 (MXFP4.swift is the twin).
void sy_rows_mxfp4_q8(const void *rows, long row_bytes, int nrows, int blocks, const int8_t *xq, const float *xd, int stride,
                      int tokens, float *out, long out_stride);
// Q4_K rows (super-blocks of 256 in 144 bytes, GGUF's layout) and Q5_K rows (176 bytes) against
// activations quantised per super-block, as Q6_K's below; `superblocks` = columns / 256.
void sy_rows_q4_k_q8k(const void *rows, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride);
void sy_rows_q5_k_q8k(const void *rows, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride);
// Q6_K rows (super-blocks of 256 in 210 bytes, GGUF's layout) against activations quantised per
// super-block (Kernels' SuperBlockActivations): `xq` [tokens][stride] int8, `xd` [tokens][stride /
// 256] scales, `xs` [tokens][stride / 16] the int16 sum of each 16 values; `superblocks` = columns / 256.
void sy_rows_q6_k_q8k(const void *rows, long row_bytes, int nrows, int superblocks, const int8_t *xq, const float *xd,
                      const int16_t *xs, int stride, int tokens, float *out, long out_stride);

// Grouped rows (Kernels' WeightElement.q8_0x4 / .q4_0x4, regrouped at load from GGUF's blocks):
// groups of 4 blocks (128 values), each the 4 blocks' float16 scales (8 bytes) then, for Q4_0, the
// 4 blocks' 16 nibble bytes as stored (64 bytes), for Q8_0, the 4 blocks' first 16 values then
// their last 16, each value xor 0x80 (128 bytes). Activations in the same order, [tokens][stride]
// int8 (`x`, stride = columns), with per lane (16 per group: lane 4k + j covers block k's elements
// 4j..4j+3 and 16+4j..16+4j+3) the block's scale (`dx`) and -K x the lane's sum of values (`corr`,
// K = 8 for Q4_0, 128 for Q8_0), both [tokens][stride / 8]. Up to four tokens; `q4` picks the format.
// With AVX512-VNNI, tiles of 4 rows on 512 bits from `tiles_from` tokens on, a row at a time on 256
// bits below (the same bits either way).
void sy_rows_grouped_q8(const void *rows, long row_bytes, int nrows, int groups, int q4, const int8_t *x, const float *dx,
                        const int32_t *corr, int stride, int tokens, int tiles_from, float *out, long out_stride);

// Quantises `tokens` rows of float activations (`input_stride` apart, `columns` a multiple of
// 128) per block of 32 and writes them in sy_rows_grouped_q8's layout: what Kernels'
// QuantizedActivations.quantize then GroupedActivations.arrange write, bit for bit, in one pass.
// Returns 0 (writing nothing) where AVX-512 is absent or capped: the caller uses the Swift twin.
int sy_quantize_grouped(const float *input, long input_stride, int columns, int tokens, int q4, int8_t *values, float *scales,
                        int32_t *corrections);

// Which instruction set the dot products use: 3 = AVX512-VNNI, 2 = AVX-VNNI (256-bit vpdpbusd; the
// grouped kernels, the others run AVX2 there), 1 = AVX2, 0 = portable C.
int sy_quantized_dot_level(void);
// Caps every kernel family at `level` from now on (a level at or above the CPU's best lifts the
// cap; a cap below 3 keeps the bf16 kernels off AVX-512, and a cap of 2 on a CPU without AVX-VNNI
// runs AVX2): for tests of every path.
void sy_force_quantized_dot_level(int level);
// The integer kernels' level after that cap.
int sy_integer_level_in_force(void);

// bf16 rows against float32 activations permuted per block of 32 (even-indexed values, then odd),
// [tokens][stride], `blocks` = columns / 32, any number of tokens (in tiles of 4 rows x up to 5
// tokens where AVX-512 is present): each result is that of Kernels' dotRowBF16 for its row and token,
// bit for bit, with software prefetch. Level 2 = AVX-512F, 1 = AVX2+FMA, 0 = none (use Swift's);
// sy_force_quantized_dot_level caps it too, for tests.
int sy_bf16_level(void);
// `tile_from`: from how many tokens a product takes them 5 a pass through the AVX-512 tiles (below
// it, and below 5, 4 a pass); Kernels' KernelChoice measures it per machine and the caller passes
// it, so no choice is held in a process-wide variable. The results are the same bits either way.
void sy_rows_bf16_f32(const void *rows, long row_bytes, int nrows, int blocks, const float *x, int stride, int tokens, float *out,
                      long out_stride, int tile_from);

// bf16 rows against bf16 activations ([tokens][stride], natural order, `blocks` = columns / 32) with
// AVX512-BF16's vdpbf16ps, in tiles of 4 rows x up to 6 tokens (one row at a time for passes of
// fewer than `tiles_from` tokens); each result is Kernels' dotRowBF16Rounded's for its row and
// token, bit for bit. Level 1 where AVX512-BF16 is present, 0 where not (or where
// sy_force_quantized_dot_level capped the kernels below AVX-512): use Swift's.
int sy_bf16dp_level(void);
void sy_rows_bf16_bf16(const void *rows, long row_bytes, int nrows, int blocks, const uint16_t *x, int stride, int tokens, int tiles_from,
                       float *out, long out_stride);

#endif
