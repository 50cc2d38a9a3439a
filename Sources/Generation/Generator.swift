import Kernels
import Models
import SwitchyardSupport
import Tokenizers

public struct GenerationOptions: Sendable {
    public var maxTokens = 64
    public var sampling = SamplingParameters()
    public var stopStrings: [String] = []
    /// Keep going past the model's end-of-sequence tokens (for benchmarks and comparisons).
    public var ignoreEOS = false

    public init() {}
}

public enum FinishReason: String, Sendable {
    /// An end-of-sequence token or a stop string.
    case stop
    /// `maxTokens` reached, or the context is full.
    case length
}

public struct GenerationResult: Sendable {
    public var promptTokens: [Int]
    /// Generated ids, the end-of-sequence token included when one ended generation (as transformers
    /// returns it).
    public var tokens: [Int]
    /// Generated text, without special tokens and without the stop string.
    public var text: String
    public var finishReason: FinishReason
    public var promptSeconds: Double
    public var generationSeconds: Double

    public var promptTokensPerSecond: Double { promptSeconds > 0 ? Double(promptTokens.count) / promptSeconds : 0 }
    /// Decode speed: the first token comes out of the prompt pass, so it is not counted.
    public var tokensPerSecond: Double {
        tokens.count > 1 && generationSeconds > 0 ? Double(tokens.count - 1) / generationSeconds : 0
    }
}

/// Runs the loop prompt → logits → sample → feed back, streaming text as it becomes final.
public struct Generator {
    public let model: Model
    public let tokenizer: Tokenizer

    public init(model: Model, tokenizer: Tokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    /// - Parameters:
    ///   - session: a session to continue (a chat): the part of the prompt it has already processed
    ///     is kept in its KV cache and only the rest is run. A new session by default.
    ///   - onText: receives each piece of final text, in order.
    public func generate(
        promptTokens: [Int], options: GenerationOptions, contextLength: Int? = nil, session existing: Session? = nil,
        onText: (String) -> Void = { _ in }
    ) throws(ModelError) -> GenerationResult {
        guard !promptTokens.isEmpty else { throw ModelError("the prompt is empty (no tokens)") }
        let session = existing ?? model.makeSession(contextLength: contextLength)
        // Keep the longest cached prefix, but run at least one token to get logits.
        let reusable = min(zip(session.tokens, promptTokens).prefix { $0 == $1 }.count, promptTokens.count - 1)
        session.rewind(to: reusable)
        guard promptTokens.count < session.capacity else {
            throw ModelError("the prompt has \(promptTokens.count) tokens; the context length is \(session.capacity)")
        }
        let eos = Set(options.ignoreEOS ? [] : model.config.eosTokenIDs)
        var sampler = Sampler(options.sampling)
        var detokenizer = IncrementalDetokenizer(tokenizer: tokenizer, promptTokens: promptTokens)
        var stops = StopStringFilter(options.stopStrings)
        var history = promptTokens
        var generated: [Int] = []
        var text = ""
        var finish = FinishReason.length
        func emit(_ piece: String) {
            guard !piece.isEmpty else { return }
            text += piece
            onText(piece)
        }

        let clock = ContinuousClock()
        let promptStart = clock.now
        var logits = try session.forward(Array(promptTokens[reusable...]))
        let promptSeconds = (clock.now - promptStart).seconds
        let decodeStart = clock.now
        while generated.count < options.maxTokens {
            let token = sampler.sample(logits: logits, history: history)
            generated.append(token)
            history.append(token)
            if eos.contains(token) { finish = .stop; break }
            emit(stops.push(detokenizer.append(token)))
            if stops.stopped { finish = .stop; break }
            if generated.count == options.maxTokens || session.position >= session.capacity { break }
            logits = try session.forward([token])
        }
        if !stops.stopped {
            emit(stops.push(detokenizer.flush()))
            emit(stops.finish())
        }
        return GenerationResult(
            promptTokens: promptTokens, tokens: generated, text: text, finishReason: finish,
            promptSeconds: promptSeconds, generationSeconds: (clock.now - decodeStart).seconds)
    }
}
