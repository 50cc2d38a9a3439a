import GGUF
import Synchronization
import Kernels
import SwitchyardJSON
import SwitchyardSupport
import WeightFiles

/// A model in a GGUF file (or split files) as llama.cpp's converter writes it. The metadata
/// becomes the config.json the same model has on Hugging Face, so one mapping per family (and its
/// validation) serves both formats; tensors keep llama.cpp's names (`GGUFNaming`), and a merged
/// expert tensor is read one expert at a time, in place.
public struct GGUFSource: ModelSource {
    public let model: GGUFModel
    public var path: String { model.path }

    public init(path: String) throws(ModelError) {
        do { model = try GGUFModel(path: path) } catch { throw ModelError(error.description) }
    }

    /// llama.cpp's architecture names Switchyard reads.
    static let architectures = ["llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "olmoe", "deepseek2", "gpt-oss"]

    public func readConfig() throws(ModelError) -> DecoderConfig {
        let json = try huggingFaceConfig()
        var config = try Architectures.decoderConfig(json, file: path)
        // llama.cpp's converter permutes llama's q/k rows so that rotary pairs are adjacent.
        if try architecture() == "llama" { config.interleavedRotary = true }
        return config
    }

    func architecture() throws(ModelError) -> String {
        guard let value = model.metadata["general.architecture"], let name = value.stringValue else {
            throw ModelError("\(path): no 'general.architecture' string in the GGUF metadata")
        }
        guard Self.architectures.contains(name) else {
            throw ModelError("\(path): GGUF architecture '\(name)' is not supported (supported: \(Self.architectures.joined(separator: ", ")))")
        }
        return name
    }

    /// The config.json of the same model, from the metadata: every count range-checked by the
    /// family's own mapping, as a config.json's are.
    public func huggingFaceConfig() throws(ModelError) -> JSONValue {
        let arch = try architecture()
        let metadata = model.metadata
        func value(_ key: String) -> GGUFValue? { metadata[arch + "." + key] }
        func int(_ key: String) throws(ModelError) -> Int? {
            guard let v = value(key) else { return nil }
            guard let n = v.intValue else {
                throw ModelError("\(path): metadata '\(arch).\(key)' is a \(v.typeName) (\(v.summary)), expected an integer")
            }
            return n
        }
        func required(_ key: String) throws(ModelError) -> Int {
            guard let n = try int(key) else { throw ModelError("\(path): metadata '\(arch).\(key)' is missing") }
            return n
        }
        func double(_ key: String) throws(ModelError) -> Double? {
            guard let v = value(key) else { return nil }
            guard let d = v.doubleValue, d.isFinite else { throw ModelError("\(path): metadata '\(arch).\(key)' is not a finite number") }
            return d
        }
        guard let embedding = model.tensor("token_embd.weight"), embedding.dimensions.count == 2 else {
            throw ModelError("\(path): tensor 'token_embd.weight' is missing or not a matrix")
        }
        if model.tensor("rope_freqs.weight") != nil {
            throw ModelError("\(path): tensor 'rope_freqs.weight' (llama 3's rope scaling as per-frequency factors) is not supported")
        }
        let experts = try int("expert_count") ?? 0
        var c: [(key: String, value: JSONValue)] = []
        let modelType: String
        switch arch {
        case "llama": modelType = experts > 0 ? "mixtral" : "llama"
        case "qwen2moe": modelType = "qwen2_moe"
        case "qwen3moe": modelType = "qwen3_moe"
        // V3's router: sigmoid scores and a selection bias (V2's: softmax, no bias).
        case "deepseek2": modelType = try int("expert_gating_func") == 2 || hasLayerTensor("exp_probs_b.bias") ? "deepseek_v3" : "deepseek_v2"
        case "gpt-oss": modelType = "gpt_oss"
        default: modelType = arch
        }
        c.append(("model_type", .string(modelType)))
        c.append(("vocab_size", .int(embedding.dimensions[1])))
        c.append(("hidden_size", .int(try required("embedding_length"))))
        c.append(("num_hidden_layers", .int(try required("block_count"))))
        guard let heads = try int("attention.head_count") else {
            throw ModelError("\(path): metadata '\(arch).attention.head_count' is missing or is a per-layer array (not supported)")
        }
        c.append(("num_attention_heads", .int(heads)))
        // DeepSeek's latent attention is stored as one key/value head (MQA over the latent).
        c.append(("num_key_value_heads", .int(arch == "deepseek2" ? heads : try int("attention.head_count_kv") ?? heads)))
        if arch == "deepseek2" {
            // key_length_mla is qk_nope + qk_rope and value_length_mla v_head (files from before
            // those keys carried them as key_length and value_length).
            let rotary = try required("rope.dimension_count")
            let keyLength = try required(value("attention.key_length_mla") != nil ? "attention.key_length_mla" : "attention.key_length")
            let valueLength = try required(value("attention.value_length_mla") != nil ? "attention.value_length_mla" : "attention.value_length")
            guard keyLength > rotary else {
                throw ModelError("\(path): metadata key length (\(keyLength)) must exceed '\(arch).rope.dimension_count' (\(rotary))")
            }
            c += [("qk_rope_head_dim", .int(rotary)), ("qk_nope_head_dim", .int(keyLength - rotary)), ("v_head_dim", .int(valueLength)),
                  ("kv_lora_rank", .int(try required("attention.kv_lora_rank")))]
        } else if let keyLength = try int("attention.key_length") {
            if let valueLength = try int("attention.value_length"), valueLength != keyLength {
                throw ModelError("\(path): metadata '\(arch).attention.value_length' (\(valueLength)) differs from key_length (\(keyLength)); not supported for \(arch)")
            }
            c.append(("head_dim", .int(keyLength)))
            if let rotary = try int("rope.dimension_count"), rotary != keyLength, keyLength > 0 {
                c.append(("partial_rotary_factor", .double(Double(rotary) / Double(keyLength))))
            }
        }
        if let eps = try double("attention.layer_norm_rms_epsilon") { c.append(("rms_norm_eps", .double(eps))) }
        if let context = try int("context_length") { c.append(("max_position_embeddings", .int(context))) }
        c.append(("tie_word_embeddings", .bool(model.tensor("output.weight") == nil)))
        if let feedForward = try int("feed_forward_length") { c.append(("intermediate_size", .int(feedForward))) }
        var rope: [(key: String, value: JSONValue)] = [("rope_theta", .double(try double("rope.freq_base") ?? 10_000))]
        let scaling = value("rope.scaling.type")?.stringValue ?? "none"
        switch scaling {
        case "none": rope.append(("rope_type", .string("default")))
        case "linear", "yarn":
            guard let factor = try double("rope.scaling.factor") else { throw ModelError("\(path): rope scaling '\(scaling)' without '\(arch).rope.scaling.factor'") }
            rope += [("rope_type", .string(scaling)), ("factor", .double(factor))]
            if let original = try int("rope.scaling.original_context_length") { rope.append(("original_max_position_embeddings", .int(original))) }
            if scaling == "yarn" {
                if let fast = try double("rope.scaling.yarn_beta_fast") { rope.append(("beta_fast", .double(fast))) }
                if let slow = try double("rope.scaling.yarn_beta_slow") { rope.append(("beta_slow", .double(slow))) }
                // DeepSeek's converter writes 0.1 x mscale_all_dim; llama.cpp takes mscale as equal
                // (so YaRN's rotary attention factor is 1), as every released DeepSeek config has it.
                if arch == "deepseek2", let logMultiplier = try double("rope.scaling.yarn_log_multiplier") {
                    rope += [("mscale_all_dim", .double(logMultiplier / 0.1)), ("mscale", .double(logMultiplier / 0.1))]
                }
                // GPT-OSS's YaRN does not round its correction range (its config.json says so).
                if arch == "gpt-oss" { rope.append(("truncate", .bool(false))) }
            }
        default:
            throw ModelError("\(path): metadata '\(arch).rope.scaling.type' = '\(scaling)' is not supported (none, linear, yarn)")
        }
        c.append(("rope_parameters", .object(JSONObject(rope))))
        let used = try int("expert_used_count")
        let normalize = try value("expert_weights_norm").map { (v: GGUFValue) throws(ModelError) -> Bool in
            guard let b = v.boolValue else { throw ModelError("\(path): metadata '\(arch).expert_weights_norm' is not a bool") }
            return b
        }
        switch arch {
        case "llama" where experts > 0:
            c += [("num_local_experts", .int(experts)), ("num_experts_per_tok", .int(used ?? 2))]
            if let expertLength = try int("expert_feed_forward_length") { c.append(("intermediate_size", .int(expertLength))) }
        case "qwen2moe", "qwen3moe":
            c += [("num_experts", .int(experts)), ("num_experts_per_tok", .int(used ?? 4)), ("decoder_sparse_step", .int(1))]
            if let expertLength = try int("expert_feed_forward_length") { c.append(("moe_intermediate_size", .int(expertLength))) }
            if arch == "qwen2moe" {
                c.append(("shared_expert_intermediate_size", .int(try int("expert_shared_feed_forward_length") ?? 0)))
            }
            // llama.cpp normalises Qwen3-MoE's top-k weights and not Qwen2-MoE's unless the file says.
            c.append(("norm_topk_prob", .bool(normalize ?? (arch == "qwen3moe"))))
        case "olmoe":
            c += [("num_experts", .int(experts)), ("num_experts_per_tok", .int(used ?? 8)), ("norm_topk_prob", .bool(normalize ?? false))]
            if let expertLength = try int("expert_feed_forward_length") { c.append(("intermediate_size", .int(expertLength))) }
            if let clamp = try double("attention.clamp_kqv"), clamp > 0 { c.append(("clip_qkv", .double(clamp))) }
        case "deepseek2":
            c += [("n_routed_experts", .int(experts)), ("num_experts_per_tok", .int(used ?? 6)),
                  ("n_shared_experts", .int(try int("expert_shared_count") ?? 0)),
                  ("first_k_dense_replace", .int(try int("leading_dense_block_count") ?? 0)),
                  ("routed_scaling_factor", .double(try double("expert_weights_scale") ?? 1)),
                  ("norm_topk_prob", .bool(normalize ?? false))]
            if let expertLength = try int("expert_feed_forward_length") { c.append(("moe_intermediate_size", .int(expertLength))) }
            switch try int("expert_gating_func") {
            // Files from before the key: V3 by its selection bias, else V2.
            case nil: c.append(("scoring_func", .string(modelType == "deepseek_v3" ? "sigmoid" : "softmax")))
            case 1: c.append(("scoring_func", .string("softmax")))
            case 2: c.append(("scoring_func", .string("sigmoid")))
            case let other?: throw ModelError("\(path): metadata '\(arch).expert_gating_func' = \(other) is not supported (1 softmax, 2 sigmoid)")
            }
            // No key says how groups are chosen: by their two best experts with a selection bias
            // (V3's noaux_tc), by their best expert without one (V2's group_limited_greedy).
            let groups = try int("expert_group_count") ?? 1
            c += [("n_group", .int(groups)), ("topk_group", .int(try int("expert_group_used_count") ?? groups))]
            c.append(("topk_method", .string(hasLayerTensor("exp_probs_b.bias") ? "noaux_tc" : groups > 1 ? "group_limited_greedy" : "greedy")))
            if let rank = try int("attention.q_lora_rank") { c.append(("q_lora_rank", .int(rank))) } else { c.append(("q_lora_rank", .null)) }
        case "gpt-oss":
            c += [("num_local_experts", .int(experts)), ("num_experts_per_tok", .int(used ?? 4))]
            if let expertLength = try int("expert_feed_forward_length") { c.append(("intermediate_size", .int(expertLength))) }
            if let window = try int("attention.sliding_window") { c.append(("sliding_window", .int(window))) }
        default: break
        }
        // These families read a dense layer's size, which a GGUF of all-MoE layers need not carry.
        if ["qwen2moe", "qwen3moe", "deepseek2"].contains(arch), !c.contains(where: { $0.key == "intermediate_size" }) {
            c.append(("intermediate_size", .int(1)))
        }
        if let bos = metadata["tokenizer.ggml.bos_token_id"]?.intValue { c.append(("bos_token_id", .int(bos))) }
        if let eos = metadata["tokenizer.ggml.eos_token_id"]?.intValue { c.append(("eos_token_id", .int(eos))) }
        return .object(JSONObject(c))
    }

    /// Whether some layer has tensor `blk.N.<suffix>`.
    func hasLayerTensor(_ suffix: String) -> Bool {
        model.tensorNames.contains { $0.hasPrefix("blk.") && $0.hasSuffix("." + suffix) }
    }

    /// The element most of the matrices are stored as (what random weights are made as).
    public func storedElement() throws(ModelError) -> WeightElement {
        var counts: [GGMLType: Int] = [:]
        for file in model.files { for t in file.tensors where t.dimensions.count >= 2 { counts[t.type, default: 0] += t.byteCount } }
        guard let (type, _) = counts.max(by: { $0.value < $1.value }) else { return .f32 }
        guard let element = GGUFTensors.element(type) else {
            throw ModelError("\(path): the matrices are \(type), which Switchyard does not compute with")
        }
        return element
    }

    public func openTensors() throws(ModelError) -> TensorSource { GGUFTensors(model) }

    public func naming(for config: DecoderConfig) -> TensorNaming { GGUFNaming(architecture: try? architecture()) }
}

/// The tensors of a GGUF model, read in place. A name `base[e]` is expert `e` of the merged expert
/// tensor `base` ([experts, rows, columns]): its rows, where they lie in the file.
final class GGUFTensors: TensorSource {
    let model: GGUFModel
    /// Tensors made at load (DeepSeek's joined kv_b), kept as long as the model is.
    private let made = Mutex<[String: StoredTensor]>([:])

