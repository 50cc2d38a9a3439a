import Testing
import Engine
import Evaluation
import Kernels
import Models
import NPY
import SwitchyardJSON
import SwitchyardSupport
import SwitchyardTestSupport
import Tokenizers

private let fixtures = repositoryRoot + "/Tests/EvaluationTests/Fixtures"
private let heldOutText = demoModelPath + "/held-out.txt"

/// The bundled model's held-out text as `perplexity` tokenizes it.
private func heldOutTokens() throws -> (tokens: [Int], prefix: [Int]) {
    let tokenizer = try Tokenizer(directory: demoModelPath)
    let text = String(decoding: try readFileBytes(heldOutText), as: UTF8.self)
    return (tokenizer.prefixTokens + tokenizer.encode(text, addSpecialTokens: false), tokenizer.prefixTokens)
}

private func engine(_ precision: EngineOptions.Precision, quantization: WeightQuantization.Format? = nil) throws -> Engine {
    var options = EngineOptions(model: demoModelPath)
    options.threads = 2
    options.precision = precision
    options.quantization = quantization.map { WeightQuantization(format: $0) }
    return try Engine.load(options)
}

private func run(_ engine: Engine, _ plan: PerplexityPlan) -> PerplexityRun {
    let model = engine.model
    return PerplexityRun(plan: plan, vocabulary: model.config.vocabularySize) { window, first in
        try model.makeSession(contextLength: plan.context).forward(window, logitsFrom: first)
    }
}

@Suite("Perplexity and KL divergence")
struct EvaluationTests {
    @Test("perplexity on the held-out text is transformers' in float32 (1e-4 relative)")
    func perplexityMatchesTransformers() throws {
        let references = try JSONValue.parse(try readFileBytes(fixtures + "/perplexity.json")).arrayValue!
        let (tokens, prefix) = try heldOutTokens()
        let engine = try engine(.f32)
        for reference in references {
            let context = reference["context"]!.intValue!, chunks = reference["chunks"]!.intValue!
            #expect(tokens.count == reference["text_tokens"]!.intValue!)
            let plan = try PerplexityPlan(tokens: tokens, prefix: prefix, context: context, chunkLimit: chunks)
            let tally = try run(engine, plan).perplexity()
            #expect(tally.count == reference["scored"]!.intValue!)
            let expected = reference["perplexity"]!.doubleValue!
            let error = abs(tally.perplexity.value - expected) / expected
            #expect(error <= 1e-4, "context \(context): \(tally.perplexity.value) against transformers' \(expected)")
        }
    }

