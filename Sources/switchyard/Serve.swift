import ArgumentParser
import Batching
import ChatTemplates
import Commands
import Models
import Server
import SwitchyardSupport
import Tokenizers

/// `switchyard serve`: the OpenAI-compatible HTTP server.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over an OpenAI-compatible HTTP API with continuous batching.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "Address to listen on (loopback unless told otherwise).")
    var host: String = "127.0.0.1"

    @Option(help: "Port (0 picks a free one).")
    var port: Int = 8080

    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' on /v1 requests.")
    var apiKey: String?

    @Option(name: .customLong("max-sequences"), help: "Sequences decoded together at most.")
    var maxSequences: Int = 8

    @Option(name: .customLong("context-length"), help: "Longest sequence (prompt + completion) (default: min(4096, the model's maximum)).")
    var contextLength: Int?

    @Option(name: .customLong("queue-limit"), help: "Requests that may wait; beyond it the server answers 429.")
    var queueLimit: Int = 64

    @Option(name: .customLong("prefill-chunk"), help: "Prompt tokens one step may take, all prompts together: bounds the pause a long prompt puts between other streams' tokens.")
    var prefillChunk: Int = 128

    @Option(name: .customLong("kv-cache-size"), help: "KV cache memory for all sequences together, e.g. 2GiB (default: max-sequences full contexts).")
    var kvCacheSize: String?

    @Option(name: .customLong("served-model-name"), help: "The name clients pass as 'model' (default: the folder's name).")
    var servedModelName: String?

    @Flag(name: .customLong("strict-model-name"), help: "Refuse requests naming another model (by default any name gets this model, as llama-server does).")
    var strictModelName = false

    @Option(name: .customLong("idle-timeout"), help: "Seconds a connection may stay open without a request, or take to send a request's head.")
    var idleTimeout: Double = 30

    @Option(name: .customLong("body-timeout"), help: "Seconds a request's body may take to arrive.")
    var bodyTimeout: Double = 30

    @Option(name: .customLong("max-request-bytes"), help: "The largest request body, e.g. 8MiB.")
    var maxRequestBytes: String = "8MiB"

    @Option(name: .customLong("max-connections"), help: "Connections open at once (default: the open-file limit less 128); more wait to be accepted.")
    var maxConnections: Int?

    @Option(name: .customLong("shutdown-deadline"), help: "Seconds requests get to finish after SIGINT or SIGTERM; a second signal exits at once.")
    var shutdownDeadline: Double = 10

    @Option(name: .customLong("batch-dir"), help: "Turns on the Batch API (/v1/files, /v1/batches), keeping its database and files in this folder; a restarted server resumes its unfinished batches.")
    var batchDir: String?

    @Option(name: .customLong("max-file-bytes"), help: "The largest batch input file an upload may carry, e.g. 256MiB.")
    var maxFileBytes: String = "256MiB"

    @Flag(name: .customLong("mmap"), help: ArgumentHelp(
        "Compute from the model files' memory mappings instead of copies in memory.",
        discussion: "By default the server copies the weights it computes with out of the files, so that a file changed or cut short while it runs cannot end it (a read past a mapped file's end is a signal); with this flag the files must not change while it serves."))
    var mmap = false

    func validate() throws {
        try checkRange(maxSequences, "--max-sequences", 1...4096)
        try checkRange(queueLimit, "--queue-limit", 0...(1 << 20))
        try checkRange(prefillChunk, "--prefill-chunk", 1...(1 << 20))
        try checkRange(contextLength, "--context-length", 1...(1 << 24))
        try checkRange(port, "--port", 0...65535)
        try checkRange(maxConnections, "--max-connections", 1...(1 << 20))
        for (value, flag) in [(idleTimeout, "--idle-timeout"), (bodyTimeout, "--body-timeout"), (shutdownDeadline, "--shutdown-deadline")] {
            guard value.isFinite, value > 0, value <= 86_400 else { throw ValidationError("\(flag) must be between 0 and 86400 seconds, found \(value)") }
        }
    }

    func run() async throws {
        let model: Model
        let tokenizer: Tokenizer
        let kvBytes: Int?
        let requestBytes: Int, fileBytes: Int
        do {
            model = try modelOptions.loadEngine(kvPositions: maxSequences * (contextLength ?? 4096), holdWeightsInMemory: !mmap).model
            tokenizer = try Tokenizer(directory: model.directory)
            kvBytes = try kvCacheSize.map(parseByteSize)
            requestBytes = try parseByteSize(maxRequestBytes)
            fileBytes = try parseByteSize(maxFileBytes)
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        let chat = try? ChatTemplateConfiguration(directory: model.directory)
        let context = min(contextLength ?? 4096, model.config.maxPositions)
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: maxSequences, contextLength: context,
                                       queueLimit: queueLimit, kvBudgetBytes: kvBytes, prefillChunk: prefillChunk)
        let name = servedModelName ?? String(model.directory.split(separator: "/").last ?? "model")
        var configuration = ServerConfiguration(modelName: name)
        configuration.host = host
        configuration.port = port
        configuration.apiKey = apiKey
        configuration.strictModelName = strictModelName
        configuration.idleTimeout = idleTimeout
        configuration.bodyTimeout = bodyTimeout
        configuration.maxRequestBytes = requestBytes
        configuration.maxConnections = maxConnections
        configuration.shutdownDeadline = shutdownDeadline
        configuration.batchDirectory = batchDir
        configuration.maxFileBytes = fileBytes
        let server = OpenAIServer(configuration: configuration, scheduler: scheduler, tokenizer: tokenizer, chat: chat)
        let host = self.host
        do {
            try await server.run { port in
                printError("serving \(name) (\(model.config.modelType)) at http://\(host):\(port)/v1 with up to \(scheduler.maxSequences) sequences, context \(context)")
            }
        } catch {
            printError("error: \(error)")
            scheduler.shutdown()
            throw ExitCode(1)
        }
        scheduler.shutdown()
        printError("stopped")
    }
}
