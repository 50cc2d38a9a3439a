import Kernels
import Runtime
import SwitchyardJSON
import SwitchyardSupport

/// An MoE layer: its experts, how its router chooses and weighs them, and its shared expert. One
/// description serves every MoE architecture; the architecture files only choose the values.
public struct MoEConfig: Sendable, Equatable {
    public var expertCount: Int
    public var expertsPerToken: Int
    /// Inner width of each routed expert.
    public var expertIntermediateSize: Int
    public var router: RouterConfig
    /// Inner width of the always-on shared expert (Qwen2-MoE), nil when there is none.
    public var sharedExpertIntermediateSize: Int?
    /// The shared expert's output is scaled by sigmoid(x · gate) (Qwen2-MoE).
    public var sharedExpertGated: Bool
    /// The router's product has a bias (GPT-OSS), added to its logits.
    public var routerLogitBias = false
    /// Every expert's three products have biases (GPT-OSS).
    public var expertBiases = false
    /// What joins the experts' gate and up products.
    public var activation = GatedActivation.swiGLU
    /// How the checkpoint stores the routed experts when not in its float dtype (GPT-OSS: MXFP4).
    public var expertElement: WeightElement?

    public init(
        expertCount: Int, expertsPerToken: Int, expertIntermediateSize: Int, router: RouterConfig,
        sharedExpertIntermediateSize: Int? = nil, sharedExpertGated: Bool = false
    ) {
        self.expertCount = expertCount
        self.expertsPerToken = expertsPerToken
        self.expertIntermediateSize = expertIntermediateSize
        self.router = router
        self.sharedExpertIntermediateSize = sharedExpertIntermediateSize
        self.sharedExpertGated = sharedExpertGated
    }
}

/// How a router turns its logits into the experts a token goes to and their mixing weights, in
/// the terms of llama.cpp's `build_moe_ffn`: a gating function, a selection rule, an optional
/// selection bias, normalisation and scaling. Mixtral, Qwen and OLMoE use softmax and plain top-k;
/// DeepSeek-V2 limits the choice to the best groups; DeepSeek-V3 gates with a sigmoid and biases
/// the choice (not the weights).
public struct RouterConfig: Sendable, Equatable {
    public enum Gating: String, Sendable { case softmax, sigmoid }

    /// How a group of experts is scored for group-limited selection.
    public enum GroupScore: String, Sendable {
        /// The group's best expert (DeepSeek-V2's group_limited_greedy).
        case max
        /// The sum of its two best experts (DeepSeek-V3's noaux_tc).
        case topTwoSum
    }

    public enum Selection: Sendable, Equatable {
        /// The k best experts.
        case topK
        /// Experts in `groups` equal groups; only the `topGroups` best groups compete.
        case groupLimited(groups: Int, topGroups: Int, score: GroupScore)
    }

    public var gating: Gating
    public var selection: Selection
    /// A per-expert bias added to the scores for choosing only; the weights use the plain scores
    /// (DeepSeek-V3's e_score_correction_bias, a tensor of the checkpoint).
    public var selectionBias: Bool
    /// Divide the chosen weights by their sum (Mixtral always; Qwen and OLMoE by flag).
    public var normalize: Bool
    /// Multiply the final weights by this (DeepSeek's routed_scaling_factor).
    public var scale: Float

    public init(gating: Gating = .softmax, selection: Selection = .topK, selectionBias: Bool = false, normalize: Bool, scale: Float = 1) {
        self.gating = gating
        self.selection = selection
        self.selectionBias = selectionBias
        self.normalize = normalize
        self.scale = scale
    }

    /// Softmax and top-k, as Mixtral, Qwen-MoE and OLMoE route.
    public static func softmaxTopK(normalize: Bool) -> RouterConfig { RouterConfig(normalize: normalize) }
}

/// The feed-forward part of one decoder layer.
public enum FeedForwardKind: Sendable, Equatable {
    case dense(intermediateSize: Int)
    case mixtureOfExperts(MoEConfig)

