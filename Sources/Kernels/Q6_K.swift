/// Quantisation into GGUF's Q6_K (the layout and widening are GGMLBlocks'), following ggml's
/// reference (quantize_row_q6_K_ref with make_qx_quants, squared-value weights) operation for
/// operation with no fused multiply-adds, so the bytes are ggml's: `switchyard quantize` writes it
/// into GGUF files.
public enum Q6_K {
    public static let blockValues = 256
    public static let blockBytes = 210

    /// The scale of 16 values fitted to 64 signed levels (−32...31), the levels written to `levels`
    /// as 0...63: ggml's make_qx_quants(16, 32, x, L, 1, NULL).
    static func fitSubBlock(_ x: UnsafePointer<Float>, _ levels: UnsafeMutablePointer<Int8>) -> Float {
        let n = 16, nmax = 32
        var maximum: Float = 0, absoluteMaximum: Float = 0
        for i in 0..<n where abs(x[i]) > absoluteMaximum {
            absoluteMaximum = abs(x[i])
            maximum = x[i]
        }
        if absoluteMaximum < 1e-15 {
            for i in 0..<n { levels[i] = 0 }
            return 0
        }
        func level(_ iscale: Float, _ v: Float) -> Int { max(-nmax, min(nmax - 1, Q4_K.nearestInt(iscale * v))) }
        var iscale = -Float(nmax) / maximum
        var sumLX: Float = 0, sumL2: Float = 0
        for i in 0..<n {
            let l = level(iscale, x[i])
            levels[i] = Int8(l + nmax)
            let w = x[i] * x[i], fl = Float(l)
            sumLX += (w * x[i]) * fl
            sumL2 += (w * fl) * fl
        }
        var scale = sumL2 != 0 ? sumLX / sumL2 : 0
        var best = scale * sumLX
        for step in -9...9 where step != 0 {
            iscale = -(Float(nmax) + 0.1 * Float(step)) / maximum
            sumLX = 0
            sumL2 = 0
            for i in 0..<n {
                let l = level(iscale, x[i])
                let w = x[i] * x[i], fl = Float(l)
                sumLX += (w * x[i]) * fl
                sumL2 += (w * fl) * fl
            }
            if sumL2 > 0 && sumLX * sumLX > best * sumL2 {
                for i in 0..<n { levels[i] = Int8(nmax + level(iscale, x[i])) }
                scale = sumLX / sumL2
                best = scale * sumLX
            }
        }
        return scale
    }

    /// Quantises `count` (a multiple of 256) floats into `count / 256` blocks at `out`.
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: 256) { levelBuffer in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 16) { scales in
                let levels = levelBuffer.baseAddress!
                for b in 0..<(count / blockValues) {
                    let v = x + b * blockValues
                    let block = out + b * blockBytes
                    var maxScale: Float = 0, maxAbsScale: Float = 0
                    for sub in 0..<16 {
                        let scale = fitSubBlock(v + 16 * sub, levels + 16 * sub)
                        scales[sub] = scale
                        if abs(scale) > maxAbsScale {
                            maxAbsScale = abs(scale)
                            maxScale = scale
                        }
                    }
                    let bytes = block.assumingMemoryBound(to: UInt8.self)
                    if maxAbsScale < 1e-15 {
                        for i in 0..<blockBytes { bytes[i] = 0 }
                        continue
                    }
                    let iscale = -128 / maxScale
                    block.storeBytes(of: Float16(1 / iscale).bitPattern.littleEndian, toByteOffset: 208, as: UInt16.self)
                    for sub in 0..<16 {
                        bytes[192 + sub] = UInt8(bitPattern: Int8(truncatingIfNeeded: min(127, Q4_K.nearestInt(iscale * scales[sub]))))
                    }
                    let d = widenedHalf(block, 208)
                    for sub in 0..<16 {
                        let scaled = d * Float(Int8(bitPattern: bytes[192 + sub]))
                        if scaled == 0 { continue }
                        for i in 0..<16 {
                            let l = max(-32, min(31, Q4_K.nearestInt(v[16 * sub + i] / scaled)))
                            levels[16 * sub + i] = Int8(l + 32)
                        }
                    }
                    for half in 0..<2 {
                        let j = 128 * half
                        let ql = bytes + 64 * half, qh = bytes + 128 + 32 * half
                        for l in 0..<32 {
                            let q1 = UInt8(levels[j + l]), q2 = UInt8(levels[j + l + 32])
                            let q3 = UInt8(levels[j + l + 64]), q4 = UInt8(levels[j + l + 96])
                            ql[l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4)
                            ql[l + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4)
                            qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
                        }
                    }
                }
            }
        }
    }
}
