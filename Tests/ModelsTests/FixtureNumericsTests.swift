import Testing
import Kernels
import NPY
import SafeTensors
import Runtime
import SwitchyardJSON
@testable import Models
import SwitchyardSupport
import SwitchyardTestSupport

/// `count` greedy tokens after `prompt`, one at a time through the session's KV cache.
func greedyContinuation(_ session: Session, prompt: [Int], count: Int) throws -> [Int] {
    var logits = try session.forward(prompt)
    var generated: [Int] = []
    for _ in 0..<count {
        let next = logits.indices.max { logits[$0] < logits[$1] }!
        generated.append(next)
        logits = try session.forward([next])
    }
    return generated
}

@Suite("Fixture models match transformers in float32")
struct FixtureNumericsTests {
    @Test("prompt logits, all positions in one pass", arguments: allArchitectures)
    func promptLogits(arch: String) throws {
        let reference = try Reference(arch)
        let model = try Model(directory: fixturePath(arch), threads: 2)
        let session = try model.makeSession(contextLength: 64)
        let logits = try session.forward(reference.promptTokens, allLogits: true)
        #expect(logits.count == reference.logits.count)
        let v = reference.vocab
        for position in reference.promptTokens.indices {
            let error = relativeError(logits[position * v..<(position + 1) * v], reference.logits[position * v..<(position + 1) * v])
            #expect(error <= 1e-4, "\(arch) position \(position): relative error \(error)")
        }
    }

    @Test("prompt logits, one token at a time through the KV cache", arguments: allArchitectures)
    func incrementalLogits(arch: String) throws {
        let reference = try Reference(arch)
        let model = try Model(directory: fixturePath(arch), threads: 1)
        let session = try model.makeSession(contextLength: 64)
        let v = reference.vocab
        for (position, token) in reference.promptTokens.enumerated() {
            let logits = try session.forward([token])
            let error = relativeError(logits[...], reference.logits[position * v..<(position + 1) * v])
            #expect(error <= 1e-4, "\(arch) position \(position): relative error \(error)")
        }
    }

    @Test("greedy continuation is transformers' token for token", arguments: allArchitectures)
    func greedyTokens(arch: String) throws {
        let reference = try Reference(arch)
        let model = try Model(directory: fixturePath(arch), threads: 2)
        let generated = try greedyContinuation(model.makeSession(contextLength: 64), prompt: reference.promptTokens, count: reference.greedyTokens.count)
        #expect(generated == reference.greedyTokens)
    }

    @Test("chunked prefill equals a single pass")
    func chunkingChangesNothing() throws {
        let reference = try Reference("qwen2_moe")
        let model = try Model(directory: fixturePath("qwen2_moe"), threads: 2)
        let whole = try model.makeSession(contextLength: 64)
        let chunked = try model.makeSession(contextLength: 64)
        chunked.chunkSize = 3
        let a = try whole.forward(reference.promptTokens, allLogits: true)
        let b = try chunked.forward(reference.promptTokens, allLogits: true)
        #expect(relativeError(a[...], b[...]) < 1e-6)
    }
}

@Suite("Latent attention: both forms")
struct LatentAttentionFormTests {
    /// Each form alone, in one pass, in chunks of 3 and token by token through the latent cache,
    /// against transformers; and the two forms against each other.
    @Test(arguments: ["deepseek_v2", "deepseek_v3"], [LatentAttentionForm.absorbed, .expanded])
    func formMatchesTransformers(arch: String, form: LatentAttentionForm) throws {
        let reference = try Reference(arch)
        let model = try Model(directory: fixturePath(arch), threads: 2)
        model.latentAttentionForm = form
        let v = reference.vocab
        let whole = try model.makeSession(contextLength: 64).forward(reference.promptTokens, allLogits: true)
        let chunked = try model.makeSession(contextLength: 64)
        chunked.chunkSize = 3
        let parts = try chunked.forward(reference.promptTokens, allLogits: true)
        let stepped = try model.makeSession(contextLength: 64)
        var steps: [Float] = []
        for token in reference.promptTokens { steps += try stepped.forward([token]) }
        #expect(stepped.workspace.latentExpanded == (form == .expanded), "the step did not run \(form)")
        for logits in [whole, parts, steps] {
            #expect(worstPositionError(logits, reference.logits, vocab: v) <= 1e-4, "\(arch) \(form)")
        }
        model.latentAttentionForm = form == .absorbed ? .expanded : .absorbed
        let other = try model.makeSession(contextLength: 64).forward(reference.promptTokens, allLogits: true)
        #expect(worstPositionError(other, whole, vocab: v) <= 1e-5, "\(arch): the forms differ")
    }

