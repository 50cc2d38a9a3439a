import Testing
import Runtime
import Kernels
import SafeTensors
import SwitchyardJSON
@testable import Models
import SwitchyardSupport
import SwitchyardTestSupport

func config(_ json: JSONValue) throws -> DecoderConfig {
    try Architectures.decoderConfig(json, file: "config.json")
}

func expectModelError(containing parts: [String], _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error containing \(parts)")
    } catch {
        let message = "\(error)"
        for part in parts { #expect(message.contains(part), "'\(message)' should mention '\(part)'") }
        #expect(!message.contains("\n"), "errors are one line")
    }
}

let base: JSONObject = ([
    "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
] as JSONValue).objectValue!

func with(_ type: String, _ extra: JSONValue = [:]) -> JSONValue {
    var o = base
    o["model_type"] = .string(type)
    for e in extra.objectValue!.entries { o[e.key] = e.value }
    return .object(o)
}

@Suite("configuration")
struct ConfigTests {
    @Test func unknownModelTypeListsSupported() {
        expectModelError(containing: ["unsupported model_type 'gpt_bigcode'", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "llama", "qwen2", "qwen3"]) {
            _ = try config(with("gpt_bigcode"))
        }
    }

    @Test func missingAndMistypedKeysAreNamed() {
        var o = base
        o["model_type"] = "llama"
        o["hidden_size"] = nil
        expectModelError(containing: ["config.json", "'hidden_size'"]) { _ = try config(.object(o)) }
        expectModelError(containing: ["'num_attention_heads'", "integer", "string"]) {
            _ = try config(with("llama", ["num_attention_heads": "four"]))
        }
    }

    @Test func transformersDefaultsFillMissingKeys() throws {
        let mixtral = try config(with("mixtral", ["num_attention_heads": 16]))
        #expect(mixtral.keyValueHeadCount == 8 && mixtral.headDim == 4)
        #expect(mixtral.rope.theta == 1_000_000)
        #expect(mixtral.rmsNormEpsilon == 1e-5)
        #expect(mixtral.feedForward[0].moe == MoEConfig(expertCount: 8, expertsPerToken: 2, expertIntermediateSize: 128, router: .softmaxTopK(normalize: true)))
        let llama = try config(with("llama"))
        #expect(llama.rope.theta == 10_000 && llama.rmsNormEpsilon == 1e-6 && llama.headDim == 16 && llama.keyValueHeadCount == 4)
        let olmoe = try config(with("olmoe"))
        #expect(olmoe.feedForward[1].moe?.router.normalize == false && olmoe.queryKeyNorm == .wholeProjection)
    }

