import CUDABackend
import EmulatedBackend
import Engine
import Kernels
import Models
import Runtime
import SwitchyardSupport
import SwitchyardTestSupport
import Testing

/// A device under test, against the CPU: how to make it, and how close it must come. A device
/// that runs the CPU's kernels must give the CPU's bits; one with kernels of its own (CUDA) must
/// come within an NMSE bound per operation, as ggml's test-backend-ops holds every backend to
/// the CPU.
struct DeviceUnderTest: CustomTestStringConvertible, Sendable {
    let name: String
    /// nil: bit for bit; otherwise the largest NMSE allowed.
    let tolerance: Double?
    let make: @Sendable (_ precision: ActivationPrecision) -> (any Accelerator)

    var testDescription: String { name }

    /// Every device present on this machine. CUDA joins once its backend conforms and a GPU is
    /// there; until then it is reported, not tested.
    static let present: [DeviceUnderTest] = {
        let devices = [DeviceUnderTest(name: "emulated", tolerance: nil) { precision in
            try! EmulatedAccelerator(memory: 256 << 20, threads: 2, precision: precision)
        }]
        print("NOTICE: not in the conformance suite: \(CUDABackend.unavailableReason())")
        return devices
    }()

    func check(_ device: [Float], _ cpu: [Float], _ what: String) {
        if let tolerance {
            let error = nmse(device, cpu)
            #expect(error <= tolerance, "\(name) \(what): NMSE \(error)")
        } else {
            #expect(firstDifference(device, cpu) == nil, "\(name) \(what): not the CPU's bits")
        }
    }
}

/// A matrix of `element` with deterministic values, in host memory the returned buffer owns.
func testMatrix(_ element: WeightElement, rows: Int, columns: Int, seed: Int) -> (WeightMatrix, UnsafeMutableRawPointer) {
    var values = [Float](repeating: 0, count: rows * columns)
    for i in values.indices { values[i] = Float(((i + seed) * 7919 + seed * 31) % 2001 - 1000) / 4000 }
    let bytes = rows * element.rowBytes(columns)
    let data = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
    values.withUnsafeBufferPointer { v in
        for r in 0..<rows {
            let row = v.baseAddress! + r * columns, out = data + r * element.rowBytes(columns)
            switch element {
            case .f32: out.copyMemory(from: row, byteCount: columns * 4)
            case .f16: for c in 0..<columns { out.storeBytes(of: Float16(row[c]), toByteOffset: 2 * c, as: Float16.self) }
            case .bf16: for c in 0..<columns { out.storeBytes(of: UInt16(row[c].bitPattern >> 16), toByteOffset: 2 * c, as: UInt16.self) }
            case .q8_0: Q8_0.quantize(row, count: columns, into: out)
            case .q4_0: Q4_0.quantize(row, count: columns, into: out)
            case .q4_k: Q4_K.quantize(row, count: columns, into: out)
            case .mxfp4: MXFP4.quantize(row, count: columns, into: out)
            case .q8_0x4, .q4_0x4: preconditionFailure("grouped matrices are made by regrouping")
            default: preconditionFailure("no quantiser for \(element) in these tests")
            }
        }
    }
    return (WeightMatrix(element: element, rows: rows, columns: columns, data: data), data)
}

func activations(tokens: Int, columns: Int, seed: Int) -> [Float] {
    (0..<(tokens * columns)).map { Float((($0 + seed) * 104_729) % 1999 - 999) / 1000 }
}

@Suite("Device conformance: every operation and every fixture model against the CPU")
struct BackendConformanceTests {
    static let elements: [(WeightElement, ActivationPrecision)] = [
        (.f32, .f32), (.f16, .f32), (.bf16, .f32), (.q8_0, .f32), (.q4_0, .f32), (.q4_k, .f32), (.q8_0, .int8), (.q4_0, .int8), (.q4_k, .int8),
        (.mxfp4, .f32), (.mxfp4, .int8),
    ]
    /// Awkward sizes: one row, rows that are not whole tiles, one token, token counts past a tile.
    static let shapes: [(rows: Int, columns: Int, tokens: Int)] = [(1, 256, 1), (5, 256, 3), (37, 512, 7), (64, 256, 17)]

