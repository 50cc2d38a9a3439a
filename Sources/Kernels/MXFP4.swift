import KernelsC

/// OCP MXFP4 in GGUF's block layout: 32 values as one E8M0 scale byte e, then 16 bytes of E2M1
/// codes; element j is the low nibble of byte j and element j + 16 the high one. Value =
/// E2M1(code) x 2^(e - 127), which is the code's doubled value (an integer, -12...12) x 2^(e - 128):
/// the integer kernels multiply the doubled values as int8, exactly.
public enum MXFP4 {
    public static let blockValues = 32
    public static let blockBytes = 17

    /// E2M1's values doubled: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives, times two.
    public static let doubledValues: [Int8] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]

    /// 2^(e - 128), the scale of the doubled values, exact for every e (2^-128 and 2^-127 are
    /// subnormal floats; e = 255, NaN in the OCP format, is 2^127 here as in ggml).
    @inlinable
    public static func halfScale(_ e: UInt8) -> Float {
        e >= 2 ? Float(bitPattern: UInt32(e - 1) << 23) : Float(bitPattern: e == 1 ? 0x0040_0000 : 0x0020_0000)
    }

    /// The doubled value of a code, from its magnitude bits m (0...7): m below 4 is itself, then
    /// 4, 6, 8, 12; the top bit is the sign. Arithmetic, so it vectorises without a table.
    @inlinable @inline(__always)
    static func doubled(_ codes: SIMD32<UInt8>) -> SIMD32<UInt8> {
        let m = codes & 7
        // m >= 4: (4 + 2(m & 1)) << ((m >> 1) - 2); the shift count is clamped for m < 4.
        let shift = (m &>> 1).replacing(with: 2, where: m .< 4) &- 2
        let large = (4 &+ ((m & 1) &<< 1)) &<< shift
        let magnitude = m.replacing(with: large, where: m .>= 4)
        // Negative codes: two's complement of the magnitude, as int8 bits.
        return magnitude.replacing(with: 0 &- magnitude, where: (codes & 8) .!= 0)
    }

    /// Quantises `count` (a multiple of 32) floats into blocks at `out` as ggml's reference does:
    /// the scale from the block's largest magnitude, 2^(floor(log2 amax) - 2), each value to the
    /// nearest doubled code (the first of two equally near).
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
        for b in 0..<(count / blockValues) {
            let v = x + b * blockValues
            var amax: Float = 0
            for j in 0..<blockValues { amax = max(amax, abs(v[j])) }
            let e = amax > 0 ? UInt8(clamping: Int(amax.exponent) - 2 + 127) : 0
            let d = halfScale(e)
            func nearest(_ value: Float) -> UInt8 {
                var best = 0, bestError = Float.infinity
                for (i, q) in doubledValues.enumerated() {
                    let error = abs(value - Float(q))
                    if error < bestError { best = i; bestError = error }
                }
                return UInt8(best)
            }
            let block = out + b * blockBytes
            block.storeBytes(of: e, as: UInt8.self)
            for j in 0..<16 {
                let low = nearest(v[j] / d), high = nearest(v[j + 16] / d)
                block.storeBytes(of: low | high << 4, toByteOffset: 1 + j, as: UInt8.self)
            }
        }
    }

    /// Element `index` of an MXFP4 row, widened.
    @inlinable
    public static func value(_ row: UnsafeRawPointer, _ index: Int) -> Float {
        let block = row + (index / blockValues) * blockBytes
        let j = index % blockValues
        let byte = block.load(fromByteOffset: 1 + j % 16, as: UInt8.self)
        let code = Int(j < 16 ? byte & 0x0F : byte >> 4)
        return Float(doubledValues[code]) * halfScale(block.load(as: UInt8.self))
    }

    /// Dot products of one MXFP4 row with up to four float32 activation rows permuted as for
    /// Q8_0: each block's codes become their doubled values as 32 signed bytes, then it is
    /// Q8_0's kernel with the block's half scale.
    @inlinable @inline(__always)
    public static func dotRow(_ row: UnsafeRawPointer, _ n: Int, _ permuted: UnsafePointer<Float>, _ tokens: Int, _ out: inout SIMD4<Float>) {
        Q8_0.blockDotRow(row, n, permuted, tokens, &out, blockBytes: blockBytes) { block in
            let packed = (block + 1).loadUnaligned(as: SIMD16<UInt8>.self)
            let codes = SIMD32<UInt8>(lowHalf: packed & 0x0F, highHalf: packed &>> 4)
            return (halfScale(block.load(as: UInt8.self)), unsafeBitCast(doubled(codes), to: SIMD8<Int32>.self))
        }
    }

    /// One block from the layout of Hugging Face's `_blocks` / `_scales` tensors (OpenAI's): 16
    /// bytes whose byte k holds element 2k in its low nibble and 2k + 1 in its high one, and the
    /// scale byte apart; into GGUF's block at `out`.
    @inlinable
    public static func pack(pairs: UnsafeRawPointer, scale: UInt8, into out: UnsafeMutableRawPointer) {
        @inline(__always) func code(_ i: Int) -> UInt8 {
            let byte = pairs.load(fromByteOffset: i / 2, as: UInt8.self)
            return i % 2 == 0 ? byte & 0x0F : byte >> 4
        }
        out.storeBytes(of: scale, as: UInt8.self)
        for j in 0..<16 { out.storeBytes(of: code(j) | code(j + 16) << 4, toByteOffset: 1 + j, as: UInt8.self) }
    }
}
