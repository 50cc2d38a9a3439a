import KernelsC
public typealias Vector16 = SIMD16<Float>

@inlinable @inline(__always)
func loadWidened(_ element: WeightElement, _ row: UnsafeRawPointer, _ index: Int) -> Vector16 {
    switch element {
    case .f32:
        return (row + index * 4).loadUnaligned(as: Vector16.self)
    case .f16:
        return Vector16((row + index * 2).loadUnaligned(as: SIMD16<Float16>.self))
    case .bf16:
        let raw = (row + index * 2).loadUnaligned(as: SIMD16<UInt16>.self)
        return unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: raw) &<< 16, to: Vector16.self)
    case .q8_0, .q4_0, .q4_k, .q8_0x4, .q4_0x4, .mxfp4, .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs:
        preconditionFailure("block-quantised rows have their own kernels")
    }
}

/// Element `index` of a row, widened to f32.
@inlinable @inline(__always)
public func widenScalar(_ element: WeightElement, _ row: UnsafeRawPointer, _ index: Int) -> Float {
    switch element {
    case .f32: return row.load(fromByteOffset: index * 4, as: Float.self)
    case .f16: return Float(row.load(fromByteOffset: index * 2, as: Float16.self))
    case .bf16: return Float(bitPattern: UInt32(row.load(fromByteOffset: index * 2, as: UInt16.self)) << 16)
    case .q8_0: return Q8_0.value(row, index)
    case .q4_0: return Q4_0.value(row, index)
    case .q4_k: return Q4_K.value(row, index)
    case .mxfp4: return MXFP4.value(row, index)
    case .q8_0x4, .q4_0x4: return GroupedBlocks.value(row, index, q4: element == .q4_0x4)
    case .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs: return GGMLBlocks.value(element, row, index)
    }
}

/// Horizontal sum without the generic `SIMD.sum()`, which is not inlined across modules.
@inlinable @inline(__always)
func horizontalSum(_ v: Vector16) -> Float {
    let a = v.lowHalf + v.highHalf
    let b = a.lowHalf + a.highHalf
    return (b[0] + b[1]) + (b[2] + b[3])
}

/// Adds w0·x[0..<16] + w1·x[second..<second + 16] (`second` in bytes: 64 for the next 16 values)
/// into each token's accumulator (up to four tokens, `stride` bytes apart): the inner step of every
/// row kernel, so all of them sum in one order.
@inlinable @inline(__always)
func accumulate(
    _ a0: inout Vector16, _ a1: inout Vector16, _ a2: inout Vector16, _ a3: inout Vector16,
    _ w0: Vector16, _ w1: Vector16, _ x: UnsafeRawPointer, _ second: Int, _ stride: Int, _ tokens: Int
) {
    a0.addProduct(w0, x.loadUnaligned(as: Vector16.self))
    a0.addProduct(w1, (x + second).loadUnaligned(as: Vector16.self))
    if tokens > 1 {
        a1.addProduct(w0, (x + stride).loadUnaligned(as: Vector16.self))
        a1.addProduct(w1, (x + stride + second).loadUnaligned(as: Vector16.self))
    }
    if tokens > 2 {
        a2.addProduct(w0, (x + 2 * stride).loadUnaligned(as: Vector16.self))
        a2.addProduct(w1, (x + 2 * stride + second).loadUnaligned(as: Vector16.self))
    }
    if tokens > 3 {
        a3.addProduct(w0, (x + 3 * stride).loadUnaligned(as: Vector16.self))
        a3.addProduct(w1, (x + 3 * stride + second).loadUnaligned(as: Vector16.self))
    }
}

