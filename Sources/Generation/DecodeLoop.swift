import Tokenizers

/// Logits no token can be chosen from: the model's weights or inputs hold a NaN or an infinity.
public struct NonFiniteLogits: Error, CustomStringConvertible, Sendable {
    public var position: Int
    public var description: String {
        "the model produced non-finite logits after \(position) generated tokens (a NaN or infinite weight? --check-tensors looks at every weight)"
    }
}

/// What one turn of the decode loop produced.
public struct DecodeStep: Sendable {
    /// The token sampled from the logits.
    public var token: Int
    /// Text that became final with it (none for an end-of-sequence token or held-back text).
    public var text: String
    /// Set when generation ends with this token; the token is then not fed back to the model.
    public var finish: FinishReason?
}

/// The one decode loop of the engine, one token at a time: sample from the logits, end at an
/// end-of-sequence token, turn the token into text that is final (whole UTF-8 characters, stop
/// strings held back until they cannot match), end at a stop string or the token limit or a full
/// context, and on any end but a stop string flush the text still held. `generate`, `chat`, the
/// server's batches, `profile` and `bench` all run through it; only where the logits come from
/// differs.
public struct DecodeLoop {
    public private(set) var generated: [Int] = []
    public let maxTokens: Int
    private var sampler: Sampler
    private var detokenizer: IncrementalDetokenizer?
    private var stops: StopStringFilter
    private let eos: Set<Int>
    private let promptTokens: [Int]

    /// - Parameters:
    ///   - tokenizer: turns tokens into text; nil produces no text (benchmarks, profiles).
    ///   - eos: tokens that end generation (none to ignore them).
    public init(sampling: SamplingParameters, tokenizer: Tokenizer?, promptTokens: [Int], stopStrings: [String] = [], eos: Set<Int>,
                maxTokens: Int) {
        sampler = Sampler(sampling)
        detokenizer = tokenizer.map { IncrementalDetokenizer(tokenizer: $0, promptTokens: promptTokens) }
        stops = StopStringFilter(stopStrings)
        self.eos = eos
        self.maxTokens = maxTokens
        self.promptTokens = promptTokens
    }

    /// Whether the loop is over before it began (a limit of no tokens).
    public var isEmpty: Bool { maxTokens <= 0 }

    /// One turn: the next token from the logits of the last position. Logits with a NaN or an
    /// infinity are an error, never a token (argmax would quietly pick token 0).
    /// - Parameter contextFull: the model cannot take the token (its context is full).
    public mutating func next(logits: [Float], contextFull: Bool) throws(NonFiniteLogits) -> DecodeStep {
        guard logits.allSatisfy(\.isFinite) else { throw NonFiniteLogits(position: generated.count) }
        let token = sampler.sample(logits: logits, history: promptTokens + generated, generatedCount: generated.count)
        generated.append(token)
        if eos.contains(token) { return DecodeStep(token: token, text: tail(), finish: .stop) }
        var text = stops.push(detokenizer?.append(token) ?? "")
        if stops.stopped { return DecodeStep(token: token, text: text, finish: .stop) }
        if generated.count >= maxTokens || contextFull {
            text += tail()
            return DecodeStep(token: token, text: text, finish: .length)
        }
        return DecodeStep(token: token, text: text, finish: nil)
    }

    /// The text held back, released at the end.
    private mutating func tail() -> String {
        stops.push(detokenizer?.flush() ?? "") + stops.finish()
    }
}
