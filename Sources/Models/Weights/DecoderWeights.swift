import Kernels
import Runtime
import WeightFiles

public struct MoEWeights: Sendable {
    public var router: WeightMatrix        // [experts, hidden]
    /// The router's selection bias, [experts] (DeepSeek-V3), when the config has one.
    public var routerBias: [Float]?
    /// The router's logit bias, [experts] (GPT-OSS), added to its product.
    public var routerLogitBias: [Float]?
    public var experts: [FeedForwardWeights]
    public var sharedExpert: FeedForwardWeights?
    public var sharedExpertGate: WeightMatrix?  // [1, hidden]

    /// Calls `body` with the router's selection bias, or nil when it has none.
    public func withRouterBias<T>(_ body: (UnsafePointer<Float>?) -> T) -> T {
        guard let routerBias else { return body(nil) }
        return routerBias.withUnsafeBufferPointer { body($0.baseAddress) }
    }
}

public enum FeedForwardLayerWeights: Sendable {
    case dense(FeedForwardWeights)
    case mixtureOfExperts(MoEWeights)
}

public struct LayerWeights: Sendable {
    public var inputNorm: [Float]          // [hidden]
    public var attention: any AttentionBlock
    public var postAttentionNorm: [Float]  // [hidden]
    public var feedForward: FeedForwardLayerWeights
}

/// Every weight of a decoder, bound by logical name through the format's naming and checked
/// against the config. Matrices point into the memory-mapped files; nothing large is copied.
public struct DecoderWeights: Sendable {
    public var embedding: WeightMatrix  // [vocab, hidden]
    public var layers: [LayerWeights]
    public var finalNorm: [Float]       // [hidden]
    public var lmHead: WeightMatrix     // [vocab, hidden], the embedding when tied
    /// Memory of weights rearranged at binding (GPT-OSS's input-major experts), kept alive with them.
    var storage: [HostBuffer] = []

    static func bind(_ config: DecoderConfig, from source: TensorSource, naming: TensorNaming) throws(ModelError) -> DecoderWeights {
        let b = WeightBinder(source: source, config: config, naming: naming)
        let hidden = config.hiddenSize
        let embedding = try b.matrix(.embedding, [config.vocabularySize, hidden], "vocab_size, hidden_size")
        var layers: [LayerWeights] = []
        for i in 0..<config.layerCount {
            let attention: any AttentionBlock
            switch config.attention {
            case .groupedQuery: attention = try GroupedQueryAttention.bind(layer: i, b)
            case .latent(let m): attention = try LatentAttention.bind(layer: i, m, b)
            }
            let feedForward: FeedForwardLayerWeights
            switch config.feedForward[i] {
            case .dense(let intermediate):
                feedForward = .dense(try b.feedForward({ .mlp(layer: i, $0) }, intermediate: intermediate))
            case .mixtureOfExperts(let moe):
                feedForward = .mixtureOfExperts(try b.moe(layer: i, moe))
            }
            layers.append(LayerWeights(
                inputNorm: try b.vector(.inputNorm(layer: i), hidden),
                attention: attention,
                postAttentionNorm: try b.vector(.postAttentionNorm(layer: i), hidden),
                feedForward: feedForward))
        }
        let finalNorm = try b.vector(.finalNorm, hidden)
        // Tied models use the embedding as the output projection (transformers ignores a stored
        // lm_head.weight then, since the two are one parameter).
        let lmHead = config.tieWordEmbeddings ? embedding : try b.matrix(.outputHead, [config.vocabularySize, hidden], "vocab_size, hidden_size")
        return DecoderWeights(embedding: embedding, layers: layers, finalNorm: finalNorm, lmHead: lmHead, storage: b.storage.buffers)
    }

    /// These weights with `transform` applied to the routed experts' matrices and, when `all`, to
    /// every other matrix but the embedding and the routers (a tied output head is the embedding,
    /// which stays).
    public func mapMatrices(all: Bool, _ transform: (WeightMatrix) -> WeightMatrix) -> DecoderWeights {
        var out = self
        func convert(_ f: FeedForwardWeights) -> FeedForwardWeights {
            f.mapMatrices(transform)
        }
        for i in out.layers.indices {
            switch out.layers[i].feedForward {
            case .dense(let f):
                if all { out.layers[i].feedForward = .dense(convert(f)) }
            case .mixtureOfExperts(var m):
                m.experts = m.experts.map(convert)
                if all, let shared = m.sharedExpert { m.sharedExpert = convert(shared) }
                out.layers[i].feedForward = .mixtureOfExperts(m)
            }
            if all { out.layers[i].attention = out.layers[i].attention.mapMatrices(transform) }
        }
        if all && out.lmHead.data != out.embedding.data { out.lmHead = transform(out.lmHead) }
        return out
    }

    /// Every matrix, the embedding and the routers included, through `transform` once each (a
    /// tied output head stays the embedding).
    public func mapEveryMatrix(_ transform: (WeightMatrix) -> WeightMatrix) -> DecoderWeights {
        let tied = lmHead.data == embedding.data
        var out = mapMatrices(all: true, transform)
        for i in out.layers.indices {
            guard case .mixtureOfExperts(var m) = out.layers[i].feedForward else { continue }
            m.router = transform(m.router)
            if let g = m.sharedExpertGate { m.sharedExpertGate = transform(g) }
            out.layers[i].feedForward = .mixtureOfExperts(m)
        }
        out.embedding = transform(embedding)
        if tied { out.lmHead = out.embedding }
        return out
    }
}