    public var moe: MoEConfig? {
        if case .mixtureOfExperts(let m) = self { return m }
        return nil
    }
}

/// Where RMSNorm is applied to queries and keys, if anywhere.
public enum QueryKeyNorm: Sendable, Equatable {
    case none
    /// Qwen3: over each head's head_dim values, weights [head_dim].
    case perHead
    /// OLMoE: over the whole projection, weights [heads x head_dim].
    case wholeProjection
}

/// DeepSeek's multi-head latent attention: keys and values are up-projected from one small latent
/// per token (`kv_lora_rank` values, RMS-normed) plus one rotary key shared by every head; only
/// the latent and the rotary key are cached.
public struct LatentAttentionConfig: Sendable, Equatable {
    /// Rank of the compressed query path (q_a_proj, its norm, q_b_proj), nil for a plain q_proj.
    public var queryRank: Int?
    /// Values of the cached latent per token (kv_lora_rank).
    public var latentRank: Int
    /// Per head: the query and key values without position (qk_nope_head_dim), with rotary
    /// position (qk_rope_head_dim, shared by every head on the key side), and values (v_head_dim).
    public var noPositionDim: Int
    public var rotaryDim: Int
    public var valueDim: Int
    /// Rotary pairs are adjacent values (x0, x1), (x2, x3)... (DeepSeek's layout) rather than the
    /// two halves of the rotated part.
    public var interleavedRotary: Bool
    /// The softmax scale: (qk_nope + qk_rope)^-0.5, times YaRN's mscale(factor, mscale_all_dim)².
    public var softmaxScale: Float

    public init(queryRank: Int?, latentRank: Int, noPositionDim: Int, rotaryDim: Int, valueDim: Int, interleavedRotary: Bool,
                softmaxScale: Float) {
        self.queryRank = queryRank
        self.latentRank = latentRank
        self.noPositionDim = noPositionDim
        self.rotaryDim = rotaryDim
        self.valueDim = valueDim
        self.interleavedRotary = interleavedRotary
        self.softmaxScale = softmaxScale
    }

    /// Per head, the query's width as projected: no-position then rotary values.
    public var queryHeadDim: Int { noPositionDim + rotaryDim }
    /// One cached row: the latent, then the rotary key.
    public var cachedWidth: Int { latentRank + rotaryDim }
}

/// Which attention block a family's layers use; each is a file under Layers/Attention.
public enum AttentionKind: Sendable, Equatable {
    /// Multi-head attention with grouped KV heads (Llama, Mistral, Qwen, Mixtral, OLMoE).
    case groupedQuery
    /// DeepSeek-V2/V3's multi-head latent attention.
    case latent(LatentAttentionConfig)
}

/// Everything the decoder needs to know about a model, independent of which architecture's
/// config.json it came from.
public struct DecoderConfig: Sendable {
    public var modelType: String
    public var vocabularySize: Int
    public var hiddenSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var keyValueHeadCount: Int
    public var headDim: Int
    public var rmsNormEpsilon: Float
    public var maxPositions: Int
    public var rope: RopeParameters
    public var tieWordEmbeddings: Bool
    public var attention: AttentionKind = .groupedQuery
    public var queryKeyNorm: QueryKeyNorm
    /// OLMoE clamps q, k and v to [-clip, clip].
    public var clipQKV: Float?
    /// Per layer: attend only to the last N positions, or nil for full attention.
    public var slidingWindows: [Int?]
    /// Per layer.
    public var feedForward: [FeedForwardKind]
    /// The family's tensor names in Hugging Face checkpoints.
    public var naming: HuggingFaceNaming
    /// Whether q/k/v and o projections have biases (what a checkpoint of this config holds; loading
    /// reads them when present).
    public var queryKeyValueBias: Bool = false
    public var outputBias: Bool = false
    /// Each attention head has a learned sink logit (GPT-OSS).
    public var attentionSinks = false
    /// Grouped-query attention's rotary pairs are adjacent values (x0, x1), (x2, x3)... rather than
    /// halves: llama.cpp's converter permutes llama's q/k rows into that order.
    public var interleavedRotary = false
    public var bosTokenID: Int?
    public var eosTokenIDs: [Int]