    init(_ model: GGUFModel) { self.model = model }

    /// The engine's element for a ggml type, or nil for one it does not compute with.
    static func element(_ type: GGMLType) -> WeightElement? {
        switch type {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        case .q4_0: return .q4_0
        case .q4_K: return .q4_k
        case .mxfp4: return .mxfp4
        case .q4_1: return .q4_1
        case .q5_0: return .q5_0
        case .q5_1: return .q5_1
        case .q2_K: return .q2_k
        case .q3_K: return .q3_k
        case .q5_K: return .q5_k
        case .q6_K: return .q6_k
        case .iq4_nl: return .iq4_nl
        case .iq4_xs: return .iq4_xs
        default: return nil
        }
    }

    func stored(_ t: GGUFTensorInfo, name: String, shape: [Int], data: UnsafeRawPointer, byteCount: Int) -> StoredTensor {
        StoredTensor(name: name, element: Self.element(t.type), typeName: t.type.name, shape: shape, data: data, byteCount: byteCount,
                     file: model.file(of: t.name)?.path ?? model.path, owner: model)
    }

    func tensor(_ name: String, shape: [Int]) throws(ModelError) -> StoredTensor {
        if name.hasSuffix("]"), let open = name.lastIndex(of: "["), let expert = Int(name[name.index(after: open)..<name.index(before: name.endIndex)]) {
            let base = String(name[..<open])
            guard let t = model.tensor(base) else {
                // Files from before merged experts: one tensor per expert ("blk.N.ffn_gate.E.weight").
                let legacy = String(base.dropLast("_exps.weight".count)) + ".\(expert).weight"
                if let single = model.tensor(legacy) { return stored(single, name: legacy, shape: single.shape, data: single.data, byteCount: single.byteCount) }
                throw ModelError("\(model.path): tensor '\(base)' not found in the GGUF file")
            }
            guard t.dimensions.count == 3, (0..<t.dimensions[2]).contains(expert) else {
                throw ModelError("\(model.path): tensor '\(base)' has shape \(t.shape); expected [experts, rows, columns] with expert \(expert)")
            }
            let each = t.byteCount / t.dimensions[2]
            return stored(t, name: name, shape: [t.dimensions[1], t.dimensions[0]], data: t.data + expert * each, byteCount: each)
        }
        if name.hasSuffix("attn_kv_b.weight"), model.tensor(name) == nil {
            if let joined = made.withLock({ $0[name] }) { return joined }
            if let joined = try joinedLatentUp(name) {
                made.withLock { $0[name] = joined }
                return joined
            }
        }
        guard let t = model.tensor(name) else { throw ModelError("\(model.path): tensor '\(name)' not found in the GGUF file") }
        // GGUF drops or keeps unit dimensions where config.json's shapes do the other (a shared
        // expert's gate is [hidden] here, [1, hidden] there): same values, same rows.
        var logical = t.shape
        if logical != shape, logical.reduce(1, *) == shape.reduce(1, *), logical.last == shape.last { logical = shape }
        return stored(t, name: name, shape: logical, data: t.data, byteCount: t.byteCount)
    }

