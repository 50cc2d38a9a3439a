import Testing
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
        #expect(mixtral.feedForward[0].moe == MoEConfig(expertCount: 8, expertsPerToken: 2, expertIntermediateSize: 128, normalizeTopK: true, sharedExpertIntermediateSize: nil, sharedExpertGated: false))
        let llama = try config(with("llama"))
        #expect(llama.rope.theta == 10_000 && llama.rmsNormEpsilon == 1e-6 && llama.headDim == 16 && llama.keyValueHeadCount == 4)
        let olmoe = try config(with("olmoe"))
        #expect(olmoe.feedForward[1].moe?.normalizeTopK == false && olmoe.queryKeyNorm == .wholeProjection)
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
        let r = routeTopK(logits: logits, expertCount: 4, k: 2, normalize: false)
        #expect(r.experts == [1, 2])
        let e0 = Float(1), e2 = Float(exp(2.0)), e1 = Float(exp(1.0))
        let sum = e0 + 2 * e2 + e1
        #expect(abs(r.weights[0] - e2 / sum) < 1e-6)
        let n = routeTopK(logits: logits, expertCount: 4, k: 3, normalize: true)
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
        let session = model.makeSession(contextLength: 4)
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
            m.tensors.allTensors.map { "\($0.name) \($0.shape) \($0.dtype)" }.sorted()
        }
        #expect(describe(random) == describe(saved))
        #expect(ModelInfo(random).totalParameters == ModelInfo(saved).totalParameters)
        let logits = try random.makeSession(contextLength: 8).forward([1, 2, 3])
        #expect(logits.allSatisfy { $0.isFinite })
    }
}

@Test("routing profile: every token's choices counted once per MoE layer, transitions to the next MoE layer")
func routingProfileCounts() throws {
    let model = try Model(directory: fixturePath("qwen2_moe"), threads: 1)  // layer 1 is dense
    let workspace = Workspace()
    let recorder = RoutingRecorder(model: model, workspace: workspace)
    let session = model.makeSession(contextLength: 16)
    _ = try session.forward([1, 450, 2030, 301, 18919], workspace: workspace)
    _ = try session.forward([777], workspace: workspace)
    let p = recorder.profile
    #expect(p.tokens == 6)
    #expect(p.counts.map { $0.reduce(0, +) } == [12, 0, 12])
    let transitionTotal: Int = p.transitions[0].map { $0.reduce(0, +) }.reduce(0, +)
    #expect(transitionTotal == 24, "6 tokens x 2 experts x 2 experts")
    #expect(p.transitions[1].isEmpty && p.transitions[2].isEmpty)
    #expect(try RoutingProfile(json: p.json, file: "p.json") == p)
}

@Suite("planner")
struct PlannerTests {
    let mixtral = try! Model.readConfig(directory: repositoryRoot + "/benchmarks/configs/mixtral-8x7b")
    let fiddlerMachine = HardwareProfile.known.first { $0.name.hasPrefix("quadro-rtx6000") }!

    @Test func budgetsHoldAndEveryTokenWeightsComeFirst() {
        let plan = Planner.plan(mixtral, weightBytes: 2, gpuBudget: 24_000_000_000, ramBudget: 40_000_000_000,
                                hardware: fiddlerMachine, contextLength: 2048)
        #expect((plan.bytesPerTier[.gpu] ?? 0) <= 24_000_000_000)
        #expect((plan.bytesPerTier[.ram] ?? 0) <= 40_000_000_000)
        #expect(plan.groups.filter { !$0.name.hasPrefix("experts") }.allSatisfy { $0.tier == .gpu }, "attention, routers, norms, head, KV on the GPU")
        #expect(plan.expertsPerTier.values.reduce(0, +) == 256)
        #expect((plan.expertsPerTier[.disk] ?? 0) > 0, "93 GB does not fit in 24 + 40 GB")
        #expect(plan.decodeOverlapped >= plan.decodeSummed)
    }

    @Test func fiddlersPublishedSettingIsReproduced() {
        // Fiddler: Mixtral-8x7B bf16 on a 24 GB Quadro RTX 6000 with 2x Xeon Gold 6126: about 2.5 tok/s.
        let plan = Planner.plan(mixtral, weightBytes: 2, gpuBudget: 24_000_000_000, ramBudget: 192 << 30,
                                hardware: fiddlerMachine, contextLength: 2048)
        #expect(plan.decodeFiddler > 2.0 && plan.decodeFiddler < 3.5, "\(plan.decodeFiddler)")
        #expect(plan.decodeOverlapped > 1.5 * plan.decodeFiddler)
    }

    @Test func popularExpertsGoToFastMemoryFirst() throws {
        // Layer 0: expert 3 takes almost every token; with room for one expert on the GPU, it is 3.
        var popularity = [[Double]](repeating: [Double](repeating: 1.0 / 8, count: 8), count: 32)
        popularity[0] = [0.01, 0.01, 0.01, 0.9, 0.01, 0.02, 0.02, 0.02]
        let oneExpert = 3 * 4096 * 14336 * 2
        let dense = Planner.plan(mixtral, weightBytes: 2, gpuBudget: 0, ramBudget: 1 << 40, hardware: fiddlerMachine, contextLength: 2048)
            .groups.filter { !$0.name.hasPrefix("experts") }.reduce(0) { $0 + $1.bytes }
        let plan = Planner.plan(mixtral, weightBytes: 2, gpuBudget: dense + oneExpert, ramBudget: 1 << 40,
                                hardware: fiddlerMachine, contextLength: 2048, popularity: popularity)
        #expect(plan.expertsPerTier[.gpu] == 1)
        let uniform = Planner.plan(mixtral, weightBytes: 2, gpuBudget: dense + oneExpert, ramBudget: 1 << 40,
                                   hardware: fiddlerMachine, contextLength: 2048)
        #expect(plan.decodeOverlapped > uniform.decodeOverlapped, "the popular expert on the GPU saves CPU time")
    }
}
