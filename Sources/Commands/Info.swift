import ArgumentParser
import Models
import SwitchyardJSON
import SwitchyardSupport

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a model's architecture, parameter counts, tensor dtypes and memory needs.")

    @Option(help: "A Hugging Face model folder or a GGUF file (default: the bundled demo model).")
    var model: String?

    @Option(name: .customLong("context-length"), help: "Context length for the KV cache estimate (default: the model's maximum).")
    var contextLength: Int?

    func validate() throws {
        try checkRange(contextLength, "--context-length", 1...positionLimit)
    }

    @Flag(help: "Print JSON.")
    var json = false

    @Flag(name: .customLong("random-weights"), help: "Describe the model from config.json alone (no weights are read or made).")
    var randomWeights = false

    func run() throws {
        try reportingErrors {
            let info: ModelInfo, c: DecoderConfig
            if randomWeights {
                // From config.json alone: no weights are made.
                let source = try ModelFormats.open(try modelDirectory(model))
                c = try source.readConfig()
                info = ModelInfo(config: c, element: try source.storedElement())
            } else {
                let m = try Model(directory: modelDirectory(model), threads: 1)
                c = m.config
                info = ModelInfo(m)
            }
            let context = min(contextLength ?? c.maxPositions, c.maxPositions)
            let kv = info.kvCacheBytesPerToken * context
            let moe = c.feedForward.compactMap(\.moe).first
            let moeLayers = c.feedForward.filter { $0.moe != nil }.count
            if json {
                var object: JSONObject = JSONObject()
                object["model_type"] = .string(c.modelType)
                object["layers"] = .int(c.layerCount)
                object["hidden_size"] = .int(c.hiddenSize)
                object["attention_heads"] = .int(c.headCount)
                object["key_value_heads"] = .int(c.keyValueHeadCount)
                object["head_dim"] = .int(c.headDim)
                object["vocab_size"] = .int(c.vocabularySize)
                object["moe_layers"] = .int(moeLayers)
                object["experts"] = .int(moe?.expertCount ?? 0)
                object["experts_per_token"] = .int(moe?.expertsPerToken ?? 0)
                object["total_parameters"] = .int(info.totalParameters)
                object["active_parameters"] = .int(info.activeParameters)
                object["expert_parameters"] = .int(info.expertParameters)
                object["weight_bytes"] = .int(info.weightBytes)
                object["dtypes"] = .object(JSONObject(info.dtypes.map { (key: $0.dtype, value: ["tensors": .int($0.tensors), "bytes": .int($0.bytes)]) }))
                object["kv_cache_bytes_per_token"] = .int(info.kvCacheBytesPerToken)
                object["kv_cache_values_per_token_per_layer"] = .int(info.kvValuesPerTokenPerLayer)
                if case .latent(let m) = c.attention {
                    object["attention"] = .string("latent")
                    object["kv_lora_rank"] = .int(m.latentRank)
                    object["qk_rope_head_dim"] = .int(m.rotaryDim)
                    object["q_lora_rank"] = m.queryRank.map { .int($0) } ?? .null
                } else {
                    object["attention"] = .string("grouped_query")
                }
                object["derived_weight_bytes"] = .int(info.derivedWeightBytes)
                object["context_length"] = .int(context)
                object["memory_bytes"] = .int(info.weightBytes + info.derivedWeightBytes + kv)
                writeOut(JSONValue.object(object).serialized() + "\n")
                return
            }
            var lines: [String]
            let kvShape: String
            if case .latent(let m) = c.attention {
                lines = [
                    "architecture      \(c.modelType) (\(c.layerCount) layers, hidden \(c.hiddenSize), \(c.headCount) heads, vocab \(c.vocabularySize))",
                    "attention         latent: kv_lora_rank \(m.latentRank) + qk_rope \(m.rotaryDim) cached per token per layer; q_lora_rank \(m.queryRank.map(String.init) ?? "none (q_proj)"); per head qk \(m.noPositionDim) + \(m.rotaryDim), v \(m.valueDim)",
                ]
                kvShape = "(\(m.latentRank) + \(m.rotaryDim)) x \(c.layerCount) layers x 4 bytes"
            } else {
                lines = [
                    "architecture      \(c.modelType) (\(c.layerCount) layers, hidden \(c.hiddenSize), \(c.headCount) heads / \(c.keyValueHeadCount) KV heads x \(c.headDim), vocab \(c.vocabularySize))",
                ]
                kvShape = "2 x \(c.keyValueHeadCount) x \(c.headDim) x \(c.layerCount) layers x 4 bytes"
            }
            if let moe {
                lines.append("experts           \(moe.expertCount) per MoE layer, \(moe.expertsPerToken) per token, \(moeLayers) of \(c.layerCount) layers sparse\(moe.sharedExpertIntermediateSize != nil ? ", shared expert" : "")")
            }
            lines += [
                "parameters        \(formatCount(info.totalParameters)) total, \(formatCount(info.activeParameters)) active per token\(info.expertParameters > 0 ? ", \(formatCount(info.expertParameters)) in experts" : "")",
                "dtypes            " + info.dtypes.map { "\($0.dtype): \($0.tensors) tensors, \(formatBytes($0.bytes, digits: 2))" }.joined(separator: "; "),
                "weights           \(formatBytes(info.weightBytes, digits: 2)) (\(randomWeights ? "from config.json" : "memory-mapped"))"
                    + (info.derivedWeightBytes > 0 ? ", \(formatBytes(info.derivedWeightBytes, digits: 2)) made at load (W_UK transposed per head)" : ""),
                "KV cache (f32)    \(formatBytes(info.kvCacheBytesPerToken, digits: 2)) per token (\(kvShape)), \(formatBytes(kv, digits: 2)) at \(context) tokens",
                "memory needed     \(formatBytes(info.weightBytes + info.derivedWeightBytes + kv, digits: 2)) at \(context) tokens",
            ]
            writeOut(lines.joined(separator: "\n") + "\n")
        }
    }
}
