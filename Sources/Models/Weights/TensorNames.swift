/// A decoder's tensor by what it is, whatever a file format calls it. The binder asks for these;
/// a format's `TensorNaming` turns them into the names stored in its files.
public enum TensorName: Hashable, Sendable {
    public enum Projection: String, Sendable { case gate, up, down }
    public enum Attention: String, Sendable {
        case query, key, value, output
        case queryBias, keyBias, valueBias, outputBias
        case queryNorm, keyNorm
        // Latent attention (DeepSeek): the compressed query path, the latent KV projection (with
        // the shared rotary key), its norm and up-projection.
        case queryDown, queryDownBias, queryDownNorm, queryUp
        case latentDown, latentDownBias, latentNorm, latentUp
        /// One learned logit per head (GPT-OSS's attention sinks).
        case sinks
    }

    case embedding
    case finalNorm
    case outputHead
    case inputNorm(layer: Int)
    case postAttentionNorm(layer: Int)
    case attention(layer: Int, Attention)
    /// A dense layer's MLP.
    case mlp(layer: Int, Projection)
    case router(layer: Int)
    /// The router's per-expert selection bias (DeepSeek-V3's e_score_correction_bias).
    case routerBias(layer: Int)
    case expert(layer: Int, expert: Int, Projection)
    /// Every expert's gate and up projections stacked: [experts, 2 x intermediate, hidden].
    case stackedExpertsGateUp(layer: Int)
    /// Every expert's down projection stacked: [experts, hidden, intermediate].
    case stackedExpertsDown(layer: Int)
    /// Every expert's gate and up biases, [experts, 2 x intermediate], and down biases,
    /// [experts, hidden] (GPT-OSS).
    case stackedExpertsGateUpBias(layer: Int)
    case stackedExpertsDownBias(layer: Int)
    /// One projection's biases of every expert, stored apart: [experts, rows] (GPT-OSS in GGUF).
    case expertBiases(layer: Int, Projection)
    /// The router's logit bias, [experts] (GPT-OSS).
    case routerLogitBias(layer: Int)
    case sharedExpert(layer: Int, Projection)
    /// The scalar gate of the shared expert's output (Qwen2-MoE).
    case sharedExpertGate(layer: Int)
}

/// How one file format, for one architecture family, names tensors.
public protocol TensorNaming: Sendable {
    func stored(_ name: TensorName) -> String
}

/// Hugging Face (transformers) checkpoint names. Families differ only in the MoE block's prefix
/// and the per-expert projection names, which their config mapping sets.
public struct HuggingFaceNaming: TensorNaming, Equatable {
    /// The MoE block's prefix under `model.layers.N.`: "block_sparse_moe" (Mixtral) or "mlp".
    public var moeBlock: String
    /// Per-expert projection names: gate (w1), up (w3), down (w2).
    public var expertGate: String
    public var expertUp: String
    public var expertDown: String
    /// The shared expert's name in the MoE block: "shared_expert" (Qwen2-MoE), "shared_experts" (DeepSeek).
    public var sharedExpert: String
    /// The router's name in the MoE block: "gate", or "router" (GPT-OSS).
    public var router: String
    /// Stacked experts are stored input-major, [experts, in, out], with the gate and up outputs
    /// interleaved (GPT-OSS), rather than [experts, out, in] with the gate rows first.
    public var stackedExpertsTransposed: Bool

    public init(moeBlock: String, expertGate: String, expertUp: String, expertDown: String, sharedExpert: String = "shared_expert",
                router: String = "gate", stackedExpertsTransposed: Bool = false) {
        self.moeBlock = moeBlock
        self.expertGate = expertGate
        self.expertUp = expertUp
        self.expertDown = expertDown
        self.sharedExpert = sharedExpert
        self.router = router
        self.stackedExpertsTransposed = stackedExpertsTransposed
    }

    public static let standard = HuggingFaceNaming(moeBlock: "mlp", expertGate: "gate_proj", expertUp: "up_proj", expertDown: "down_proj")

    public func stored(_ name: TensorName) -> String {
        func layer(_ i: Int) -> String { "model.layers.\(i)." }
        func projection(_ p: TensorName.Projection) -> String { "\(p.rawValue)_proj" }
        switch name {
        case .embedding: return "model.embed_tokens.weight"
        case .finalNorm: return "model.norm.weight"
        case .outputHead: return "lm_head.weight"
        case .inputNorm(let l): return layer(l) + "input_layernorm.weight"
        case .postAttentionNorm(let l): return layer(l) + "post_attention_layernorm.weight"
        case .attention(let l, let part):
            let a = layer(l) + "self_attn."
            switch part {
            case .query: return a + "q_proj.weight"
            case .key: return a + "k_proj.weight"
            case .value: return a + "v_proj.weight"
            case .output: return a + "o_proj.weight"
            case .queryBias: return a + "q_proj.bias"
            case .keyBias: return a + "k_proj.bias"
            case .valueBias: return a + "v_proj.bias"
            case .outputBias: return a + "o_proj.bias"
            case .queryNorm: return a + "q_norm.weight"
            case .keyNorm: return a + "k_norm.weight"
            case .queryDown: return a + "q_a_proj.weight"
            case .queryDownBias: return a + "q_a_proj.bias"
            case .queryDownNorm: return a + "q_a_layernorm.weight"
            case .queryUp: return a + "q_b_proj.weight"
            case .latentDown: return a + "kv_a_proj_with_mqa.weight"
            case .latentDownBias: return a + "kv_a_proj_with_mqa.bias"
            case .latentNorm: return a + "kv_a_layernorm.weight"
            case .latentUp: return a + "kv_b_proj.weight"
            case .sinks: return a + "sinks"
            }
        case .mlp(let l, let p): return layer(l) + "mlp." + projection(p) + ".weight"
        case .router(let l): return layer(l) + moeBlock + "." + router + ".weight"
        case .routerBias(let l): return layer(l) + moeBlock + "." + router + ".e_score_correction_bias"
        case .routerLogitBias(let l): return layer(l) + moeBlock + "." + router + ".bias"
        case .expert(let l, let e, let p):
            let stored = p == .gate ? expertGate : p == .up ? expertUp : expertDown
            return layer(l) + moeBlock + ".experts.\(e)." + stored + ".weight"
        case .stackedExpertsGateUp(let l): return layer(l) + moeBlock + ".experts.gate_up_proj"
        case .stackedExpertsDown(let l): return layer(l) + moeBlock + ".experts.down_proj"
        case .stackedExpertsGateUpBias(let l): return layer(l) + moeBlock + ".experts.gate_up_proj_bias"
        case .stackedExpertsDownBias(let l): return layer(l) + moeBlock + ".experts.down_proj_bias"
        case .expertBiases(let l, let p): return layer(l) + moeBlock + ".experts." + projection(p) + "_bias"
        case .sharedExpert(let l, let p): return layer(l) + moeBlock + "." + sharedExpert + "." + projection(p) + ".weight"
        case .sharedExpertGate(let l): return layer(l) + moeBlock + ".shared_expert_gate.weight"
        }
    }
}
