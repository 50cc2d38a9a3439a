import Kernels
import SafeTensors
import SwitchyardSupport

/// A SwiGLU feed-forward network: down(silu(gate(x)) * up(x)).
public struct FeedForwardWeights: Sendable {
    public var gate: WeightMatrix  // [intermediate, hidden]
    public var up: WeightMatrix    // [intermediate, hidden]
    public var down: WeightMatrix  // [hidden, intermediate]

    public var intermediateSize: Int { gate.rows }

    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        self.gate = gate
        self.up = up
        self.down = down
    }
}

public struct MoEWeights: Sendable {
    public var router: WeightMatrix        // [experts, hidden]
    public var experts: [FeedForwardWeights]
    public var sharedExpert: FeedForwardWeights?
    public var sharedExpertGate: WeightMatrix?  // [1, hidden]
}

public enum FeedForwardLayerWeights: Sendable {
    case dense(FeedForwardWeights)
    case mixtureOfExperts(MoEWeights)
}

public struct AttentionWeights: Sendable {
    public var query: WeightMatrix   // [heads x head_dim, hidden]
    public var key: WeightMatrix     // [kv_heads x head_dim, hidden]
    public var value: WeightMatrix   // [kv_heads x head_dim, hidden]
    public var output: WeightMatrix  // [hidden, heads x head_dim]
    // Biases and norm weights are small: widened to f32 once at load.
    public var queryBias: [Float]?   // [heads x head_dim]
    public var keyBias: [Float]?     // [kv_heads x head_dim]
    public var valueBias: [Float]?   // [kv_heads x head_dim]
    public var outputBias: [Float]?  // [hidden]
    public var queryNorm: [Float]?   // [head_dim] per head, or [heads x head_dim] whole
    public var keyNorm: [Float]?     // [head_dim] per head, or [kv_heads x head_dim] whole
}

public struct LayerWeights: Sendable {
    public var inputNorm: [Float]          // [hidden]
    public var attention: AttentionWeights
    public var postAttentionNorm: [Float]  // [hidden]
    public var feedForward: FeedForwardLayerWeights
}

/// Every weight of a decoder, bound by name from the checkpoint and checked against the config.
/// Matrices point into the memory-mapped files; nothing large is copied.
public struct DecoderWeights: Sendable {
    public var embedding: WeightMatrix  // [vocab, hidden]
    public var layers: [LayerWeights]
    public var finalNorm: [Float]       // [hidden]
    public var lmHead: WeightMatrix     // [vocab, hidden], the embedding when tied

    static func bind(_ config: DecoderConfig, from source: TensorSource) throws(ModelError) -> DecoderWeights {
        let binder = WeightBinder(source: source, config: config)
        let hidden = config.hiddenSize
        let embedding = try binder.matrix("model.embed_tokens.weight", [config.vocabularySize, hidden], "vocab_size, hidden_size")
        var layers: [LayerWeights] = []
        for i in 0..<config.layerCount {
            let p = "model.layers.\(i)."
            let a = p + "self_attn."
            var attention = AttentionWeights(
                query: try binder.matrix(a + "q_proj.weight", [config.queryWidth, hidden], "num_attention_heads x head_dim, hidden_size"),
                key: try binder.matrix(a + "k_proj.weight", [config.keyValueWidth, hidden], "num_key_value_heads x head_dim, hidden_size"),
                value: try binder.matrix(a + "v_proj.weight", [config.keyValueWidth, hidden], "num_key_value_heads x head_dim, hidden_size"),
                output: try binder.matrix(a + "o_proj.weight", [hidden, config.queryWidth], "hidden_size, num_attention_heads x head_dim"))
            attention.queryBias = try binder.optionalVector(a + "q_proj.bias", config.queryWidth)
            attention.keyBias = try binder.optionalVector(a + "k_proj.bias", config.keyValueWidth)
            attention.valueBias = try binder.optionalVector(a + "v_proj.bias", config.keyValueWidth)
            attention.outputBias = try binder.optionalVector(a + "o_proj.bias", hidden)
            switch config.queryKeyNorm {
            case .none: break
            case .perHead:
                attention.queryNorm = try binder.vector(a + "q_norm.weight", config.headDim)
                attention.keyNorm = try binder.vector(a + "k_norm.weight", config.headDim)
            case .wholeProjection:
                attention.queryNorm = try binder.vector(a + "q_norm.weight", config.queryWidth)
                attention.keyNorm = try binder.vector(a + "k_norm.weight", config.keyValueWidth)
            }
            let feedForward: FeedForwardLayerWeights
            switch config.feedForward[i] {
            case .dense(let intermediate):
                feedForward = .dense(try binder.feedForward(p + "mlp.", "gate_proj", "up_proj", "down_proj", intermediate: intermediate))
            case .mixtureOfExperts(let moe):
                feedForward = .mixtureOfExperts(try binder.moe(layerPrefix: p, moe))
            }
            layers.append(LayerWeights(
                inputNorm: try binder.vector(p + "input_layernorm.weight", hidden),
                attention: attention,
                postAttentionNorm: try binder.vector(p + "post_attention_layernorm.weight", hidden),
                feedForward: feedForward))
        }
        let finalNorm = try binder.vector("model.norm.weight", hidden)
        // Tied models use the embedding as the output projection (transformers ignores a stored
        // lm_head.weight then, since the two are one parameter).
        let lmHead = config.tieWordEmbeddings
            ? embedding
            : try binder.matrix("lm_head.weight", [config.vocabularySize, hidden], "vocab_size, hidden_size")
        return DecoderWeights(embedding: embedding, layers: layers, finalNorm: finalNorm, lmHead: lmHead)
    }
}