    @Test func automaticChoiceFollowsTheCost() throws {
        // DeepSeek-V2-Lite's attention: decode is cheaper absorbed, a long first chunk expanded.
        let m = LatentAttentionConfig(queryRank: nil, latentRank: 512, noPositionDim: 128, rotaryDim: 64, valueDim: 128,
                                      interleavedRotary: true, softmaxScale: 1)
        let decode = LatentAttentionForm.cost(m, tokens: 1, positionsSeen: 1000, context: 1000)
        #expect(decode.absorbed < decode.expanded)
        let prefill = LatentAttentionForm.cost(m, tokens: 512, positionsSeen: 512 * 513 / 2, context: 512)
        #expect(prefill.expanded < prefill.absorbed)
        // A chunk of 64 late in a long prompt re-expands the whole context: absorbed wins again.
        let late = LatentAttentionForm.cost(m, tokens: 64, positionsSeen: 64 * 4000, context: 4064)
        #expect(late.absorbed < late.expanded)
    }
}

@Suite("batched steps")
struct BatchedForwardTests {
    @Test("several sequences in one step give exactly their solo logits", arguments: ["qwen2_moe", "mixtral", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss", "gpt_oss_mxfp4"])
    func batchEqualsSolo(arch: String) throws {
        let model = try Model(directory: fixturePath(arch), threads: 2)
        let prompts = [[1, 450, 2030], [1, 15043, 3186, 29892, 2748], [1, 2]]
        // Solo: each sequence alone, then one more token.
        var solo: [[Float]] = []
        for p in prompts {
            let s = try model.makeSession(contextLength: 32)
            _ = try s.forward(p)
            solo.append(try s.forward([777]))
        }
        // Batched: same prompts, then the extra token for all three in one step.
        let sessions = try prompts.map { _ in try model.makeSession(contextLength: 32) }
        for (s, p) in zip(sessions, prompts) { _ = try s.forward(p) }
        let batched = try model.forwardBatch(sessions, [777, 777, 777], workspace: Workspace())
        let v = model.config.vocabularySize
        for i in prompts.indices {
            #expect(Array(batched[(i * v)..<((i + 1) * v)]) == solo[i], "sequence \(i) differs when batched")
        }
        #expect(sessions.map(\.position) == prompts.map { $0.count + 1 })
        #expect(throws: ModelError.self) { try model.forwardBatch([sessions[0], sessions[0]], [1, 2], workspace: Workspace()) }
    }
}

/// Every block-quantised matrix of `model` widened to float32, in memory `keep` owns: the oracle for
/// quantised runs is the float32 forward pass (itself within 1e-6 of transformers) over exactly the
/// values the quantised weights hold.
func dequantize(_ model: Model, keep: inout [[Float]]) throws -> Model {
    var buffers: [[Float]] = []
    let widened = model.weights.mapMatrices(all: true) { m in
        guard m.element.isBlockQuantized else { return m }
        var values = [Float](repeating: 0, count: m.rows * m.columns)
        values.withUnsafeMutableBufferPointer { v in for r in 0..<m.rows { m.widenRow(r, into: v.baseAddress! + r * m.columns) } }
        buffers.append(values)
        let pointer = buffers[buffers.count - 1].withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress!) }
        return WeightMatrix(element: .f32, rows: m.rows, columns: m.columns, data: pointer)
    }
    keep = buffers
    return Model(model.loaded, device: model.device, pool: model.pool, weights: widened)
}

/// Logits of every prompt position, then 8 greedy tokens: what quantised runs are compared on.
func logitsAndGreedyTokens(_ model: Model, _ prompt: [Int]) throws -> (logits: [Float], tokens: [Int]) {
    let logits = try model.makeSession(contextLength: 64).forward(prompt, allLogits: true)
    let greedy = try model.makeSession(contextLength: 64)
    var last = try greedy.forward(prompt)
    var tokens: [Int] = []
    for _ in 0..<8 {
        let next = last.indices.max { last[$0] < last[$1] }!
        tokens.append(next)
        last = try greedy.forward([next])
    }
    return (logits, tokens)
}

