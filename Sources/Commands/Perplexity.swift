import ArgumentParser
import Engine
import Evaluation
import Models
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity over a text file, and KL divergence against a saved base run, as llama-perplexity measures them.",
        discussion: """
            The text is cut into windows of --ctx-size tokens, each run from an empty cache with BOS first; the second half \
            of each window is scored. --kl-divergence-base FILE saves this run's log-probabilities (llama-perplexity's file \
            layout); a later run with --kl-divergence-base FILE --kl-divergence (typically at another --precision) compares \
            its distributions with them, token by token, over the same tokens (the text comes from the file).
            """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: [.customShort("f"), .customLong("file")], help: "The text file to score.")
    var file: String?

    @Option(name: [.customShort("c"), .customLong("ctx-size")], help: "Tokens per window; the second half of each is scored.")
    var contextSize: Int = 512

    @Option(help: "Most windows to score (default: as many as the text fills).")
    var chunks: Int?

    @Option(name: .customLong("kl-divergence-base"), help: "Save this run's log-probabilities here, or, with --kl-divergence, read them.")
    var divergenceBase: String?

    @Flag(name: .customLong("kl-divergence"), help: "Compare this run with the log-probabilities in --kl-divergence-base.")
    var divergence = false

    @Flag(help: "Print one JSON object at the end instead of the text report.")
    var json = false

    func validate() throws {
        try checkRange(contextSize, "--ctx-size", 3...positionLimit)
        try checkRange(chunks, "--chunks", 1...positionLimit)
        if divergence && divergenceBase == nil { throw ValidationError("--kl-divergence needs --kl-divergence-base FILE: the base run's log-probabilities") }
        if !divergence && file == nil { throw ValidationError("missing text: -f FILE") }
    }

    func run() throws {
        try reportingErrors {
            let tokenizer = try Tokenizer(directory: try modelDirectory(modelOptions.model))
            let base: LogProbabilityReader? = divergence ? try LogProbabilityReader(path: divergenceBase!) : nil
            let plan: PerplexityPlan
            if let base {
                plan = try PerplexityPlan(base.header, prefix: tokenizer.prefixTokens)
            } else {
                let bytes = try readFileBytes(file!)
                let started = ContinuousClock.now
                let tokens = tokenizer.prefixTokens + tokenizer.encode(String(decoding: bytes, as: UTF8.self), addSpecialTokens: false)
                plan = try PerplexityPlan(tokens: tokens, prefix: tokenizer.prefixTokens, context: contextSize, chunkLimit: chunks)
                status("tokenized \(file!): \(formatBytes(bytes.count)), \(tokens.count) tokens in \(fixed((ContinuousClock.now - started).seconds, 2)) s")
            }
            let engine = try modelOptions.loadEngine(kvPositions: plan.context)
            let model = engine.model
            let vocabulary = model.config.vocabularySize
            status("precision \(engine.precision.rawValue); \(plan.chunks) chunks of \(plan.context) tokens, \(plan.scoredPerChunk) scored in each")
            let run = PerplexityRun(plan: plan, vocabulary: vocabulary) { window, first in
                let session = try model.makeSession(contextLength: plan.context)
                return try session.forward(window, logitsFrom: first)
            }
            var bar = ProgressBar(total: plan.chunks, unit: "chunks")
            let started = ContinuousClock.now
            var result: JSONValue = [
                "model": .string(try modelDirectory(modelOptions.model)),
                "precision": .string(engine.precision.rawValue),
                "context": .int(plan.context),
                "chunks": .int(plan.chunks),
                "scored_tokens": .int(plan.scoredTokens),
            ]
            if let base {
                if !json { writeOut("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p\n") }
                let tally = try run.divergence(from: base) { chunk, tally in
                    bar.advance(to: chunk + 1)
                    if !json { writeOut(Self.chunkLine(chunk, tally)) }
                }
                bar.finish()
                let summary = tally.summary
                if json {
                    result = Self.merge(result, Self.json(summary))
                } else {
                    writeOut("\n" + (tally.count >= 100 ? summary.report : "(too few tokens for statistics: \(tally.count))\n"))
                }
            } else {
                let writer = try divergenceBase.map { (path) throws(EvaluationError) in
                    try LogProbabilityWriter(path: path, header: plan.header(vocabulary: vocabulary))
                }
                let tally = try run.perplexity(base: writer) { chunk, tally in
                    bar.advance(to: chunk + 1)
                    if !json { writeOut("[\(chunk + 1)]\(fixed(tally.perplexity.value, 4)),") }
                }
                bar.finish()
                let ppl = tally.perplexity
                if json {
                    result = Self.merge(result, ["perplexity": .double(ppl.value), "perplexity_uncertainty": .double(ppl.uncertainty),
                                                 "mean_nll": .double(tally.logPerplexity.value)])
                } else {
                    writeOut("\nFinal estimate: PPL = \(fixed(ppl.value, 4)) +/- \(fixed(ppl.uncertainty, 5))\n")
                }
                if let divergenceBase { status("saved the log-probabilities to \(divergenceBase)") }
            }
            let seconds = (ContinuousClock.now - started).seconds
            if json {
                writeOut(Self.merge(result, ["seconds": .double(seconds)]).serialized() + "\n")
            } else {
                status("\(plan.chunks * plan.context) tokens in \(fixed(seconds, 2)) s (\(fixed(Double(plan.chunks * plan.context) / max(seconds, 1e-9), 1)) tok/s)")
            }
        }
    }

    private func status(_ line: String) {
        printError("perplexity: " + line)
    }

    /// One row of the running table, as llama-perplexity prints it during --kl-divergence.
    static func chunkLine(_ chunk: Int, _ tally: DivergenceTally) -> String {
        func pm(_ e: Estimate, _ digits: Int, _ width: Int, scale: Double = 1) -> String {
            "\(padded(fixed(e.value * scale, digits), width)) ± \(padded(fixed(e.uncertainty * scale, digits), width))"
        }
        let ppl = tally.model.perplexity
        return padded("\(chunk + 1)", 4) + "    " + pm(ppl, 4, 9) + "    " + pm(tally.logPerplexityRatio, 5, 10) + "    "
            + pm(tally.meanDivergence, 5, 10) + "    " + pm(tally.probabilityChangeRMS, 3, 6, scale: 100) + " %    "
            + pm(tally.sameTopShare, 3, 6, scale: 100) + " %\n"
    }

    static func json(_ s: DivergenceSummary) -> JSONValue {
        func estimate(_ e: Estimate) -> JSONValue { ["value": .double(e.value), "uncertainty": .double(e.uncertainty)] }
        func percentiles(_ p: [(fraction: Double, value: Double)]) -> JSONValue {
            .object(JSONObject(p.map { (key: fixed($0.fraction * 100, 1), value: JSONValue.double($0.value)) }))
        }
        return [
            "perplexity": estimate(s.perplexity), "base_perplexity": estimate(s.basePerplexity),
            "log_perplexity_ratio": estimate(s.logPerplexityRatio), "log_perplexity_correlation": .double(s.logPerplexityCorrelation),
            "kl_divergence": estimate(s.meanDivergence), "kl_divergence_percentiles": percentiles(s.divergencePercentiles),
            "delta_p": estimate(s.meanProbabilityChange), "delta_p_percentiles": percentiles(s.probabilityChangePercentiles),
            "delta_p_rms": estimate(s.probabilityChangeRMS), "same_top": estimate(s.sameTop), "tokens": .int(s.tokens),
        ]
    }

    static func merge(_ a: JSONValue, _ b: JSONValue) -> JSONValue {
        guard case .object(var x) = a, case .object(let y) = b else { return a }
        for (k, v) in y.entries { x[k] = v }
        return .object(x)
    }
}

/// A progress bar on standard error: redrawn in place on a terminal, a line per tenth otherwise.
struct ProgressBar {
    let total: Int
    let unit: String
    let started = ContinuousClock.now
    let terminal = isatty(2) != 0
    var shownTenths = 0

    init(total: Int, unit: String) {
        self.total = max(1, total)
        self.unit = unit
    }

    mutating func advance(to done: Int) {
        let tenths = done * 10 / total
        guard terminal || tenths > shownTenths || done == total else { return }
        shownTenths = tenths
        let width = 30, filled = done * width / total
        let elapsed = (ContinuousClock.now - started).seconds
        let left = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let line = "[" + String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled) + "] \(done)/\(total) \(unit), "
            + "\(fixed(elapsed, 1)) s, \(fixed(left, 1)) s left"
        if terminal { writeError("\r" + line + "\u{1B}[K") } else { printError(line) }
    }

    func finish() {
        if terminal { writeError("\n") }
    }
}
