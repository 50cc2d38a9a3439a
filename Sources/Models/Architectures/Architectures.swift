import Runtime
import SwitchyardJSON

/// One architecture family: which `model_type`s it reads and how its config.json maps to a
/// `DecoderConfig`. Each family lives in its own file.
protocol ArchitectureFamily: Sendable {
    static var modelTypes: [String] { get }
    static func decoderConfig(modelType: String, _ config: ConfigReader) throws(ModelError) -> DecoderConfig
}

enum Architectures {
    static let families: [any ArchitectureFamily.Type] = [
        LlamaFamily.self, MixtralFamily.self, Qwen2Family.self, Qwen3Family.self, OLMoEFamily.self, DeepSeekFamily.self, GptOssFamily.self,
    ]

    static var supportedModelTypes: [String] { families.flatMap { $0.modelTypes } }

    static func decoderConfig(_ json: JSONValue, file: String) throws(ModelError) -> DecoderConfig {
        let config = try ConfigReader(json, file: file)
        guard let modelType = try config.string("model_type") else {
            throw ModelError("\(file): missing 'model_type' (supported: \(supportedModelTypes.joined(separator: ", ")))")
        }
        guard let family = families.first(where: { $0.modelTypes.contains(modelType) }) else {
            throw ModelError("\(file): unsupported model_type '\(modelType)' (supported: \(supportedModelTypes.joined(separator: ", ")))")
        }
        var act = try config.string("hidden_act")
        if act == nil { act = try config.string("hidden_activation") }
        let activation = act ?? "silu"
        guard activation == "silu" || activation == "swish" else {
            throw ModelError("\(file): hidden_act '\(activation)' is not supported for \(modelType) (supported: silu)")
        }
        let decoder = try family.decoderConfig(modelType: modelType, config)
        try validate(decoder, file: file)
        return decoder
    }

    static func validate(_ d: DecoderConfig, file: String) throws(ModelError) {
        guard d.headCount % d.keyValueHeadCount == 0 else {
            throw ModelError("\(file): num_attention_heads (\(d.headCount)) must be a multiple of num_key_value_heads (\(d.keyValueHeadCount))")
        }
        guard d.rope.partialRotaryFactor > 0, d.rope.partialRotaryFactor <= 1 else {
            throw ModelError("\(file): partial_rotary_factor must be in (0, 1], found \(d.rope.partialRotaryFactor)")
        }
        let rotary = Int(Double(d.headDim) * d.rope.partialRotaryFactor)
        guard rotary % 2 == 0, rotary <= d.headDim, rotary > 0 else {
            throw ModelError("\(file): head_dim \(d.headDim) x partial_rotary_factor \(d.rope.partialRotaryFactor) must give an even number of rotary dimensions")
        }
        guard d.rope.theta > 0 else { throw ModelError("\(file): rope_theta must be positive, found \(d.rope.theta)") }
        guard d.rmsNormEpsilon >= 0 else { throw ModelError("\(file): rms_norm_eps must not be negative") }
        if let clip = d.clipQKV, !(clip > 0) { throw ModelError("\(file): clip_qkv must be positive, found \(clip)") }
        for window in d.slidingWindows.compactMap({ $0 }) where window < 1 {
            throw ModelError("\(file): sliding_window must be positive, found \(window)")
        }
        for kind in d.feedForward {
            if let moe = kind.moe, moe.expertsPerToken > moe.expertCount || moe.expertsPerToken < 1 {
                throw ModelError("\(file): num_experts_per_tok (\(moe.expertsPerToken)) must be between 1 and the number of experts (\(moe.expertCount))")
            }
        }
        // Every weight's size in values must fit comfortably in an Int (and a real machine): 2^40
        // values is 2 TB of bf16 for one matrix.
        let limit = 1 << 40
        func check(_ a: Int, _ b: Int, _ what: String) throws(ModelError) {
            let (product, overflow) = a.multipliedReportingOverflow(by: b)
            guard !overflow, product <= limit else { throw ModelError("\(file): \(what) (\(a) x \(b)) is too large") }
        }
        try check(d.vocabularySize, d.hiddenSize, "vocab_size x hidden_size")
        try check(d.queryWidth, d.hiddenSize, "the attention projections")
        for kind in d.feedForward {
            switch kind {
            case .dense(let inner): try check(inner, d.hiddenSize, "intermediate_size x hidden_size")
            case .mixtureOfExperts(let m):
                try check(m.expertCount * m.expertIntermediateSize, d.hiddenSize, "the experts of a layer")
                try check(m.sharedExpertIntermediateSize ?? 0, d.hiddenSize, "the shared expert")
            }
        }
    }