    @Test("KL-divergence statistics are NumPy's on the same logits")
    func divergenceMatchesNumPy() throws {
        let folder = fixtures + "/kld"
        let expected = try JSONValue.parse(try readFileBytes(folder + "/expected.json"))
        let (base, baseShape) = try NPY.decode(try readFileBytes(folder + "/base_logits.npy"))
        let (model, _) = try NPY.decode(try readFileBytes(folder + "/model_logits.npy"))
        let vocab = expected["vocab"]!.intValue!, context = expected["context"]!.intValue!
        let tokens = expected["tokens"]!.arrayValue!.map { $0.intValue! }
        #expect(baseShape[1] == vocab)
        let plan = try PerplexityPlan(tokens: tokens, prefix: [], context: context)
        // The base run writes its rows as `perplexity --kl-divergence-base` does; the model's run
        // reads them back, as `--kl-divergence` does.
        let path = "/tmp/switchyard-kld-\(getpid()).bin"
        defer { unlink(path) }
        let rowsPerChunk = plan.scoredPerChunk * vocab
        var chunk = 0
        let baseRun = PerplexityRun(plan: plan, vocabulary: vocab) { _, _ in
            defer { chunk += 1 }
            return Array(base[(chunk * rowsPerChunk)..<((chunk + 1) * rowsPerChunk)]) + [Float](repeating: 0, count: vocab)
        }
        _ = try baseRun.perplexity(base: try LogProbabilityWriter(path: path, header: plan.header(vocabulary: vocab)))
        chunk = 0
        let modelRun = PerplexityRun(plan: plan, vocabulary: vocab) { _, _ in
            defer { chunk += 1 }
            return Array(model[(chunk * rowsPerChunk)..<((chunk + 1) * rowsPerChunk)]) + [Float](repeating: 0, count: vocab)
        }
        let summary = try modelRun.divergence(from: try LogProbabilityReader(path: path)).summary

        func close(_ got: Double, _ key: String, absolute: Double, relative: Double = 1e-4, sub: String? = nil) {
            let want = sub.map { expected[key]![$0]!.doubleValue! } ?? expected[key]!.doubleValue!
            #expect(abs(got - want) <= absolute + relative * abs(want), "\(key)\(sub.map { "[\($0)]" } ?? ""): \(got) against NumPy's \(want)")
        }
        #expect(summary.tokens == plan.scoredTokens)
        // The base's log-probabilities pass through 16-bit codes (steps of at most 16/65535 nats).
        close(summary.perplexity.value, "perplexity", absolute: 0, relative: 1e-6)
        close(summary.basePerplexity.value, "base_perplexity", absolute: 0, relative: 1e-4)
        close(summary.logPerplexityRatio.value, "log_ratio", absolute: 1e-4)
        close(summary.logPerplexityRatio.uncertainty, "log_ratio_uncertainty", absolute: 1e-5, relative: 1e-2)
        close(summary.meanDivergence.value, "kld_mean", absolute: 2e-6, relative: 1e-3)
        close(summary.meanDivergence.uncertainty, "kld_uncertainty", absolute: 1e-6, relative: 1e-2)
        for fraction in [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0] {
            close(summary.value(atFraction: fraction)!, "kld_percentiles", absolute: 5e-6, relative: 1e-3, sub: "\(fraction)")
        }
        close(summary.meanProbabilityChange.value, "delta_p_mean", absolute: 1e-5)
        close(summary.probabilityChangeRMS.value, "delta_p_rms", absolute: 1e-5, relative: 1e-3)
        close(summary.sameTop.value, "same_top", absolute: 0, relative: 0)
        close(summary.sameTop.uncertainty, "same_top_uncertainty", absolute: 1e-12)
        #expect(summary.report.contains("Mean    KLD:"))
    }

    @Test("a base file reads back as written; a damaged one is refused with its fault named")
    func baseFiles() throws {
        let path = "/tmp/switchyard-base-\(getpid()).bin"
        defer { unlink(path) }
        let header = LogProbabilityFileHeader(context: 8, vocabulary: 5, chunks: 2, tokens: Array(0..<16).map { $0 % 5 })
        let writer = try LogProbabilityWriter(path: path, header: header)
        var rows = [UInt16](repeating: 0, count: header.chunkWords)
        let logits: [Float] = [0.5, -1, 2, 0.25, 1]
        for chunk in 0..<2 {
            for r in 0..<header.scoredPerChunk {
                _ = rows.withUnsafeMutableBufferPointer { out in
                    logits.withUnsafeBufferPointer { LogProbabilityCodes.encode($0, token: (chunk + r) % 5, into: out.baseAddress! + r * header.rowWords) }
                }
            }
            #expect(!fileExists(path), "the file appears only when complete")
            try rows.withUnsafeBufferPointer { try writer.append($0) }
        }
        try writer.finish()
        let reader = try LogProbabilityReader(path: path)
        #expect(reader.header == header)
        var back = [UInt16](repeating: 0, count: header.chunkWords)
        try back.withUnsafeMutableBufferPointer { try reader.readChunk(1, into: $0.baseAddress!) }
        #expect(back == rows)
        // Code 65535 is the most likely token's; the others decode to their log-probabilities.
        let (scale, minimum) = back.withUnsafeBufferPointer { LogProbabilityCodes.header($0.baseAddress!) }
        #expect(back[4 + 2] == 65535)
        let lse = log(logits.map { exp(Double($0)) }.reduce(0, +))
        for i in 0..<5 {
            #expect(abs(Double(scale * Float(back[4 + i]) + minimum) - (Double(logits[i]) - lse)) < 1e-3)
        }

        let bytes = try readFileBytes(path)
        func refused(_ damaged: [UInt8], _ fragment: String) {
            let bad = path + ".bad"
            defer { unlink(bad) }
            try? writeFileDurably(bad, damaged[...])
            do {
                let r = try LogProbabilityReader(path: bad)
                var buffer = [UInt16](repeating: 0, count: r.header.chunkWords)
                for c in 0..<r.header.chunks { try buffer.withUnsafeMutableBufferPointer { try r.readChunk(c, into: $0.baseAddress!) } }
                Issue.record("a damaged file was accepted (expected: \(fragment))")
            } catch {
                #expect("\(error)".contains(fragment), "\(error)")
            }
        }
        refused(Array(bytes.dropLast(3)), "the file has")
        refused(Array(bytes[0..<10]), "too short")
        refused([UInt8](repeating: 0x41, count: 8) + bytes[8...], "_logits_")
        var badToken = bytes
        badToken[20] = 9  // the first token: 9 of a vocabulary of 5
        refused(badToken, "outside the vocabulary")
        var badContext = bytes
        badContext[8] = 2
        refused(badContext, "context 2")
        var hugeChunks = bytes
        hugeChunks[16...19] = [0xFF, 0xFF, 0xFF, 0x7F]
        refused(hugeChunks, "the file has")
        var badScale = bytes
        let scaleAt = 20 + 4 * 16 + 2 * header.chunkWords  // chunk 2's first row
        badScale[scaleAt..<(scaleAt + 4)] = [0, 0, 0xC0, 0x7F]  // NaN
        refused(badScale, "chunk 2, row 1")
    }

