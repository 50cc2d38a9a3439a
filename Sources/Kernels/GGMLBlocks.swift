/// The rest of llama.cpp's block formats: Q4_1, Q5_0, Q5_1, the K-quants Q2_K, Q3_K, Q5_K, Q6_K, and
/// the non-linear IQ4_NL and IQ4_XS. Each block is widened to floats exactly as the `gguf` Python
/// package's `dequantize` does (the same products, in the same order, no fused multiply-adds: the
/// bits are the same, which the tests check on every format), and the product kernel runs over the
/// widened block with float32 activations. Q8_0, Q4_0, Q4_K and MXFP4 have their own integer kernels
/// (Q8_0.swift, Q4_K.swift, MXFP4.swift).
///
/// Layouts (bytes per block; `d`, `dmin`, `m` float16):
/// - Q4_1 (20): d, m, 16 bytes: element j in byte j's low nibble, j + 16 in its high one; d·q + m.
/// - Q5_0 (22): d, 32 high bits (element i's fifth bit is bit i), nibbles as Q4_1; d·(q − 16).
/// - Q5_1 (24): d, m, high bits, nibbles; d·q + m.
/// - Q2_K (84): 16 scale bytes (low nibble scale, high nibble min, per 16 values), 64 bytes of 2-bit
///   values (element 128g + 32s + l is bits 2s of byte 32g + l), d, dmin; (d·sc)·q − dmin·m.
/// - Q3_K (110): 32 bytes of high bits (element 32b + l: bit b of byte l, set meaning +0, clear −4),
///   64 bytes of 2-bit values as Q2_K, 12 bytes of 6-bit scales (minus 32), d; (d·sc)·q.
/// - Q5_K (176): d, dmin, Q4_K's 12 scale bytes, 32 bytes of high bits (as Q3_K), 128 bytes of nibbles
///   (element 64c + 32h + l: nibble h of byte 32c + l); (d·sc)·q − dmin·m.
/// - Q6_K (210): 128 bytes of low nibbles (element 128g + 64h + l: nibble h of byte 64g + l), 64 bytes
///   of 2-bit highs (element 128g + 32s + l: bits 2s of byte 32g + l), 16 int8 scales, d; (d·sc)·(q − 32).
/// - IQ4_NL (18): d, nibbles as Q4_1 indexing a 16-value table; d·table[q].
/// - IQ4_XS (136): d, 16 bits of scale highs, 4 bytes of scale lows (6-bit scales minus 32, per 32),
///   128 bytes of nibbles (element 32k + 16h + l: nibble h of byte 16k + l); (d·sc)·table[q].
public enum GGMLBlocks {
    /// IQ4_NL's and IQ4_XS's 16 levels.
    public static let nonLinearLevels: [Int8] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

    /// Whether `element` is one of these formats.
    @inlinable public static func handles(_ element: WeightElement) -> Bool {
        switch element {
        case .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs: return true
        default: return false
        }
    }

    /// Bytes of one block.
    @inlinable public static func blockBytes(_ element: WeightElement) -> Int {
        switch element {
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q2_k: return 84
        case .q3_k: return 110
        case .q5_k: return 176
        case .q6_k: return 210
        case .iq4_nl: return 18
        case .iq4_xs: return 136
        default: preconditionFailure("\(element) is not a GGMLBlocks format")
        }
    }

    /// Byte offsets of the float16 scales in a block (what `--check-tensors` reads).
    public static func scaleOffsets(_ element: WeightElement) -> [Int] {
        switch element {
        case .q4_1, .q5_1, .q5_k: return [0, 2]
        case .q5_0, .iq4_nl, .iq4_xs: return [0]
        case .q2_k: return [80, 82]
        case .q3_k: return [108]
        case .q6_k: return [208]
        default: return []
        }
    }

