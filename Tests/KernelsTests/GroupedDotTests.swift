import Testing
@testable import Kernels
import KernelsC
import SwitchyardSupport
import SwitchyardTestSupport

@Suite("grouped Q8_0 and Q4_0 integer kernels", .serialized)
struct GroupedDotTests {
    // Rows of 1, 3 and 5 groups, row counts that are not multiples of anything, token counts around
    // the 4-token register block.
    @Test(arguments: [(WeightElement.q8_0, 7, 128, 1), (.q8_0, 19, 384, 3), (.q8_0, 5, 640, 6), (.q4_0, 7, 128, 1), (.q4_0, 33, 384, 4),
                      (.q4_0, 5, 640, 9)])
    func groupedKernelIsItsTwin(element: WeightElement, rows: Int, columns: Int, tokens: Int) {
        for level in [0, 1, 2, 3, nil] {
            forceQuantizedDotLevel(level)
            // AVX512-VNNI's 4-row tiles and its one row at a time on 256 bits (TileChoice).
            for tilesFrom in [1, 5] {
                check(element, rows: rows, columns: columns, tokens: tokens, tuning: KernelTuning(integerTilesFrom: tilesFrom))
            }
        }
    }

    /// Float16 scales below 2^-14, which the kernels widen four at a time.
    @Test(arguments: [WeightElement.q8_0, .q4_0])
    func subnormalScales(element: WeightElement) {
        for level in [0, 1, 2, 3, nil] {
            forceQuantizedDotLevel(level)
            check(element, rows: 5, columns: 256, tokens: 2, scale: 1e-4)
        }
    }

    /// The C pass (where AVX-512 is present) writes what the Swift twin writes, bit for bit: on
    /// random values, exact rounding ties once scaled (a block whose largest value is 127), zero
    /// blocks, and rows read with a stride wider than they are.
    @Test(arguments: [false, true])
    func cQuantiserIsItsTwin(q4: Bool) {
        let columns = 384, tokens = 3, stride = 400
        var input = randomFloats(tokens * stride, seed: q4 ? 8 : 9).map { $0 * 37 }
        for i in 0..<32 { input[i] = i == 0 ? 127 : Float(i) - 15.5 }   // scale 1: every x.5 is a tie
        for i in 32..<64 { input[i] = 0 }
        let lanes = tokens * columns / 8
        var twin = ([Int8](repeating: 0, count: tokens * columns), [Float](repeating: 0, count: lanes), [Int32](repeating: 0, count: lanes))
        var xq = [Int8](repeating: 0, count: tokens * columns), xd = [Float](repeating: 0, count: tokens * columns / 32)
        QuantizedActivations.quantize(input, inputStride: stride, columns: columns, tokens: tokens, values: &xq, scales: &xd)
        GroupedActivations.arrange(values: xq, scales: xd, columns: columns, tokens: tokens, q4: q4, into: &twin.0, scales: &twin.1, corrections: &twin.2)
        var c = ([Int8](repeating: 0, count: tokens * columns), [Float](repeating: 0, count: lanes), [Int32](repeating: 0, count: lanes))
        let done = sy_quantize_grouped(input, stride, Int32(columns), Int32(tokens), q4 ? 1 : 0, &c.0, &c.1, &c.2)
        guard done != 0 else { return }   // no AVX-512 here, or a suite capped the level: only the twin runs
        #expect(c.0.indices.allSatisfy { c.0[$0] == twin.0[$0] })
        #expect(c.1.indices.allSatisfy { c.1[$0].bitPattern == twin.1[$0].bitPattern })
        #expect(c.2.indices.allSatisfy { c.2[$0] == twin.2[$0] })
        #expect(twin.0[0...15].contains(-15) && twin.0[64...79].contains(16), "ties (-14.5, 15.5) rounded away from zero")
    }

