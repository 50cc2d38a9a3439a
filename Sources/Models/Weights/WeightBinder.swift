import Kernels
import Runtime

/// Binds tensors by logical name: asks the source for the format's stored name and checks each
/// tensor's element and shape against the config.
struct WeightBinder {
    let source: TensorSource
    let config: DecoderConfig
    let naming: TensorNaming

    func tensor(_ name: TensorName, _ shape: [Int]) throws(ModelError) -> StoredTensor {
        try source.tensor(naming.stored(name), shape: shape)
    }

    func element(_ t: StoredTensor) throws(ModelError) -> WeightElement {
        guard let element = t.element else {
            throw ModelError("\(t.file): tensor '\(t.name)' has dtype \(t.typeName); supported weight dtypes are BF16, F16 and F32")
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

    func vector(_ name: TensorName, _ length: Int) throws(ModelError) -> [Float] {
        let t = try tensor(name, [length])
        try checkShape(t, [length], "from config.json")
        let m = WeightMatrix(element: try element(t), rows: 1, columns: length, data: t.data)
        return (0..<length).map { m.value(0, $0) }
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
        let experts: [FeedForwardWeights]
        if source.contains(naming.stored(.stackedExpertsGateUp(layer: l))) {
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
        var weights = MoEWeights(
            router: try matrix(.router(layer: l), [moe.expertCount, hidden], "num_experts, hidden_size"),
            experts: experts)
        if moe.router.selectionBias { weights.routerBias = try vector(.routerBias(layer: l), moe.expertCount) }
        if let shared = moe.sharedExpertIntermediateSize {
            weights.sharedExpert = try feedForward({ .sharedExpert(layer: l, $0) }, intermediate: shared)
            if moe.sharedExpertGated {
                weights.sharedExpertGate = try matrix(.sharedExpertGate(layer: l), [1, hidden], "1, hidden_size")
            }
        }
        return weights
    }
}