    func contains(_ name: String) -> Bool {
        model.tensor(name) != nil || name.hasSuffix("attn_kv_b.weight") && model.tensor(Self.latentHalf(name, "attn_k_b")) != nil
    }

    /// "blk.N.attn_kv_b.weight" with `half` for attn_kv_b.
    static func latentHalf(_ name: String, _ half: String) -> String { String(name.dropLast("attn_kv_b.weight".count)) + half + ".weight" }

    /// DeepSeek's kv_b_proj, [heads x (qk_nope + v_head), kv_lora_rank], from the two halves
    /// llama.cpp's converter splits it into: attn_k_b [heads, kv_lora_rank, qk_nope] (each head's
    /// key rows transposed) and attn_v_b [heads, v_head, kv_lora_rank]. Made once at load, in
    /// their float element when both are the same float, else as float32 (the exact widened
    /// values of quantised halves).
    func joinedLatentUp(_ name: String) throws(ModelError) -> StoredTensor? {
        let keyName = Self.latentHalf(name, "attn_k_b"), valueName = Self.latentHalf(name, "attn_v_b")
        guard let k = model.tensor(keyName), let v = model.tensor(valueName) else { return nil }
        guard k.dimensions.count == 3, v.dimensions.count == 3, k.dimensions[2] == v.dimensions[2], k.dimensions[1] == v.dimensions[0] else {
            throw ModelError("\(model.path): tensors '\(keyName)' \(k.shape) and '\(valueName)' \(v.shape) are not [heads, kv_lora_rank, qk_nope] and [heads, v_head, kv_lora_rank]")
        }
        guard let ke = Self.element(k.type), let ve = Self.element(v.type) else {
            throw ModelError("\(model.path): tensors '\(keyName)' (\(k.type.name)) and '\(valueName)' (\(v.type.name)): a type Switchyard does not compute with")
        }
        let heads = k.dimensions[2], rank = k.dimensions[1], nope = k.dimensions[0], valueDim = v.dimensions[1]
        let keys = WeightMatrix(element: ke, rows: heads * rank, columns: nope, data: k.data)
        let values = WeightMatrix(element: ve, rows: heads * valueDim, columns: rank, data: v.data)
        let element: WeightElement = ke == ve && (ke == .bf16 || ke == .f16) ? ke : .f32
        let size = element == .f32 ? 4 : 2, perHead = nope + valueDim
        let buffer = HostBuffer(heads * perHead * rank * size)
        let out = buffer.pointer
        // Widened a row at a time: a K-quant value alone costs its whole block.
        var row = [Float](repeating: 0, count: max(nope, rank))
        for h in 0..<heads {
            for r in 0..<rank {
                if element != ke { row.withUnsafeMutableBufferPointer { keys.widenRow(h * rank + r, into: $0.baseAddress!) } }
                for i in 0..<nope {
                    let target = ((h * perHead + i) * rank + r) * size
                    if element == ke {
                        (out + target).copyMemory(from: k.data + ((h * rank + r) * nope + i) * size, byteCount: size)
                    } else {
                        out.storeBytes(of: row[i], toByteOffset: target, as: Float.self)
                    }
                }
            }
            for j in 0..<valueDim {
                let target = out + (h * perHead + nope + j) * rank * size
                if element == ve {
                    target.copyMemory(from: v.data + (h * valueDim + j) * rank * size, byteCount: rank * size)
                } else {
                    values.widenRow(h * valueDim + j, into: target.assumingMemoryBound(to: Float.self))
                }
            }
        }
        return StoredTensor(name: name, element: element, typeName: element == .f32 ? "F32" : k.type.name, shape: [heads * perHead, rank],
                            data: UnsafeRawPointer(out), byteCount: heads * perHead * rank * size, file: model.file(of: keyName)?.path ?? model.path,
                            owner: buffer)
    }

