/// Activations rounded to bf16 for `dotRowBF16Rounded` and the C kernel that is its twin
/// (`sy_rows_bf16_bf16`): round to nearest, ties to even, as llama.cpp and PyTorch round (a NaN
/// stays a NaN). `output` is [tokens, columns].
@inlinable
func roundToBF16(_ input: UnsafePointer<Float>, inputStride: Int, columns: Int, tokens: Int, output: UnsafeMutablePointer<UInt16>) {
    for t in 0..<tokens {
        let x = input + t * inputStride, o = output + t * columns
        for c in 0..<columns { o[c] = roundedBF16Bits(x[c]) }
    }
}

@inlinable @inline(__always)
func roundedBF16Bits(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x40 }
    return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
}

/// bf16 rows against bf16 activations, as AVX512-BF16's `vdpbf16ps` computes them: in each block
/// of 32, lane i of a 16-lane accumulator adds the product of pair 2i+1, then that of pair 2i
/// (products of two bf16 values are exact in f32; each add is rounded; denormal sums flush to
/// zero), and the lanes are summed in the kernels' fixed order. The Swift twin of the C kernel,
/// which tests check bit for bit; the path where the CPU lacks the instruction. `n` is a multiple
/// of 32; `x` is [tokens, n] of bf16 bits.
@inlinable @inline(__always)
func dotRowBF16Rounded(_ row: UnsafeRawPointer, _ n: Int, _ x: UnsafePointer<UInt16>, _ tokens: Int, _ out: inout SIMD4<Float>) {
    let mask = SIMD16<UInt32>(repeating: 0xFFFF_0000)
    let blocks = n / 32
    for t in 0..<tokens {
        var a = Vector16()
        let xt = UnsafeRawPointer(x + t * n)
        for k in 0..<blocks {
            let w = (row + k * 64).loadUnaligned(as: SIMD16<UInt32>.self)
            let v = (xt + k * 64).loadUnaligned(as: SIMD16<UInt32>.self)
            // Denormal inputs count as zero too.
            let odd = flushDenormals(unsafeBitCast(w & mask, to: Vector16.self)) * flushDenormals(unsafeBitCast(v & mask, to: Vector16.self))
            let even = flushDenormals(unsafeBitCast(w &<< 16, to: Vector16.self)) * flushDenormals(unsafeBitCast(v &<< 16, to: Vector16.self))
            a = flushDenormals(flushDenormals(a + odd) + even)
        }
        out[t] = horizontalSum(a)
    }
}

/// Lanes whose magnitude is below the smallest normal float become zero (keeping their sign), as
/// `vdpbf16ps` leaves its sums.
@inlinable @inline(__always)
func flushDenormals(_ v: Vector16) -> Vector16 {
    let bits = unsafeBitCast(v, to: SIMD16<UInt32>.self)
    let tiny = (bits & 0x7F80_0000) .== 0
    return unsafeBitCast(bits.replacing(with: bits & 0x8000_0000, where: tiny), to: Vector16.self)
}