/// Dot products of one f32 or f16 weight row with up to four activation rows, reading the weights
/// once; one accumulator per token, as in the bf16 kernel.
@inlinable @inline(__always)
func dotRow(
    _ element: WeightElement, _ row: UnsafeRawPointer, _ n: Int,
    _ x: UnsafePointer<Float>, _ xStride: Int, _ tokens: Int,
    _ out: inout SIMD4<Float>
) {
    var a0 = Vector16(), a1 = Vector16(), a2 = Vector16(), a3 = Vector16()
    let raw = UnsafeRawPointer(x)
    let stride = xStride * 4
    var i = 0
    while i + 32 <= n {
        let w0 = loadWidened(element, row, i)
        let w1 = loadWidened(element, row, i + 16)
        accumulate(&a0, &a1, &a2, &a3, w0, w1, raw + i * 4, 64, stride, tokens)
        i += 32
    }
    var s = SIMD4<Float>(horizontalSum(a0), horizontalSum(a1), horizontalSum(a2), horizontalSum(a3))
    while i < n {
        let w = widenScalar(element, row, i)
        for t in 0..<tokens { s[t] += w * x[t * xStride + i] }
        i += 1
    }
    out = s
}

/// bf16 rows: 32 values load as 16 UInt32 lanes, each holding an even element in its low half and
/// the next odd element in its high half. `lane << 16` is the even element as f32 and
/// `lane & 0xFFFF0000` the odd one, so widening costs one shift or mask per 16 values and no
/// conversion instruction. The activations are permuted to match (`permuteForBF16`): in each block
/// of 32, the 16 even-indexed values, then the 16 odd-indexed ones. Every token is summed in the
/// same order whatever the batch, so a sequence's results never depend on what it is batched with.
@inlinable @inline(__always)
func dotRowBF16(
    _ row: UnsafeRawPointer, _ n: Int,
    _ permuted: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ xStride: Int, _ tokens: Int,
    _ out: inout SIMD4<Float>
) {
    // One accumulator per token (even then odd products into it): 4 tokens take 8 of AVX2's 16
    // vector registers, leaving room for the weights and activations without spilling.
    var a0 = Vector16(), a1 = Vector16(), a2 = Vector16(), a3 = Vector16()
    let p = UnsafeRawPointer(permuted)
    let blocks = n / 32
    let mask = SIMD16<UInt32>(repeating: 0xFFFF_0000)
    let rowStride = n * 4  // the permuted rows are packed: [tokens, n]
    for k in 0..<blocks {
        let r = (row + k * 64).loadUnaligned(as: SIMD16<UInt32>.self)
        let even = unsafeBitCast(r &<< 16, to: Vector16.self)
        let odd = unsafeBitCast(r & mask, to: Vector16.self)
        accumulate(&a0, &a1, &a2, &a3, even, odd, p + k * 128, 64, rowStride, tokens)
    }
    var s = SIMD4<Float>(horizontalSum(a0), horizontalSum(a1), horizontalSum(a2), horizontalSum(a3))
    var i = blocks * 32
    while i < n {
        let w = widenScalar(.bf16, row, i)
        for t in 0..<tokens { s[t] += w * x[t * xStride + i] }
        i += 1
    }
    out = s
}

/// Reorders each token's activations block by block for `dotRowBF16`: in every full block of 32,
/// the even-indexed values first, then the odd-indexed ones. The tail is left out (read from the
/// original row). `output` is [tokens, columns].
@inlinable
func permuteForBF16(_ input: UnsafePointer<Float>, inputStride: Int, columns: Int, tokens: Int, output: UnsafeMutablePointer<Float>) {
    let blocks = columns / 32
    for t in 0..<tokens {
        let x = input + t * inputStride, o = output + t * columns
        for k in 0..<blocks {
            for j in 0..<16 {
                o[k * 32 + j] = x[k * 32 + 2 * j]
                o[k * 32 + 16 + j] = x[k * 32 + 2 * j + 1]
            }
        }
    }
}

