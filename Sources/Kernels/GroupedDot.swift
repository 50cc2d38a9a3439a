import KernelsC

/// Q8_0 and Q4_0 rows regrouped for integer dot products (`WeightElement.q8_0x4` / `.q4_0x4`):
/// the same values and scales as GGUF's blocks, in groups of 4 blocks (128 values) with the 4
/// float16 scales first, so the kernel widens them together and runs one conversion and one
/// multiply-add per 16 lanes instead of per block (llama.cpp repacks its Q4_0 at load for the same
/// reason). Q4_0: the 4 blocks' 16 nibble bytes as stored (72 bytes a group, as GGUF). Q8_0: the 4
/// blocks' first 16 values, then their last 16, each xor 0x80 so VNNI's unsigned-by-signed product
/// takes them (136 bytes a group, as GGUF).
public enum GroupedBlocks {
    public static let groupValues = 128

    /// The grouped twin of a GGUF element, or nil when it has none.
    public static func grouped(_ element: WeightElement) -> WeightElement? {
        switch element {
        case .q8_0: return .q8_0x4
        case .q4_0: return .q4_0x4
        default: return nil
        }
    }

    /// Bytes of a group.
    @inlinable public static func groupBytes(q4: Bool) -> Int { q4 ? 72 : 136 }

    /// Byte offset in a group of value `e` (0..<32) of block `k` (0..<4), and whether it is the
    /// high nibble (Q4_0).
    @inlinable static func place(q4: Bool, block k: Int, element e: Int) -> (offset: Int, high: Bool) {
        if q4 { return (8 + 16 * k + e % 16, e >= 16) }
        return (8 + (e < 16 ? 16 * k + e : 64 + 16 * k + e - 16), false)
    }

    /// Element `index` of a grouped row: its integer value and its block's scale.
    @inlinable public static func element(_ row: UnsafeRawPointer, _ index: Int, q4: Bool) -> (value: Int32, scale: Float) {
        let group = row + (index / groupValues) * groupBytes(q4: q4)
        let k = index % groupValues / 32, e = index % 32
        let d = widenedHalf(group, 2 * k)
        let (offset, high) = place(q4: q4, block: k, element: e)
        let byte = group.load(fromByteOffset: offset, as: UInt8.self)
        if q4 { return (Int32(high ? byte >> 4 : byte & 0x0F) - 8, d) }
        return (Int32(Int8(bitPattern: byte ^ 0x80)), d)
    }

    /// Element `index` of a grouped row, widened.
    @inlinable public static func value(_ row: UnsafeRawPointer, _ index: Int, q4: Bool) -> Float {
        let (v, d) = element(row, index, q4: q4)
        return Float(v) * d
    }

    /// Rewrites `matrix` (Q8_0 or Q4_0, columns a multiple of 128) grouped into `target`
    /// (`matrix.rows * matrix.rowBytes` bytes: grouping moves bytes, it adds none), which may be
    /// the matrix's own memory.
    public static func regroup(_ matrix: WeightMatrix, into target: UnsafeMutableRawPointer, pool: ThreadPool) -> WeightMatrix {
        guard let element = grouped(matrix.element), matrix.columns % groupValues == 0 else {
            preconditionFailure("regroup takes Q8_0 or Q4_0 rows of whole groups of 128")
        }
        let q4 = element == .q4_0x4
        let blockBytes = q4 ? Q4_0.blockBytes : Q8_0.blockBytes
        let rowBytes = matrix.rowBytes, groups = matrix.columns / groupValues
        pool.parallelFor((matrix.rows + 63) / 64) { chunk in
            // A copy of the row, so the target may be the matrix's own memory.
            let source = UnsafeMutableRawPointer.allocate(byteCount: rowBytes, alignment: 64)
            defer { source.deallocate() }
            for r in (chunk * 64)..<min(matrix.rows, chunk * 64 + 64) {
                source.copyMemory(from: matrix.data + r * rowBytes, byteCount: rowBytes)
                let row = target + r * rowBytes
                for g in 0..<groups {
                    let group = row + g * groupBytes(q4: q4)
                    for k in 0..<4 {
                        let block = source + (4 * g + k) * blockBytes
                        group.storeBytes(of: block.loadUnaligned(as: UInt16.self), toByteOffset: 2 * k, as: UInt16.self)
                        if q4 {
                            (group + 8 + 16 * k).copyMemory(from: block + 2, byteCount: 16)
                        } else {
                            for e in 0..<32 {
                                let byte = block.load(fromByteOffset: 2 + e, as: UInt8.self) ^ 0x80
                                group.storeBytes(of: byte, toByteOffset: place(q4: false, block: k, element: e).offset, as: UInt8.self)
                            }
                        }
                    }
                }
            }
        }
        return WeightMatrix(element: element, rows: matrix.rows, columns: matrix.columns, data: UnsafeRawPointer(target))
    }
}