    /// The fields every family shares, with that family's transformers defaults.
    static func common(
        modelType: String, _ c: ConfigReader,
        defaultEpsilon: Double, defaultMaxPositions: Int, defaultTheta: Double,
        defaultKeyValueHeads: ((Int) -> Int)? = nil
    ) throws(ModelError) -> DecoderConfig {
        let hidden = try c.positiveInt("hidden_size", atMost: 1 << 17)
        let heads = try c.positiveInt("num_attention_heads", atMost: 4096)
        let layers = try c.positiveInt("num_hidden_layers", atMost: 4096)
        let kvHeads = try c.positiveInt("num_key_value_heads", default: defaultKeyValueHeads?(heads) ?? heads, atMost: 4096)
        let headDim = try c.positiveInt("head_dim", default: max(1, hidden / heads), atMost: 4096)
        let maxPositions = try c.positiveInt("max_position_embeddings", default: defaultMaxPositions)
        return DecoderConfig(
            modelType: modelType,
            vocabularySize: try c.positiveInt("vocab_size"),
            hiddenSize: hidden,
            layerCount: layers,
            headCount: heads,
            keyValueHeadCount: kvHeads,
            headDim: headDim,
            rmsNormEpsilon: Float(try c.double("rms_norm_eps", default: defaultEpsilon)),
            maxPositions: maxPositions,
            rope: try RopeParameters.parse(c, defaultTheta: defaultTheta),
            tieWordEmbeddings: try c.bool("tie_word_embeddings", default: false),
            queryKeyNorm: .none,
            clipQKV: nil,
            slidingWindows: Array(repeating: nil, count: layers),
            feedForward: Array(repeating: .dense(intermediateSize: try c.positiveInt("intermediate_size")), count: layers),
            naming: .standard,
            bosTokenID: try c.optionalInt("bos_token_id"),
            eosTokenIDs: try c.tokenIDs("eos_token_id") ?? []
        )
    }

    /// The number of routed experts: released checkpoints say `num_experts` (`num_local_experts` for
    /// Mixtral); transformers 5 writes `num_local_experts` for some that used `num_experts`.
    static func expertCount(_ c: ConfigReader, default fallback: Int) throws(ModelError) -> Int {
        let key = c.has("num_experts") ? "num_experts" : "num_local_experts"
        let n = try c.int(key, default: fallback)
        // 0 is allowed: Qwen2-MoE then has only dense layers, as transformers reads it.
        guard (0...4096).contains(n) else { throw ModelError("\(c.file): key '\(key)' must be between 0 and 4096, found \(n)") }
        return n
    }

    /// Qwen-style sliding windows: `layer_types` when given (transformers 5), otherwise
    /// `use_sliding_window` for layers from `max_window_layers` on.
    static func qwenSlidingWindows(_ c: ConfigReader, layers: Int) throws(ModelError) -> [Int?] {
        let window = try c.optionalInt("sliding_window")
        if let types = try c.stringArray("layer_types") {
            guard types.count == layers else {
                throw ModelError("\(c.file): 'layer_types' has \(types.count) entries for \(layers) layers")
            }
            return types.map { $0 == "sliding_attention" ? window : nil }
        }
        guard try c.bool("use_sliding_window", default: false), let window, window > 0 else {
            return Array(repeating: nil, count: layers)
        }
        let first = try c.int("max_window_layers", default: 28)
        return (0..<layers).map { $0 >= first ? window : nil }
    }

    /// Qwen-MoE layer pattern: a layer is sparse unless listed in `mlp_only_layers`, and only every
    /// `decoder_sparse_step`-th layer is.
    static func qwenFeedForward(_ c: ConfigReader, layers: Int, moe: MoEConfig) throws(ModelError) -> [FeedForwardKind] {
        let step = try c.int("decoder_sparse_step", default: 1)
        let denseOnly = Set(try c.intArray("mlp_only_layers"))
        let intermediate = try c.positiveInt("intermediate_size")
        return (0..<layers).map { layer in
            if !denseOnly.contains(layer), moe.expertCount > 0, step > 0, (layer + 1) % step == 0 {
                return .mixtureOfExperts(moe)
            }
            return .dense(intermediateSize: intermediate)
        }
    }
}
