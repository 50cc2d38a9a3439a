import Runtime
import SwitchyardSupport
/// Llama and Mistral: the plain decoder (RMSNorm, RoPE, GQA, SwiGLU MLP).
enum LlamaFamily: ArchitectureFamily {
    static let modelTypes = ["llama", "mistral"]

    static func decoderConfig(modelType: String, _ c: ConfigReader) throws(ModelError) -> DecoderConfig {
        var d = try Architectures.common(
            modelType: modelType, c, defaultEpsilon: 1e-6,
            defaultMaxPositions: modelType == "mistral" ? 131072 : 2048,
            defaultTheta: modelType == "mistral" ? 1_000_000 : 10_000)
        if modelType == "mistral", let window = try c.optionalInt("sliding_window") {
            d.slidingWindows = Array(repeating: window, count: d.layerCount)
        }
        let bias = try c.bool("attention_bias", default: false)
        d.queryKeyValueBias = bias
        d.outputBias = bias
        return d
    }
}
