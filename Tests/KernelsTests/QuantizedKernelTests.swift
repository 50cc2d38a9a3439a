import Testing
import SwitchyardJSON
@testable import Kernels
import KernelsC
import SwitchyardSupport
import SwitchyardTestSupport

/// Rows and their bytes in `format` from fixtures/quant/vectors.json (scripts/quant_vectors.py):
/// `list` "cases" (the gguf package's quantisers) or "q4_k_cases" (ggml's, with gguf's
/// dequantisation in `dequantized`).
func quantVectors(_ format: String, list: String = "cases") -> [(values: [Float], bytes: [UInt8], dequantized: [Float])] {
    let json = try! JSONValue.parse(try! readFileBytes(repositoryRoot + "/fixtures/quant/vectors.json"))
    return json[list]!.arrayValue!.map { c in
        let hex = Array(c[format]!.stringValue!)
        let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(hex[$0...$0 + 1]), radix: 16)! }
        return (c["values"]!.arrayValue!.map { Float($0.doubleValue!) }, bytes, c["dequantized"]?.arrayValue?.map { Float($0.doubleValue!) } ?? [])
    }
}

/// `weights` (rows of whole blocks) in a block format.
func quantized(_ element: WeightElement, _ weights: [Float]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: element.rowBytes(weights.count))
    weights.withUnsafeBufferPointer { w in
        out.withUnsafeMutableBytes {
            switch element {
            case .q8_0: Q8_0.quantize(w.baseAddress!, count: w.count, into: $0.baseAddress!)
            case .q4_0: Q4_0.quantize(w.baseAddress!, count: w.count, into: $0.baseAddress!)
            case .mxfp4: MXFP4.quantize(w.baseAddress!, count: w.count, into: $0.baseAddress!)
            case .q6_k: Q6_K.quantize(w.baseAddress!, count: w.count, into: $0.baseAddress!)
            case .q5_k: randomQ5_K(w, into: $0)
            default: Q4_K.quantize(w.baseAddress!, count: w.count, into: $0.baseAddress!)
            }
        }
    }
    return out
}

/// Q5_K blocks (there is no Q5_K quantiser here): random levels, scales and mins (every bit
/// pattern), and float16 d and dmin such that the largest level under the largest scale, or the
/// largest min, is about the block's largest weight.
func randomQ5_K(_ weights: UnsafeBufferPointer<Float>, into out: UnsafeMutableRawBufferPointer) {
    let blockBytes = GGMLBlocks.blockBytes(.q5_k)
    let noise = randomFloats(out.count, seed: UInt64(weights.count))
    for i in 0..<out.count { out[i] = UInt8(truncatingIfNeeded: Int((noise[i] * 1000).rounded())) }
    for b in 0..<(weights.count / 256) {
        let largest = weights[(256 * b)..<(256 * b + 256)].map(abs).max()!
        out.storeBytes(of: Float16(largest / (31 * 63)).bitPattern, toByteOffset: b * blockBytes, as: UInt16.self)
        out.storeBytes(of: Float16(largest / 63).bitPattern, toByteOffset: b * blockBytes + 2, as: UInt16.self)
    }
}

/// Quantises random weights, checks the float-activation product against the plain reference
/// over the values they hold, and returns the weights and the matrix's bytes for checks of the
/// quantisation error.
func checkFloatPath(_ element: WeightElement, rows: Int, columns: Int, tokens: Int, seed: UInt64) -> (weights: [Float], bytes: [UInt8]) {
    let pool = ThreadPool(threads: 3)
    let weights = randomFloats(rows * columns, seed: seed)
    let bytes = quantized(element, weights)
    let input = randomFloats(tokens * columns, seed: seed &+ 1)
    expectProductMatchesReference(element, rows: rows, columns: columns, bytes: bytes, input: input, tokens: tokens, pool: pool)
    return (weights, bytes)
}

