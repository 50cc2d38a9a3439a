import KernelsC

/// GGUF's Q4_0 format: blocks of 32 values stored as a float16 scale `d` and 16 bytes; element j is
/// the low nibble of byte j and element j + 16 the high one, value = (nibble - 8) × d. Quantisation
/// matches ggml's reference (quantize_row_q4_0_ref) bit for bit.
public enum Q4_0 {
    public static let blockValues = 32
    public static let blockBytes = 18

    /// Quantises `count` (a multiple of 32) floats into `count / 32` blocks at `out`.
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
        for b in 0..<(count / blockValues) {
            let v = x + b * blockValues
            // The value of largest magnitude, with its sign, maps to -8.
            var amax: Float = 0, extreme: Float = 0
            for j in 0..<blockValues where abs(v[j]) > amax {
                amax = abs(v[j])
                extreme = v[j]
            }
            let d = extreme / -8
            let id: Float = d != 0 ? 1 / d : 0
            let block = out + b * blockBytes
            block.storeBytes(of: Float16(d).bitPattern.littleEndian, as: UInt16.self)
            for j in 0..<16 {
                // Truncation after adding 8.5: ggml's rounding.
                let low = min(15, Int8(v[j] * id + 8.5))
                let high = min(15, Int8(v[j + 16] * id + 8.5))
                block.storeBytes(of: UInt8(low) | UInt8(high) << 4, toByteOffset: 2 + j, as: UInt8.self)
            }
        }
    }

    /// Dot products of one Q4_0 row with up to four activation rows permuted as for Q8_0: the
    /// nibbles are unpacked to 32 signed bytes in element order, then it is Q8_0's kernel.
    @inlinable @inline(__always)
    public static func dotRow(_ row: UnsafeRawPointer, _ n: Int, _ permuted: UnsafePointer<Float>, _ tokens: Int, _ out: inout SIMD4<Float>) {
        Q8_0.blockDotRow(row, n, permuted, tokens, &out, blockBytes: blockBytes) { block in
            // Nibbles n in 0...15 to signed bytes n - 8, four to a UInt32 lane with no carries:
            // (n + 0x78) stays below 0x100, and flipping its top bit subtracts 0x80.
            let packed = (block + 2).loadUnaligned(as: SIMD4<UInt32>.self)
            let nibbles = SIMD4<UInt32>(repeating: 0x0F0F_0F0F)
            let bias = SIMD4<UInt32>(repeating: 0x7878_7878), flip = SIMD4<UInt32>(repeating: 0x8080_8080)
            let low = ((packed & nibbles) &+ bias) ^ flip
            let high = (((packed &>> 4) & nibbles) &+ bias) ^ flip
            return (widenedHalf(block),
                    unsafeBitCast(SIMD8<UInt32>(lowHalf: low, highHalf: high), to: SIMD8<Int32>.self))
        }
    }

    /// Element `index` of a Q4_0 row, widened.
    @inlinable public static func value(_ row: UnsafeRawPointer, _ index: Int) -> Float {
        let block = row + (index / blockValues) * blockBytes
        let d = widenedHalf(block)
        let j = index % blockValues
        let byte = block.load(fromByteOffset: 2 + j % 16, as: UInt8.self)
        let nibble = j < 16 ? byte & 0x0F : byte >> 4
        return Float(Int(nibble) - 8) * d
    }
}

/// Activations quantised per block of 32 as Q8_0 does (scale = max |x| / 127, values rounded half
/// away from zero), for integer dot products with quantised weights: llama.cpp's approach.
/// Values [tokens][columns] as int8, scales [tokens][columns / 32] as float.
public struct QuantizedActivations {
    public let values: UnsafeMutablePointer<Int8>
    public let scales: UnsafeMutablePointer<Float>
    public let columns: Int