    func check(_ element: WeightElement, rows: Int, columns: Int, tokens: Int, scale: Float = 1, tuning: KernelTuning = .default) {
        let pool = ThreadPool(threads: 3)
        let bytes = quantized(element, randomFloats(rows * columns, seed: UInt64(rows * 5 + columns)).map { $0 * scale })
        let input = randomFloats(tokens * columns, seed: 23)
        var grouped = [UInt8](repeating: 0, count: bytes.count), inPlace = bytes
        bytes.withUnsafeBytes { raw in
            let m = WeightMatrix(element: element, rows: rows, columns: columns, data: raw.baseAddress!)
            let g = grouped.withUnsafeMutableBytes { GroupedBlocks.regroup(m, into: $0.baseAddress!, pool: pool) }
            #expect(g.element == GroupedBlocks.grouped(element) && g.rowBytes == m.rowBytes)
            // Regrouping in place (weights converted at load) writes the same bytes.
            inPlace.withUnsafeMutableBytes { target in
                _ = GroupedBlocks.regroup(WeightMatrix(element: element, rows: rows, columns: columns, data: target.baseAddress!), into: target.baseAddress!,
                                          pool: pool)
            }
            // Compared by hand: a failing == on arrays makes the test library print both.
            #expect(inPlace.indices.allSatisfy { inPlace[$0] == grouped[$0] })
            grouped.withUnsafeBytes { groupedRaw in
                let gm = WeightMatrix(element: g.element, rows: rows, columns: columns, data: groupedRaw.baseAddress!)
                // The same values, moved.
                var moved = 0
                for r in 0..<rows { for c in 0..<columns where gm.value(r, c).bitPattern != m.value(r, c).bitPattern { moved += 1 } }
                #expect(moved == 0, "\(moved) values changed")
                let reference = matmulReference(m, input: input, tokens: tokens)
                var exact = [Float](repeating: .nan, count: tokens * rows), integer = exact
                input.withUnsafeBufferPointer { x in
                    exact.withUnsafeMutableBufferPointer { o in
                        matmul(gm, input: x.baseAddress!, inputStride: columns, output: o.baseAddress!, outputStride: rows, tokens: tokens, pool: pool)
                    }
                    integer.withUnsafeMutableBufferPointer { o in
                        matmul(gm, input: x.baseAddress!, inputStride: columns, output: o.baseAddress!, outputStride: rows, tokens: tokens, pool: pool,
                               precision: .int8, tuning: tuning)
                    }
                }
                // The twin's activations: quantised per block, then arranged in groups.
                var xq = [Int8](repeating: 0, count: tokens * columns), xd = [Float](repeating: 0, count: tokens * columns / 32)
                var values = xq, scales = [Float](repeating: 0, count: tokens * columns / 8), corrections = [Int32](repeating: 0, count: tokens * columns / 8)
                input.withUnsafeBufferPointer { x in
                    QuantizedActivations.quantize(x.baseAddress!, inputStride: columns, columns: columns, tokens: tokens, values: &xq, scales: &xd)
                }
                GroupedActivations.arrange(values: xq, scales: xd, columns: columns, tokens: tokens, q4: element == .q4_0, into: &values, scales: &scales,
                                           corrections: &corrections)
                for r in 0..<rows {
                    let twin = groupedDotReference(gm.element, groupedRaw.baseAddress! + r * gm.rowBytes, columns: columns, values: values, scales: scales,
                                                   tokens: tokens)
                    for t in 0..<tokens {
                        let i = t * rows + r
                        #expect(integer[i].bitPattern == twin[t].bitPattern, "\(element) row \(r) token \(t) (\(quantizedDotInstructions)): \(integer[i]) vs twin \(twin[t])")
                        #expect(abs(exact[i] - reference[i]) <= 1e-5 * Float(columns) * scale)
                        var magnitude: Float = 0
                        for c in 0..<columns { magnitude += abs(m.value(r, c) * input[t * columns + c]) }
                        #expect(abs(integer[i] - reference[i]) <= 0.01 * magnitude + 1e-9)
                    }
                }
            }
        }
    }
}

@Suite("activations quantised per block")
struct QuantizedActivationTests {
    /// The vector rounding is C's roundf on every value that matters: exact ties, the floats just
    /// either side of them, the largest float below a half, and ordinary values.
    @Test func roundingIsHalfAwayFromZero() {
        var values: [Float] = [0, -0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 127, -127, 0.49999997, -0.49999997]
        for k in -127...127 {
            let tie = Float(k) + 0.5
            values += [tie, tie.nextUp, tie.nextDown, Float(k), Float(k).nextUp, Float(k).nextDown]
        }
        values += randomFloats(4096, seed: 5).map { $0 * 127 }
        values = values.filter { abs($0) <= 127.49 }
        while values.count % 16 != 0 { values.append(0) }
        var wrong: [Float] = []
        for start in stride(from: 0, to: values.count, by: 16) {
            var x = SIMD16<Float>()
            for i in 0..<16 { x[i] = values[start + i] }
            let r = QuantizedActivations.roundedToInt8(x)
            for i in 0..<16 where Int(r[i]) != Int(x[i].rounded(.toNearestOrAwayFromZero)) { wrong.append(x[i]) }
        }
        #expect(wrong.isEmpty, "rounded wrongly: \(wrong.prefix(8))")
    }