/// `matmul` over a matrix's stored bytes equals the plain reference over the values they hold,
/// to float32 rounding.
func expectProductMatchesReference(
    _ element: WeightElement, rows: Int, columns: Int, bytes: [UInt8], input: [Float], tokens: Int, pool: ThreadPool
) {
    bytes.withUnsafeBytes { raw in
        let m = WeightMatrix(element: element, rows: rows, columns: columns, data: raw.baseAddress!)
        let expected = matmulReference(m, input: input, tokens: tokens)
        var out = [Float](repeating: .nan, count: tokens * rows)
        input.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBufferPointer { o in
                matmul(m, input: x.baseAddress!, inputStride: columns, output: o.baseAddress!, outputStride: rows, tokens: tokens, pool: pool)
            }
        }
        for i in out.indices { #expect(abs(out[i] - expected[i]) <= 1e-5 * Float(columns), "\(element) [\(i)] \(out[i]) vs \(expected[i])") }
    }
}

@Suite("Q8_0")
struct Q8_0Tests {
    static let cases = quantVectors("q8_0")

    @Test func quantizationIsGGUFs() {
        #expect(Self.cases.count == 5)
        for c in Self.cases {
            #expect(quantized(.q8_0, c.values) == c.bytes)
        }
    }

    @Test(arguments: [(7, 32, 1), (19, 96, 3), (5, 160, 5), (33, 64, 9)])
    func matmulMatchesReference(rows: Int, columns: Int, tokens: Int) {
        let (weights, bytes) = checkFloatPath(.q8_0, rows: rows, columns: columns, tokens: tokens, seed: UInt64(rows + columns))
        bytes.withUnsafeBytes { raw in
            let m = WeightMatrix(element: .q8_0, rows: rows, columns: columns, data: raw.baseAddress!)
            // Dequantised values stay within half a step of the originals, plus the float16
            // rounding of the scale (up to 2^-11 relative, times |q| <= 127).
            for r in 0..<rows {
                for c in 0..<columns {
                    let block = weights[(r * columns + c) / 32 * 32..<(r * columns + c) / 32 * 32 + 32]
                    let step = block.map(abs).max()! / 127
                    #expect(abs(m.value(r, c) - weights[r * columns + c]) <= step * (0.5 + 127.0 / 2048))
                }
            }
        }
    }
}

@Suite("Q4_0 and integer dot products", .serialized)
struct QuantizedDotTests {
    static let cases = quantVectors("q4_0")

    @Test func q4_0QuantizationIsGGUFs() {
        #expect(Self.cases.count == 5)
        for c in Self.cases {
            #expect(quantized(.q4_0, c.values) == c.bytes)
        }
    }

    // Awkward shapes: block counts that are not multiples of anything, token counts around the
    // 4-token register block.
    @Test(arguments: [(WeightElement.q8_0, 7, 32, 1), (.q8_0, 19, 96, 3), (.q8_0, 5, 224, 6), (.q4_0, 7, 32, 1), (.q4_0, 33, 96, 4), (.q4_0, 5, 160, 9),
                       (.q4_k, 7, 256, 1), (.q4_k, 13, 512, 4), (.q4_k, 5, 768, 6), (.mxfp4, 7, 32, 1), (.mxfp4, 33, 96, 4), (.mxfp4, 5, 160, 9),
                       (.q6_k, 7, 256, 1), (.q6_k, 13, 512, 4), (.q6_k, 5, 768, 6), (.q5_k, 7, 256, 1), (.q5_k, 13, 512, 4), (.q5_k, 5, 768, 6)])
    func integerPathMatchesItsTwinAndStaysClose(element: WeightElement, rows: Int, columns: Int, tokens: Int) {
        // Every instruction-set path this CPU has, then the best again (tests in this suite run
        // one at a time, so the setting is theirs).
        for level in [0, 1, 2, 3, nil] {
            forceQuantizedDotLevel(level)
            checkIntegerPath(element: element, rows: rows, columns: columns, tokens: tokens)
        }
    }