/// output[t, r] = sum_c weight[r, c] * input[t, c] for t in 0..<tokens (that is, input x weightᵀ,
/// PyTorch's `F.linear`). Rows are split across the pool; each weight row is read once per four
/// tokens (up to five in the AVX-512 bf16 tiles).
///
/// - Parameters:
///   - input: [tokens, inputStride] with the first `weight.columns` values of each row used.
///   - output: [tokens, outputStride] with the first `weight.rows` values of each row written.
@inlinable
public func matmul(
    _ weight: WeightMatrix,
    input: UnsafePointer<Float>, inputStride: Int,
    output: UnsafeMutablePointer<Float>, outputStride: Int,
    tokens: Int, pool: ThreadPool, precision: ActivationPrecision = .f32, tuning: KernelTuning = .default
) {
    matmulProducts(RowItems(weight, output, nil, nil, threads: pool.threadCount, tokens: tokens), input: input, inputStride: inputStride,
                   outputStride: outputStride, tokens: tokens, pool: pool, precision: precision, tuning: tuning)
}

/// Two products of the same input (an MLP's gate and up projections) in one parallel region: the
/// activations are prepared (permuted or quantised) once, and one region's start and tail are paid
/// instead of two. Each output is exactly what `matmul` writes. The matrices must have the same
/// columns; matrices of different elements run one after the other.
@inlinable
public func matmul(
    _ first: WeightMatrix, _ second: WeightMatrix,
    input: UnsafePointer<Float>, inputStride: Int,
    outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>), outputStride: Int,
    tokens: Int, pool: ThreadPool, precision: ActivationPrecision = .f32, tuning: KernelTuning = .default
) {
    precondition(first.columns == second.columns, "a fused pair of products takes one input width")
    guard first.element == second.element else {
        matmul(first, input: input, inputStride: inputStride, output: outputs.0, outputStride: outputStride, tokens: tokens, pool: pool,
               precision: precision, tuning: tuning)
        matmul(second, input: input, inputStride: inputStride, output: outputs.1, outputStride: outputStride, tokens: tokens, pool: pool,
               precision: precision, tuning: tuning)
        return
    }
    matmulProducts(RowItems(first, outputs.0, second, outputs.1, threads: pool.threadCount, tokens: tokens), input: input, inputStride: inputStride,
                   outputStride: outputStride, tokens: tokens, pool: pool, precision: precision, tuning: tuning)
}

/// One matrix (or a fused pair with one input, as an MLP's gate and up) over a run of the input's
/// rows: one expert's tokens in a grouped product.
public struct RowSegment: Sendable {
    public var first: WeightMatrix, second: WeightMatrix?
    /// Its rows of the input, and where their outputs go.
    public var inputRow: Int, outputRow: Int, tokens: Int

    public init(_ first: WeightMatrix, _ second: WeightMatrix? = nil, inputRow: Int, outputRow: Int, tokens: Int) {
        self.first = first
        self.second = second
        self.inputRow = inputRow
        self.outputRow = outputRow
        self.tokens = tokens
    }
}

/// Several products in one parallel region (EPS-MoE's grouped GEMM on the CPU): segment s
/// multiplies input rows inputRow..<inputRow+tokens by its matrix (and its second one, into
/// `outputs.1`), writing output rows outputRow..<outputRow+tokens. The activations are prepared
/// once for every input row up to the last segment's (rows between segments must hold numbers),
/// and one region's start and tail are paid instead of one or two per segment. Every row is exactly
/// what `matmul` of its segment alone writes (the same kernels over the same token passes, counted
/// from the segment's first row). The matrices must share their element and columns.
@inlinable
public func matmulSegments(
    _ segments: [RowSegment],
    input: UnsafePointer<Float>, inputStride: Int,
    outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?), outputStride: Int,
    pool: ThreadPool, precision: ActivationPrecision = .f32, tuning: KernelTuning = .default
) {
    guard let head = segments.first else { return }
    precondition(segments.allSatisfy {
        $0.first.element == head.first.element && $0.first.columns == head.first.columns
            && ($0.second == nil || ($0.second!.element == head.first.element && outputs.1 != nil))
    }, "a grouped product takes matrices of one element and width")
    let rows = segments.map { $0.inputRow + $0.tokens }.max()!
    matmulProducts(SegmentItems(segments, outputs, outputStride: outputStride, threads: pool.threadCount), input: input, inputStride: inputStride,
                   outputStride: outputStride, tokens: rows, pool: pool, precision: precision, tuning: tuning)
}

