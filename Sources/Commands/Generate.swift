import ArgumentParser
import Generation
import Models
import Engine
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a prompt, streaming it to the terminal.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: .long, help: "The prompt text.")
    var prompt: String?

    @Argument(help: "The prompt text (instead of --prompt).")
    var promptArgument: String?

    @Option(name: [.short, .customLong("max-tokens")], help: "Most tokens to generate.")
    var maxTokens: Int = 64

    @OptionGroup var sampling: SamplingOptions

    @Option(name: .customLong("context-length"), help: "Context length (default: the model's maximum).")
    var contextLength: Int?

    @Flag(name: .customLong("ignore-eos"), help: "Do not stop at end-of-sequence tokens.")
    var ignoreEOS = false

    @Flag(help: "Print one JSON object at the end instead of streaming text.")
    var json = false

    func validate() throws {
        if prompt != nil && promptArgument != nil { throw ValidationError("give the prompt once: --prompt or an argument") }
        if prompt == nil && promptArgument == nil { throw ValidationError("missing prompt: --prompt \"...\"") }
        try checkRange(maxTokens, "--max-tokens", 0...positionLimit)
        try checkRange(contextLength, "--context-length", 1...positionLimit)
    }

    func run() throws {
        try reportingErrors {
            let tokenizer = try Tokenizer(directory: try modelDirectory(modelOptions.model))
            let text = prompt ?? promptArgument ?? ""
            let promptTokens = tokenizer.encode(text)
            let engine = try modelOptions.loadEngine(kvPositions: contextLength ?? promptTokens.count + maxTokens)
            let model = engine.model
            var options = GenerationOptions()
            options.maxTokens = maxTokens
            options.stopStrings = sampling.stop
            options.ignoreEOS = ignoreEOS
            options.sampling = sampling.parameters
            let generator = Generator(model: model, tokenizer: tokenizer)
            if !json { writeOut(text) }
            let result = try generator.generate(promptTokens: promptTokens, options: options, contextLength: contextLength) { piece in
                if !json { writeOut(piece) }
            }
            if json {
                var object: JSONValue = [
                    "prompt_tokens": .array(result.promptTokens.map { .int($0) }),
                    "tokens": .array(result.tokens.map { .int($0) }),
                    "text": .string(result.text),
                    "finish_reason": .string(result.finishReason.rawValue),
                    "prompt_tokens_per_second": .double(result.promptTokensPerSecond),
                    "tokens_per_second": .double(result.tokensPerSecond),
                    "peak_resident_bytes": .int(peakResidentBytes()),
                    "precision": .string(engine.precision.rawValue),
                ]
                if let tiers = engine.tiers, case .object(var o) = object {
                    o["tiers"] = tiers.report
                    object = .object(o)
                }
                writeOut(object.serialized() + "\n")
            } else {
                writeOut("\n")
                printError("prompt: \(result.promptTokens.count) tokens, \(fixed(result.promptTokensPerSecond, 1)) tok/s; "
                    + "generated: \(result.tokens.count) tokens, \(fixed(result.tokensPerSecond, 1)) tok/s")
            }
        }
    }
}

/// Sampling flags shared by `generate` and `chat`, with llama.cpp's defaults.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0.8

    @Option(name: .customLong("top-k"), help: "Keep the k most likely tokens (0: all).")
    var topK: Int = 40

    @Option(name: .customLong("top-p"), help: "Nucleus sampling threshold (1: off).")
    var topP: Float = 0.95

    @Option(name: .customLong("min-p"), help: "Drop tokens less likely than min-p x the most likely (0: off).")
    var minP: Float = 0.05

    @Option(name: .customLong("repeat-penalty"), help: "Penalty for recently seen tokens (1: off).")
    var repeatPenalty: Float = 1.0

    @Option(name: .customLong("repeat-last-n"), help: "Tokens the repeat penalty looks back over (-1: all).")
    var repeatLastN: Int = 64

    @Option(help: "Random seed (default: random).")
    var seed: UInt64?

    @Option(name: .customLong("stop"), help: "Stop when this text is generated (repeatable).")
    var stop: [String] = []

    func validate() throws {
        try checkRange(temperature, "--temperature", 0...100)
        try checkRange(topK, "--top-k", 0...positionLimit)
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1], found \(topP)") }
        try checkRange(minP, "--min-p", 0...1)
        if !(repeatPenalty > 0 && repeatPenalty <= 100) { throw ValidationError("--repeat-penalty must be in (0, 100], found \(repeatPenalty)") }
        try checkRange(repeatLastN, "--repeat-last-n", -1...positionLimit)
    }

    var parameters: SamplingParameters {
        var p = SamplingParameters()
        p.temperature = temperature
        p.topK = topK
        p.topP = topP
        p.minP = minP
        p.repeatPenalty = repeatPenalty
        p.repeatLastN = repeatLastN
        p.seed = seed ?? UInt64.random(in: 0...UInt64.max)
        return p
    }
}