/// The median of the positions' relative errors: a perturbation (rounded activations) may move a
/// router's close call to another expert at one position, and the positions that attend to it
/// after, while every other position stays within the rounding (DeepSeek-V3's sigmoid router at
/// one of 8 positions with int8 activations; GPT-OSS's top 2 of 4 at position 5 with bf16).
func medianPositionError(_ a: [Float], _ b: [Float], vocab v: Int) -> Double {
    let errors = (0..<(b.count / v)).map { p in relativeError(a[p * v..<(p + 1) * v], b[p * v..<(p + 1) * v]) }.sorted()
    return errors[errors.count / 2]
}

/// The largest relative error over the positions of [positions, vocab] logits.
func worstPositionError(_ a: [Float], _ b: [Float], vocab v: Int) -> Double {
    (0..<(b.count / v)).map { p in relativeError(a[p * v..<(p + 1) * v], b[p * v..<(p + 1) * v]) }.max()!
}

@Suite("Quantised weights on the fixture models")
struct QuantizedFixtureTests {
    /// Dense architectures have every matrix converted (they have no experts), MoE ones their experts.
    func load(_ arch: String, _ format: WeightQuantization.Format, _ precision: ActivationPrecision) throws -> Model {
        let pool = ThreadPool(threads: 2)
        let moe = !["llama", "qwen2", "qwen3"].contains(arch)
        return try Model(directory: fixturePath(arch), device: CPUDevice(pool: pool, precision: precision), pool: pool,
                         quantization: WeightQuantization(format: format, all: !moe))
    }

    @Test("Q8_0, Q4_0 and Q4_K (Q4_0 at hidden 32) against the float32 pass over the same quantised values", arguments: allArchitectures)
    func quantizedRuns(arch: String) throws {
        let reference = try Reference(arch)
        for format in WeightQuantization.Format.allCases {
            var kept: [[Float]] = []
            let oracleModel = try dequantize(try load(arch, format, .f32), keep: &kept)
            let oracle = try logitsAndGreedyTokens(oracleModel, reference.promptTokens)
            // Float activations: the quantised kernels widen the weights exactly.
            let exact = try logitsAndGreedyTokens(load(arch, format, .f32), reference.promptTokens)
            #expect(worstPositionError(exact.logits, oracle.logits, vocab: reference.vocab) <= 1e-5, "\(arch) \(format) f32")
            #expect(exact.tokens == oracle.tokens, "\(arch) \(format) f32")
            // Activations quantised per block of 32 (--precision int8). On these tiny random models
            // (hidden size 32: one block per row) it is 1.3% to 8% off, so it is not what `auto`
            // picks; the bound catches a broken kernel, not the approximation (the median position:
            // DeepSeek-V3's is 29% off at one position where a routing choice flips, under 1% elsewhere).
            let integer = try logitsAndGreedyTokens(load(arch, format, .int8), reference.promptTokens)
            let error = medianPositionError(integer.logits, oracle.logits, vocab: reference.vocab)
            #expect(error <= 0.1, "\(arch) \(format) int8: median position \(error)")
        }
    }
}

@Suite("bf16 activations on the fixture models")
struct BF16ActivationFixtureTests {
    /// --precision bf16 rounds activations to bf16 for the products with bf16 weights (llama.cpp's
    /// BF16 path): 0.5% to 1.6% off the float32 pass on these fixtures at the median position (GPT-OSS:
    /// 35% at the position where a routing choice flips, 0.4% before it), so not what `auto` picks.
    /// The bound (twice the worst) catches a broken kernel; an error of zero would mean the bf16
    /// path never ran.
    @Test(arguments: allArchitectures)
    func closeToFloat32(arch: String) throws {
        let reference = try Reference(arch)
        func run(_ precision: ActivationPrecision) throws -> (logits: [Float], tokens: [Int]) {
            let pool = ThreadPool(threads: 2)
            return try logitsAndGreedyTokens(Model(directory: fixturePath(arch), device: CPUDevice(pool: pool, precision: precision), pool: pool),
                                             reference.promptTokens)
        }
        let exact = try run(.f32), rounded = try run(.bf16)
        let error = medianPositionError(rounded.logits, exact.logits, vocab: reference.vocab)
        #expect(error > 0 && error <= 0.03, "\(arch) bf16: \(error)")
    }
}