    /// Per token, the queries the attention executor gets: every head's [head_dim] (grouped-query),
    /// or every head's query in latent space, [kv_lora_rank + qk_rope] (latent attention, absorbed).
    public var queryWidth: Int {
        switch attention {
        case .groupedQuery: return headCount * headDim
        case .latent(let m): return headCount * m.cachedWidth
        }
    }
    /// Per token, the keys (and the values) the attention executor stores: [kv_heads x head_dim],
    /// or the cached latent row [kv_lora_rank + qk_rope] (whose leading values are the values).
    public var keyValueWidth: Int {
        switch attention {
        case .groupedQuery: return keyValueHeadCount * headDim
        case .latent(let m): return m.cachedWidth
        }
    }
    /// Per token, the attention executor's output: every head's values, [heads x head_dim], or
    /// [heads x kv_lora_rank] in latent space.
    public var attentionOutputWidth: Int {
        switch attention {
        case .groupedQuery: return headCount * headDim
        case .latent(let m): return headCount * m.latentRank
        }
    }
    public var isMixtureOfExperts: Bool { feedForward.contains { $0.moe != nil } }

    /// [rows, columns] of each attention matrix of one layer, in the block's `matrices` order (for
    /// planning from the config alone); `derived` marks one made at load rather than stored.
    public var attentionMatrixShapes: [(rows: Int, columns: Int, derived: Bool)] {
        switch attention {
        case .groupedQuery:
            return [(queryWidth, hiddenSize, false), (keyValueWidth, hiddenSize, false), (keyValueWidth, hiddenSize, false),
                    (hiddenSize, queryWidth, false)]
        case .latent(let m):
            let query: [(rows: Int, columns: Int, derived: Bool)] = m.queryRank.map { [($0, hiddenSize, false), (headCount * m.queryHeadDim, $0, false)] }
                ?? [(headCount * m.queryHeadDim, hiddenSize, false)]
            return query + [
                (m.cachedWidth, hiddenSize, false), (headCount * (m.noPositionDim + m.valueDim), m.latentRank, false),
                (headCount * m.latentRank, m.noPositionDim, true), (hiddenSize, headCount * m.valueDim, false),
            ]
        }
    }

    /// The length of every vector a layer's attention stores (biases, norm weights), from the config.
    public var attentionVectorLengths: [Int] {
        switch attention {
        case .groupedQuery:
            var lengths = queryKeyValueBias ? [queryWidth, keyValueWidth, keyValueWidth] : []
            if outputBias { lengths.append(hiddenSize) }
            if attentionSinks { lengths.append(headCount) }
            switch queryKeyNorm {
            case .none: break
            case .perHead: lengths += [headDim, headDim]
            case .wholeProjection: lengths += [queryWidth, keyValueWidth]
            }
            return lengths
        case .latent(let m):
            var lengths = [m.latentRank] + (m.queryRank.map { [$0] } ?? [])
            if queryKeyValueBias { lengths += (m.queryRank.map { [$0] } ?? []) + [m.cachedWidth] }
            if outputBias { lengths.append(hiddenSize) }
            return lengths
        }
    }

    /// What the KV cache holds per position.
    public var kvLayout: KVLayout {
        switch attention {
        case .groupedQuery: return KVLayout(layers: layerCount, keyWidth: keyValueWidth, valueWidth: keyValueWidth)
        // The values are the latent itself, the leading values of each key row: none stored apart.
        case .latent(let m): return KVLayout(layers: layerCount, keyWidth: m.cachedWidth, valueWidth: 0)
        }
    }
}