    var allTensors: [StoredTensor] {
        model.tensorNames.compactMap { name in model.tensor(name).map { stored($0, name: name, shape: $0.shape, data: $0.data, byteCount: $0.byteCount) } }
    }

    var files: [MappedFile] { model.files.map(\.mapping) }
}

/// llama.cpp's tensor names (its converter's `MODEL_TENSOR` table for these families).
public struct GGUFNaming: TensorNaming {
    /// The norm after attention: `ffn_norm` in most families, `post_attention_norm` in GPT-OSS's.
    public var postAttentionNorm = "ffn_norm"

    public init(architecture: String? = nil) {
        if architecture == "gpt-oss" { postAttentionNorm = "post_attention_norm" }
    }

    public func stored(_ name: TensorName) -> String {
        func block(_ l: Int) -> String { "blk.\(l)." }
        func projection(_ p: TensorName.Projection) -> String { "ffn_" + p.rawValue }
        switch name {
        case .embedding: return "token_embd.weight"
        case .finalNorm: return "output_norm.weight"
        case .outputHead: return "output.weight"
        case .inputNorm(let l): return block(l) + "attn_norm.weight"
        case .postAttentionNorm(let l): return block(l) + postAttentionNorm + ".weight"
        case .attention(let l, let part):
            let a = block(l)
            switch part {
            case .query: return a + "attn_q.weight"
            case .key: return a + "attn_k.weight"
            case .value: return a + "attn_v.weight"
            case .output: return a + "attn_output.weight"
            case .queryBias: return a + "attn_q.bias"
            case .keyBias: return a + "attn_k.bias"
            case .valueBias: return a + "attn_v.bias"
            case .outputBias: return a + "attn_output.bias"
            case .queryNorm: return a + "attn_q_norm.weight"
            case .keyNorm: return a + "attn_k_norm.weight"
            case .queryDown: return a + "attn_q_a.weight"
            case .queryDownBias: return a + "attn_q_a.bias"
            case .queryDownNorm: return a + "attn_q_a_norm.weight"
            case .queryUp: return a + "attn_q_b.weight"
            case .latentDown: return a + "attn_kv_a_mqa.weight"
            case .latentDownBias: return a + "attn_kv_a_mqa.bias"
            case .latentNorm: return a + "attn_kv_a_norm.weight"
            case .latentUp: return a + "attn_kv_b.weight"
            case .sinks: return a + "attn_sinks.weight"
            }
        case .mlp(let l, let p): return block(l) + projection(p) + ".weight"
        case .router(let l): return block(l) + "ffn_gate_inp.weight"
        case .routerBias(let l): return block(l) + "exp_probs_b.bias"
        case .routerLogitBias(let l): return block(l) + "ffn_gate_inp.bias"
        case .expert(let l, let e, let p): return block(l) + projection(p) + "_exps.weight[\(e)]"
        // Merged gate+up tensors are not how GGUF stores experts: absent names send the binder to
        // the per-expert path above.
        case .stackedExpertsGateUp(let l): return block(l) + "ffn_gate_up_exps.weight"
        case .stackedExpertsDown(let l): return block(l) + "ffn_down_exps.stacked"
        case .stackedExpertsGateUpBias(let l): return block(l) + "ffn_gate_up_exps.bias"
        case .stackedExpertsDownBias(let l): return block(l) + "ffn_down_exps.bias"
        case .expertBiases(let l, let p): return block(l) + projection(p) + "_exps.bias"
        case .sharedExpert(let l, let p): return block(l) + projection(p) + "_shexp.weight"
        case .sharedExpertGate(let l): return block(l) + "ffn_gate_inp_shexp.weight"
        }
    }
}