    @Test("the plan cuts windows as llama-perplexity does and refuses texts too short for them")
    func plans() throws {
        let tokens = Array(100..<340)
        let plan = try PerplexityPlan(tokens: tokens, prefix: [1], context: 64)
        #expect(plan.chunks == 3 && plan.first == 32 && plan.scoredPerChunk == 31)
        #expect(plan.window(1) == [1] + Array(165..<228))
        #expect(plan.target(chunk: 1, row: 0) == 100 + 64 + 33)
        #expect(try PerplexityPlan(tokens: tokens, prefix: [1], context: 64, chunkLimit: 2).chunks == 2)
        #expect(throws: EvaluationError.self) { try PerplexityPlan(tokens: tokens, prefix: [1], context: 121) }
        #expect(throws: EvaluationError.self) { try PerplexityPlan(tokens: tokens, prefix: [1], context: 2) }
        #expect(throws: EvaluationError.self) { try PerplexityPlan(tokens: tokens, prefix: [1], context: 64, chunkLimit: 0) }
        // A base file of one chunk (llama-perplexity's --chunks 1) is a plan of one chunk.
        let one = try PerplexityPlan(LogProbabilityFileHeader(context: 64, vocabulary: 400, chunks: 1, tokens: Array(100..<164)), prefix: [1])
        #expect(one.chunks == 1 && one.window(0) == [1] + Array(101..<164))
    }

    /// The contract `auto` rests on, held on the bundled model: each activation format it may choose,
    /// against f32 activations on the same weights.
    @Test("every precision auto may choose stays within the contract on the bundled model",
          arguments: [(EngineOptions.Precision.bf16, nil), (.int8, .q8_0), (.int8, .q4_0)] as [(EngineOptions.Precision, WeightQuantization.Format?)])
    func automaticPrecisionContract(precision: EngineOptions.Precision, quantization: WeightQuantization.Format?) throws {
        let (tokens, prefix) = try heldOutTokens()
        // Two windows of 256 (about 250 scored tokens): enough for the means, and what debug-mode CI affords.
        let plan = try PerplexityPlan(tokens: tokens, prefix: prefix, context: 256, chunkLimit: 2)
        let path = "/tmp/switchyard-contract-\(getpid())-\(precision.rawValue)-\(quantization?.rawValue ?? "bf16").bin"
        defer { unlink(path) }
        _ = try run(try engine(.f32, quantization: quantization), plan).perplexity(base: try LogProbabilityWriter(path: path, header: plan.header(vocabulary: 4096)))
        let summary = try run(try engine(precision, quantization: quantization), plan).divergence(from: try LogProbabilityReader(path: path)).summary
        #expect(summary.meanDivergence.value <= AutomaticPrecision.maximumMeanDivergence, "\(precision.rawValue): mean KLD \(summary.meanDivergence.value)")
        #expect(summary.sameTop.value >= AutomaticPrecision.minimumSameTop, "\(precision.rawValue): same top \(summary.sameTop.value)")
        // Not zero: the rounding happened.
        #expect(summary.meanDivergence.value > 0)
    }
}