    @Test("products", arguments: DeviceUnderTest.present)
    func products(device: DeviceUnderTest) {
        for (element, precision) in Self.elements {
            for shape in Self.shapes {
                let (host, storage) = testMatrix(element, rows: shape.rows, columns: shape.columns, seed: shape.rows)
                defer { storage.deallocate() }
                let x = activations(tokens: shape.tokens, columns: shape.columns, seed: shape.tokens)
                let cpu = CPUDevice(pool: ThreadPool(threads: 2), precision: precision)
                var expected = [Float](repeating: 0, count: shape.tokens * shape.rows)
                expected.withUnsafeMutableBufferPointer { o in
                    cpu.linear(host, input: x, inputStride: shape.columns, output: o.baseAddress!, outputStride: shape.rows, tokens: shape.tokens)
                }
                let accelerator = device.make(precision)
                guard let resident = accelerator.moveIn(host) else { Issue.record("\(device.name): no room"); continue }
                var got = [Float](repeating: 0, count: shape.tokens * shape.rows)
                got.withUnsafeMutableBufferPointer { o in
                    accelerator.linear(resident, input: x, inputStride: shape.columns, output: o.baseAddress!, outputStride: shape.rows,
                                       tokens: shape.tokens)
                }
                device.check(got, expected, "\(element) \(precision) \(shape)")
                // The model's device sends the product to the accelerator by the weight's location.
                let routed = AcceleratedDevice(cpu: cpu, accelerator: accelerator)
                var viaDevice = [Float](repeating: 0, count: shape.tokens * shape.rows)
                viaDevice.withUnsafeMutableBufferPointer { o in
                    routed.linear(resident, input: x, inputStride: shape.columns, output: o.baseAddress!, outputStride: shape.rows, tokens: shape.tokens)
                }
                #expect(firstDifference(viaDevice, got) == nil, "\(device.name) \(element): through AcceleratedDevice")
            }
        }
    }

    @Test("experts", arguments: DeviceUnderTest.present)
    func experts(device: DeviceUnderTest) {
        for (element, precision) in [(WeightElement.bf16, ActivationPrecision.f32), (.q8_0, .int8), (.q4_k, .f32)] {
            for tokens in [1, 4, 9] {
                let hidden = 256, inner = 512
                let (gate, g) = testMatrix(element, rows: inner, columns: hidden, seed: 1)
                let (up, u) = testMatrix(element, rows: inner, columns: hidden, seed: 2)
                let (down, d) = testMatrix(element, rows: hidden, columns: inner, seed: 3)
                defer { g.deallocate(); u.deallocate(); d.deallocate() }
                let expert = FeedForwardWeights(gate: gate, up: up, down: down)
                let x = activations(tokens: tokens, columns: hidden, seed: tokens)
                let cpu = CPUDevice(pool: ThreadPool(threads: 2), precision: precision)
                var expected = [Float](repeating: 0, count: tokens * hidden)
                var scratch = [Float](repeating: 0, count: 2 * tokens * inner)
                scratch.withUnsafeMutableBufferPointer { s in
                    expected.withUnsafeMutableBufferPointer { o in
                        cpu.feedForward(expert, input: x, output: o.baseAddress!, tokens: tokens, gate: s.baseAddress!, up: s.baseAddress! + tokens * inner)
                    }
                }
                let accelerator = device.make(precision)
                let resident = FeedForwardWeights(expert.matrices.map { accelerator.moveIn($0)! })
                var got = [Float](repeating: 0, count: tokens * hidden)
                let failure = got.withUnsafeMutableBufferPointer { o in
                    x.withUnsafeBufferPointer { accelerator.runExpert(resident, input: $0.baseAddress!, output: o.baseAddress!, tokens: tokens, after: []).wait() }
                }
                #expect(failure == nil)
                device.check(got, expected, "expert \(element) \(precision) \(tokens) tokens")
            }
        }
    }

    @Test("whole fixture models, every weight on the device", arguments: DeviceUnderTest.present)
    func models(device: DeviceUnderTest) throws {
        for arch in allArchitectures {
            let prompt = [1, 15, 302, 77, 9, 1000, 4, 250]
            var cpuOptions = EngineOptions(model: fixturePath(arch))
            cpuOptions.precision = .f32  // the references are f32's
            cpuOptions.threads = 2
            cpuOptions.tuneKernels = false
            let expected = try Engine.load(cpuOptions).model.makeSession(contextLength: 16).forward(prompt, allLogits: true)
            var options = cpuOptions
            options.accelerator = .emulated
            options.acceleratorMemory = 64 << 20
            options.costDirectory = costDirectory
            options.kvPositions = 16
            let engine = try Engine.load(options)
            let tiers = try #require(engine.tiers)
            #expect(tiers.placement.alwaysOnAccelerator.contains(true) && tiers.placement.experts(on: .ram).isEmpty, "\(arch): all on the device")
            let got = try engine.model.makeSession(contextLength: 16).forward(prompt, allLogits: true)
            device.check(got, expected, "\(arch) logits")
        }
    }
}

