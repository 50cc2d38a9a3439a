import Kernels
import Runtime
import WeightFiles

/// Binds tensors by logical name: asks the source for the format's stored name and checks each
/// tensor's element and shape against the config.
struct WeightBinder {
    let source: TensorSource
    let config: DecoderConfig
    let naming: TensorNaming
    /// Buffers of weights rearranged while binding.
    let storage = Storage()

    final class Storage {
        var buffers: [HostBuffer] = []
    }

    func tensor(_ name: TensorName, _ shape: [Int]) throws(ModelError) -> StoredTensor {
        try source.tensor(naming.stored(name), shape: shape)
    }

    func element(_ t: StoredTensor) throws(ModelError) -> WeightElement {
        guard let element = t.element else {
            throw ModelError("\(t.file): tensor '\(t.name)' has dtype \(t.typeName); supported weight dtypes are BF16, F16 and F32 (and in GGUF files Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K-Q6_K, IQ4_NL, IQ4_XS, MXFP4)")
        }
        return element
    }

    func checkShape(_ t: StoredTensor, _ expected: [Int], _ meaning: String) throws(ModelError) {
        let element = try element(t)
        guard t.shape == expected, let last = expected.last, last % element.blockValues == 0,
              t.byteCount == expected.dropLast().reduce(1, *) * element.rowBytes(last) else {
            throw ModelError("\(t.file): tensor '\(t.name)' has shape \(t.shape), but config.json implies \(expected) (\(meaning))")
        }
    }

    func matrix(_ name: TensorName, _ shape: [Int], _ meaning: String) throws(ModelError) -> WeightMatrix {
        let t = try tensor(name, shape)
        try checkShape(t, shape, meaning)
        return WeightMatrix(element: try element(t), rows: shape[0], columns: shape[1], data: t.data)
    }

    /// A vector of `length` values, widened to f32; stored with `shape` when that is not [length].
    func vector(_ name: TensorName, _ length: Int, shape: [Int]? = nil) throws(ModelError) -> [Float] {
        let t = try tensor(name, shape ?? [length])
        try checkShape(t, shape ?? [length], "from config.json")
        let m = WeightMatrix(element: try element(t), rows: 1, columns: length, data: t.data)
        return (0..<length).map { m.value(0, $0) }
    }

    /// GPT-OSS's stacked experts, stored input-major: gate_up_proj [experts, hidden, 2 x inner]
    /// (gate and up outputs interleaved) and down_proj [experts, inner, hidden], rearranged once
    /// into the [out, in] rows every kernel reads.
    func transposedExperts(layer l: Int, _ moe: MoEConfig) throws(ModelError) -> [FeedForwardWeights] {
        let hidden = config.hiddenSize, inner = moe.expertIntermediateSize, count = moe.expertCount
        if source.contains(naming.stored(.stackedExpertsGateUp(layer: l)) + "_blocks") { return try mxfp4Experts(layer: l, moe) }
        let gateUp = try tensor(.stackedExpertsGateUp(layer: l), [count, hidden, 2 * inner])
        try checkShape(gateUp, [count, hidden, 2 * inner], "experts, hidden_size, 2 x intermediate_size")
        let down = try tensor(.stackedExpertsDown(layer: l), [count, inner, hidden])
        try checkShape(down, [count, inner, hidden], "experts, intermediate_size, hidden_size")
        let element = try self.element(gateUp)
        guard [.bf16, .f16, .f32].contains(element), try self.element(down) == element else {
            throw ModelError("\(gateUp.file): stacked experts of \(gateUp.typeName) and \(down.typeName): expected one float dtype")
        }
        let size = element == .f32 ? 4 : 2
        let perExpert = 3 * inner * hidden
        let buffer = HostBuffer(count * perExpert * size)
        storage.buffers.append(buffer)
        let out = buffer.pointer
        // Expert e: gate [inner, hidden], up [inner, hidden], down [hidden, inner], back to back.
        for e in 0..<count {
            let base = out + e * perExpert * size
            let gu = gateUp.data + e * hidden * 2 * inner * size, dp = down.data + e * inner * hidden * size
            for i in 0..<inner {
                for h in 0..<hidden {
                    (base + (i * hidden + h) * size).copyMemory(from: gu + (h * 2 * inner + 2 * i) * size, byteCount: size)
                    (base + ((inner + i) * hidden + h) * size).copyMemory(from: gu + (h * 2 * inner + 2 * i + 1) * size, byteCount: size)
                    (base + (2 * inner * hidden + h * inner + i) * size).copyMemory(from: dp + (i * hidden + h) * size, byteCount: size)
                }
            }
        }
        return (0..<count).map { e in
            let base = UnsafeRawPointer(out + e * perExpert * size)
            return FeedForwardWeights(
                gate: WeightMatrix(element: element, rows: inner, columns: hidden, data: base),
                up: WeightMatrix(element: element, rows: inner, columns: hidden, data: base + inner * hidden * size),
                down: WeightMatrix(element: element, rows: hidden, columns: inner, data: base + 2 * inner * hidden * size))
        }
    }