/// Activations quantised per block of 32 (QuantizedActivations) in the grouped kernels' order: per
/// group of 128 values, the 4 blocks' first 16 values then their last 16 (`values`, [tokens]
/// [columns]); per group 16 lanes (lane 4k + j: block k's elements 4j..4j+3 and 16+4j..16+4j+3) of
/// the block's scale (`scales`) and -K x the lane's sum of values (`corrections`, K = 8 for Q4_0's
/// unsigned nibbles, 128 for Q8_0's values stored + 128), both [tokens][columns / 8].
public enum GroupedActivations {
    @inlinable
    public static func arrange(values xq: UnsafePointer<Int8>, scales xd: UnsafePointer<Float>, columns: Int, tokens: Int, q4: Bool,
                               into values: UnsafeMutablePointer<Int8>, scales: UnsafeMutablePointer<Float>,
                               corrections: UnsafeMutablePointer<Int32>) {
        let groups = columns / GroupedBlocks.groupValues, k: Int32 = q4 ? -8 : -128
        for t in 0..<tokens {
            for g in 0..<groups {
                let source = xq + t * columns + 128 * g, target = values + t * columns + 128 * g
                let lanes = t * (columns / 8) + 16 * g
                for block in 0..<4 {
                    let x = UnsafeRawPointer(source + 32 * block)
                    let first = x.loadUnaligned(as: SIMD16<Int8>.self), second = x.loadUnaligned(fromByteOffset: 16, as: SIMD16<Int8>.self)
                    UnsafeMutableRawPointer(target + 16 * block).storeBytes(of: first, as: SIMD16<Int8>.self)
                    UnsafeMutableRawPointer(target + 64 + 16 * block).storeBytes(of: second, as: SIMD16<Int8>.self)
                    let d = xd[t * (columns / 32) + 4 * g + block]
                    for j in 0..<4 {
                        var s: Int32 = 0
                        for i in 0..<4 { s += Int32(first[4 * j + i]) + Int32(second[4 * j + i]) }
                        scales[lanes + 4 * block + j] = d
                        corrections[lanes + 4 * block + j] = k * s
                    }
                }
            }
        }
    }
}

/// The Swift twin of the grouped C kernels (KernelsC/grouped_dot.c), bit for bit: exact integer
/// lane sums, acc[L] = fma(Float(sum), dw · dx, acc[L]) over the groups, then lanes i + i+8, then
/// ((b0 + b4) + (b1 + b5)) + ((b2 + b6) + (b3 + b7)). Takes GroupedActivations' values and scales.
public func groupedDotReference(
    _ element: WeightElement, _ row: UnsafeRawPointer, columns: Int, values: UnsafePointer<Int8>, scales: UnsafePointer<Float>, tokens: Int
) -> [Float] {
    let q4 = element == .q4_0x4
    precondition(q4 || element == .q8_0x4, "grouped dot products take grouped Q8_0 or Q4_0 rows")
    return (0..<tokens).map { t in
        var acc = [Float](repeating: 0, count: 16)
        for g in 0..<(columns / GroupedBlocks.groupValues) {
            let x = values + t * columns + 128 * g
            for lane in 0..<16 {
                let k = lane / 4, j = lane % 4
                var sum: Int32 = 0
                for i in 0..<4 {
                    // Element 4j + i of block k sits at x[16k + 4j + i], element 16 + 4j + i 64 further.
                    let e = 4 * j + i, at = g * 128 + 32 * k + e
                    sum += GroupedBlocks.element(row, at, q4: q4).value * Int32(x[16 * k + e])
                    sum += GroupedBlocks.element(row, at + 16, q4: q4).value * Int32(x[64 + 16 * k + e])
                }
                let d = GroupedBlocks.element(row, g * 128 + 32 * k, q4: q4).scale
                acc[lane] = acc[lane].addingProduct(Float(sum), d * scales[t * (columns / 8) + 16 * g + lane])
            }
        }
        var b = [Float](repeating: 0, count: 8)
        for i in 0..<8 { b[i] = acc[i] + acc[i + 8] }
        return ((b[0] + b[4]) + (b[1] + b[5])) + ((b[2] + b[6]) + (b[3] + b[7]))
    }
}
