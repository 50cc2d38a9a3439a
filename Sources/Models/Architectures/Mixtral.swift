import Runtime
import SwitchyardSupport
/// Mixtral: Llama-style attention, and every layer a sparse MoE whose router takes a softmax,
/// keeps the top k and always renormalises them.
enum MixtralFamily: ArchitectureFamily {
    static let modelTypes = ["mixtral"]

    static func decoderConfig(modelType: String, _ c: ConfigReader) throws(ModelError) -> DecoderConfig {
        var d = try Architectures.common(
            modelType: modelType, c, defaultEpsilon: 1e-5, defaultMaxPositions: 131072, defaultTheta: 1_000_000,
            defaultKeyValueHeads: { _ in 8 })
        let moe = MoEConfig(
            expertCount: try Architectures.expertCount(c, default: 8),
            expertsPerToken: try c.positiveInt("num_experts_per_tok", default: 2),
            expertIntermediateSize: try c.positiveInt("intermediate_size"),
            router: .softmaxTopK(normalize: true))
        d.feedForward = Array(repeating: .mixtureOfExperts(moe), count: d.layerCount)
        if let window = try c.optionalInt("sliding_window") {
            d.slidingWindows = Array(repeating: window, count: d.layerCount)
        }
        d.naming = HuggingFaceNaming(moeBlock: "block_sparse_moe", expertGate: "w1", expertUp: "w3", expertDown: "w2")
        return d
    }
}
