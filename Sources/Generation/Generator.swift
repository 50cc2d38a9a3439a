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

/// Runs one sequence: the prompt through the model, then the decode loop, streaming text as it
/// becomes final.
public struct Generator {
    public let model: Model
    public let tokenizer: Tokenizer?

    public init(model: Model, tokenizer: Tokenizer?) {
        self.model = model
        self.tokenizer = tokenizer
    }

    /// - Parameters:
    ///   - session: a session to continue (a chat): the part of the prompt it has already processed
    ///     is kept in its KV cache and only the rest is run. A new session by default.
    ///   - workspace: work memory to use instead of the session's (to observe routing).
    ///   - onText: receives each piece of final text, in order.
    public func generate(
        promptTokens: [Int], options: GenerationOptions, contextLength: Int? = nil, session existing: Session? = nil,
        workspace: Workspace? = nil, onText: (String) -> Void = { _ in }
    ) throws(ModelError) -> GenerationResult {
        guard !promptTokens.isEmpty else { throw ModelError("the prompt is empty (no tokens)") }
        let session: Session
        if let existing { session = existing } else { session = try model.makeSession(contextLength: contextLength) }
        // Keep the longest cached prefix, but run at least one token to get logits.
        let reusable = min(zip(session.tokens, promptTokens).prefix { $0 == $1 }.count, promptTokens.count - 1)
        session.rewind(to: reusable)
        guard promptTokens.count < session.capacity else {
            throw ModelError("the prompt has \(promptTokens.count) tokens; the context length is \(session.capacity)")
        }
        var loop = DecodeLoop(
            sampling: options.sampling, tokenizer: tokenizer, promptTokens: promptTokens, stopStrings: options.stopStrings,
            eos: Set(options.ignoreEOS ? [] : model.config.eosTokenIDs), maxTokens: options.maxTokens)
        var text = ""
        func emit(_ piece: String) {
            guard !piece.isEmpty else { return }
            text += piece
            onText(piece)
        }

        let clock = ContinuousClock()
        let promptStart = clock.now
        var logits = try session.forward(Array(promptTokens[reusable...]), workspace: workspace)
        let promptSeconds = (clock.now - promptStart).seconds
        let decodeStart = clock.now
        var finish = FinishReason.length
        while !loop.isEmpty {
            let step: DecodeStep
            do { step = try loop.next(logits: logits, contextFull: session.position >= session.capacity) } catch {
                throw ModelError(error.description)
            }
            emit(step.text)
            if let reason = step.finish {
                finish = reason
                break
            }
            logits = try session.forward([step.token], workspace: workspace)
        }
        return GenerationResult(
            promptTokens: promptTokens, tokens: loop.generated, text: text, finishReason: finish,
            promptSeconds: promptSeconds, generationSeconds: (clock.now - decodeStart).seconds)
    }
}