    /// Quantises `tokens` rows of `columns` (a multiple of 32) into memory the caller owns.
    @inlinable
    public static func quantize(_ input: UnsafePointer<Float>, inputStride: Int, columns: Int, tokens: Int,
                                values: UnsafeMutablePointer<Int8>, scales: UnsafeMutablePointer<Float>) {
        let blocks = columns / 32
        let magnitude = SIMD16<UInt32>(repeating: 0x7FFF_FFFF)
        for t in 0..<tokens {
            let x = input + t * inputStride
            for b in 0..<blocks {
                let v = UnsafeRawPointer(x + b * 32)
                let v0 = v.loadUnaligned(as: SIMD16<Float>.self), v1 = v.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
                // |x| by clearing the sign bit; compare-and-select rather than the generic
                // pointwiseMax, which is a call per use across modules.
                let a0 = unsafeBitCast(unsafeBitCast(v0, to: SIMD16<UInt32>.self) & magnitude, to: SIMD16<Float>.self)
                let a1 = unsafeBitCast(unsafeBitCast(v1, to: SIMD16<UInt32>.self) & magnitude, to: SIMD16<Float>.self)
                let (d, id) = scale(largest: a0.replacing(with: a1, where: a1 .> a0))
                scales[t * blocks + b] = d
                let out = UnsafeMutableRawPointer(values + t * columns + b * 32)
                out.storeBytes(of: roundedToInt8(v0 * id), as: SIMD16<Int8>.self)
                out.storeBytes(of: roundedToInt8(v1 * id), toByteOffset: 16, as: SIMD16<Int8>.self)
            }
        }
    }

    /// The scale that maps the largest of 16 lanes of magnitudes to 127, and its inverse (0 when
    /// every value is 0).
    @inlinable @inline(__always)
    static func scale(largest a16: SIMD16<Float>) -> (d: Float, inverse: Float) {
        let a8 = a16.lowHalf.replacing(with: a16.highHalf, where: a16.highHalf .> a16.lowHalf)
        let a4 = a8.lowHalf.replacing(with: a8.highHalf, where: a8.highHalf .> a8.lowHalf)
        let m = max(max(a4[0], a4[1]), max(a4[2], a4[3]))
        let d = m / 127
        return (d, d != 0 ? 1 / d : 0)
    }

    /// Rounds half away from zero (C's roundf, as ggml's reference quantiser) lane by lane, for
    /// |x| < 2^22, without the generic float-to-integer conversions (a call per lane): adding and
    /// subtracting 1.5 x 2^23 rounds to nearest even, exact ties then step away from zero, and the
    /// integer is read from the low bits of r + 1.5 x 2^23.
    @inlinable @inline(__always)
    static func roundedToInt8(_ x: SIMD16<Float>) -> SIMD16<Int8> {
        let magic = SIMD16<Float>(repeating: 12_582_912)
        let even = (x + magic) - magic
        let dropped = x - even
        var r = even.replacing(with: even + 1, where: dropped .== 0.5 .& (x .> 0))
        r = r.replacing(with: r - 1, where: dropped .== -0.5 .& (x .< 0))
        let ints = unsafeBitCast(r + magic, to: SIMD16<Int32>.self) &- 0x4B40_0000
        return SIMD16<Int8>(truncatingIfNeeded: ints)
    }
}

/// Activations quantised per super-block of 256, for the K-quant kernels (llama.cpp's Q8_K): one
/// scale (max |x| / 127) per 256 values, int8 values rounded as `QuantizedActivations` rounds, and
/// the int16 sum of each 16 values, so a kernel's integer sums run over a whole super-block.
/// Values [tokens][columns], scales [tokens][columns / 256], sums [tokens][columns / 16].
public enum SuperBlockActivations {
    @inlinable
    public static func quantize(_ input: UnsafePointer<Float>, inputStride: Int, columns: Int, tokens: Int,
                                values: UnsafeMutablePointer<Int8>, scales: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Int16>) {
        let supers = columns / 256
        let magnitude = SIMD16<UInt32>(repeating: 0x7FFF_FFFF)
        for t in 0..<tokens {
            let x = input + t * inputStride
            for b in 0..<supers {
                let v = UnsafeRawPointer(x + b * 256)
                var a16 = SIMD16<Float>()
                for k in 0..<16 {
                    let a = unsafeBitCast(unsafeBitCast(v.loadUnaligned(fromByteOffset: 64 * k, as: SIMD16<Float>.self), to: SIMD16<UInt32>.self) & magnitude,
                                          to: SIMD16<Float>.self)
                    a16 = a16.replacing(with: a, where: a .> a16)
                }
                let (d, id) = QuantizedActivations.scale(largest: a16)
                scales[t * supers + b] = d
                for k in 0..<16 {
                    let q = QuantizedActivations.roundedToInt8(v.loadUnaligned(fromByteOffset: 64 * k, as: SIMD16<Float>.self) * id)
                    UnsafeMutableRawPointer(values + t * columns + b * 256 + 16 * k).storeBytes(of: q, as: SIMD16<Int8>.self)
                    sums[t * (columns / 16) + b * 16 + k] = Int16(SIMD16<Int16>(truncatingIfNeeded: q).wrappedSum())
                }
            }
        }
    }
}