    /// DeepSeek's and GPT-OSS's keys map onto the routing rules and attention they name.
    @Test func deepSeekAndGptOssConfigs() throws {
        let v2 = try config(with("deepseek_v2", ["q_lora_rank": .null, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                                                 "v_head_dim": 12, "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
                                                 "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
                                                 "routed_scaling_factor": 1.5, "first_k_dense_replace": 1]))
        guard case .latent(let m2) = v2.attention else { Issue.record("not latent"); return }
        #expect(m2.queryRank == nil && m2.cachedWidth == 40 && m2.interleavedRotary && v2.headDim == 8)
        #expect(v2.kvLayout == KVLayout(layers: 2, keyWidth: 40, valueWidth: 0))
        #expect(v2.feedForward[0].moe == nil)
        let r2 = try #require(v2.feedForward[1].moe)
        #expect(r2.router == RouterConfig(gating: .softmax, selection: .groupLimited(groups: 4, topGroups: 2, score: .max), normalize: false, scale: 1.5))
        #expect(r2.sharedExpertIntermediateSize == 2 * 24 && !r2.sharedExpertGated)
        // q_lora_rank missing is transformers' default rank; V3 routes by sigmoid plus a bias, top-2 sums.
        let v3 = try config(with("deepseek_v3", ["kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
                                                 "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 0,
                                                 "rope_interleave": false]))
        guard case .latent(let m3) = v3.attention else { Issue.record("not latent"); return }
        #expect(m3.queryRank == 1536 && !m3.interleavedRotary)
        let r3 = try #require(v3.feedForward[0].moe)
        #expect(r3.router == RouterConfig(gating: .sigmoid, selection: .groupLimited(groups: 2, topGroups: 1, score: .topTwoSum),
                                          selectionBias: true, normalize: true, scale: 2.5))
        expectModelError(containing: ["n_group", "multiple"]) { _ = try config(with("deepseek_v3", ["n_routed_experts": 8, "n_group": 3])) }
        expectModelError(containing: ["topk_method 'random'"]) { _ = try config(with("deepseek_v2", ["topk_method": "random"])) }
        let oss = try config(with("gpt_oss", ["num_local_experts": 4, "sliding_window": 3]))
        #expect(oss.attentionSinks && oss.queryKeyValueBias && oss.outputBias && oss.rope.kind == .yarn)
        #expect(oss.slidingWindows == [3, nil])
        let ro = try #require(oss.feedForward[0].moe)
        #expect(ro.routerLogitBias && ro.expertBiases && ro.activation == .clampedSwiGLU(alpha: 1.702, limit: 7) && ro.expertElement == nil)
        let released = try config(with("gpt_oss", ["quantization_config": ["quant_method": "mxfp4"]]))
        #expect(released.feedForward[0].moe?.expertElement == .mxfp4)
    }

    @Test func ropeInBothConfigForms() throws {
        let old = try config(with("llama", ["rope_theta": 500000.0, "rope_scaling": ["rope_type": "linear", "factor": 4.0]]))
        let new = try config(with("llama", ["rope_parameters": ["rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0]]))
        #expect(old.rope == new.rope)
        #expect(new.rope.kind == RopeParameters.Kind.linear && new.rope.theta == 500000 && new.rope.factor == 4)
        let legacyType = try config(with("llama", ["rope_scaling": ["type": "linear", "factor": 2.0]]))
        #expect(legacyType.rope.factor == 2)
        expectModelError(containing: ["rope type 'longrope'", "yarn"]) {
            _ = try config(with("llama", ["rope_scaling": ["rope_type": "longrope", "factor": 2.0]]))
        }
    }

    @Test func qwenMoELayerPattern() throws {
        let c = try config(with("qwen2_moe", ["num_hidden_layers": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3], "num_experts": 4]))
        #expect(c.feedForward.map { $0.moe != nil } == [false, true, false, false])
        #expect(c.feedForward[0] == FeedForwardKind.dense(intermediateSize: 128))
        let q3 = try config(with("qwen3_moe", ["num_local_experts": 16, "num_experts_per_tok": 4]))
        #expect(q3.feedForward[0].moe?.expertCount == 16, "transformers 5 writes num_local_experts")
    }

    @Test func slidingWindows() throws {
        let q = try config(with("qwen2", ["use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1]))
        #expect(q.slidingWindows == [nil, 8])
        let t = try config(with("qwen3", ["sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]]))
        #expect(t.slidingWindows == [8, nil])
        let m = try config(with("mixtral", ["sliding_window": 4096, "num_attention_heads": 8]))
        #expect(m.slidingWindows == [4096, 4096])
    }
}

@Suite("layers")
struct LayerTests {
    // Inverse frequencies from transformers' ROPE_INIT_FUNCTIONS for the same parameters.
    @Test func llama3RopeMatchesTransformers() {
        var rope = RopeParameters(kind: .llama3, theta: 10000)
        rope.factor = 8; rope.lowFrequencyFactor = 1; rope.highFrequencyFactor = 4; rope.originalMaxPositions = 64
        let r = RotaryEmbedding(rope, headDim: 16, maxPositions: 512)
        let expected: [Float] = [1.0, 0.244384587, 0.013042256, 0.003952847, 0.00125, 0.000395285, 0.000125, 3.9528e-05]
        for (a, b) in zip(r.inverseFrequencies, expected) { #expect(abs(a - b) <= 1e-6 * max(1, b) + 1e-9, "\(a) vs \(b)") }
        #expect(r.attentionScaling == 1)
    }

    @Test func yarnRopeMatchesTransformers() {
        var rope = RopeParameters(kind: .yarn, theta: 10000)
        rope.factor = 4; rope.originalMaxPositions = 128
        let r = RotaryEmbedding(rope, headDim: 16, maxPositions: 512)
        let expected: [Float] = [1.0, 0.237170815, 0.049999997, 0.007905695, 0.0025, 0.000790569, 0.00025, 7.9057e-05]
        for (a, b) in zip(r.inverseFrequencies, expected) { #expect(abs(a - b) <= 1e-6 * b + 1e-9, "\(a) vs \(b)") }
        #expect(abs(r.attentionScaling - 1.138629436) < 1e-6)
    }

    @Test func defaultAndLinearRope() {
        let d = RotaryEmbedding(RopeParameters(theta: 10000), headDim: 4, maxPositions: 10)
        #expect(d.inverseFrequencies == [1, 0.01])
        var linear = RopeParameters(kind: .linear, theta: 10000)
        linear.factor = 2
        #expect(RotaryEmbedding(linear, headDim: 4, maxPositions: 10).inverseFrequencies == [0.5, 0.005])
        var cos: [Float] = [0, 0], sin: [Float] = [0, 0]
        d.cosSin(position: 3, cos: &cos, sin: &sin)
        #expect(abs(cos[0] - Float(Glibc.cos(3.0))) < 1e-7 && abs(sin[1] - Float(Glibc.sin(0.03))) < 1e-7)
    }

    @Test func routerTopKWithTies() {
        // Experts 1 and 2 tie: the lower index wins, as torch.topk does.
        let logits: [Float] = [0, 2, 2, 1]
        let r = route(logits: logits, expertCount: 4, k: 2, config: .softmaxTopK(normalize: false))
        #expect(r.experts == [1, 2])
        let e0 = Float(1), e2 = Float(exp(2.0)), e1 = Float(exp(1.0))
        let sum = e0 + 2 * e2 + e1
        #expect(abs(r.weights[0] - e2 / sum) < 1e-6)
        let n = route(logits: logits, expertCount: 4, k: 3, config: .softmaxTopK(normalize: true))
        #expect(n.experts == [1, 2, 3])
        #expect(abs(n.weights.reduce(0, +) - 1) < 1e-6)
        #expect(abs(n.weights[2] - e1 / (2 * e2 + e1)) < 1e-6)
    }
}

@Suite("model folders with bad input")
struct BadModelFolderTests {
    /// A copy of a fixture folder whose files the test may change.
    func scratchCopy(of arch: String) -> String {
        let dir = "/tmp/switchyard-bad-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let src = fixturePath(arch)
        _ = system("mkdir -p \(dir) && cp -L \(src)/*.json \(src)/model.safetensors \(dir)/")
        return dir
    }

    func write(_ text: String, to path: String) {
        let f = fopen(path, "w")!
        fputs(text, f)
        fclose(f)
    }

    @Test func missingFolderAndConfig() {
        expectModelError(containing: ["/nonexistent", "config.json"]) { _ = try Model(directory: "/nonexistent", threads: 1) }
    }

    @Test func malformedConfig() {
        let dir = scratchCopy(of: "llama")
        write("{\"model_type\": \"llama\",", to: dir + "/config.json")
        expectModelError(containing: [dir + "/config.json", "malformed JSON", "line 1"]) { _ = try Model(directory: dir, threads: 1) }
    }

    @Test func unknownArchitecture() {
        let dir = scratchCopy(of: "llama")
        write(#"{"model_type": "mamba", "vocab_size": 10}"#, to: dir + "/config.json")
        expectModelError(containing: ["unsupported model_type 'mamba'", "mixtral"]) { _ = try Model(directory: dir, threads: 1) }
    }

    @Test func configDisagreesWithWeights() throws {
        let dir = scratchCopy(of: "mixtral")
        var json = try readJSON(dir + "/config.json").objectValue!
        json["hidden_size"] = 64
        write(JSONValue.object(json).serialized(), to: dir + "/config.json")
        expectModelError(containing: ["model.safetensors", "'model.embed_tokens.weight'", "[32000, 32]", "[32000, 64]"]) { _ = try Model(directory: dir, threads: 1) }
    }

    @Test func missingTensor() throws {
        let dir = scratchCopy(of: "mixtral")
        var json = try readJSON(dir + "/config.json").objectValue!
        json["num_local_experts"] = 5
        write(JSONValue.object(json).serialized(), to: dir + "/config.json")
        expectModelError(containing: ["'model.layers.0.block_sparse_moe.experts.4.w1.weight'", "not found"]) { _ = try Model(directory: dir, threads: 1) }
    }

    @Test func truncatedWeights() {
        let dir = scratchCopy(of: "qwen3")
        truncate(dir + "/model.safetensors", 100_000)
        expectModelError(containing: [dir + "/model.safetensors", "truncated"]) { _ = try Model(directory: dir, threads: 1) }
    }

    @Test func unsupportedWeightDtype() throws {
        // A model whose embedding is int8: valid safetensors, but not weights we compute with.
        let dir = scratchCopy(of: "llama")
        let header = #"{"model.embed_tokens.weight":{"dtype":"I8","shape":[32000,32],"data_offsets":[0,1024000]}}"#
        var bytes = Array(header.utf8)
        while bytes.count % 8 != 0 { bytes.append(0x20) }
        var file: [UInt8] = (0..<8).map { UInt8((bytes.count >> (8 * $0)) & 0xFF) } + bytes
        file += [UInt8](repeating: 0, count: 1_024_000)
        let f = fopen(dir + "/model.safetensors", "wb")!
        _ = file.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
        expectModelError(containing: ["'model.embed_tokens.weight'", "I8", "BF16"]) { _ = try Model(directory: dir, threads: 1) }
    }

    @Test func overLongPromptAndBadTokens() throws {
        let model = try Model(directory: fixturePath("qwen3"), threads: 1)
        let session = try model.makeSession(contextLength: 4)
        expectModelError(containing: ["6 tokens exceed the context length of 4"]) { _ = try session.forward([1, 2, 3, 4, 5, 6]) }
        expectModelError(containing: ["token id 40000", "vocabulary"]) { _ = try session.forward([40000]) }
        #expect(session.position == 0, "a refused call changes nothing")
    }
}

@Suite("random weights")
struct RandomWeightsTests {
    @Test("the same tensors, shapes and dtypes as the checkpoint transformers saved", arguments: allArchitectures)
    func sameTensorsAsTransformers(arch: String) throws {
        let saved = try Model(directory: fixturePath(arch), threads: 1)
        let random = try Model(directory: fixturePath(arch), threads: 1, randomWeights: true)
        func describe(_ m: Model) -> [String] {
            m.tensors.allTensors.map { "\($0.name) \($0.shape) \($0.typeName)" }.sorted()
        }
        #expect(describe(random) == describe(saved))
        #expect(ModelInfo(random).totalParameters == ModelInfo(saved).totalParameters)
        // From config.json alone, without weights: the same counts and bytes.
        let planned = ModelInfo(config: saved.config, element: .bf16), loaded = ModelInfo(saved)
        #expect(planned.totalParameters == loaded.totalParameters, "\(arch)")
        #expect(planned.activeParameters == loaded.activeParameters, "\(arch)")
        #expect(planned.expertParameters == loaded.expertParameters, "\(arch)")
        #expect(planned.weightBytes == loaded.weightBytes, "\(arch)")
        #expect(planned.derivedWeightBytes == loaded.derivedWeightBytes, "\(arch)")
        #expect(planned.dtypes.reduce(0) { $0 + $1.tensors } == loaded.dtypes.reduce(0) { $0 + $1.tensors }, "\(arch)")
        let logits = try random.makeSession(contextLength: 8).forward([1, 2, 3])
        #expect(logits.allSatisfy { $0.isFinite })
    }
}

/// One behaviour per routing rule, as mlx-swift-lm tests DeepSeek's router: the gating function,
/// group-limited selection, a selection bias that chooses without weighing, normalisation, scale.
@Suite("routing rules")
struct RoutingRuleTests {
    @Test func sigmoidGatesEachExpertAlone() {
        let logits: [Float] = [0, 3, -1, 2]
        let r = route(logits: logits, expertCount: 4, k: 2, config: RouterConfig(gating: .sigmoid, normalize: false))
        #expect(r.experts == [1, 3])
        #expect(abs(r.weights[0] - 1 / (1 + expf(-3))) < 1e-7 && abs(r.weights[1] - 1 / (1 + expf(-2))) < 1e-7)
    }

    @Test func groupLimitedSelectionMasksTheLosingGroups() {
        // Two groups of four. The best single expert (index 6) is in group 1, but group 0's two
        // best sum higher: with topTwoSum only group 0 competes, with max only group 1.
        let logits: [Float] = [2.0, 1.9, 0, 0, 0, 0, 2.5, 0]
        let sum = route(logits: logits, expertCount: 8, k: 2,
                        config: RouterConfig(gating: .sigmoid, selection: .groupLimited(groups: 2, topGroups: 1, score: .topTwoSum), normalize: false))
        #expect(sum.experts == [0, 1])
        let max = route(logits: logits, expertCount: 8, k: 2,
                        config: RouterConfig(gating: .sigmoid, selection: .groupLimited(groups: 2, topGroups: 1, score: .max), normalize: false))
        #expect(max.experts == [6, 4], "group 1 only; ties to the lower index")
        let all = route(logits: logits, expertCount: 8, k: 2,
                        config: RouterConfig(gating: .sigmoid, selection: .groupLimited(groups: 2, topGroups: 2, score: .max), normalize: false))
        #expect(all.experts == [6, 0], "both groups compete: plain top-k")
    }

    @Test func selectionBiasChoosesButDoesNotWeigh() {
        let logits: [Float] = [1, 0, 0.5]
        let bias: [Float] = [0, 2, 0]
        let r = bias.withUnsafeBufferPointer { b in
            route(logits: logits, expertCount: 3, k: 1, config: RouterConfig(gating: .sigmoid, selectionBias: true, normalize: false),
                  selectionBias: b.baseAddress)
        }
        #expect(r.experts == [1], "the bias lifts expert 1 above expert 0")
        #expect(r.weights == [1 / (1 + expf(-0))], "its weight is its unbiased score")
    }

    @Test func normalisationThenScale() {
        let logits: [Float] = [1, 2, 3, 4]
        let r = route(logits: logits, expertCount: 4, k: 2, config: RouterConfig(gating: .sigmoid, normalize: true, scale: 2.5))
        #expect(r.experts == [3, 2])
        #expect(abs(r.weights.reduce(0, +) - 2.5) < 1e-6)
        let plain = route(logits: logits, expertCount: 4, k: 2, config: .softmaxTopK(normalize: true))
        #expect(abs(plain.weights.reduce(0, +) - 1) < 1e-6, "scale 1 leaves the weights alone")
    }
}
