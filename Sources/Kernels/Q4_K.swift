/// GGUF's Q4_K format: super-blocks of 256 values in 144 bytes: float16 `d` and `dmin`, 12 bytes of
/// 6-bit scales and mins for the eight sub-blocks of 32, then 128 bytes of 4-bit values. Bytes
/// 32c..32c+31 of the values hold elements 64c..64c+31 in their low nibbles and 64c+32..64c+63 in
/// their high ones; element i of sub-block j is (d·scale_j)·q_i − dmin·min_j. Quantisation follows
/// ggml's reference (quantize_row_q4_K_ref with make_qkx2_quants) operation for operation, with no
/// fused multiply-adds, so the bytes are the same.
public enum Q4_K {
    public static let blockValues = 256
    public static let blockBytes = 144

    /// ggml's nearest_int: round half to even through the float mantissa (|x| < 2^22).
    @inlinable @inline(__always)
    static func nearestInt(_ x: Float) -> Int {
        Int(Int32(bitPattern: (x + 12_582_912).bitPattern & 0x007F_FFFF) - 0x0040_0000)
    }

    /// Scale and min (6 bits each) of sub-block `j` from the 12 packed bytes at `packed`.
    @inlinable @inline(__always)
    public static func scaleMin(_ packed: UnsafeRawPointer, _ j: Int) -> (scale: UInt8, min: UInt8) {
        let q = packed.assumingMemoryBound(to: UInt8.self)
        if j < 4 { return (q[j] & 63, q[j + 4] & 63) }
        return ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }

    /// The least-squares fit of a 32-value sub-block to `nmax + 1` levels with an offset
    /// (ggml's make_qkx2_quants with rmin −1, rdelta 0.1, 20 steps, squared error): returns the
    /// scale and writes the levels to `levels` and the (positive) min to `minOut`.
    static func fitSubBlock(_ x: UnsafePointer<Float>, _ weights: UnsafePointer<Float>, _ levels: UnsafeMutablePointer<UInt8>,
                            _ minOut: inout Float) -> Float {
        let n = 32, nmax = 15, rmin: Float = -1, rdelta: Float = 0.1, steps = 20
        var lo = x[0], hi = x[0]
        var sumW = weights[0]
        var sumX = sumW * x[0]
        for i in 1..<n {
            if x[i] < lo { lo = x[i] }
            if x[i] > hi { hi = x[i] }
            let w = weights[i]
            sumW += w
            sumX += w * x[i]
        }
        if lo > 0 { lo = 0 }
        if hi == lo {
            for i in 0..<n { levels[i] = 0 }
            minOut = -lo
            return 0
        }
        var iscale = Float(nmax) / (hi - lo)
        var scale = 1 / iscale
        var bestError: Float = 0
        for i in 0..<n {
            let l = nearestInt(iscale * (x[i] - lo))
            levels[i] = UInt8(max(0, min(nmax, l)))
            let diff = scale * Float(levels[i]) + lo - x[i]
            bestError += weights[i] * (diff * diff)
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: n) { trial in
        for step in 0...steps {
            iscale = (rmin + rdelta * Float(step) + Float(nmax)) / (hi - lo)
            var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
            for i in 0..<n {
                let l = max(0, min(nmax, nearestInt(iscale * (x[i] - lo))))
                trial[i] = UInt8(l)
                let w = weights[i], fl = Float(l)
                sumL += w * fl
                sumL2 += w * fl * fl
                sumXL += w * fl * x[i]
            }
            let determinant = sumW * sumL2 - sumL * sumL
            guard determinant > 0 else { continue }
            var thisScale = (sumW * sumXL - sumX * sumL) / determinant
            var thisMin = (sumL2 * sumX - sumL * sumXL) / determinant
            if thisMin > 0 {
                thisMin = 0
                thisScale = sumXL / sumL2
            }
            var error: Float = 0
            for i in 0..<n {
                let diff = thisScale * Float(trial[i]) + thisMin - x[i]
                error += weights[i] * (diff * diff)
            }
            if error < bestError {
                for i in 0..<n { levels[i] = trial[i] }
                bestError = error
                scale = thisScale
                lo = thisMin
            }
        }
        }
        minOut = -lo
        return scale
    }

