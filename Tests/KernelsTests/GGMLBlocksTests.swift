import Testing
import SwitchyardJSON
@testable import Kernels
import SwitchyardSupport
import SwitchyardTestSupport

/// Blocks of each format and the gguf package's widening of them (scripts/ggml_block_vectors.py).
func ggmlBlockVectors(_ element: WeightElement) -> (blocks: [UInt8], values: [Float]) {
    let json = try! JSONValue.parse(try! readFileBytes(repositoryRoot + "/fixtures/quant/ggml_blocks.json"))
    let entry = json["\(element)"]!
    let hex = Array(entry["blocks"]!.stringValue!.utf8)
    func nibble(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
    let blocks = stride(from: 0, to: hex.count, by: 2).map { nibble(hex[$0]) << 4 | nibble(hex[$0 + 1]) }
    return (blocks, entry["values"]!.arrayValue!.map { Float(bitPattern: UInt32($0.intValue!)) })
}

let ggmlBlockFormats: [WeightElement] = [.q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs]

@Suite("GGUF block formats widened by GGMLBlocks")
struct GGMLBlocksTests {
    @Test("widening equals the gguf package's dequantize, bit for bit", arguments: ggmlBlockFormats)
    func wideningIsGGUFs(element: WeightElement) {
        let (blocks, values) = ggmlBlockVectors(element)
        #expect(blocks.count / GGMLBlocks.blockBytes(element) == 16)
        #expect(values.count == 16 * element.blockValues)
        var widened = [Float](repeating: .nan, count: values.count)
        blocks.withUnsafeBytes { raw in
            widened.withUnsafeMutableBufferPointer { out in
                GGMLBlocks.widenRow(element, raw.baseAddress!, values.count, into: out.baseAddress!)
            }
            let m = WeightMatrix(element: element, rows: 1, columns: values.count, data: raw.baseAddress!)
            for i in stride(from: 0, to: values.count, by: 37) { #expect(m.value(0, i).bitPattern == values[i].bitPattern) }
        }
        var mismatches = 0
        for i in values.indices where widened[i].bitPattern != values[i].bitPattern { mismatches += 1 }
        #expect(mismatches == 0, "\(element): \(mismatches) of \(values.count) values differ from gguf's")
        #expect(element.rowBytes(values.count) == blocks.count)
    }

    @Test("products equal the plain reference, at every token count", arguments: ggmlBlockFormats)
    func productMatchesReference(element: WeightElement) {
        let (blocks, _) = ggmlBlockVectors(element)
        // The 16 blocks as rows of 2 (256-value formats) or 4 blocks.
        let perRow = element.blockValues == 256 ? 2 : 4
        let rows = 16 / perRow, columns = perRow * element.blockValues
        let pool = ThreadPool(threads: 3)
        for tokens in [1, 3, 4, 6] {
            let input = randomFloats(tokens * columns, seed: UInt64(tokens))
            // Within float32 rounding of the sum of |w·x| (the test blocks' scales reach thousands).
            blocks.withUnsafeBytes { raw in
                let m = WeightMatrix(element: element, rows: rows, columns: columns, data: raw.baseAddress!)
                let expected = matmulReference(m, input: input, tokens: tokens)
                var out = [Float](repeating: .nan, count: tokens * rows)
                input.withUnsafeBufferPointer { x in
                    matmul(m, input: x.baseAddress!, inputStride: columns, output: &out, outputStride: rows, tokens: tokens, pool: pool)
                }
                var row = [Float](repeating: 0, count: columns)
                for r in 0..<rows {
                    row.withUnsafeMutableBufferPointer { m.widenRow(r, into: $0.baseAddress!) }
                    for t in 0..<tokens {
                        var magnitude: Float = 0
                        for c in 0..<columns { magnitude += abs(row[c] * input[t * columns + c]) }
                        #expect(abs(out[t * rows + r] - expected[t * rows + r]) <= 1e-6 * magnitude, "\(element) token \(t) row \(r)")
                    }
                }
            }
            // Asking for int8 activations changes nothing: these formats compute with float32 ones
            // (but Q5_K and Q6_K, whose integer kernels QuantizedKernelTests checks).
            if element == .q5_k || element == .q6_k { continue }
            blocks.withUnsafeBytes { raw in
                let m = WeightMatrix(element: element, rows: rows, columns: columns, data: raw.baseAddress!)
                var exact = [Float](repeating: 0, count: tokens * rows), asked = exact
                input.withUnsafeBufferPointer { x in
                    matmul(m, input: x.baseAddress!, inputStride: columns, output: &exact, outputStride: rows, tokens: tokens, pool: pool)
                    matmul(m, input: x.baseAddress!, inputStride: columns, output: &asked, outputStride: rows, tokens: tokens, pool: pool,
                           precision: .int8bf16)
                }
                #expect(exact == asked)
            }
        }
    }
}

@Suite("Q6_K quantisation")
struct Q6_KTests {
    @Test func quantizationIsGGMLs() {
        let cases = quantVectors("q6_k", list: "q4_k_cases")
        #expect(cases.count == 5)
        for c in cases {
            var out = [UInt8](repeating: 0, count: c.values.count / 256 * Q6_K.blockBytes)
            c.values.withUnsafeBufferPointer { v in out.withUnsafeMutableBytes { Q6_K.quantize(v.baseAddress!, count: v.count, into: $0.baseAddress!) } }
            #expect(out == c.bytes)
            // And it widens back within a level of every value.
            out.withUnsafeBytes { raw in
                let m = WeightMatrix(element: .q6_k, rows: 1, columns: c.values.count, data: raw.baseAddress!)
                let largest = c.values.map(abs).max()!
                for i in c.values.indices { #expect(abs(m.value(0, i) - c.values[i]) <= largest / 16 + 1e-6) }
            }
        }
    }
}
