import Testing
import SwitchyardJSON
@testable import Kernels
import SwitchyardSupport
import SwitchyardTestSupport

func randomFloats(_ n: Int, seed: UInt64) -> [Float] {
    var state = seed
    return (0..<n).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: state >> 11) % 2000) / 1000 - 1
    }
}

func bf16Bits(_ x: Float) -> UInt16 { UInt16(x.bitPattern >> 16) }

/// libm's exp in Double: the exact value to within far less than a float ulp.
func exactExp(_ x: Double) -> Double { exp(x) }

@Suite("kernels against plain references")
struct KernelTests {
    // Sizes that are not multiples of the vector width (16) or the unroll (32), and token counts
    // around the 4-token register block.
    @Test(arguments: [(1, 1, 1), (7, 33, 1), (19, 47, 3), (64, 100, 5), (130, 257, 9)])
    func matmulMatchesReference(rows: Int, columns: Int, tokens: Int) {
        let pool = ThreadPool(threads: 3)
        let weights = randomFloats(rows * columns, seed: UInt64(rows * 31 + columns))
        let input = randomFloats(tokens * columns, seed: 99)
        for element in [WeightElement.f32, .f16, .bf16] {
            let bytes: [UInt8]
            switch element {
            case .f32: bytes = weights.withUnsafeBytes { Array($0) }
            case .f16: bytes = weights.map { Float16($0) }.withUnsafeBytes { Array($0) }
            case .bf16: bytes = weights.map(bf16Bits).withUnsafeBytes { Array($0) }
            default: continue  // block formats have their own suites
            }
            expectProductMatchesReference(element, rows: rows, columns: columns, bytes: bytes, input: input, tokens: tokens, pool: pool)
        }
    }

    /// A sink is one more logit in each head's softmax, with no value: one position of score s and a
    /// sink z give the value times e^s / (e^s + e^z); a very negative sink changes nothing.
    @Test func sinksTakeTheirShare() {
        let q: [Float] = [1, 0, 0, 2, 0, 0], k: [Float] = [0.5, 0, 0], v: [Float] = [3, -1, 2]
        var tile = [Float](repeating: 0, count: 2 * 16), out = [Float](repeating: 0, count: 6)
        let sinks: [Float] = [0.25, -1000]
        k.withUnsafeBufferPointer { kp in
            v.withUnsafeBufferPointer { vp in
                attendGroup(queries: q, group: 2, headDim: 3, valueDim: 3, scale: 1, keys: F32Rows(kp.baseAddress!, 3),
                            values: F32Rows(vp.baseAddress!, 3), first: 0, last: 0, tile: &tile, output: &out, sinks: sinks)
            }
        }
        let share = exp(Float(0.5)) / (exp(Float(0.5)) + exp(Float(0.25)))
        for i in 0..<3 {
            #expect(abs(out[i] - share * v[i]) <= 1e-6)
            #expect(abs(out[3 + i] - v[i]) <= 1e-6)
        }
    }

