import Runtime
import SwitchyardSupport

/// DeepSeek-V2 and V3 (and R1, a V3): multi-head latent attention, `first_k_dense_replace`
/// dense layers, then MoE layers of routed experts plus always-on shared experts. V2 routes by
/// softmax, optionally within the best groups by their best expert (`group_limited_greedy`); V3 by
/// sigmoid scores plus a selection-only bias, within the best groups by their two best experts
/// (`noaux_tc`), normalised; both scale by `routed_scaling_factor`.
enum DeepSeekFamily: ArchitectureFamily {
    static let modelTypes = ["deepseek_v2", "deepseek_v3"]

    static func decoderConfig(modelType: String, _ c: ConfigReader) throws(ModelError) -> DecoderConfig {
        let v3 = modelType == "deepseek_v3"
        var d = try Architectures.common(
            modelType: modelType, c, defaultEpsilon: 1e-6, defaultMaxPositions: v3 ? 4096 : 2048, defaultTheta: 10_000)
        let latent = try latentAttention(c, v3: v3, rope: d.rope)
        // The rotary embedding turns the qk_rope part of each head only.
        d.headDim = latent.rotaryDim
        d.rope.partialRotaryFactor = 1
        d.attention = .latent(latent)
        let bias = try c.bool("attention_bias", default: false)
        d.queryKeyValueBias = bias
        d.outputBias = bias

        let experts = try c.int("n_routed_experts", default: v3 ? 256 : 64)
        guard (0...4096).contains(experts) else { throw ModelError("\(c.file): key 'n_routed_experts' must be between 0 and 4096, found \(experts)") }
        let inner = try c.positiveInt("moe_intermediate_size", default: v3 ? 2048 : 1407)
        let shared = try c.int("n_shared_experts", default: v3 ? 1 : 2)
        guard (0...64).contains(shared) else { throw ModelError("\(c.file): key 'n_shared_experts' must be between 0 and 64, found \(shared)") }
        let scale = try c.double("routed_scaling_factor", default: v3 ? 2.5 : 1)
        guard scale.isFinite, scale > 0, scale < 1e6 else { throw ModelError("\(c.file): routed_scaling_factor must be positive, found \(scale)") }
        let moe = MoEConfig(
            expertCount: experts,
            expertsPerToken: try c.positiveInt("num_experts_per_tok", default: v3 ? 8 : 6),
            expertIntermediateSize: inner,
            router: try router(c, v3: v3, experts: experts, scale: Float(scale)),
            sharedExpertIntermediateSize: shared > 0 ? shared * inner : nil,
            sharedExpertGated: false)
        let firstSparse = try c.int("first_k_dense_replace", default: v3 ? 3 : 0)
        let frequency = try c.int("moe_layer_freq", default: 1)
        guard firstSparse >= 0 else { throw ModelError("\(c.file): first_k_dense_replace must not be negative, found \(firstSparse)") }
        guard frequency >= 1 else { throw ModelError("\(c.file): moe_layer_freq must be positive, found \(frequency)") }
        let dense = FeedForwardKind.dense(intermediateSize: try c.positiveInt("intermediate_size"))
        d.feedForward = (0..<d.layerCount).map { l in
            experts > 0 && l >= firstSparse && l % frequency == 0 ? .mixtureOfExperts(moe) : dense
        }
        d.naming = HuggingFaceNaming(moeBlock: "mlp", expertGate: "gate_proj", expertUp: "up_proj", expertDown: "down_proj",
                                     sharedExpert: "shared_experts")
        return d
    }

    static func latentAttention(_ c: ConfigReader, v3: Bool, rope: RopeParameters) throws(ModelError) -> LatentAttentionConfig {
        // An explicit null is the plain q_proj; a missing key is transformers' default rank.
        let queryRank: Int?
        if let value = c.object["q_lora_rank"], value.isNull {
            queryRank = nil
        } else {
            queryRank = try c.positiveInt("q_lora_rank", default: 1536, atMost: 1 << 16)
        }
        let nope = try c.positiveInt("qk_nope_head_dim", default: 128, atMost: 4096)
        let rotary = try c.positiveInt("qk_rope_head_dim", default: 64, atMost: 4096)
        guard rotary % 2 == 0 else { throw ModelError("\(c.file): qk_rope_head_dim must be even, found \(rotary)") }
        var scale = 1 / Double(nope + rotary).squareRoot()
        // DeepSeek's YaRN also sharpens the softmax: mscale(factor, mscale_all_dim) squared.
        if rope.kind != .default, let all = rope.mscaleAllDim, all != 0, rope.factor > 1 {
            let m = 0.1 * all * log(rope.factor) + 1
            scale *= m * m
        }
        return LatentAttentionConfig(
            queryRank: queryRank,
            latentRank: try c.positiveInt("kv_lora_rank", default: 512, atMost: 1 << 16),
            noPositionDim: nope,
            rotaryDim: rotary,
            valueDim: try c.positiveInt("v_head_dim", default: 128, atMost: 4096),
            // V2 rotates adjacent pairs always; V3 unless rope_interleave says otherwise.
            interleavedRotary: v3 ? try c.bool("rope_interleave", default: true) : true,
            softmaxScale: Float(scale))
    }

    static func router(_ c: ConfigReader, v3: Bool, experts: Int, scale: Float) throws(ModelError) -> RouterConfig {
        let scoring = try c.string("scoring_func") ?? (v3 ? "sigmoid" : "softmax")
        guard let gating = RouterConfig.Gating(rawValue: scoring) else {
            throw ModelError("\(c.file): scoring_func '\(scoring)' is not supported (supported: softmax, sigmoid)")
        }
        let method = try c.string("topk_method") ?? (v3 ? "noaux_tc" : "greedy")
        var router = RouterConfig(gating: gating, normalize: try c.bool("norm_topk_prob", default: v3), scale: scale)
        switch method {
        case "greedy":
            break
        case "group_limited_greedy", "noaux_tc":
            let groups = try c.positiveInt("n_group", default: v3 ? 8 : 1, atMost: 4096)
            let best = try c.positiveInt("topk_group", default: v3 ? min(4, groups) : groups, atMost: 4096)
            guard experts % groups == 0 else {
                throw ModelError("\(c.file): n_routed_experts (\(experts)) must be a multiple of n_group (\(groups))")
            }
            guard best <= groups else { throw ModelError("\(c.file): topk_group (\(best)) must not exceed n_group (\(groups))") }
            let k = try c.positiveInt("num_experts_per_tok", default: v3 ? 8 : 6)
            guard best * (experts / groups) >= k else {
                throw ModelError("\(c.file): topk_group (\(best)) groups of \(experts / groups) experts hold fewer than num_experts_per_tok (\(k))")
            }
            if method == "noaux_tc" && experts / groups < 2 {
                throw ModelError("\(c.file): noaux_tc scores each group by its two best experts; groups of \(experts / groups) are too small")
            }
            router.selection = .groupLimited(groups: groups, topGroups: best, score: method == "noaux_tc" ? .topTwoSum : .max)
            router.selectionBias = method == "noaux_tc"
        default:
            throw ModelError("\(c.file): topk_method '\(method)' is not supported (supported: greedy, group_limited_greedy, noaux_tc)")
        }
        return router
    }
}