/// What a parallel region of products works through: items of a block of a matrix's rows, each over
/// its run of the input's rows (its first token and count).
@usableFromInline
protocol ProductItems {
    var first: WeightMatrix { get }
    var count: Int { get }
    func item(_ i: Int) -> (matrix: WeightMatrix, start: Int, count: Int, output: UnsafeMutablePointer<Float>, t0: Int, tokens: Int)
}

/// The items of several segments: each segment's own `RowItems`, one after another.
@usableFromInline
struct SegmentItems: ProductItems {
    @usableFromInline let segments: [RowItems]
    @usableFromInline let firstRows: [Int]
    /// Items before each segment's.
    @usableFromInline let before: [Int]
    @usableFromInline let count: Int
    @usableFromInline var first: WeightMatrix { segments[0].first }

    /// Each segment's outputs are addressed by input row: shifted by its output row less its input row.
    @inlinable
    init(_ segments: [RowSegment], _ outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?), outputStride: Int, threads: Int) {
        self.segments = segments.map { s in
            let shift = (s.outputRow - s.inputRow) * outputStride
            return RowItems(s.first, outputs.0 + shift, s.second, s.second == nil ? nil : outputs.1! + shift, threads: threads, tokens: s.tokens)
        }
        firstRows = segments.map(\.inputRow)
        var before: [Int] = [], total = 0
        for s in self.segments {
            before.append(total)
            total += s.count
        }
        self.before = before
        count = total
    }

    @inlinable @inline(__always)
    func item(_ i: Int) -> (matrix: WeightMatrix, start: Int, count: Int, output: UnsafeMutablePointer<Float>, t0: Int, tokens: Int) {
        // The last segment that starts at or before item i (segments are few: a layer's experts).
        var s = 0
        while s + 1 < before.count && before[s + 1] <= i { s += 1 }
        let it = segments[s].item(i - before[s])
        return (it.matrix, it.start, it.count, it.output, firstRows[s], it.tokens)
    }
}

/// The work items of one or two products: blocks of rows small enough to balance, large enough to
/// amortise the claim, and at most 512 KiB of weights, which stay in the core's L2 while every
/// token passes over them.
@usableFromInline
struct RowItems: ProductItems {
    @usableFromInline let first: WeightMatrix, second: WeightMatrix?
    @usableFromInline let firstOutput: UnsafeMutablePointer<Float>, secondOutput: UnsafeMutablePointer<Float>?
    @usableFromInline let firstPerItem: Int, secondPerItem: Int, firstItems: Int, count: Int
    @usableFromInline let tokens: Int

    @inlinable
    init(_ first: WeightMatrix, _ firstOutput: UnsafeMutablePointer<Float>, _ second: WeightMatrix?, _ secondOutput: UnsafeMutablePointer<Float>?,
         threads: Int, tokens: Int) {
        self.tokens = tokens
        // A multiple of 4 rows, so the AVX-512 bf16 tiles (4 rows) take every row of an item.
        func perItem(_ m: WeightMatrix) -> Int { (max(8, min(256, (512 << 10) / max(1, m.rowBytes), m.rows / (threads * 8) + 1)) + 3) / 4 * 4 }
        self.first = first
        self.second = second
        self.firstOutput = firstOutput
        self.secondOutput = secondOutput
        firstPerItem = perItem(first)
        secondPerItem = second.map(perItem) ?? 1
        firstItems = (first.rows + firstPerItem - 1) / firstPerItem
        let secondRows = second?.rows ?? 0, secondPerItem = self.secondPerItem
        count = firstItems + (secondRows + secondPerItem - 1) / secondPerItem
    }