/// Attention executors against a plain reference (double precision, one query at a time): grouped
/// heads, windows, several sequences at different positions in one call.
@Suite("Attention executor conformance")
struct AttentionConformanceTests {
    static func reference(q: [Float], keys: [[Float]], values: [[Float]], shape: AttentionShape, position: Int) -> [Float] {
        let hd = shape.headDim, group = shape.heads / shape.keyValueHeads
        var out = [Float](repeating: 0, count: shape.heads * hd)
        let first = shape.window.map { max(0, position - $0 + 1) } ?? 0
        for h in 0..<shape.heads {
            let kv = h / group
            var scores: [Double] = []
            for j in first...position {
                var s = 0.0
                for i in 0..<hd { s += Double(q[h * hd + i]) * Double(keys[j][kv * hd + i]) }
                scores.append(s * Double(shape.scale))
            }
            let m = scores.max()!
            let e = scores.map { exp($0 - m) }, total = e.reduce(0, +)
            for i in 0..<hd {
                var v = 0.0
                for (n, j) in (first...position).enumerated() { v += e[n] / total * Double(values[j][kv * hd + i]) }
                out[h * hd + i] = Float(v)
            }
        }
        return out
    }

    @Test(arguments: [nil, 3] as [Int?])
    func localAttentionMatchesTheReference(window: Int?) throws {
        let shape = AttentionShape(heads: 4, keyValueHeads: 2, headDim: 8, scale: 1 / Float(8).squareRoot(), window: window)
        let kvW = 16, qW = 32
        let cache = LocalKVCache(layout: KVLayout(layers: 2, keyWidth: kvW, valueWidth: kvW))
        let attention = LocalAttention(cache: cache, pool: ThreadPool(threads: 2))
        let a = try cache.reserve(capacity: 8), b = try cache.reserve(capacity: 8)
        var history: [SequenceID: (keys: [[Float]], values: [[Float]])] = [a: ([], []), b: ([], [])]
        let scratch = FloatBuffer()
        // Step 1: a prompt of 5 for a; step 2: 1 more for a and a prompt of 3 for b, together.
        for step in [[(a, 0), (a, 1), (a, 2), (a, 3), (a, 4)], [(a, 5), (b, 0), (b, 1), (b, 2)]] {
            let T = step.count
            let q = activations(tokens: T, columns: qW, seed: 11 * T)
            let k = activations(tokens: T, columns: kvW, seed: 13 * T)
            let v = activations(tokens: T, columns: kvW, seed: 17 * T)
            let slots = step.map { TokenSlot(sequence: $0.0, position: $0.1) }
            var out = [Float](repeating: 0, count: T * qW)
            try out.withUnsafeMutableBufferPointer { o in
                try attention.attend(layer: 1, shape: shape, queries: q, keys: k, values: v, slots: slots, output: o.baseAddress!, scratch: scratch)
            }
            for (t, slot) in slots.enumerated() {
                history[slot.sequence]!.keys.append(Array(k[(t * kvW)..<((t + 1) * kvW)]))
                history[slot.sequence]!.values.append(Array(v[(t * kvW)..<((t + 1) * kvW)]))
            }
            for (t, slot) in slots.enumerated() {
                let expected = Self.reference(q: Array(q[(t * qW)..<((t + 1) * qW)]), keys: history[slot.sequence]!.keys,
                                              values: history[slot.sequence]!.values, shape: shape, position: slot.position)
                #expect(relativeError(out[(t * qW)..<((t + 1) * qW)], expected[...]) < 1e-6, "token \(t) of \(slot.sequence)")
            }
            for (id, n) in Dictionary(grouping: slots, by: \.sequence).mapValues(\.count) { cache.advance(id, by: n) }
        }
        #expect(cache.length(of: a) == 6 && cache.length(of: b) == 3)
    }
}