/// Q4_K needs rows of whole super-blocks of 256, and the grouped Q8_0/Q4_0 kernels rows of whole
/// groups of 128, wider than the transformers fixtures (hidden 32): a Mixtral of hidden 256 with
/// random weights, against the float32 pass over the values its quantised matrices hold.
@Suite("Quantised weights on a wider random Mixtral")
struct WideQuantizedModelTests {
    /// A folder with the wide Mixtral's config.json (hidden 256, 4 experts of 512).
    static func makeFolder(_ directory: String) throws {
        mkdir(directory, 0o755)
        let config = """
            {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 300, "hidden_size": 256,
             "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 64, "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64,
             "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}
            """
        try Array(config.utf8).withUnsafeBytes { bytes in
            guard let file = fopen(directory + "/config.json", "w") else { throw ModelError("cannot write the config") }
            fwrite(bytes.baseAddress, 1, bytes.count, file)
            fclose(file)
        }
    }

    static func removeFolder(_ directory: String) {
        for name in ["config.json", "model.safetensors"] { _ = unlink(directory + "/" + name) }
        rmdir(directory)
    }

    @Test(arguments: WeightQuantization.Format.allCases)
    func matchesTheDequantisedValues(format: WeightQuantization.Format) throws {
        let directory = "/tmp/switchyard-wide-test-\(getpid())-\(format)"
        try Self.makeFolder(directory)
        defer { Self.removeFolder(directory) }
        // Q4_K converts the experts; Q8_0 and Q4_0 every matrix, so attention and the output head
        // run grouped too.
        let all = format != .q4_k
        func load(_ precision: ActivationPrecision, regroup: Bool = true) throws -> Model {
            let pool = ThreadPool(threads: 2)
            return try Model(directory: directory, device: CPUDevice(pool: pool, precision: precision), pool: pool, randomWeights: true,
                             quantization: WeightQuantization(format: format, all: all), regroup: regroup)
        }
        func experts(_ model: Model, _ element: WeightElement) -> Int {
            model.weights.layers.reduce(0) { count, layer in
                guard case .mixtureOfExperts(let m) = layer.feedForward else { return count }
                return count + m.experts.filter { $0.gate.element == element && $0.down.element == element }.count
            }
        }
        let prompt = [1, 17, 250, 42, 7, 99]
        let model = try load(.f32)
        #expect(experts(model, format.element) == 8, "every expert in \(format)")
        var kept: [[Float]] = []
        let oracleModel = try dequantize(model, keep: &kept)
        let oracle = try logitsAndGreedyTokens(oracleModel, prompt)
        let exact = try logitsAndGreedyTokens(model, prompt)
        let worst = worstPositionError(exact.logits, oracle.logits, vocab: 300)
        #expect(worst <= 1e-5, "f32: \(worst)")
        #expect(exact.tokens == oracle.tokens)
        let integerModel = try load(.int8)
        if let grouped = GroupedBlocks.grouped(format.element) {
            // int8 activations regroup Q8_0 and Q4_0 at load, every matrix of whole groups.
            #expect(experts(integerModel, grouped) == 8)
            #expect(integerModel.weights.layers.allSatisfy { $0.attention.matrices.allSatisfy { $0.element == grouped } })
            #expect(integerModel.weights.lmHead.element == grouped)
        }
        let integer = try logitsAndGreedyTokens(integerModel, prompt)
        let error = worstPositionError(integer.logits, oracle.logits, vocab: 300)
        // Quantising the activations of every product (attention and the output head too) adds up
        // to about 1.2% here, against under 1% for the experts alone.
        #expect(error <= (all ? 2e-2 : 1e-2), "int8: \(error)")
        if GroupedBlocks.grouped(format.element) != nil {
            // The grouped kernels against the ungrouped ones: the same integer products, summed
            // in another order.
            let ungrouped = try logitsAndGreedyTokens(load(.int8, regroup: false), prompt)
            let difference = worstPositionError(integer.logits, ungrouped.logits, vocab: 300)
            #expect(difference <= 1e-4, "grouped vs ungrouped: \(difference)")
            #expect(integer.tokens == ungrouped.tokens)
        }
    }

