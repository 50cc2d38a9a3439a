import Testing
@testable import Kernels
import SwitchyardSupport

/// A matrix of `element` over random weights (bytes kept alive by the caller's array).
func matrix(_ element: WeightElement, rows: Int, columns: Int, seed: UInt64, storage: inout [[UInt8]], pool: ThreadPool) -> WeightMatrix {
    let values = randomFloats(rows * columns, seed: seed)
    var bytes: [UInt8]
    switch element {
    case .f32: bytes = values.withUnsafeBytes { Array($0) }
    case .f16: bytes = values.map { Float16($0) }.withUnsafeBytes { Array($0) }
    case .bf16: bytes = values.map { bf16Bits($0) }.withUnsafeBytes { Array($0) }
    case .q8_0, .q4_0, .q4_k, .mxfp4: bytes = quantized(element, values)
    case .q8_0x4, .q4_0x4:
        let stored: WeightElement = element == .q8_0x4 ? .q8_0 : .q4_0
        bytes = quantized(stored, values)
        let source = bytes
        source.withUnsafeBytes { s in
            bytes.withUnsafeMutableBytes { t in
                _ = GroupedBlocks.regroup(WeightMatrix(element: stored, rows: rows, columns: columns, data: s.baseAddress!), into: t.baseAddress!, pool: pool)
            }
        }
    default: preconditionFailure("no quantiser for \(element) in these tests")
    }
    storage.append(bytes)
    let pointer = storage[storage.count - 1].withUnsafeBytes { UnsafeRawPointer($0.baseAddress!) }
    return WeightMatrix(element: element, rows: rows, columns: columns, data: pointer)
}

@Suite("Grouped expert products")
struct GroupedExpertTests {
    /// Every row of a grouped pass equals the product of its segment alone, bit for bit: four
    /// segments of 1, 3, 6 and 2 tokens with rows of other tokens between them, fused pairs and
    /// single matrices, for every weight element and activation precision.
    @Test(arguments: [
        (WeightElement.f32, ActivationPrecision.f32), (.f16, .f32), (.bf16, .f32), (.bf16, .bf16), (.q8_0, .f32), (.q4_k, .f32),
        (.q8_0, .int8), (.q4_0, .int8), (.q4_k, .int8), (.q8_0x4, .int8), (.q4_0x4, .int8),
    ])
    func groupedEqualsDense(element: WeightElement, precision: ActivationPrecision) {
        let pool = ThreadPool(threads: 3)
        let rows = 40, columns = 256, inputRows = 14
        var storage: [[UInt8]] = []
        let firsts = (0..<4).map { matrix(element, rows: rows, columns: columns, seed: UInt64(10 + $0), storage: &storage, pool: pool) }
        let seconds = (0..<4).map { matrix(element, rows: rows, columns: columns, seed: UInt64(20 + $0), storage: &storage, pool: pool) }
        let input = randomFloats(inputRows * columns, seed: 7)
        let placed: [(inputRow: Int, tokens: Int)] = [(0, 1), (2, 3), (5, 6), (12, 2)]
        var outputRow = 0
        var segments: [RowSegment] = []
        for (s, p) in placed.enumerated() {
            segments.append(RowSegment(firsts[s], s % 2 == 0 ? seconds[s] : nil, inputRow: p.inputRow, outputRow: outputRow, tokens: p.tokens))
            outputRow += p.tokens
        }
        let tuning = KernelTuning(bf16FiveTokenPassesFrom: 5)
        var grouped = [Float](repeating: .nan, count: outputRow * rows), groupedSecond = grouped
        input.withUnsafeBufferPointer { x in
            grouped.withUnsafeMutableBufferPointer { a in
                groupedSecond.withUnsafeMutableBufferPointer { b in
                    matmulSegments(segments, input: x.baseAddress!, inputStride: columns, outputs: (a.baseAddress!, b.baseAddress!), outputStride: rows,
                                   pool: pool, precision: precision, tuning: tuning)
                }
            }
        }
        for s in segments {
            var dense = [Float](repeating: 0, count: s.tokens * rows), denseSecond = dense
            input.withUnsafeBufferPointer { x in
                dense.withUnsafeMutableBufferPointer { a in
                    denseSecond.withUnsafeMutableBufferPointer { b in
                        if let second = s.second {
                            matmul(s.first, second, input: x.baseAddress! + s.inputRow * columns, inputStride: columns,
                                   outputs: (a.baseAddress!, b.baseAddress!), outputStride: rows, tokens: s.tokens, pool: pool, precision: precision,
                                   tuning: tuning)
                        } else {
                            matmul(s.first, input: x.baseAddress! + s.inputRow * columns, inputStride: columns, output: a.baseAddress!,
                                   outputStride: rows, tokens: s.tokens, pool: pool, precision: precision, tuning: tuning)
                        }
                    }
                }
            }
            let range = (s.outputRow * rows)..<((s.outputRow + s.tokens) * rows)
            #expect(firstBitDifference(Array(grouped[range]), dense) == nil, "\(element) \(precision): segment at input row \(s.inputRow)")
            if s.second != nil {
                #expect(firstBitDifference(Array(groupedSecond[range]), denseSecond) == nil, "\(element) \(precision): second of \(s.inputRow)")
            }
        }
    }

    @Test("the choice: grouped below the threshold, dense from it, never for one expert")
    func tuningChoosesByTokensPerExpert() {
        let t = KernelTuning(groupedExpertsBelow: 8)
        #expect(t.groupsExperts(4, tokens: 4 * 7))
        #expect(!t.groupsExperts(4, tokens: 4 * 8))
        #expect(!t.groupsExperts(1, tokens: 1))
        #expect(!KernelTuning(groupedExpertsBelow: 0).groupsExperts(8, tokens: 8))
        #expect(KernelTuning(groupedExpertsBelow: Int.max).groupsExperts(2, tokens: 10_000))
    }
}