    /// Widens the block at `block` into `element.blockValues` floats at `out`.
    @inlinable
    public static func dequantize(_ element: WeightElement, _ block: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>) {
        let b = block.assumingMemoryBound(to: UInt8.self)
        switch element {
        case .q4_1:
            let d = widenedHalf(block, 0), m = widenedHalf(block, 2)
            for j in 0..<16 {
                out[j] = d * Float(b[4 + j] & 0x0F) + m
                out[j + 16] = d * Float(b[4 + j] >> 4) + m
            }
        case .q5_0, .q5_1:
            let d = widenedHalf(block, 0)
            let one = element == .q5_1
            let m: Float = one ? widenedHalf(block, 2) : 0
            let start = one ? 4 : 2
            let high = UInt32(littleEndian: block.loadUnaligned(fromByteOffset: start, as: UInt32.self))
            let q = b + start + 4
            for j in 0..<16 {
                let lo = UInt32(q[j] & 0x0F) | ((high >> UInt32(j)) & 1) << 4
                let hi = UInt32(q[j] >> 4) | ((high >> UInt32(j + 16)) & 1) << 4
                if one {
                    out[j] = d * Float(lo) + m
                    out[j + 16] = d * Float(hi) + m
                } else {
                    out[j] = d * Float(Int32(lo) - 16)
                    out[j + 16] = d * Float(Int32(hi) - 16)
                }
            }
        case .q2_k:
            let d = widenedHalf(block, 80), dmin = widenedHalf(block, 82)
            for sub in 0..<16 {
                let dl = d * Float(b[sub] & 0x0F), ml = dmin * Float(b[sub] >> 4)
                for i in 0..<16 {
                    let e = 16 * sub + i
                    let g = e / 128, s = (e % 128) / 32, l = e % 32
                    let q = (b[16 + 32 * g + l] >> UInt8(2 * s)) & 3
                    out[e] = dl * Float(q) - ml
                }
            }
        case .q3_k:
            let d = widenedHalf(block, 108)
            let sc = b + 96
            for k in 0..<16 {
                let low = k < 8 ? sc[k] & 0x0F : sc[k - 8] >> 4
                let high = (sc[8 + k % 4] >> UInt8(2 * (k / 4))) & 3
                let dl = d * Float(Int32(low | high << 4) - 32)
                for i in 0..<16 {
                    let e = 16 * k + i
                    let g = e / 128, s = (e % 128) / 32, l = e % 32
                    let q = Int32((b[32 + 32 * g + l] >> UInt8(2 * s)) & 3)
                    let h = (b[l] >> UInt8(e / 32)) & 1
                    out[e] = dl * Float(q - (h == 0 ? 4 : 0))
                }
            }
        case .q5_k:
            for chunk in 0..<16 { (UnsafeMutableRawPointer(out) + 64 * chunk).storeBytes(of: q5kChunk(block, chunk), as: Vector16.self) }
        case .q6_k:
            for chunk in 0..<16 { (UnsafeMutableRawPointer(out) + 64 * chunk).storeBytes(of: q6kChunk(block, chunk), as: Vector16.self) }
        case .iq4_nl:
            let d = widenedHalf(block, 0)
            for j in 0..<16 {
                out[j] = d * Float(nonLinearLevels[Int(b[2 + j] & 0x0F)])
                out[j + 16] = d * Float(nonLinearLevels[Int(b[2 + j] >> 4)])
            }
        case .iq4_xs:
            let d = widenedHalf(block, 0)
            let highs = UInt16(littleEndian: block.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            for k in 0..<8 {
                let low = (b[4 + k / 2] >> UInt8(4 * (k % 2))) & 0x0F
                let high = UInt8((highs >> UInt16(2 * k)) & 3)
                let dl = d * Float(Int32(low | high << 4) - 32)
                for h in 0..<2 {
                    for l in 0..<16 {
                        out[32 * k + 16 * h + l] = dl * Float(nonLinearLevels[Int((b[8 + 16 * k + l] >> UInt8(4 * h)) & 0x0F)])
                    }
                }
            }
        default:
            preconditionFailure("\(element) is not a GGMLBlocks format")
        }
    }

    /// Values 16c..<16c + 16 of a Q5_K block: sub-block j = c / 2 (its scale and min), nibble
    /// h = j % 2 of bytes 48 + 32(j / 2) + 16(c % 2)..., fifth bit j of bytes 16 + 16(c % 2)...
    @inlinable @inline(__always)
    public static func q5kChunk(_ block: UnsafeRawPointer, _ c: Int) -> Vector16 {
        let j = c / 2, t = c % 2
        let (sc, m) = Q4_K.scaleMin(block + 4, j)
        let scale = widenedHalf(block, 0) * Float(sc), offset = widenedHalf(block, 2) * Float(m)
        let low = (block + 48 + 32 * (j / 2) + 16 * t).loadUnaligned(as: SIMD16<UInt8>.self) &>> UInt8(4 * (j % 2)) & 0x0F
        let high = ((block + 16 + 16 * t).loadUnaligned(as: SIMD16<UInt8>.self) &>> UInt8(j)) & 1
        let q = Vector16(SIMD16<Int32>(truncatingIfNeeded: low | high &<< 4))
        return Vector16(repeating: scale) * q - Vector16(repeating: offset)
    }

    /// Values 16c..<16c + 16 of a Q6_K block (scale c): in its half g = c / 8, chunk k = c % 8 takes
    /// nibble k / 4 of bytes 64g + 16(k % 4)... and bits 2(k / 2) of bytes 128 + 32g + 16(k % 2)...
    @inlinable @inline(__always)
    public static func q6kChunk(_ block: UnsafeRawPointer, _ c: Int) -> Vector16 {
        let g = c / 8, k = c % 8
        let dl = widenedHalf(block, 208) * Float(block.load(fromByteOffset: 192 + c, as: Int8.self))
        let low = (block + 64 * g + 16 * (k % 4)).loadUnaligned(as: SIMD16<UInt8>.self) &>> UInt8(4 * (k / 4)) & 0x0F
        let high = ((block + 128 + 32 * g + 16 * (k % 2)).loadUnaligned(as: SIMD16<UInt8>.self) &>> UInt8(2 * (k / 2))) & 3
        let q = SIMD16<Int32>(truncatingIfNeeded: low | high &<< 4) &- 32
        return Vector16(repeating: dl) * Vector16(q)
    }

    /// Element `index` of a row (widens its whole block: for tests and slow paths).
    public static func value(_ element: WeightElement, _ row: UnsafeRawPointer, _ index: Int) -> Float {
        let values = element.blockValues
        return withUnsafeTemporaryAllocation(of: Float.self, capacity: 256) { buffer in
            dequantize(element, row + (index / values) * blockBytes(element), into: buffer.baseAddress!)
            return buffer[index % values]
        }
    }

    /// Widens a whole row of `n` values into `out`.
    @inlinable
    public static func widenRow(_ element: WeightElement, _ row: UnsafeRawPointer, _ n: Int, into out: UnsafeMutablePointer<Float>) {
        let values = element.blockValues, bytes = blockBytes(element)
        for b in 0..<(n / values) { dequantize(element, row + b * bytes, into: out + b * values) }
    }

    /// Dot products of one row with up to four activation rows (in element order, `xStride` floats
    /// apart): each block widened once, then 16 lanes at a time per token, one accumulator each.
    @inlinable
    public static func dotRow(_ element: WeightElement, _ row: UnsafeRawPointer, _ n: Int, _ x: UnsafePointer<Float>, _ xStride: Int,
                              _ tokens: Int, _ out: inout SIMD4<Float>) {
        var a0 = Vector16(), a1 = Vector16(), a2 = Vector16(), a3 = Vector16()
        let values = element.blockValues, bytes = blockBytes(element)
        let raw = UnsafeRawPointer(x), stride = xStride * 4
        if element == .q6_k || element == .q5_k {
            // The K-quants most files mix in: each 32 values widened in registers and used at once.
            let six = element == .q6_k
            for b in 0..<(n / values) {
                let block = row + b * bytes
                for pair in 0..<8 {
                    let w0 = six ? q6kChunk(block, 2 * pair) : q5kChunk(block, 2 * pair)
                    let w1 = six ? q6kChunk(block, 2 * pair + 1) : q5kChunk(block, 2 * pair + 1)
                    accumulate(&a0, &a1, &a2, &a3, w0, w1, raw + (b * values + 32 * pair) * 4, 64, stride, tokens)
                }
            }
            out = SIMD4<Float>(horizontalSum(a0), horizontalSum(a1), horizontalSum(a2), horizontalSum(a3))
            return
        }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 256) { buffer in
            let w = UnsafeRawPointer(buffer.baseAddress!)
            for b in 0..<(n / values) {
                dequantize(element, row + b * bytes, into: buffer.baseAddress!)
                var i = 0
                while i < values {
                    accumulate(&a0, &a1, &a2, &a3, (w + 4 * i).loadUnaligned(as: Vector16.self), (w + 4 * i + 64).loadUnaligned(as: Vector16.self),
                               raw + (b * values + i) * 4, 64, stride, tokens)
                    i += 32
                }
            }
        }
        out = SIMD4<Float>(horizontalSum(a0), horizontalSum(a1), horizontalSum(a2), horizontalSum(a3))
    }
}