    @Test func bf16WideningIsExact() {
        let values: [Float] = [1, -2.5, 3.140625, 0, -0.0, 65280]
        let bits = values.map(bf16Bits)
        bits.withUnsafeBytes { raw in
            let w = WeightMatrix(element: .bf16, rows: 1, columns: values.count, data: raw.baseAddress!)
            for (i, v) in values.enumerated() { #expect(w.value(0, i) == v) }
        }
    }

    @Test func rmsNormHandChecked() {
        // x = [3, 4]: mean square 12.5, scale 1/sqrt(12.5 + 0.5) = 1/sqrt(13).
        let x: [Float] = [3, 4], w: [Float] = [1, 2]
        var out = [Float](repeating: 0, count: 2)
        rmsNorm(x, weight: w, epsilon: 0.5, output: &out, count: 2)
        #expect(abs(out[0] - 3 / Float(13).squareRoot()) < 1e-6)
        #expect(abs(out[1] - 8 / Float(13).squareRoot()) < 1e-6)
    }

    @Test func softmaxHandChecked() {
        var x: [Float] = [0, 0, 1000, 1000]
        softmax(&x, 4)
        #expect(x == [0, 0, 0.5, 0.5], "large logits do not overflow")
    }

    /// Within 1 ulp of the exact value over the whole unclamped range (a dense sweep plus the
    /// ends and zero), clamped beyond it, NaN kept.
    @Test func exp16IsWithinOneUlp() {
        var inputs: [Float] = [-87.3, 88.3, 0, -0, 1, -1, 0.5 * 0.693_147_2, -0.5 * 0.693_147_2]
        var x: Float = -87.3
        while x < 88.3 { inputs.append(x); x += 0.000_731 * max(1, abs(x)) }
        while inputs.count % 16 != 0 { inputs.append(0) }
        var worst = 0.0
        for start in stride(from: 0, to: inputs.count, by: 16) {
            var v = Vector16()
            for i in 0..<16 { v[i] = inputs[start + i] }
            let e = exp16(v)
            for i in 0..<16 {
                let exact = exactExp(Double(v[i]))
                let ulp = Double(Float(exact).ulp)
                worst = max(worst, abs(Double(e[i]) - exact) / ulp)
            }
        }
        #expect(worst <= 1, "worst error \(worst) ulp")
        var edges = Vector16(repeating: 0)
        edges[0] = 200; edges[1] = -200; edges[2] = .nan; edges[3] = .infinity; edges[4] = -.infinity
        let e = exp16(edges)
        #expect(e[0] == exp16(Vector16(repeating: 88.3))[0] && e[0].isFinite && e[0] > 2e38)
        #expect(e[1] == exp16(Vector16(repeating: -87.3))[0] && e[1] > 0 && e[1] < 1.3e-38)
        #expect(e[2].isNaN && e[3] == e[0] && e[4] == e[1])
    }

    /// The vector body and the scalar tail (37 = 2 x 16 + 5) against SiLU(g) x u in Double.
    @Test func siluMultiplyMatchesItsDefinition() {
        let n = 37
        var gate = randomFloats(n, seed: 3).map { $0 * 12 }, up = randomFloats(n, seed: 4)
        gate[0] = 95; gate[1] = -95; gate[2] = 0
        let expected = (0..<n).map { i in Double(gate[i]) / (1 + exactExp(-Double(gate[i]))) * Double(up[i]) }
        siluMultiply(&gate, up, n)
        for i in 0..<n {
            #expect(abs(Double(gate[i]) - expected[i]) <= 4e-7 * abs(expected[i]) + 1e-30, "element \(i): \(gate[i]) vs \(expected[i])")
        }
    }

    @Test func rotaryRotatesPairsHalfApart() {
        // head_dim 4: pairs (0, 2) and (1, 3); rotate the first pair by 90°, leave the second.
        var x: [Float] = [1, 5, 0, 7]
        let cos: [Float] = [0, 1], sin: [Float] = [1, 0]
        applyRotary(&x, heads: 1, headDim: 4, rotaryDim: 4, cos: cos, sin: sin)
        #expect(x == [0, 5, 1, 7])
    }

    @Test func partialRotaryLeavesTailAlone() {
        var x: [Float] = [1, 0, 9, 9]
        applyRotary(&x, heads: 1, headDim: 4, rotaryDim: 2, cos: [0], sin: [1])
        #expect(x == [0, 1, 9, 9])
    }

    /// More threads than cores: workers must not spin for long, or each would hold a core that a
    /// thread with work needs (Q8_0 decode with -t 4 on 2 cores fell from 48 to 4 tok/s).
    @Test func oversubscribedPoolSpinsBriefly() {
        let pool = ThreadPool(threads: ThreadPool.availableCores + 1)
        #expect(pool.spinNanoseconds == 20_000)
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: 64)
        hits.initialize(repeating: 0, count: 64)
        for _ in 0..<50 { pool.parallelFor(64) { hits[$0] += 1 } }
        #expect((0..<64).allSatisfy { hits[$0] == 50 })
        hits.deallocate()
    }

    @Test func threadPoolRunsEveryItemOnce() {
        let pool = ThreadPool(threads: 4)
        for count in [1, 2, 3, 17, 1000] {
            let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
            hits.initialize(repeating: 0, count: count)
            pool.parallelFor(count) { hits[$0] += 1 }
            #expect((0..<count).allSatisfy { hits[$0] == 1 })
            hits.deallocate()
        }
    }
}