    /// Scales are max |x| / 127 per block and values x / scale rounded half away from zero.
    @Test func blocksAreQuantisedByDefinition() {
        let columns = 96, tokens = 3
        var input = randomFloats(tokens * columns, seed: 41)
        input[5] = -3  // a negative extreme
        for c in 64..<96 { input[columns + c] = 0 }  // an all-zero block
        var values = [Int8](repeating: 0, count: tokens * columns), scales = [Float](repeating: 0, count: tokens * columns / 32)
        QuantizedActivations.quantize(input, inputStride: columns, columns: columns, tokens: tokens, values: &values, scales: &scales)
        var mismatches = 0
        for t in 0..<tokens {
            for b in 0..<(columns / 32) {
                let block = input[(t * columns + 32 * b)..<(t * columns + 32 * b + 32)]
                let d = block.map(abs).max()! / 127
                if scales[t * columns / 32 + b] != d { mismatches += 1 }
                let id: Float = d != 0 ? 1 / d : 0
                for (j, x) in block.enumerated() where values[t * columns + 32 * b + j] != Int8((x * id).rounded(.toNearestOrAwayFromZero)) {
                    mismatches += 1
                }
            }
        }
        #expect(mismatches == 0)
    }
}

@Suite("fused pairs of products")
struct FusedPairTests {
    /// Gate and up in one region give exactly the two products run alone, for every kind of weight
    /// and both activation precisions, with row counts that split into different items.
    @Test(arguments: [WeightElement.f32, .bf16, .q8_0, .q4_0, .q8_0x4, .q4_0x4])
    func pairIsTwoProducts(element: WeightElement) {
        let pool = ThreadPool(threads: 3)
        let columns = 256, tokens = 7, rows = (37, 300)
        func matrix(_ rows: Int, seed: UInt64) -> [UInt8] {
            let w = randomFloats(rows * columns, seed: seed)
            switch element {
            case .f32: return w.withUnsafeBytes { Array($0) }
            case .bf16: return w.map(bf16Bits).withUnsafeBytes { Array($0) }
            case .q8_0, .q4_0: return quantized(element, w)
            default:
                let source = GroupedBlocks.grouped(.q8_0) == element ? WeightElement.q8_0 : .q4_0
                let bytes = quantized(source, w)
                var out = [UInt8](repeating: 0, count: bytes.count)
                bytes.withUnsafeBytes { raw in
                    out.withUnsafeMutableBytes { target in
                        _ = GroupedBlocks.regroup(WeightMatrix(element: source, rows: rows, columns: columns, data: raw.baseAddress!), into: target.baseAddress!, pool: pool)
                    }
                }
                return out
            }
        }
        let a = matrix(rows.0, seed: 1), b = matrix(rows.1, seed: 2)
        let input = randomFloats(tokens * columns, seed: 3)
        let stride = max(rows.0, rows.1)
        for precision in ActivationPrecision.allCases {
            var pair0 = [Float](repeating: .nan, count: tokens * stride), pair1 = pair0, alone0 = pair0, alone1 = pair0
            a.withUnsafeBytes { ra in
                b.withUnsafeBytes { rb in
                    let ma = WeightMatrix(element: element, rows: rows.0, columns: columns, data: ra.baseAddress!)
                    let mb = WeightMatrix(element: element, rows: rows.1, columns: columns, data: rb.baseAddress!)
                    input.withUnsafeBufferPointer { x in
                        pair0.withUnsafeMutableBufferPointer { o0 in
                            pair1.withUnsafeMutableBufferPointer { o1 in
                                matmul(ma, mb, input: x.baseAddress!, inputStride: columns, outputs: (o0.baseAddress!, o1.baseAddress!), outputStride: stride,
                                       tokens: tokens, pool: pool, precision: precision)
                            }
                        }
                        alone0.withUnsafeMutableBufferPointer { o in
                            matmul(ma, input: x.baseAddress!, inputStride: columns, output: o.baseAddress!, outputStride: stride, tokens: tokens, pool: pool,
                                   precision: precision)
                        }
                        alone1.withUnsafeMutableBufferPointer { o in
                            matmul(mb, input: x.baseAddress!, inputStride: columns, output: o.baseAddress!, outputStride: stride, tokens: tokens, pool: pool,
                                   precision: precision)
                        }
                    }
                }
            }
            let first = pair0.indices.first { pair0[$0].bitPattern != alone0[$0].bitPattern }
            let second = pair1.indices.first { pair1[$0].bitPattern != alone1[$0].bitPattern }
            #expect(first == nil && second == nil, "\(element) \(precision): first differences at \(first ?? -1), \(second ?? -1)")
            // Something was written (not two untouched buffers agreeing).
            #expect(!pair1[(tokens - 1) * stride + rows.1 - 1].isNaN)
        }
    }
}