/// The Swift twin of KernelsC's K-quant kernels (`sy_rows_q4_k_q8k`, `sy_rows_q5_k_q8k`,
/// `sy_rows_q6_k_q8k`) against `SuperBlockActivations`. Value v of a super-block goes into integer
/// lane (v % 32) / 4 of eight as scale·q·x (q the unsigned level; scale that of v's sub-block);
/// Q6_K's lane L also takes −32·Σ scale·sum over the 16-value sums 2L and 2L + 1; Q4_K's and
/// Q5_K's lane L counts min_L·(sum 2L + sum 2L + 1) apart. Per super-block each lane is converted
/// to float and fused-multiply-added with d·xd into its accumulator (then the mins with −dmin·xd);
/// the result is the lanes' sum in the kernels' fixed order.
public func kQuantDotReference(_ element: WeightElement, _ row: UnsafeRawPointer, superblocks: Int, values: UnsafePointer<Int8>,
                               scales: UnsafePointer<Float>, sums: UnsafePointer<Int16>, stride: Int, tokens: Int) -> [Float] {
    func byte(_ p: UnsafeRawPointer, _ offset: Int) -> Int { Int(p.load(fromByteOffset: offset, as: UInt8.self)) }
    let blockBytes: Int
    switch element {
    case .q4_k: blockBytes = Q4_K.blockBytes
    case .q5_k: blockBytes = GGMLBlocks.blockBytes(.q5_k)
    case .q6_k: blockBytes = Q6_K.blockBytes
    default: preconditionFailure("kQuantDotReference takes Q4_K, Q5_K or Q6_K rows")
    }
    return (0..<tokens).map { t in
        var acc = SIMD8<Float>()
        for b in 0..<superblocks {
            let block = row + b * blockBytes
            let x = values + t * stride + b * 256, s = sums + t * (stride / 16) + b * 16
            let dx = scales[t * (stride / 256) + b]
            var lanes = SIMD8<Int32>(), minLanes = SIMD8<Int32>()
            if element == .q6_k {
                for l in 0..<8 {
                    let s0 = Int32(block.load(fromByteOffset: 192 + 2 * l, as: Int8.self)), s1 = Int32(block.load(fromByteOffset: 193 + 2 * l, as: Int8.self))
                    lanes[l] = -32 * (s0 * Int32(s[2 * l]) + s1 * Int32(s[2 * l + 1]))
                }
                for v in 0..<256 {
                    let g = v / 128, step = v % 128 / 32, l = v % 32
                    let low = (byte(block, 64 * g + 32 * (step % 2) + l) >> (4 * (step / 2))) & 0x0F
                    let high = (byte(block, 128 + 32 * g + l) >> (2 * step)) & 3
                    let scale = Int(block.load(fromByteOffset: 192 + v / 16, as: Int8.self))
                    lanes[v % 32 / 4] += Int32(scale * (low | high << 4) * Int(x[v]))
                }
                acc.addProduct(SIMD8<Float>(lanes), SIMD8(repeating: widenedHalf(block, 208) * dx))
                continue
            }
            let five = element == .q5_k, nibbles = five ? 48 : 16
            for v in 0..<256 {
                let j = v / 32, l = v % 32
                var q = (byte(block, nibbles + 32 * (v / 64) + l) >> (4 * (j % 2))) & 0x0F
                if five { q |= ((byte(block, 16 + l) >> j) & 1) << 4 }
                lanes[l / 4] += Int32(Int(Q4_K.scaleMin(block + 4, j).scale) * q * Int(x[v]))
            }
            for l in 0..<8 { minLanes[l] = Int32(Q4_K.scaleMin(block + 4, l).min) * (Int32(s[2 * l]) + Int32(s[2 * l + 1])) }
            let d = widenedHalf(block, 0), dmin = widenedHalf(block, 2)
            acc.addProduct(SIMD8<Float>(lanes), SIMD8(repeating: d * dx))
            acc.addProduct(SIMD8<Float>(minLanes), SIMD8(repeating: -dmin * dx))
        }
        return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }
}