@Suite("attention")
struct AttentionTests {
    // 4 query heads share 2 KV heads (head_dim 2), 2 cached positions. Head h reads KV head h / 2.
    // keys:   position 0: kv0 = [1, 0], kv1 = [0, 0]; position 1: kv0 = [0, 1], kv1 = [0, 0]
    // values: position 0: kv0 = [10, 0], kv1 = [1, 1]; position 1: kv0 = [0, 20], kv1 = [3, 3]
    let keys: [Float] = [1, 0, 0, 0, 0, 1, 0, 0]
    let values: [Float] = [10, 0, 1, 1, 0, 20, 3, 3]

    func run(head: Int, query: [Float], first: Int = 0, last: Int = 1) -> [Float] {
        let kv = head / 2
        var tile = [Float](repeating: 0, count: 2 * 16)
        var out = [Float](repeating: 0, count: 4)
        attendGroup(queries: Array(query[(kv * 4)..<(kv * 4 + 4)]), group: 2, headDim: 2, scale: 1,
                    keys: Array(keys[(kv * 2)...]), values: Array(values[(kv * 2)...]), rowStride: 4,
                    first: first, last: last, tile: &tile, output: &out)
        return Array(out[((head % 2) * 2)..<((head % 2) * 2 + 2)])
    }