struct WeightBinder {
    let source: TensorSource
    let config: DecoderConfig

    func view(_ name: String, _ shape: [Int]) throws(ModelError) -> TensorView {
        try source.tensor(name, shape: shape)
    }

    func element(_ t: TensorView) throws(ModelError) -> WeightElement {
        if let format = source.storedQuantization(of: t.name) { return format.element }
        switch t.dtype {
        case .bf16: return .bf16
        case .f16: return .f16
        case .f32: return .f32
        default:
            throw ModelError("\(t.file): tensor '\(t.name)' has dtype \(t.dtype.rawValue); supported weight dtypes are BF16, F16 and F32")
        }
    }

    /// A tensor's shape in values: a quantised one stores its last dimension in bytes.
    func logicalShape(_ t: TensorView) -> [Int] {
        guard let format = source.storedQuantization(of: t.name), let last = t.shape.last else { return t.shape }
        return t.shape.dropLast() + [format.element.columns(rowBytes: last)]
    }

    func checkShape(_ t: TensorView, _ expected: [Int], _ meaning: String) throws(ModelError) {
        let shape = logicalShape(t)
        guard shape == expected, t.byteCount == (shape.dropLast().reduce(1, *)) * (try element(t)).rowBytes(expected.last ?? 0) else {
            throw ModelError("\(t.file): tensor '\(t.name)' has shape \(shape), but config.json implies \(expected) (\(meaning))")
        }
    }

    func matrix(_ name: String, _ shape: [Int], _ meaning: String) throws(ModelError) -> WeightMatrix {
        let t = try view(name, shape)
        try checkShape(t, shape, meaning)
        return WeightMatrix(element: try element(t), rows: shape[0], columns: shape[1], data: t.data)
    }

    func vector(_ name: String, _ length: Int) throws(ModelError) -> [Float] {
        let t = try view(name, [length])
        try checkShape(t, [length], "from config.json")
        let m = WeightMatrix(element: try element(t), rows: 1, columns: length, data: t.data)
        return (0..<length).map { m.value(0, $0) }
    }

    func optionalVector(_ name: String, _ length: Int) throws(ModelError) -> [Float]? {
        source.contains(name) ? try vector(name, length) : nil
    }

    func feedForward(_ prefix: String, _ gate: String, _ up: String, _ down: String, intermediate: Int) throws(ModelError) -> FeedForwardWeights {
        let hidden = config.hiddenSize
        return FeedForwardWeights(
            gate: try matrix(prefix + gate + ".weight", [intermediate, hidden], "intermediate size, hidden_size"),
            up: try matrix(prefix + up + ".weight", [intermediate, hidden], "intermediate size, hidden_size"),
            down: try matrix(prefix + down + ".weight", [hidden, intermediate], "hidden_size, intermediate size"))
    }

    func moe(layerPrefix: String, _ moe: MoEConfig) throws(ModelError) -> MoEWeights {
        let hidden = config.hiddenSize
        let block = layerPrefix + config.naming.moeBlock + "."
        let naming = config.naming
        let inner = moe.expertIntermediateSize
        let experts: [FeedForwardWeights]
        if source.contains(block + "experts.gate_up_proj") {
            // transformers 5's in-memory layout, stacked: gate_up_proj [experts, 2 x inner, hidden]
            // (gate rows first), down_proj [experts, hidden, inner].
            let gateUp = try view(block + "experts.gate_up_proj", [moe.expertCount, 2 * inner, hidden])
            try checkShape(gateUp, [moe.expertCount, 2 * inner, hidden], "experts, 2 x expert intermediate size, hidden_size")
            let down = try view(block + "experts.down_proj", [moe.expertCount, hidden, inner])
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
                list.append(try feedForward(block + "experts.\(e).", naming.expertGate, naming.expertUp, naming.expertDown, intermediate: inner))
            }
            experts = list
        }
        var weights = MoEWeights(
            router: try matrix(block + "gate.weight", [moe.expertCount, hidden], "num_experts, hidden_size"),
            experts: experts)
        if let shared = moe.sharedExpertIntermediateSize {
            weights.sharedExpert = try feedForward(block + "shared_expert.", "gate_proj", "up_proj", "down_proj", intermediate: shared)
            if moe.sharedExpertGated {
                weights.sharedExpertGate = try matrix(block + "shared_expert_gate.weight", [1, hidden], "1, hidden_size")
            }
        }
        return weights
    }
}