    /// A quantised folder (`switchyard quantize`) regroups from its mapped file into one buffer and
    /// releases the file's pages; converting at load regroups in place. Same values, same kernels:
    /// the same logits, bit for bit.
    @Test(arguments: [WeightQuantization.Format.q8_0, .q4_0])
    func storedFolderRegroupsAsConvertingAtLoad(format: WeightQuantization.Format) throws {
        let source = "/tmp/switchyard-wide-stored-\(getpid())-\(format)", out = source + "-q"
        try Self.makeFolder(source)
        defer { Self.removeFolder(source); Self.removeFolder(out) }
        let pool = ThreadPool(threads: 2)
        // The random weights written as the folder's checkpoint.
        let random = try Model(directory: source, device: CPUDevice(pool: pool), pool: pool, randomWeights: true)
        let entries = random.tensors.allTensors.map { t in
            SafeTensorsWriter.Entry(name: t.name, dtype: DType(rawValue: t.typeName)!, shape: t.shape, byteCount: t.byteCount) { target in
                target.copyMemory(from: t.data, byteCount: t.byteCount)
            }
        }
        try SafeTensorsWriter.write(entries, metadata: [:], to: source + "/model.safetensors")
        _ = try QuantizedCheckpoint.write(from: source, to: out, format: format, all: true, pool: pool)
        let device = CPUDevice(pool: pool, precision: .int8)
        let stored = try Model(directory: out, device: device, pool: pool)
        let converted = try Model(directory: source, device: device, pool: pool, quantization: WeightQuantization(format: format, all: true))
        let grouped = GroupedBlocks.grouped(format.element)
        #expect(stored.weights.lmHead.element == grouped && stored.weights.layers[0].attention.matrices[2].element == grouped)
        let prompt = [1, 17, 250, 42, 7, 99]
        let a = try stored.makeSession(contextLength: 16).forward(prompt, allLogits: true)
        let b = try converted.makeSession(contextLength: 16).forward(prompt, allLogits: true)
        let first = a.indices.first { a[$0].bitPattern != b[$0].bitPattern }
        #expect(a.count == b.count && first == nil, "first difference at \(first ?? -1)")
        // --no-mmap: the bf16 weights copied into huge pages compute the same bits as mapped.
        let mapped = try Model(directory: source, device: CPUDevice(pool: pool), pool: pool)
        let copied = try Model(directory: source, device: CPUDevice(pool: pool), pool: pool, residency: .copied)
        #expect(copied.loaded.storage.count == 1 && mapped.loaded.storage.isEmpty)
        #expect(copied.weights.layers[1].attention.matrices[0].data != mapped.weights.layers[1].attention.matrices[0].data)
        let c = try copied.makeSession(contextLength: 16).forward(prompt, allLogits: true)
        let m = try mapped.makeSession(contextLength: 16).forward(prompt, allLogits: true)
        let firstCopied = c.indices.first { c[$0].bitPattern != m[$0].bitPattern }
        #expect(c.count == m.count && firstCopied == nil, "copied vs mapped: first difference at \(firstCopied ?? -1)")
    }
}

@Suite("switchyard quantize")
struct QuantizedCheckpointTests {
    @Test("a quantised folder gives the logits of converting at load", arguments: ["mixtral", "qwen3_moe", "qwen2"])
    func sameAsConvertingAtLoad(arch: String) throws {
        let all = arch == "qwen2"  // a dense model has no experts: convert every matrix
        for format in WeightQuantization.Format.allCases {
            let out = "/tmp/switchyard-quantize-test-\(getpid())-\(arch)-\(format)"
            let pool = ThreadPool(threads: 2)
            let written = try QuantizedCheckpoint.write(from: fixturePath(arch), to: out, format: format, all: all, pool: pool)
            #expect(written.converted > 0)
            let tokens = [1, 15043, 3186, 29892, 77]
            let storedModel = try Model(directory: out, threads: 2)
            // Parameters count values, not the bytes a quantised tensor is stored in.
            #expect(ModelInfo(storedModel).totalParameters == ModelInfo(try Model(directory: fixturePath(arch), threads: 2)).totalParameters)
            let stored = try storedModel.makeSession(contextLength: 16).forward(tokens, allLogits: true)
            let converted = try Model(directory: fixturePath(arch), threads: 2, quantization: WeightQuantization(format: format, all: all))
                .makeSession(contextLength: 16).forward(tokens, allLogits: true)
            // Bit for bit (compared by hand: a failing == on 160,000 floats makes the test
            // library compute a diff for minutes).
            let first = stored.indices.first { stored[$0].bitPattern != converted[$0].bitPattern }
            #expect(stored.count == converted.count && first == nil, "\(arch) \(format): first difference at \(first ?? -1)")
            // Quantising it again is refused, naming the file.
            #expect(throws: ModelError.self) { try QuantizedCheckpoint.write(from: out, to: out + "-again", format: format, all: all, pool: pool) }
        }
    }
}
