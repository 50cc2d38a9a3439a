import SwitchyardSupport

/// How a text is cut for perplexity, as llama-perplexity cuts it: consecutive windows of `context`
/// tokens, each run from an empty cache with its first tokens replaced by the tokenizer's prefix (BOS),
/// scoring only the second half (each of the last context - 1 - context / 2 positions predicts the next
/// token), so that every scored token has at least half a window before it.
public struct PerplexityPlan: Sendable {
    /// chunks x context tokens, as the text gave them.
    public let tokens: [Int]
    public let context: Int
    public let chunks: Int
    public let prefix: [Int]

    /// `tokens` is the whole text; `chunkLimit` caps the chunks (nil: as many as the text fills).
    public init(tokens: [Int], prefix: [Int], context: Int, chunkLimit: Int? = nil) throws(EvaluationError) {
        guard context >= 3 else { throw EvaluationError("a context of \(context) tokens scores nothing: use --ctx-size 3 or more") }
        guard prefix.count < context / 2 else { throw EvaluationError("the tokenizer's prefix (\(prefix.count) tokens) fills half of a \(context)-token context") }
        guard tokens.count / 2 >= context else {  // not 2 * context: a context from outside may be any Int
            throw EvaluationError("the text tokenizes to \(tokens.count) tokens; a context of \(context) needs at least twice that many (use a longer text or a smaller --ctx-size)")
        }
        if let chunkLimit, chunkLimit < 1 { throw EvaluationError("--chunks must be at least 1, found \(chunkLimit)") }
        let chunks = min(tokens.count / context, chunkLimit ?? Int.max)
        self.tokens = Array(tokens[0..<(chunks * context)])
        self.context = context
        self.chunks = chunks
        self.prefix = prefix
    }

    /// The plan a base file was written with (one chunk is enough: `--chunks 1` writes such files).
    public init(_ header: LogProbabilityFileHeader, prefix: [Int]) throws(EvaluationError) {
        guard prefix.count < header.context / 2 else {
            throw EvaluationError("the tokenizer's prefix (\(prefix.count) tokens) fills half of the base file's \(header.context)-token context")
        }
        tokens = header.tokens
        context = header.context
        chunks = header.chunks
        self.prefix = prefix
    }

    /// Positions from which logits are needed, and how many of those rows are scored.
    public var first: Int { context / 2 }
    public var scoredPerChunk: Int { context - 1 - first }
    public var scoredTokens: Int { chunks * scoredPerChunk }

    /// Chunk `chunk`'s window, the prefix in place of its first tokens.
    public func window(_ chunk: Int) -> [Int] {
        var w = Array(tokens[(chunk * context)..<((chunk + 1) * context)])
        w.replaceSubrange(0..<prefix.count, with: prefix)
        return w
    }

    /// The token that row `row` of chunk `chunk`'s scored logits predicts.
    public func target(chunk: Int, row: Int) -> Int { tokens[chunk * context + first + row + 1] }

    /// The header of a base file written from this plan.
    public func header(vocabulary: Int) -> LogProbabilityFileHeader {
        LogProbabilityFileHeader(context: context, vocabulary: vocabulary, chunks: chunks, tokens: tokens)
    }
}

/// Runs a plan: `forward(window, first)` returns the logits of the window's positions from `first`
/// on, [context - first, vocabulary].
public struct PerplexityRun {
    public let plan: PerplexityPlan
    public let vocabulary: Int
    public let forward: ([Int], Int) throws -> [Float]

    public init(plan: PerplexityPlan, vocabulary: Int, forward: @escaping ([Int], Int) throws -> [Float]) {
        self.plan = plan
        self.vocabulary = vocabulary
        self.forward = forward
    }

    func logits(_ chunk: Int) throws -> [Float] {
        let logits = try forward(plan.window(chunk), plan.first)
        guard logits.count == (plan.context - plan.first) * vocabulary else {
            throw EvaluationError("the model returned \(logits.count) logits for chunk \(chunk + 1), not \((plan.context - plan.first) * vocabulary)")
        }
        return logits
    }

    /// Perplexity over every chunk, each chunk's rows written to `base` when given; `progress` is
    /// told after each chunk.
    public func perplexity(base: LogProbabilityWriter? = nil, progress: (Int, PerplexityTally) -> Void = { _, _ in }) throws -> PerplexityTally {
        var tally = PerplexityTally()
        let rowWords = LogProbabilityCodes.rowWords(vocabulary: vocabulary)
        var rows = [UInt16](repeating: 0, count: base == nil ? 0 : plan.scoredPerChunk * rowWords)
        for chunk in 0..<plan.chunks {
            let logits = try self.logits(chunk)
            try logits.withUnsafeBufferPointer { l in
                try rows.withUnsafeMutableBufferPointer { r in
                    for row in 0..<plan.scoredPerChunk {
                        let line = UnsafeBufferPointer(rebasing: l[(row * vocabulary)..<((row + 1) * vocabulary)])
                        let token = plan.target(chunk: chunk, row: row)
                        if base != nil {
                            tally.add(LogProbabilityCodes.encode(line, token: token, into: r.baseAddress! + row * rowWords))
                        } else {
                            tally.add(RowSoftmax(line).negativeLogLikelihood(line, token))
                        }
                    }
                    try base?.append(UnsafeBufferPointer(r))
                }
            }
            progress(chunk, tally)
        }
        try base?.finish()
        return tally
    }

    /// The model against a base file written from the same plan.
    public func divergence(from base: LogProbabilityReader, progress: (Int, DivergenceTally) -> Void = { _, _ in }) throws -> DivergenceTally {
        guard base.header.vocabulary == vocabulary else {
            throw EvaluationError("\(base.path) holds a vocabulary of \(base.header.vocabulary) tokens; this model's has \(vocabulary)")
        }
        var tally = DivergenceTally()
        let rowWords = base.header.rowWords
        var rows = [UInt16](repeating: 0, count: base.header.chunkWords)
        for chunk in 0..<plan.chunks {
            try rows.withUnsafeMutableBufferPointer { r throws(EvaluationError) in try base.readChunk(chunk, into: r.baseAddress!) }
            let logits = try self.logits(chunk)
            logits.withUnsafeBufferPointer { l in
                rows.withUnsafeBufferPointer { r in
                    for row in 0..<plan.scoredPerChunk {
                        let line = UnsafeBufferPointer(rebasing: l[(row * vocabulary)..<((row + 1) * vocabulary)])
                        tally.add(TokenComparison(line, base: r.baseAddress! + row * rowWords, token: plan.target(chunk: chunk, row: row)))
                    }
                }
            }
            progress(chunk, tally)
        }
        return tally
    }
}