    /// Quantises `count` (a multiple of 256) floats into `count / 256` super-blocks at `out`.
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
        var levels = [UInt8](repeating: 0, count: 256)
        var weights = [Float](repeating: 0, count: 32)
        var scales = [Float](repeating: 0, count: 8), mins = [Float](repeating: 0, count: 8)
        for b in 0..<(count / blockValues) {
            let v = x + b * blockValues
            let block = out + b * blockBytes
            var maxScale: Float = 0, maxMin: Float = 0
            for j in 0..<8 {
                let s = v + 32 * j
                var sumX2: Float = 0
                for l in 0..<32 { sumX2 += s[l] * s[l] }
                let average = (sumX2 / 32).squareRoot()
                for l in 0..<32 { weights[l] = average + abs(s[l]) }
                levels.withUnsafeMutableBufferPointer { levels in
                    scales[j] = fitSubBlock(s, weights, levels.baseAddress! + 32 * j, &mins[j])
                }
                if scales[j] > maxScale { maxScale = scales[j] }
                if mins[j] > maxMin { maxMin = mins[j] }
            }
            let inverseScale: Float = maxScale > 0 ? 63 / maxScale : 0
            let inverseMin: Float = maxMin > 0 ? 63 / maxMin : 0
            let packed = (block + 4).assumingMemoryBound(to: UInt8.self)
            for i in 0..<12 { packed[i] = 0 }
            for j in 0..<8 {
                // ggml stores nearest_int's result in a uint8_t before clamping to 63.
                let ls = min(63, UInt8(truncatingIfNeeded: nearestInt(inverseScale * scales[j])))
                let lm = min(63, UInt8(truncatingIfNeeded: nearestInt(inverseMin * mins[j])))
                if j < 4 {
                    packed[j] = ls
                    packed[j + 4] = lm
                } else {
                    packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4)
                    packed[j - 4] |= (ls >> 4) << 6
                    packed[j] |= (lm >> 4) << 6
                }
            }
            block.storeBytes(of: Float16(maxScale / 63).bitPattern.littleEndian, as: UInt16.self)
            block.storeBytes(of: Float16(maxMin / 63).bitPattern.littleEndian, toByteOffset: 2, as: UInt16.self)
            let d = widenedHalf(block), dmin = widenedHalf(block + 2)
            for j in 0..<8 {
                let (sc, m) = scaleMin(block + 4, j)
                let scale = d * Float(sc)
                if scale == 0 { continue }
                let offset = dmin * Float(m)
                for i in 0..<32 {
                    levels[32 * j + i] = UInt8(max(0, min(15, nearestInt((v[32 * j + i] + offset) / scale))))
                }
            }
            let qs = (block + 16).assumingMemoryBound(to: UInt8.self)
            for c in 0..<4 {
                for l in 0..<32 { qs[32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4) }
            }
        }
    }

    /// Element `index` of a Q4_K row, widened as ggml's dequantize_row_q4_K does.
    @inlinable public static func value(_ row: UnsafeRawPointer, _ index: Int) -> Float {
        let block = row + (index / blockValues) * blockBytes
        let i = index % blockValues
        let (sc, m) = scaleMin(block + 4, i / 32)
        let byte = block.load(fromByteOffset: 16 + (i / 64) * 32 + i % 32, as: UInt8.self)
        let q = (i % 64) < 32 ? byte & 0x0F : byte >> 4
        return widenedHalf(block) * Float(sc) * Float(q) - widenedHalf(block + 2) * Float(m)
    }

    /// Dot products of one Q4_K row with up to four activation rows (in element order, `xStride`
    /// floats apart), weights widened exactly as `value` does, one accumulator per token.
    @inlinable @inline(__always)
    public static func dotRow(_ row: UnsafeRawPointer, _ n: Int, _ x: UnsafePointer<Float>, _ xStride: Int, _ tokens: Int,
                              _ out: inout SIMD4<Float>) {
        var a0 = Vector16(), a1 = Vector16(), a2 = Vector16(), a3 = Vector16()
        let raw = UnsafeRawPointer(x)
        let stride = xStride * 4
        let low = SIMD16<UInt8>(repeating: 0x0F)
        for b in 0..<(n / blockValues) {
            let block = row + b * blockBytes
            let d = widenedHalf(block), dmin = widenedHalf(block + 2)
            for c in 0..<4 {
                let (sc0, m0) = scaleMin(block + 4, 2 * c), (sc1, m1) = scaleMin(block + 4, 2 * c + 1)
                let scale0 = Vector16(repeating: d * Float(sc0)), offset0 = Vector16(repeating: dmin * Float(m0))
                let scale1 = Vector16(repeating: d * Float(sc1)), offset1 = Vector16(repeating: dmin * Float(m1))
                for h in 0..<2 {
                    let bytes = (block + 16 + 32 * c + 16 * h).loadUnaligned(as: SIMD16<UInt8>.self)
                    let q0 = Vector16(SIMD16<Int32>(truncatingIfNeeded: bytes & low))
                    let q1 = Vector16(SIMD16<Int32>(truncatingIfNeeded: bytes &>> 4))
                    // Elements 256b + 64c + 16h + 0..<16 (low nibbles) and the same + 32 (high).
                    accumulate(&a0, &a1, &a2, &a3, q0 * scale0 - offset0, q1 * scale1 - offset1,
                               raw + (b * blockValues + 64 * c + 16 * h) * 4, 128, stride, tokens)
                }
            }
        }
        out = SIMD4<Float>(horizontalSum(a0), horizontalSum(a1), horizontalSum(a2), horizontalSum(a3))
    }
}
