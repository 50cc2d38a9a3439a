import ArgumentParser
import Batching
import ChatTemplates
import Commands
import Models
import Server
import SwitchyardSupport
import Tokenizers

/// `switchyard batch`: a file of requests through continuous batching, resumable after a kill.
struct BatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch",
        abstract: "Run a file of requests (OpenAI's batch format, or one prompt per line) at full throughput; rerun to resume after a kill.",
        discussion: """
            Input lines: {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions" or "/v1/completions", "body": {...}}, \
            or a prompt string, {"prompt": ...} or {"messages": [...]} (named line-N). Results go to --output in OpenAI's batch \
            output format as each finishes (appended and synced); failed requests and bad lines go to --errors. Run the same \
            command again after a crash or kill -9: finished requests are kept, a torn last line is redone, nothing runs twice.
            """)

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "The requests, one JSON object (or prompt string) per line.")
    var input: String

    @Option(help: "Where results go (appended; kept across reruns).")
    var output: String

    @Option(help: "Where failed requests and bad lines go (default: the output path with .errors.jsonl).")
    var errors: String?

    @Option(name: .customLong("max-sequences"), help: "Sequences decoded together at most (default: as many as the KV budget holds, up to 256).")
    var maxSequences: Int?

    @Option(name: .customLong("context-length"), help: "Longest sequence, prompt and completion (default: min(2048, the model's maximum)).")
    var contextLength: Int?

    @Option(name: .customLong("kv-cache-size"), help: "KV cache memory for all sequences together, e.g. 2GiB (default: 1GiB, or the attention workers' memory).")
    var kvCacheSize: String?

    @Option(name: .customLong("prefill-chunk"), help: "Prompt tokens one step may take, all prompts together.")
    var prefillChunk: Int = 512

    @Option(name: .customLong("max-tokens"), help: "max_tokens for requests that do not give one.")
    var maxTokens: Int?

    func validate() throws {
        try checkRange(maxSequences, "--max-sequences", 1...4096)
        try checkRange(contextLength, "--context-length", 1...(1 << 24))
        try checkRange(prefillChunk, "--prefill-chunk", 1...(1 << 20))
        try checkRange(maxTokens, "--max-tokens", 1...(1 << 24))
    }

    func run() async throws {
        let errorsPath = errors ?? (output.hasSuffix(".jsonl") ? String(output.dropLast(6)) : output) + ".errors.jsonl"
        let requests: [BatchRequestLine], badLines: [BatchLineError]
        let out: BatchResultFile, err: BatchResultFile
        let model: Model, tokenizer: Tokenizer, kvBytes: Int?
        do {
            let bytes: [UInt8]
            do { bytes = try readFileBytes(input) } catch { throw BatchInputError("\(input): \(error)") }
            (requests, badLines) = try BatchInput.parse(bytes, defaultMaxTokens: maxTokens)
            out = try BatchResultFile(path: output)
            err = try BatchResultFile(path: errorsPath)
            kvBytes = try kvCacheSize.map(parseByteSize)
            model = try modelOptions.loadEngine().model
            tokenizer = try Tokenizer(directory: model.directory)
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        if out.truncatedBytes > 0 { printError("note: \(output): cut \(out.truncatedBytes) bytes of a torn last line; its request runs again") }
        if err.truncatedBytes > 0 { printError("note: \(errorsPath): cut \(err.truncatedBytes) bytes of a torn last line") }
        do { try err.record(badLines) } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        let context = min(contextLength ?? 2048, model.config.maxPositions)
        // As many sequences as the KV memory holds at the full context (the workers' memory with
        // --attention-workers), not a fixed handful: throughput is the point.
        let cache = model.attention.cache
        let budget = kvBytes ?? cache.bytesAvailable ?? (1 << 30)
        let fits = max(1, budget / max(1, cache.layout.bytes(positions: context)))
        let sequences = maxSequences ?? min(256, fits)
        let remaining = requests.filter { !out.contains($0.customID) && !err.contains($0.customID) }
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: sequences, contextLength: context,
                                       queueLimit: max(1, remaining.count), kvBudgetBytes: budget, prefillChunk: prefillChunk)
        defer { scheduler.shutdown() }
        let name = String(model.directory.split(separator: "/").last ?? "model")
        let server = OpenAIServer(configuration: ServerConfiguration(modelName: name), scheduler: scheduler, tokenizer: tokenizer,
                                  chat: try? ChatTemplateConfiguration(directory: model.directory))
        let total = requests.count, already = requests.count - remaining.count
        printError("batch: \(total) requests, \(already) already done, \(remaining.count) to run, up to \(sequences) sequences at once (context \(context))")
        let terminal = isatty(2) != 0
        let lastReport = LastReport()
        let summary: BatchSummary
        do {
            summary = try await server.runBatch(requests, output: out, errors: err) { s in
                guard lastReport.due(every: terminal ? 0.2 : 10) else { return }
                let done = already + s.succeeded + s.failed
                let rate = s.seconds > 0 ? Double(s.completionTokens) / s.seconds : 0
                let eta = s.succeeded > 0 ? s.seconds / Double(s.succeeded + s.failed) * Double(total - done) : 0
                let line = "batch: \(done)/\(total) done, \(fixed(rate, 1)) generated tok/s, ETA \(fixed(eta, 0)) s"
                printError(terminal ? "\u{1B}[2K\r" + line + "\u{1B}[1A" : line)
            }
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        let rate = summary.seconds > 0 ? Double(summary.promptTokens + summary.completionTokens) / summary.seconds : 0
        printError("batch: done: \(summary.succeeded) succeeded, \(summary.failed + badLines.count) failed (\(errorsPath)), \(summary.promptTokens) prompt and \(summary.completionTokens) generated tokens in \(fixed(summary.seconds, 1)) s, \(fixed(rate, 1)) tok/s; \(out.count + err.count) of \(total + badLines.count) lines have results")
    }
}

/// When progress was last reported.
final class LastReport: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var last = ContinuousClock.now - .seconds(3600)
    init() { pthread_mutex_init(&mutex, nil) }
    func due(every seconds: Double) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard (ContinuousClock.now - last).seconds >= seconds else { return false }
        last = .now
        return true
    }
}
