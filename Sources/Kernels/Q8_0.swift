/// GGUF's Q8_0 format: blocks of 32 values stored as a float16 scale `d` and 32 int8 `q`, value =
/// q × d. Quantisation matches ggml's reference (quantize_row_q8_0_ref) bit for bit.
public enum Q8_0 {
    public static let blockValues = 32
    public static let blockBytes = 34

    /// Quantises `count` (a multiple of 32) floats into `count / 32` blocks at `out`.
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
        for b in 0..<(count / blockValues) {
            let v = x + b * blockValues
            var amax: Float = 0
            for j in 0..<blockValues { amax = max(amax, abs(v[j])) }
            let d = amax / 127
            let id: Float = d != 0 ? 1 / d : 0
            let block = out + b * blockBytes
            block.storeBytes(of: Float16(d).bitPattern.littleEndian, as: UInt16.self)
            for j in 0..<blockValues {
                // roundf: halves away from zero, as ggml.
                block.storeBytes(of: Int8((v[j] * id).rounded(.toNearestOrAwayFromZero)), toByteOffset: 2 + j, as: Int8.self)
            }
        }
    }

    /// Element `index` of a Q8_0 row, widened.
    @inlinable public static func value(_ row: UnsafeRawPointer, _ index: Int) -> Float {
        let block = row + (index / blockValues) * blockBytes
        let d = widenedHalf(block)
        return Float(block.load(fromByteOffset: 2 + index % blockValues, as: Int8.self)) * d
    }

    /// Reorders activations to match how `dotRow` widens a block: 32 int8 load as 8 Int32 lanes of
    /// 4 bytes, so byte j of every lane (elements j, j+4, j+8...) comes out together. Per block of 32:
    /// the 8 elements ≡ 0 (mod 4), then ≡ 1, ≡ 2, ≡ 3. `output` is [tokens, columns].
    @inlinable
    public static func permute(_ input: UnsafePointer<Float>, inputStride: Int, columns: Int, tokens: Int, output: UnsafeMutablePointer<Float>) {
        for t in 0..<tokens {
            let x = input + t * inputStride, o = output + t * columns
            for b in 0..<(columns / 32) {
                for g in 0..<4 {
                    for k in 0..<8 { o[b * 32 + g * 8 + k] = x[b * 32 + 4 * k + g] }
                }
            }
        }
    }

    /// int8 in Int32 lanes to float without a conversion instruction: adding 0x4B400000 puts the
    /// integer in the mantissa of 1.5·2²³, and subtracting that float leaves it exactly.
    @inlinable @inline(__always)
    static func widen(_ lanes: SIMD8<Int32>, byte: Int32) -> SIMD8<Float> {
        let signed = (lanes &<< (24 - 8 * byte)) &>> 24
        let biased = unsafeBitCast(signed &+ 0x4B40_0000, to: SIMD8<Float>.self)
        return biased - SIMD8<Float>(repeating: 12_582_912)
    }

    /// Dot products of one Q8_0 row with up to four permuted activation rows, each token summed in
    /// the same order whatever the batch.
    @inlinable @inline(__always)
    public static func dotRow(_ row: UnsafeRawPointer, _ n: Int, _ permuted: UnsafePointer<Float>, _ tokens: Int, _ out: inout SIMD4<Float>) {
        blockDotRow(row, n, permuted, tokens, &out, blockBytes: blockBytes) { block in
            (widenedHalf(block),
             (block + 2).loadUnaligned(as: SIMD8<Int32>.self))
        }
    }

    /// The float kernel of every 32-value block format: `load` gives a block's scale and its 32
    /// signed bytes as 8 Int32 lanes (memory order); activations are permuted to match (`permute`).
    @inlinable @inline(__always)
    static func blockDotRow(
        _ row: UnsafeRawPointer, _ n: Int, _ permuted: UnsafePointer<Float>, _ tokens: Int, _ out: inout SIMD4<Float>,
        blockBytes: Int, load: (UnsafeRawPointer) -> (Float, SIMD8<Int32>)
    ) {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        let p = UnsafeRawPointer(permuted)
        let stride = n * 4
        for b in 0..<(n / 32) {
            let (scale, lanes) = load(row + b * blockBytes)
            let d = SIMD8<Float>(repeating: scale)
            let q0 = widen(lanes, byte: 0), q1 = widen(lanes, byte: 1), q2 = widen(lanes, byte: 2), q3 = widen(lanes, byte: 3)
            let x = p + b * 128
            @inline(__always) func blockDot(_ x: UnsafeRawPointer) -> SIMD8<Float> {
                var s = q0 * x.loadUnaligned(as: SIMD8<Float>.self)
                s.addProduct(q1, (x + 32).loadUnaligned(as: SIMD8<Float>.self))
                s.addProduct(q2, (x + 64).loadUnaligned(as: SIMD8<Float>.self))
                s.addProduct(q3, (x + 96).loadUnaligned(as: SIMD8<Float>.self))
                return s
            }
            a0.addProduct(blockDot(x), d)
            if tokens > 1 { a1.addProduct(blockDot(x + stride), d) }
            if tokens > 2 { a2.addProduct(blockDot(x + 2 * stride), d) }
            if tokens > 3 { a3.addProduct(blockDot(x + 3 * stride), d) }
        }
        out = SIMD4<Float>(sum8(a0), sum8(a1), sum8(a2), sum8(a3))
    }

    @inlinable @inline(__always)
    static func sum8(_ v: SIMD8<Float>) -> Float {
        let a = v.lowHalf + v.highHalf
        return (a[0] + a[1]) + (a[2] + a[3])
    }
}