    /// GPT-OSS's experts as released: MXFP4 in Hugging Face's layout, `gate_up_proj_blocks`
    /// [experts, 2 x inner, hidden / 32, 16] with `_scales` [experts, 2 x inner, hidden / 32]
    /// (rows are outputs, gate and up interleaved) and `down_proj_blocks` [experts, hidden, inner /
    /// 32, 16]; repacked once into GGUF's MXFP4 blocks (scale byte first), gate rows then up rows.
    func mxfp4Experts(layer l: Int, _ moe: MoEConfig) throws(ModelError) -> [FeedForwardWeights] {
        let hidden = config.hiddenSize, inner = moe.expertIntermediateSize, count = moe.expertCount
        guard hidden % 32 == 0, inner % 32 == 0 else {
            throw ModelError("MXFP4 experts need hidden_size (\(hidden)) and intermediate_size (\(inner)) to be multiples of 32")
        }
        func raw(_ name: String, _ shape: [Int]) throws(ModelError) -> StoredTensor {
            let t = try source.tensor(name, shape: shape)
            guard t.typeName.uppercased() == "U8", t.shape == shape, t.byteCount == shape.reduce(1, *) else {
                throw ModelError("\(t.file): tensor '\(name)' is \(t.typeName) \(t.shape); MXFP4 needs U8 \(shape)")
            }
            return t
        }
        let gateUpName = naming.stored(.stackedExpertsGateUp(layer: l)), downName = naming.stored(.stackedExpertsDown(layer: l))
        let gateUpBlocks = try raw(gateUpName + "_blocks", [count, 2 * inner, hidden / 32, 16])
        let gateUpScales = try raw(gateUpName + "_scales", [count, 2 * inner, hidden / 32])
        let downBlocks = try raw(downName + "_blocks", [count, hidden, inner / 32, 16])
        let downScales = try raw(downName + "_scales", [count, hidden, inner / 32])
        let element = WeightElement.mxfp4
        let gateBytes = inner * element.rowBytes(hidden), downBytes = hidden * element.rowBytes(inner)
        let perExpert = 2 * gateBytes + downBytes
        let buffer = HostBuffer(count * perExpert)
        storage.buffers.append(buffer)
        let out = buffer.pointer
        /// Row `row` of one stacked tensor (its `groups` blocks) into GGUF blocks at `target`.
        func pack(_ blocks: StoredTensor, _ scales: StoredTensor, row: Int, groups: Int, into target: UnsafeMutableRawPointer) {
            for g in 0..<groups {
                MXFP4.pack(pairs: blocks.data + (row * groups + g) * 16, scale: scales.data.load(fromByteOffset: row * groups + g, as: UInt8.self),
                           into: target + g * MXFP4.blockBytes)
            }
        }
        for e in 0..<count {
            let base = out + e * perExpert
            for i in 0..<inner {
                pack(gateUpBlocks, gateUpScales, row: e * 2 * inner + 2 * i, groups: hidden / 32, into: base + i * element.rowBytes(hidden))
                pack(gateUpBlocks, gateUpScales, row: e * 2 * inner + 2 * i + 1, groups: hidden / 32,
                     into: base + gateBytes + i * element.rowBytes(hidden))
            }
            for h in 0..<hidden {
                pack(downBlocks, downScales, row: e * hidden + h, groups: inner / 32, into: base + 2 * gateBytes + h * element.rowBytes(inner))
            }
        }
        return (0..<count).map { e in
            let base = UnsafeRawPointer(out + e * perExpert)
            return FeedForwardWeights(
                gate: WeightMatrix(element: element, rows: inner, columns: hidden, data: base),
                up: WeightMatrix(element: element, rows: inner, columns: hidden, data: base + gateBytes),
                down: WeightMatrix(element: element, rows: hidden, columns: inner, data: base + 2 * gateBytes))
        }
    }

    func optionalVector(_ name: TensorName, _ length: Int) throws(ModelError) -> [Float]? {
        source.contains(naming.stored(name)) ? try vector(name, length) : nil
    }

    func feedForward(_ name: (TensorName.Projection) -> TensorName, intermediate: Int) throws(ModelError) -> FeedForwardWeights {
        let hidden = config.hiddenSize
        return FeedForwardWeights(
            gate: try matrix(name(.gate), [intermediate, hidden], "intermediate size, hidden_size"),
            up: try matrix(name(.up), [intermediate, hidden], "intermediate size, hidden_size"),
            down: try matrix(name(.down), [hidden, intermediate], "hidden_size, intermediate size"))
    }