    /// Super-block activations: one scale per 256 (max |x| / 127), each value x / scale rounded half
    /// away from zero, and each 16 values' sum.
    @Test func superBlockActivations() {
        let columns = 512, tokens = 3
        var input = randomFloats(tokens * columns, seed: 5)
        input[300] = -9  // one large value sets its super-block's scale
        var values = [Int8](repeating: 0, count: tokens * columns), scales = [Float](repeating: 0, count: tokens * 2)
        var sums = [Int16](repeating: 0, count: tokens * columns / 16)
        SuperBlockActivations.quantize(input, inputStride: columns, columns: columns, tokens: tokens, values: &values, scales: &scales, sums: &sums)
        #expect(scales[1] == 9 / 127 && values[300] == -127)
        for t in 0..<tokens {
            for b in 0..<2 {
                let block = input[(t * columns + 256 * b)..<(t * columns + 256 * (b + 1))]
                #expect(scales[t * 2 + b] == block.map(abs).max()! / 127)
                for i in block.indices { #expect(values[i] == Int8((input[i] * (1 / scales[t * 2 + b])).rounded(.toNearestOrAwayFromZero))) }
            }
            for g in 0..<(columns / 16) {
                #expect(Int(sums[t * columns / 16 + g]) == (0..<16).reduce(0) { $0 + Int(values[t * columns + 16 * g + $1]) })
            }
        }
    }

    /// Weights of 1e-4 give float16 scales below 2^-14 (subnormal), which the C kernels widen
    /// without the F16C instruction.
    @Test(arguments: [WeightElement.q8_0, .q4_0, .q4_k, .mxfp4, .q6_k, .q5_k])
    func subnormalScales(element: WeightElement) {
        for level in [0, 1, 2, 3, nil] {
            forceQuantizedDotLevel(level)
            checkIntegerPath(element: element, rows: 5, columns: 256, tokens: 2, scale: 1e-4)
        }
    }

    func checkIntegerPath(element: WeightElement, rows: Int, columns: Int, tokens: Int, scale: Float = 1) {
        let pool = ThreadPool(threads: 3)
        let bytes = quantized(element, randomFloats(rows * columns, seed: UInt64(rows * 7 + columns)).map { $0 * scale })
        let input = randomFloats(tokens * columns, seed: 17)
        var values = [Int8](repeating: 0, count: tokens * columns)
        var scales = [Float](repeating: 0, count: tokens * columns / 32)
        input.withUnsafeBufferPointer { x in
            QuantizedActivations.quantize(x.baseAddress!, inputStride: columns, columns: columns, tokens: tokens, values: &values, scales: &scales)
        }
        bytes.withUnsafeBytes { raw in
            let m = WeightMatrix(element: element, rows: rows, columns: columns, data: raw.baseAddress!)
            var exact = [Float](repeating: .nan, count: tokens * rows), integer = exact
            input.withUnsafeBufferPointer { x in
                exact.withUnsafeMutableBufferPointer { o in
                    matmul(m, input: x.baseAddress!, inputStride: columns, output: o.baseAddress!, outputStride: rows, tokens: tokens, pool: pool)
                }
                integer.withUnsafeMutableBufferPointer { o in
                    matmul(m, input: x.baseAddress!, inputStride: columns, output: o.baseAddress!, outputStride: rows, tokens: tokens, pool: pool, precision: .int8)
                }
            }
            let reference = matmulReference(m, input: input, tokens: tokens)
            var row = [Float](repeating: 0, count: columns)
            // The K-quants take activations quantised per super-block of 256.
            var superValues = [Int8](repeating: 0, count: tokens * columns), superScales = [Float](repeating: 0, count: tokens * columns / 256)
            var superSums = [Int16](repeating: 0, count: tokens * columns / 16)
            let superBlocks = element == .q4_k || element == .q5_k || element == .q6_k
            if superBlocks {
                SuperBlockActivations.quantize(input, inputStride: columns, columns: columns, tokens: tokens, values: &superValues, scales: &superScales,
                                               sums: &superSums)
            }
            for r in 0..<rows {
                row.withUnsafeMutableBufferPointer { m.widenRow(r, into: $0.baseAddress!) }
                let twin = superBlocks
                    ? kQuantDotReference(element, raw.baseAddress! + r * m.rowBytes, superblocks: columns / 256, values: superValues,
                                         scales: superScales, sums: superSums, stride: columns, tokens: tokens)
                    : quantizedDotReference(element, raw.baseAddress! + r * m.rowBytes, blocks: columns / 32, values: values, scales: scales,
                                            stride: columns, tokens: tokens)
                for t in 0..<tokens {
                    let i = t * rows + r
                    // The C kernel (\(quantizedDotInstructions)) is its Swift twin, bit for bit.
                    #expect(integer[i].bitPattern == twin[t].bitPattern, "\(element) row \(r) token \(t): \(integer[i]) vs twin \(twin[t])")
                    #expect(abs(exact[i] - reference[i]) <= 1e-5 * Float(columns))
                    // Activations quantised to 8 bits: within about 1% of the row's magnitude.
                    var magnitude: Float = 0
                    for c in 0..<columns { magnitude += abs(row[c] * input[t * columns + c]) }
                    #expect(abs(integer[i] - reference[i]) <= 0.01 * magnitude + 1e-6)
                }
            }
        }
    }
}

/// bf16 weights [rows, columns] times tokens of `input` (from token `offset`), with the kernels
/// capped at `level` (0: Swift's; nil: the CPU's best).
func bf16Product(_ weights: [UInt16], _ input: [Float], rows: Int, columns: Int, tokens: Int, offset: Int = 0, level: Int?,
                 precision: ActivationPrecision, pool: ThreadPool, tuning: KernelTuning = .default) -> [Float] {
    forceQuantizedDotLevel(level)
    defer { forceQuantizedDotLevel(nil) }
    var out = [Float](repeating: .nan, count: tokens * rows)
    weights.withUnsafeBytes { raw in
        let m = WeightMatrix(element: .bf16, rows: rows, columns: columns, data: raw.baseAddress!)
        input.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBufferPointer { o in
                matmul(m, input: x.baseAddress! + offset * columns, inputStride: columns, output: o.baseAddress!, outputStride: rows,
                       tokens: tokens, pool: pool, precision: precision, tuning: tuning)
            }
        }
    }
    return out
}