    /// Long contexts cross tiles of 16 and raise the running maximum several times; the
    /// one-pass result equals softmax then weighted sum, computed in double precision.
    @Test(arguments: [1, 15, 16, 17, 40, 100])
    func onePassEqualsTwoPasses(positions: Int) {
        let group = 3, hd = 20, stride = 2 * hd
        var random = UInt64(positions)
        func next() -> Float {
            random = random &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int(random >> 40) % 2001 - 1000) / 250
        }
        let q = (0..<(group * hd)).map { _ in next() }
        // Keys grow with the position so that the maximum moves in later tiles.
        let k = (0..<(positions * stride)).map { i in next() * Float(1 + i / stride) / 8 }
        let v = (0..<(positions * stride)).map { _ in next() }
        var tile = [Float](repeating: 0, count: group * 16), out = [Float](repeating: 0, count: group * hd)
        attendGroup(queries: q, group: group, headDim: hd, scale: 0.3, keys: Array(k[hd...]), values: Array(v[hd...]),
                    rowStride: stride, first: 0, last: positions - 1, tile: &tile, output: &out)
        for g in 0..<group {
            let scores = (0..<positions).map { j in
                0.3 * (0..<hd).reduce(0.0) { $0 + Double(q[g * hd + $1]) * Double(k[j * stride + hd + $1]) }
            }
            let m = scores.max()!, e = scores.map { exp($0 - m) }, total = e.reduce(0, +)
            for i in 0..<hd {
                let expected = (0..<positions).reduce(0.0) { $0 + e[$1] / total * Double(v[$1 * stride + hd + i]) }
                #expect(abs(Double(out[g * hd + i]) - expected) <= 1e-5 * max(1, abs(expected)), "head \(g), dimension \(i)")
            }
        }
    }

    /// Compact rows (bf16, int8 in blocks of 16) through the same kernel equal float32 rows holding
    /// the values they decode to; bf16 rounding is to nearest even, int8 within half a step.
    @Test(arguments: [1, 17, 40])
    func compactRowsEqualTheirDecodedValues(positions: Int) {
        let group = 2, hd = 32, stride = 2 * hd
        var random = UInt64(positions + 7)
        func next() -> Float {
            random = random &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int(random >> 40) % 2001 - 1000) / 300
        }
        let q = (0..<(group * hd)).map { _ in next() }
        let k = (0..<(positions * stride)).map { _ in next() }, v = (0..<(positions * stride)).map { _ in next() }
        let kb = k.map(roundToBF16), vb = v.map(roundToBF16)
        for (x, b) in zip(k, kb) {
            let back = Float(bitPattern: UInt32(b) << 16)
            #expect(abs(back - x) <= abs(x) * 0x1p-8, "bf16 of \(x)")
        }
        var kc = [Int8](repeating: 0, count: k.count), vc = kc
        var ks = [Float](repeating: 0, count: k.count / 16), vs = ks
        for b in 0..<(k.count / 16) {
            k.withUnsafeBufferPointer { x in kc.withUnsafeMutableBufferPointer { c in ks[b] = quantizeBlockInt8(x.baseAddress! + b * 16, 16, codes: c.baseAddress! + b * 16) } }
            v.withUnsafeBufferPointer { x in vc.withUnsafeMutableBufferPointer { c in vs[b] = quantizeBlockInt8(x.baseAddress! + b * 16, 16, codes: c.baseAddress! + b * 16) } }
            for i in 0..<16 { #expect(abs(Float(kc[b * 16 + i]) * ks[b] - k[b * 16 + i]) <= ks[b] / 2 * 1.0001) }
        }
        func reference(_ keys: [Float], _ values: [Float]) -> [Float] {
            var tile = [Float](repeating: 0, count: group * 16), out = [Float](repeating: 0, count: group * hd)
            attendGroup(queries: q, group: group, headDim: hd, scale: 0.2, keys: Array(keys[hd...]), values: Array(values[hd...]),
                        rowStride: stride, first: 0, last: positions - 1, tile: &tile, output: &out)
            return out
        }
        var tile = [Float](repeating: 0, count: group * 16), out = [Float](repeating: 0, count: group * hd)
        kb.withUnsafeBufferPointer { kp in vb.withUnsafeBufferPointer { vp in
            attendGroup(queries: q, group: group, headDim: hd, valueDim: hd, scale: 0.2, keys: BF16Rows(kp.baseAddress! + hd, stride), values: BF16Rows(vp.baseAddress! + hd, stride),
                        first: 0, last: positions - 1, tile: &tile, output: &out)
        } }
        let bf16Expected = reference(kb.map { Float(bitPattern: UInt32($0) << 16) }, vb.map { Float(bitPattern: UInt32($0) << 16) })
        for (a, b) in zip(out, bf16Expected) { #expect(abs(a - b) <= 1e-5 * max(1, abs(b))) }
        kc.withUnsafeBufferPointer { kp in vc.withUnsafeBufferPointer { vp in ks.withUnsafeBufferPointer { kss in vs.withUnsafeBufferPointer { vss in
            attendGroup(queries: q, group: group, headDim: hd, valueDim: hd, scale: 0.2,
                        keys: Int8Rows(kp.baseAddress! + hd, stride, scales: kss.baseAddress! + hd / 16, scaleStride: stride / 16),
                        values: Int8Rows(vp.baseAddress! + hd, stride, scales: vss.baseAddress! + hd / 16, scaleStride: stride / 16),
                        first: 0, last: positions - 1, tile: &tile, output: &out)
        } } } }
        let int8Expected = reference(kc.indices.map { Float(kc[$0]) * ks[$0 / 16] }, vc.indices.map { Float(vc[$0]) * vs[$0 / 16] })
        for (a, b) in zip(out, int8Expected) { #expect(abs(a - b) <= 1e-5 * max(1, abs(b))) }
    }

    @Test func groupedHeadsReadTheirKVHead() {
        // Heads 0 and 1 use kv0: query [ln 3, 0] gives scores [ln 3, 0] → weights [3/4, 1/4].
        let q: [Float] = [Float(log(3.0)), 0, Float(log(3.0)), 0, 5, 5, 5, 5]
        for head in [0, 1] {
            let o = run(head: head, query: q)
            #expect(abs(o[0] - 7.5) < 1e-5 && abs(o[1] - 5) < 1e-5)
        }
        // Heads 2 and 3 use kv1, whose keys are zero: uniform weights, mean of kv1 values.
        for head in [2, 3] {
            let o = run(head: head, query: q)
            #expect(abs(o[0] - 2) < 1e-6 && abs(o[1] - 2) < 1e-6)
        }
    }

    @Test func causalAndWindowedRanges() {
        let q: [Float] = [0, 0, 0, 0, 0, 0, 0, 0]
        #expect(run(head: 0, query: q, first: 0, last: 0) == [10, 0], "position 0 sees only itself")
        #expect(run(head: 0, query: q, first: 1, last: 1) == [0, 20], "a window of 1 sees only the last position")
    }
}