    func moe(layer l: Int, _ moe: MoEConfig) throws(ModelError) -> MoEWeights {
        let hidden = config.hiddenSize
        let inner = moe.expertIntermediateSize
        var experts: [FeedForwardWeights]
        if (naming as? HuggingFaceNaming)?.stackedExpertsTransposed == true {
            experts = try transposedExperts(layer: l, moe)
        } else if source.contains(naming.stored(.stackedExpertsGateUp(layer: l))) {
            // transformers 5's in-memory layout, stacked: gate_up_proj [experts, 2 x inner, hidden]
            // (gate rows first), down_proj [experts, hidden, inner].
            let gateUp = try tensor(.stackedExpertsGateUp(layer: l), [moe.expertCount, 2 * inner, hidden])
            try checkShape(gateUp, [moe.expertCount, 2 * inner, hidden], "experts, 2 x expert intermediate size, hidden_size")
            let down = try tensor(.stackedExpertsDown(layer: l), [moe.expertCount, hidden, inner])
            try checkShape(down, [moe.expertCount, hidden, inner], "experts, hidden_size, expert intermediate size")
            let all = WeightMatrix(element: try element(gateUp), rows: moe.expertCount * 2 * inner, columns: hidden, data: gateUp.data)
            let allDown = WeightMatrix(element: try element(down), rows: moe.expertCount * hidden, columns: inner, data: down.data)
            experts = (0..<moe.expertCount).map { e in
                FeedForwardWeights(
                    gate: all.rows((2 * e) * inner..<(2 * e + 1) * inner),
                    up: all.rows((2 * e + 1) * inner..<(2 * e + 2) * inner),
                    down: allDown.rows(e * hidden..<(e + 1) * hidden))
            }
        } else {
            var list: [FeedForwardWeights] = []
            for e in 0..<moe.expertCount {
                list.append(try feedForward({ .expert(layer: l, expert: e, $0) }, intermediate: inner))
            }
            experts = list
        }
        if moe.expertBiases, source.contains(naming.stored(.expertBiases(layer: l, .gate))) {
            // Apart: gate and up [experts, inner], down [experts, hidden].
            let gate = try vector(.expertBiases(layer: l, .gate), moe.expertCount * inner, shape: [moe.expertCount, inner])
            let up = try vector(.expertBiases(layer: l, .up), moe.expertCount * inner, shape: [moe.expertCount, inner])
            let down = try vector(.expertBiases(layer: l, .down), moe.expertCount * hidden, shape: [moe.expertCount, hidden])
            for e in experts.indices {
                experts[e].biases = FeedForwardBiases(gate: Array(gate[(e * inner)..<((e + 1) * inner)]), up: Array(up[(e * inner)..<((e + 1) * inner)]),
                                                      down: Array(down[(e * hidden)..<((e + 1) * hidden)]))
            }
        } else if moe.expertBiases {
            // Stacked: [experts, 2 x inner] with gate and up interleaved, and [experts, hidden].
            let gateUp = try vector(.stackedExpertsGateUpBias(layer: l), moe.expertCount * 2 * inner, shape: [moe.expertCount, 2 * inner])
            let down = try vector(.stackedExpertsDownBias(layer: l), moe.expertCount * hidden, shape: [moe.expertCount, hidden])
            for e in experts.indices {
                let pairs = gateUp[(e * 2 * inner)..<((e + 1) * 2 * inner)]
                experts[e].biases = FeedForwardBiases(
                    gate: stride(from: pairs.startIndex, to: pairs.endIndex, by: 2).map { pairs[$0] },
                    up: stride(from: pairs.startIndex + 1, to: pairs.endIndex, by: 2).map { pairs[$0] },
                    down: Array(down[(e * hidden)..<((e + 1) * hidden)]))
            }
        }
        for e in experts.indices { experts[e].activation = moe.activation }
        var weights = MoEWeights(
            router: try matrix(.router(layer: l), [moe.expertCount, hidden], "num_experts, hidden_size"),
            experts: experts)
        if moe.router.selectionBias { weights.routerBias = try vector(.routerBias(layer: l), moe.expertCount) }
        if moe.routerLogitBias { weights.routerLogitBias = try vector(.routerLogitBias(layer: l), moe.expertCount) }
        if let shared = moe.sharedExpertIntermediateSize {
            weights.sharedExpert = try feedForward({ .sharedExpert(layer: l, $0) }, intermediate: shared)
            if moe.sharedExpertGated {
                weights.sharedExpertGate = try matrix(.sharedExpertGate(layer: l), [1, hidden], "1, hidden_size")
            }
        }
        return weights
    }
}
