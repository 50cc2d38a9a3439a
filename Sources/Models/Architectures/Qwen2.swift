import Runtime
import SwitchyardSupport
/// Qwen2 and Qwen2-MoE: q/k/v projections with bias (read from the checkpoint), optional sliding
/// windows; the MoE variant adds a sigmoid-gated shared expert and dense `mlp_only_layers`.
enum Qwen2Family: ArchitectureFamily {
    static let modelTypes = ["qwen2", "qwen2_moe"]

    static func decoderConfig(modelType: String, _ c: ConfigReader) throws(ModelError) -> DecoderConfig {
        var d = try Architectures.common(
            modelType: modelType, c, defaultEpsilon: 1e-6, defaultMaxPositions: 32768, defaultTheta: 10_000)
        d.slidingWindows = try Architectures.qwenSlidingWindows(c, layers: d.layerCount)
        if modelType == "qwen2_moe" {
            let shared = try c.int("shared_expert_intermediate_size", default: 5632)
            let moe = MoEConfig(
                expertCount: try Architectures.expertCount(c, default: 60),
                expertsPerToken: try c.positiveInt("num_experts_per_tok", default: 4),
                expertIntermediateSize: try c.positiveInt("moe_intermediate_size", default: 1408),
                router: .softmaxTopK(normalize: try c.bool("norm_topk_prob", default: false)),
                sharedExpertIntermediateSize: shared > 0 ? shared : nil,
                sharedExpertGated: shared > 0)
            d.feedForward = try Architectures.qwenFeedForward(c, layers: d.layerCount, moe: moe)
        }
        d.queryKeyValueBias = try c.bool("qkv_bias", default: true)
        return d
    }
}
