import Runtime
import SwitchyardSupport
/// Qwen3 and Qwen3-MoE: RMSNorm on each query and key head before RoPE, head_dim independent of
/// the hidden size; the MoE variant has no shared expert.
enum Qwen3Family: ArchitectureFamily {
    static let modelTypes = ["qwen3", "qwen3_moe"]

    static func decoderConfig(modelType: String, _ c: ConfigReader) throws(ModelError) -> DecoderConfig {
        var d = try Architectures.common(
            modelType: modelType, c, defaultEpsilon: 1e-6, defaultMaxPositions: 32768, defaultTheta: 10_000)
        d.queryKeyNorm = .perHead
        d.slidingWindows = try Architectures.qwenSlidingWindows(c, layers: d.layerCount)
        if modelType == "qwen3_moe" {
            let moe = MoEConfig(
                expertCount: try Architectures.expertCount(c, default: 128),
                expertsPerToken: try c.positiveInt("num_experts_per_tok", default: 8),
                expertIntermediateSize: try c.positiveInt("moe_intermediate_size", default: 768),
                router: .softmaxTopK(normalize: try c.bool("norm_topk_prob", default: false)),
                sharedExpertIntermediateSize: nil,
                sharedExpertGated: false)
            d.feedForward = try Architectures.qwenFeedForward(c, layers: d.layerCount, moe: moe)
        }
        let bias = try c.bool("attention_bias", default: false)
        d.queryKeyValueBias = bias
        d.outputBias = bias
        return d
    }
}