/// Where two results first differ in their bits (nil: nowhere).
func firstBitDifference(_ a: [Float], _ b: [Float]) -> Int? { a.indices.first { a[$0].bitPattern != b[$0].bitPattern } }

@Suite("bf16 C kernel", .serialized)
struct BF16KernelTests {
    /// The C bf16 kernel (AVX2, AVX-512) is its Swift twin (level 0 runs the Swift kernel) bit for
    /// bit, on awkward row counts and token counts around the 4-token block and the AVX-512 tiles
    /// of 4 rows x 1-5 tokens (with rows and tokens left over); and a token's result is the same
    /// whatever tokens share the product (batch invariance: a tile is the one-token kernel's sum).
    @Test(arguments: [(7, 32, 1), (19, 96, 3), (33, 1024, 4), (5, 160, 9), (37, 96, 12), (64, 256, 20)])
    func cKernelIsItsSwiftTwin(rows: Int, columns: Int, tokens: Int) {
        let pool = ThreadPool(threads: 3)
        let weights = randomFloats(rows * columns, seed: UInt64(rows * 13 + columns)).map(bf16Bits)
        let input = randomFloats(tokens * columns, seed: 3)
        func run(_ level: Int?, tokens: Int, offset: Int = 0) -> [Float] {
            bf16Product(weights, input, rows: rows, columns: columns, tokens: tokens, offset: offset, level: level, precision: .f32, pool: pool)
        }
        let swift = run(0, tokens: tokens)
        for level in [1, 2, 3] {
            let first = firstBitDifference(run(level, tokens: tokens), swift)
            #expect(first == nil, "level \(level): first difference at \(first ?? -1)")
        }
        // Each token alone, at the best level.
        var alone: [Float] = []
        for t in 0..<tokens { alone += run(nil, tokens: 1, offset: t) }
        let differs = firstBitDifference(run(nil, tokens: tokens), alone)
        #expect(differs == nil, "batched vs alone: first difference at \(differs ?? -1)")
    }
}