@Suite("kernel choice")
struct KernelChoiceTests {
    /// The table covers 5...12 tokens with real times, and its verdict follows from them and is the
    /// tuning products are given.
    @Test func measuredTableDecides() {
        let choice = KernelChoice.measure(rows: 64, columns: 256, repetitions: 1, pool: ThreadPool(threads: 2))
        // Without the tiles (no AVX-512, or another suite capping the level just then) nothing is
        // measured.
        if choice.tokenCounts.isEmpty {
            #expect(choice.fiveTokenPassesFrom == nil)
        } else {
            #expect(choice.tokenCounts == Array(5...12))
            #expect(choice.fourTokenPassSeconds.allSatisfy { $0 > 0 } && choice.fiveTokenPassSeconds.allSatisfy { $0 > 0 })
            if let from = choice.fiveTokenPassesFrom {
                for (i, n) in choice.tokenCounts.enumerated() where n >= from { #expect(choice.fiveTokenPassSeconds[i] <= choice.fourTokenPassSeconds[i]) }
            }
        }
        // The verdict becomes a tuning value: the threshold when five won, passes of 4 otherwise.
        #expect(choice.tuning.bf16FiveTokenPassesFrom == (choice.fiveTokenPassesFrom ?? Int.max))
    }

    /// The tile choice's table covers one pass (1...4 tokens for the integer kernels, 1...6 for
    /// vdpbf16ps) with real times, its verdict follows from them, and it becomes the tuning
    /// (nothing is measured without such tiles in force).
    @Test(arguments: [WeightElement.q8_0x4, .q4_0x4, .bf16])
    func tileTableDecides(element: WeightElement) {
        let choice = TileChoice.measure(element: element, rows: 64, columns: 256, precision: .int8bf16, repetitions: 1, pool: ThreadPool(threads: 2))
        let tuning = choice.applied(to: .default)
        if choice.tokenCounts.isEmpty {
            #expect(choice.tilesFrom == 1 && tuning == .default)
            return
        }
        let pass = element == .bf16 ? 6 : 4
        #expect(choice.tokenCounts == Array(1...pass) && (1...(pass + 1)).contains(choice.tilesFrom))
        #expect(choice.rowSeconds.allSatisfy { $0 > 0 } && choice.tileSeconds.allSatisfy { $0 > 0 })
        for (i, n) in choice.tokenCounts.enumerated() where n >= choice.tilesFrom { #expect(choice.tileSeconds[i] <= choice.rowSeconds[i]) }
        if choice.tilesFrom > 1 { #expect(choice.tileSeconds[choice.tilesFrom - 2] > choice.rowSeconds[choice.tilesFrom - 2]) }
        #expect((element == .bf16 ? tuning.bf16TilesFrom : tuning.integerTilesFrom) == choice.tilesFrom)
    }

    /// Passes of 4 and of 5 tokens give the same bits, so the tuning is only about speed.
    @Test(arguments: [1, 5, 7, 12])
    func tuningChangesNoResult(tokens: Int) {
        let rows = 40, columns = 256
        var weights = [UInt16](repeating: 0, count: rows * columns)
        for i in weights.indices { weights[i] = 0x3C00 | UInt16((i * 7919) % 1021 & 0x3FF) }
        let input = (0..<(tokens * columns)).map { Float(($0 * 31) % 17) * 0.0625 - 0.5 }
        func product(_ tuning: KernelTuning) -> [Float] {
            var out = [Float](repeating: 0, count: tokens * rows)
            weights.withUnsafeBytes { w in
                let m = WeightMatrix(element: .bf16, rows: rows, columns: columns, data: w.baseAddress!)
                out.withUnsafeMutableBufferPointer { o in
                    matmul(m, input: input, inputStride: columns, output: o.baseAddress!, outputStride: rows, tokens: tokens,
                           pool: ThreadPool(threads: 2), tuning: tuning)
                }
            }
            return out
        }
        let fours = product(KernelTuning(bf16FiveTokenPassesFrom: .max)), fives = product(KernelTuning(bf16FiveTokenPassesFrom: 5))
        #expect(fours.map(\.bitPattern) == fives.map(\.bitPattern))
    }
}