    /// Item `i`: its matrix, its first row, its row count, that matrix's output, and its tokens
    /// (all of them, from the first).
    @inlinable @inline(__always)
    func item(_ i: Int) -> (matrix: WeightMatrix, start: Int, count: Int, output: UnsafeMutablePointer<Float>, t0: Int, tokens: Int) {
        if i < firstItems {
            let start = i * firstPerItem
            return (first, start, min(first.rows, start + firstPerItem) - start, firstOutput, 0, tokens)
        }
        let start = (i - firstItems) * secondPerItem
        return (second!, start, min(second!.rows, start + secondPerItem) - start, secondOutput!, 0, tokens)
    }
}

/// - Parameter tokens: the input rows the items take, all together (their activations are prepared once).
@inlinable
func matmulProducts<Items: ProductItems>(
    _ products: Items, input: UnsafePointer<Float>, inputStride: Int, outputStride: Int,
    tokens: Int, pool: ThreadPool, precision: ActivationPrecision, tuning: KernelTuning
) {
    let n = products.first.columns
    let element = products.first.element
    let rowBytes = products.first.rowBytes
    // Each item takes a block of rows; each weight row is read once per four tokens.
    @inline(__always) func rowBlocks(_ dot: (_ row: UnsafeRawPointer, _ t0: Int, _ count: Int) -> SIMD4<Float>) {
        pool.parallelFor(products.count) { i in
            let (matrix, start, rows, output, first, count) = products.item(i)
            var t0 = first
            while t0 < first + count {
                let n = min(4, first + count - t0)
                for r in start..<(start + rows) {
                    let s = dot(matrix.data + r * rowBytes, t0, n)
                    for t in 0..<n { output[(t0 + t) * outputStride + r] = s[t] }
                }
                t0 += 4
            }
        }
    }
    // The C kernels take a block of rows (its first row's address, the row count, the output at its
    // first row) and up to four tokens per call (the row loop is in C); `passes` says whether the
    // item takes more than one call's tokens.
    @inline(__always) func rowGroups(
        _ call: (_ rows: UnsafeRawPointer, _ count: Int, _ output: UnsafeMutablePointer<Float>, _ t0: Int, _ tokens: Int32, _ passes: Bool) -> Void
    ) {
        pool.parallelFor(products.count) { i in
            let (matrix, start, rows, output, first, count) = products.item(i)
            var t0 = first
            while t0 < first + count {
                call(matrix.data + start * rowBytes, rows, output + t0 * outputStride + start, t0, Int32(min(4, first + count - t0)), count > 4)
                t0 += 4
            }
        }
    }
    switch element {
    case .q4_k where precision.quantizesActivations, .q5_k where precision.quantizesActivations, .q6_k where precision.quantizesActivations:
        // One activation scale per super-block: the kernel's integer sums run over all 256 values.
        let supers = n / 256
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: max(1, tokens * n)) { values in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, tokens * supers)) { scales in
                withUnsafeTemporaryAllocation(of: Int16.self, capacity: max(1, tokens * n / 16)) { sums in
                    SuperBlockActivations.quantize(input, inputStride: inputStride, columns: n, tokens: tokens,
                                                   values: values.baseAddress!, scales: scales.baseAddress!, sums: sums.baseAddress!)
                    let xq = UnsafePointer(values.baseAddress!), xd = UnsafePointer(scales.baseAddress!), xs = UnsafePointer(sums.baseAddress!)
                    rowGroups { rowsAt, count, out, t0, t, _ in
                        let kernel = element == .q4_k ? sy_rows_q4_k_q8k : element == .q5_k ? sy_rows_q5_k_q8k : sy_rows_q6_k_q8k
                        kernel(rowsAt, rowBytes, Int32(count), Int32(supers), xq + t0 * n, xd + t0 * supers, xs + t0 * (n / 16), Int32(n), t, out,
                               outputStride)
                    }
                }
            }
        }
    case .q8_0 where precision.quantizesActivations, .q4_0 where precision.quantizesActivations, .mxfp4 where precision.quantizesActivations:
        let blocks = n / 32
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: max(1, tokens * n)) { values in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, tokens * blocks)) { scales in
                QuantizedActivations.quantize(input, inputStride: inputStride, columns: n, tokens: tokens,
                                              values: values.baseAddress!, scales: scales.baseAddress!)
                let xq = UnsafePointer(values.baseAddress!), xd = UnsafePointer(scales.baseAddress!)
                rowGroups { rowsAt, count, out, t0, t, _ in
                    switch element {
                    case .q4_0:
                        sy_rows_q4_0_q8(rowsAt, rowBytes, Int32(count), Int32(blocks), xq + t0 * n, xd + t0 * blocks, Int32(n), t, out, outputStride)
                    case .mxfp4:
                        sy_rows_mxfp4_q8(rowsAt, rowBytes, Int32(count), Int32(blocks), xq + t0 * n, xd + t0 * blocks, Int32(n), t, out, outputStride)
                    default:
                        sy_rows_q8_0_q8(rowsAt, rowBytes, Int32(count), Int32(blocks), xq + t0 * n, xd + t0 * blocks, Int32(n), t, out, outputStride)
                    }
                }
            }
        }
    case .q8_0x4 where precision.quantizesActivations, .q4_0x4 where precision.quantizesActivations:
        let q4 = element == .q4_0x4, blocks = n / 32, lanes = n / 8
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: max(1, 2 * tokens * n)) { values in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, tokens * (blocks + lanes))) { scales in
                withUnsafeTemporaryAllocation(of: Int32.self, capacity: max(1, tokens * lanes)) { corrections in
                    let xq = values.baseAddress!, x = xq + tokens * n, xd = scales.baseAddress!, dx = xd + tokens * blocks
                    // One AVX-512 pass in C where it can (this ran on one core while the others
                    // waited: 2% of Q8_0 decode); its Swift twin, two passes, elsewhere.
                    if sy_quantize_grouped(input, inputStride, Int32(n), Int32(tokens), q4 ? 1 : 0, x, dx, corrections.baseAddress!) == 0 {
                        QuantizedActivations.quantize(input, inputStride: inputStride, columns: n, tokens: tokens, values: xq, scales: xd)
                        GroupedActivations.arrange(values: xq, scales: xd, columns: n, tokens: tokens, q4: q4, into: x, scales: dx,
                                                   corrections: corrections.baseAddress!)
                    }
                    let corr = UnsafePointer(corrections.baseAddress!), measured = Int32(clamping: tuning.integerTilesFrom)
                    rowGroups { rowsAt, count, out, t0, t, passes in
                        // An item of more than one pass reads its rows from the caches after the first,
                        // where the tiles' shared loads pay; the measured choice is for rows from memory.
                        sy_rows_grouped_q8(rowsAt, rowBytes, Int32(count), Int32(n / 128), q4 ? 1 : 0, x + t0 * n, dx + t0 * lanes,
                                           corr + t0 * lanes, Int32(n), t, passes ? 1 : measured, out, outputStride)
                    }
                }
            }
        }
    case .q8_0x4, .q4_0x4:
        // Exact float activations over grouped weights: widened one value at a time (a slow path;
        // grouping is done at load only for int8 activations).
        rowBlocks { row, t0, count in
            var s = SIMD4<Float>()
            for t in 0..<count {
                let x = input + (t0 + t) * inputStride
                var sum: Float = 0
                for c in 0..<n { sum = sum.addingProduct(widenScalar(element, row, c), x[c]) }
                s[t] = sum
            }
            return s
        }
    case .q4_k:
        rowBlocks { row, t0, count in
            var s = SIMD4<Float>()
            Q4_K.dotRow(row, n, input + t0 * inputStride, inputStride, count, &s)
            return s
        }
    case .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs:
        // Float32 activations whatever the precision asks: these formats have no integer kernel
        // (Q5_K and Q6_K have one, above, for int8 activations).
        rowBlocks { row, t0, count in
            var s = SIMD4<Float>()
            GGMLBlocks.dotRow(element, row, n, input + t0 * inputStride, inputStride, count, &s)
            return s
        }
    case .q8_0, .q4_0, .mxfp4:
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, tokens * n)) { permuted in
            Q8_0.permute(input, inputStride: inputStride, columns: n, tokens: tokens, output: permuted.baseAddress!)
            let perm = UnsafePointer(permuted.baseAddress!)
            rowBlocks { row, t0, count in
                var s = SIMD4<Float>()
                switch element {
                case .q4_0: Q4_0.dotRow(row, n, perm + t0 * n, count, &s)
                case .mxfp4: MXFP4.dotRow(row, n, perm + t0 * n, count, &s)
                default: Q8_0.dotRow(row, n, perm + t0 * n, count, &s)
                }
                return s
            }
        }
    case .bf16 where precision.roundsActivationsToBF16 && n % 32 == 0:
        withUnsafeTemporaryAllocation(of: UInt16.self, capacity: max(1, tokens * n)) { rounded in
            roundToBF16(input, inputStride: inputStride, columns: n, tokens: tokens, output: rounded.baseAddress!)
            let x = UnsafePointer(rounded.baseAddress!)
            if sy_bf16dp_level() > 0 {
                pool.parallelFor(products.count) { i in
                    let (matrix, start, rows, output, t0, count) = products.item(i)
                    // One pass (6 tokens) as measured (TileChoice); tiles for more, whose rows come from the caches.
                    let tilesFrom = Int32(clamping: count > 6 ? 1 : tuning.bf16TilesFrom)
                    sy_rows_bf16_bf16(matrix.data + start * rowBytes, rowBytes, Int32(rows), Int32(n / 32), x + t0 * n, Int32(n), Int32(count),
                                      tilesFrom, output + t0 * outputStride + start, outputStride)
                }
                return
            }
            rowBlocks { row, t0, count in
                var s = SIMD4<Float>()
                dotRowBF16Rounded(row, n, x + t0 * n, count, &s)
                return s
            }
        }
    case .bf16:
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, tokens * n)) { permuted in
            permuteForBF16(input, inputStride: inputStride, columns: n, tokens: tokens, output: permuted.baseAddress!)
            let perm = UnsafePointer(permuted.baseAddress!)
            if n % 32 == 0 && sy_bf16_level() > 0 {
                // The C twin of dotRowBF16 (bit for bit), which can prefetch the weight stream.
                pool.parallelFor(products.count) { i in
                    let (matrix, start, rows, output, t0, count) = products.item(i)
                    sy_rows_bf16_f32(matrix.data + start * rowBytes, rowBytes, Int32(rows), Int32(n / 32), perm + t0 * n, Int32(n), Int32(count),
                                     output + t0 * outputStride + start, outputStride, Int32(clamping: tuning.bf16FiveTokenPassesFrom))
                }
                return
            }
            rowBlocks { row, t0, count in
                var s = SIMD4<Float>()
                dotRowBF16(row, n, perm + t0 * n, input + t0 * inputStride, inputStride, count, &s)
                return s
            }
        }
    case .f32, .f16:
        rowBlocks { row, t0, count in
            var s = SIMD4<Float>()
            dotRow(element, row, n, input + t0 * inputStride, inputStride, count, &s)
            return s
        }
    }
}

/// The plain reference: one multiply-add at a time, in Double. Kernels are tested against it.
public func matmulReference(
    _ weight: WeightMatrix, input: [Float], tokens: Int
) -> [Float] {
    var out = [Float](repeating: 0, count: tokens * weight.rows)
    // Each row widened once (a K-quant value alone costs its whole block).
    var row = [Float](repeating: 0, count: weight.columns)
    for r in 0..<weight.rows {
        row.withUnsafeMutableBufferPointer { weight.widenRow(r, into: $0.baseAddress!) }
        for t in 0..<tokens {
            var s = 0.0
            for c in 0..<weight.columns { s += Double(row[c]) * Double(input[t * weight.columns + c]) }
            out[t * weight.rows + r] = Float(s)
        }
    }
    return out
}