@Suite("bf16 dot-product kernel", .serialized)
struct BF16DotKernelTests {
    /// With bf16 activations, the C kernel (vdpbf16ps, where the CPU has AVX512-BF16) is its Swift
    /// twin bit for bit, around the tiles of 4 rows x 1-6 tokens; a token's result does not depend
    /// on the tokens beside it; and each result is the exact product of the bf16-rounded values
    /// to within f32 summation error.
    @Test(arguments: [(7, 32, 1), (19, 96, 3), (33, 1024, 6), (5, 160, 9), (37, 96, 13), (64, 256, 20)])
    func cKernelIsItsSwiftTwin(rows: Int, columns: Int, tokens: Int) {
        let pool = ThreadPool(threads: 3)
        let weights = randomFloats(rows * columns, seed: UInt64(rows * 7 + columns)).map(bf16Bits)
        var input = randomFloats(tokens * columns, seed: 5)
        input[0] = 1e-39  // a denormal activation counts as zero in both
        func run(_ level: Int?, tokens: Int, offset: Int = 0) -> [Float] {
            bf16Product(weights, input, rows: rows, columns: columns, tokens: tokens, offset: offset, level: level, precision: .bf16, pool: pool)
        }
        let swift = run(0, tokens: tokens), best = run(nil, tokens: tokens)
        if sy_bf16dp_level() == 0 { print("NOTICE: no AVX512-BF16 here; the C kernel was not compared with its twin") }
        let first = firstBitDifference(best, swift)
        #expect(first == nil, "C against Swift: first difference at \(first ?? -1)")
        // One row at a time instead of the 4-row tiles (TileChoice), at every pass: the same bits.
        let rows1 = bf16Product(weights, input, rows: rows, columns: columns, tokens: tokens, level: nil, precision: .bf16, pool: pool,
                                tuning: KernelTuning(bf16TilesFrom: 7))
        let rowsDiffer = firstBitDifference(rows1, swift)
        #expect(rowsDiffer == nil, "one row at a time against Swift: first difference at \(rowsDiffer ?? -1)")
        var alone: [Float] = []
        for t in 0..<tokens { alone += run(nil, tokens: 1, offset: t) }
        let differs = firstBitDifference(best, alone)
        #expect(differs == nil, "batched vs alone: first difference at \(differs ?? -1)")
        for t in 0..<tokens {
            for r in 0..<rows {
                var exact = 0.0, magnitude = 0.0
                for c in 0..<columns {
                    let w = Double(Float(bitPattern: UInt32(weights[r * columns + c]) << 16))
                    let rounded = Float(bitPattern: UInt32(roundedBF16Bits(input[t * columns + c])) << 16)
                    let x = rounded.isNormal ? Double(rounded) : 0
                    exact += w * x
                    magnitude += abs(w * x)
                }
                #expect(abs(Double(best[t * rows + r]) - exact) <= 1e-6 * magnitude + 1e-30, "row \(r) token \(t)")
            }
        }
    }

    /// Rounding to bf16 is to nearest, ties to even, and keeps NaN a NaN.
    @Test func roundingIsToNearestEven() {
        #expect(roundedBF16Bits(1.0) == 0x3F80)
        #expect(roundedBF16Bits(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // a tie rounds to even (down)
        #expect(roundedBF16Bits(Float(bitPattern: 0x3F81_8000)) == 0x3F82)  // a tie rounds to even (up)
        #expect(roundedBF16Bits(Float(bitPattern: 0x3F80_8001)) == 0x3F81)
        #expect(roundedBF16Bits(-2.5) == 0xC020)
        #expect(Float(bitPattern: UInt32(roundedBF16Bits(.nan)) << 16).isNaN)
        #expect(roundedBF16Bits(.infinity) == 0x7F80)
    }
}

@Suite("Q4_K")
struct Q4_KTests {
    /// Rows quantised by ggml's quantize_row_q4_K_ref and dequantised by the gguf package.
    static let cases = quantVectors("q4_k", list: "q4_k_cases")

    @Test func quantizationIsGGMLs() {
        #expect(Self.cases.count == 5)
        for (n, c) in Self.cases.enumerated() {
            let out = quantized(.q4_k, c.values)
            let differing = out.indices.filter { out[$0] != c.bytes[$0] }
            #expect(out.count == c.bytes.count && differing.isEmpty, "row \(n): bytes \(differing.prefix(8)) differ")
        }
    }

