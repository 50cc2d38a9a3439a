import Kernels
import Runtime
import SwitchyardSupport

/// GPT-OSS: grouped-query attention with biases and a learned sink logit per head, sliding-window
/// and full attention layers alternating (`layer_types`), YaRN rotary; every layer an MoE whose
/// router (with a bias) keeps the top k logits and takes their softmax, and whose experts have
/// biases and a clamped SwiGLU. The released checkpoints store the experts in MXFP4.
enum GptOssFamily: ArchitectureFamily {
    static let modelTypes = ["gpt_oss"]

    static func decoderConfig(modelType: String, _ c: ConfigReader) throws(ModelError) -> DecoderConfig {
        var d = try Architectures.common(
            modelType: modelType, c, defaultEpsilon: 1e-5, defaultMaxPositions: 131072, defaultTheta: 150_000)
        if !c.has("rope_parameters") && !c.has("rope_scaling") {
            // transformers' default for GPT-OSS when the config names none.
            var rope = RopeParameters(kind: .yarn, theta: d.rope.theta)
            rope.factor = 32
            rope.originalMaxPositions = 4096
            rope.truncate = false
            d.rope = rope
        }
        let window = try c.optionalInt("sliding_window") ?? 128
        if let types = try c.stringArray("layer_types") {
            guard types.count == d.layerCount else {
                throw ModelError("\(c.file): 'layer_types' has \(types.count) entries for \(d.layerCount) layers")
            }
            for t in types where t != "sliding_attention" && t != "full_attention" {
                throw ModelError("\(c.file): layer type '\(t)' is not supported (supported: sliding_attention, full_attention)")
            }
            d.slidingWindows = types.map { $0 == "sliding_attention" ? window : nil }
        } else {
            d.slidingWindows = (0..<d.layerCount).map { $0 % 2 == 0 ? window : nil }
        }
        let bias = try c.bool("attention_bias", default: true)
        d.queryKeyValueBias = bias
        d.outputBias = bias
        d.attentionSinks = true
        let alpha = try c.double("swiglu_alpha", default: 1.702)
        let limit = try c.double("swiglu_limit", default: 7)
        guard alpha.isFinite, alpha > 0, alpha < 1e6 else { throw ModelError("\(c.file): swiglu_alpha must be positive, found \(alpha)") }
        guard limit.isFinite, limit > 0, limit < 1e9 else { throw ModelError("\(c.file): swiglu_limit must be positive, found \(limit)") }
        // Softmax over the k best logits is the full softmax's top k renormalised.
        var moe = MoEConfig(
            expertCount: try Architectures.expertCount(c, default: 128),
            expertsPerToken: try c.positiveInt("num_experts_per_tok", default: 4),
            expertIntermediateSize: try c.positiveInt("intermediate_size"),
            router: .softmaxTopK(normalize: true))
        moe.routerLogitBias = true
        moe.expertBiases = true
        moe.activation = .clampedSwiGLU(alpha: Float(alpha), limit: Float(limit))
        if let q = try c.object("quantization_config") {
            let method = try q.string("quant_method") ?? "none"
            guard method == "mxfp4" else {
                throw ModelError("\(c.file): quantization_config's quant_method '\(method)' is not supported for gpt_oss (supported: mxfp4)")
            }
            moe.expertElement = .mxfp4
        }
        d.feedForward = Array(repeating: .mixtureOfExperts(moe), count: d.layerCount)
        d.naming = HuggingFaceNaming(moeBlock: "mlp", expertGate: "gate_proj", expertUp: "up_proj", expertDown: "down_proj",
                                     router: "router", stackedExpertsTransposed: true)
        return d
    }
}