/// Which instruction set the integer dot products use here: "avx512-vnni", "avx-vnni", "avx2" or
/// "portable".
public var quantizedDotInstructions: String {
    switch sy_quantized_dot_level() {
    case 3: return "avx512-vnni"
    case 2: return "avx-vnni"
    case 1: return "avx2"
    default: return "portable"
    }
}

/// Restricts the integer dot products to a level (0 portable C, 1 AVX2, 2 AVX-VNNI, 3 AVX512-VNNI;
/// never beyond what the CPU has) or, with nil, lets them use the best: for tests of every path.
public func forceQuantizedDotLevel(_ level: Int?) {
    sy_force_quantized_dot_level(Int32(level ?? 99))
}

/// The Swift twin of the C kernels (KernelsC/int8_rows.c): the same integer lanes, the same fused
/// multiply-adds and the same final sum, so the two agree bit for bit; tests hold them to it.
/// `blocks` counts blocks of 32 (the K-quants have their own twins above, for super-block activations).
public func quantizedDotReference(
    _ element: WeightElement, _ row: UnsafeRawPointer, blocks: Int, values: UnsafePointer<Int8>, scales: UnsafePointer<Float>,
    stride: Int, tokens: Int
) -> [Float] {
    return (0..<tokens).map { t in
        var acc = SIMD8<Float>()
        for b in 0..<blocks {
            var w = [Int32](repeating: 0, count: 32)
            let dw: Float
            switch element {
            case .q8_0:
                let block = row + b * Q8_0.blockBytes
                dw = widenedHalf(block)
                for j in 0..<32 { w[j] = Int32(block.load(fromByteOffset: 2 + j, as: Int8.self)) }
            case .q4_0:
                let block = row + b * Q4_0.blockBytes
                dw = widenedHalf(block)
                for j in 0..<16 {
                    let byte = block.load(fromByteOffset: 2 + j, as: UInt8.self)
                    w[j] = Int32(byte & 0x0F) - 8
                    w[j + 16] = Int32(byte >> 4) - 8
                }
            case .mxfp4:
                let block = row + b * MXFP4.blockBytes
                dw = MXFP4.halfScale(block.load(as: UInt8.self))
                for j in 0..<16 {
                    let byte = block.load(fromByteOffset: 1 + j, as: UInt8.self)
                    w[j] = Int32(MXFP4.doubledValues[Int(byte & 0x0F)])
                    w[j + 16] = Int32(MXFP4.doubledValues[Int(byte >> 4)])
                }
            default:
                preconditionFailure("integer dot products take Q8_0, Q4_0, MXFP4 or Q4_K weights")
            }
            let d = dw * scales[t * (stride / 32) + b]
            var lanes = SIMD8<Float>()
            for lane in 0..<8 {
                var s: Int32 = 0
                for k in 0..<4 { s += w[4 * lane + k] * Int32(values[t * stride + b * 32 + 4 * lane + k]) }
                lanes[lane] = Float(s)
            }
            acc.addProduct(lanes, SIMD8(repeating: d))
        }
        return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }
}