    @Test func layoutIsGGUFs() {
        for (n, c) in Self.cases.enumerated() {
            c.bytes.withUnsafeBytes { raw in
                let wrong = (0..<c.values.count).filter { Q4_K.value(raw.baseAddress!, $0).bitPattern != c.dequantized[$0].bitPattern }
                #expect(wrong.isEmpty, "row \(n): elements \(wrong.prefix(8)) differ from gguf's dequantisation")
            }
        }
    }

    @Test(arguments: [(7, 256, 1), (19, 512, 3), (5, 768, 5), (33, 256, 9)])
    func floatPathMatchesReference(rows: Int, columns: Int, tokens: Int) {
        let (weights, bytes) = checkFloatPath(.q4_k, rows: rows, columns: columns, tokens: tokens, seed: UInt64(rows * 3 + columns))
        bytes.withUnsafeBytes { raw in
            let m = WeightMatrix(element: .q4_k, rows: rows, columns: columns, data: raw.baseAddress!)
            // 4 bits with a fitted offset: each value within a step of 1/15 of its sub-block's range
            // (plus the 6-bit rounding of scale and min).
            for r in 0..<rows {
                for b in 0..<(columns / 32) {
                    let block = weights[(r * columns + b * 32)..<(r * columns + b * 32 + 32)]
                    let range = block.max()! - min(0, block.min()!)
                    for c in (b * 32)..<(b * 32 + 32) {
                        #expect(abs(m.value(r, c) - weights[r * columns + c]) <= range / 15 * 1.2, "row \(r) column \(c)")
                    }
                }
            }
        }
    }
}

@Suite("MXFP4")
struct MXFP4Tests {
    /// The gguf package's (ggml's) quantiser on the test rows: the same bytes.
    @Test func quantizationIsGGUFs() {
        for c in quantVectors("mxfp4") { #expect(quantized(.mxfp4, c.values) == c.bytes) }
    }

    /// Every code under every scale byte (2^-128 through 2^127 and its overflow to infinity):
    /// GGUF's blocks widen to the gguf package's values (which transformers' own dequantisation of
    /// the same blocks in Hugging Face's layout equals, checked when the vectors were made), and
    /// Hugging Face's `_blocks` / `_scales` layout packs into the same GGUF blocks.
    @Test func everyCodeAndScaleIsTheReference() throws {
        let json = try JSONValue.parse(try readFileBytes(repositoryRoot + "/fixtures/quant/vectors.json"))["mxfp4_every_code"]!
        func bytes(_ key: String) -> [UInt8] {
            let hex = Array(json[key]!.stringValue!)
            return stride(from: 0, to: hex.count, by: 2).map { UInt8(String(hex[$0...$0 + 1]), radix: 16)! }
        }
        let gguf = bytes("gguf"), pairs = bytes("hf_blocks")
        let expected = json["value_bits"]!.arrayValue!.map { Float(bitPattern: UInt32($0.intValue!)) }
        #expect(gguf.count == 256 * MXFP4.blockBytes && expected.count == 256 * 32)
        gguf.withUnsafeBytes { g in
            for e in 0..<256 {
                for j in 0..<32 {
                    let value = MXFP4.value(g.baseAddress! + e * MXFP4.blockBytes, j)
                    // As numbers: -0 and +0 are one value (transformers' code 8 is -0).
                    #expect(value == expected[e * 32 + j], "scale \(e) element \(j): \(value) vs \(expected[e * 32 + j])")
                }
            }
        }
        var packed = [UInt8](repeating: 0, count: gguf.count)
        pairs.withUnsafeBytes { p in
            packed.withUnsafeMutableBytes { out in
                for e in 0..<256 {
                    MXFP4.pack(pairs: p.baseAddress! + e * 16, scale: UInt8(e), into: out.baseAddress! + e * MXFP4.blockBytes)
                }
            }
        }
        #expect(packed == gguf)
    }

    @Test(arguments: [(7, 32, 1), (19, 96, 3), (5, 224, 6)])
    func floatPathMatchesReference(rows: Int, columns: Int, tokens: Int) {
        _ = checkFloatPath(.mxfp4, rows: rows, columns: columns, tokens: tokens, seed: UInt64(rows + columns))
    }
}
