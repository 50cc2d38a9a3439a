import Runtime
import SwitchyardSupport
/// OLMoE: RMSNorm over the whole query and key projections, optional q/k/v clipping, and a router
/// whose top-k weights are not renormalised unless `norm_topk_prob` says so.
enum OLMoEFamily: ArchitectureFamily {
    static let modelTypes = ["olmoe"]

    static func decoderConfig(modelType: String, _ c: ConfigReader) throws(ModelError) -> DecoderConfig {
        var d = try Architectures.common(
            modelType: modelType, c, defaultEpsilon: 1e-5, defaultMaxPositions: 4096, defaultTheta: 10_000)
        d.queryKeyNorm = .wholeProjection
        d.clipQKV = try c.optionalDouble("clip_qkv").map { Float($0) }
        let moe = MoEConfig(
            expertCount: try Architectures.expertCount(c, default: 64),
            expertsPerToken: try c.positiveInt("num_experts_per_tok", default: 8),
            expertIntermediateSize: try c.positiveInt("intermediate_size"),
            router: .softmaxTopK(normalize: try c.bool("norm_topk_prob", default: false)))
        d.feedForward = Array(repeating: .mixtureOfExperts(moe), count: d.layerCount)
        let bias = try c.bool("attention_bias", default: false)
        d.queryKeyValueBias = bias
        d.outputBias = bias
        return d
    }
}
