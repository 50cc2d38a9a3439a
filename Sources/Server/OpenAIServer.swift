import BatchStore
import Batching
import ChatTemplates
import Generation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore
import ServiceLifecycle
import Synchronization
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers
import UnixSignals
import Logging

public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var apiKey: String?
    /// The name clients use in `model` (the model folder's name by default).
    public var modelName: String
    /// Refuse requests naming another model (by default any name is served with the one model,
    /// as llama-server does).
    public var strictModelName = false
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM before they are cancelled;
    /// the process exits at most a few seconds after this, whatever is still running, and a
    /// second signal ends it at once.
    public var shutdownDeadline: Double = 10
    /// Seconds a connection may stay open without a request (between keep-alive requests, and
    /// while a request's head arrives).
    public var idleTimeout: Double = 30
    /// Seconds a request's body may take to arrive.
    public var bodyTimeout: Double = 30
    /// Bytes of a request body at most.
    public var maxRequestBytes = 8 << 20
    /// Connections open at once at most; more wait in the listen backlog (nil: from the
    /// open-file limit, keeping room for the model's files and the process's own).
    public var maxConnections: Int?

    /// Where the Batch API keeps its database and files (nil: the Batch API is off).
    public var batchDirectory: String?
    /// Bytes of an uploaded batch file at most.
    public var maxFileBytes = 256 << 20

    public init(modelName: String) { self.modelName = modelName }

    /// The connection cap in force: the given one, or the open-file limit less 128, at least 16.
    public var connectionLimit: Int {
        if let maxConnections { return maxConnections }
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 256 }
        return max(16, min(Int(clamping: limit.rlim_cur), 1 << 20) - 128)
    }
}

/// The request context of the server's routes: Hummingbird's, and the connection, so that a
/// request whose client went away can be cancelled.
struct ServerContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The OpenAI-compatible server: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics,
/// and with a batch folder the Batch API (/v1/files, /v1/batches).
public final class OpenAIServer: Sendable {
    let configuration: ServerConfiguration
    let scheduler: BatchScheduler
    let tokenizer: Tokenizer
    let chat: ChatTemplateConfiguration?
    let metrics = Metrics()
    let created = Int(time(nil))
    /// The most bytes of text one token stands for (prompts longer than the context allows are
    /// refused before they are tokenised).
    let tokenBytesBound: Int
    /// Where requests are decoded, rendered and tokenised.
    let offload = Offload(threads: 2)

    public init(configuration: ServerConfiguration, scheduler: BatchScheduler, tokenizer: Tokenizer, chat: ChatTemplateConfiguration?) {
        self.configuration = configuration
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.chat = chat
        tokenBytesBound = tokenizer.longestTokenBytes
    }

    /// Serves until SIGINT or SIGTERM, then lets requests finish for the deadline and returns.
    public func run(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let router = Router(context: ServerContext.self)
        router.add(middleware: OpenAIErrorMiddleware())
        router.get("/health") { _, _ in
            if let failure = self.scheduler.failure {
                return self.json(.serviceUnavailable, ["status": "unhealthy", "reason": .string(failure)])
            }
            return self.json(.ok, ["status": "ok"])
        }
        router.get("/metrics") { request, _ in
            try self.authorize(request)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(string: self.metrics.render(self.scheduler.stats))))
        }
        router.get("/v1/models") { request, _ in
            try self.authorize(request)
            let entry: JSONValue = ["id": .string(self.configuration.modelName), "object": "model", "created": .int(self.created), "owned_by": "switchyard"]
            return self.json(.ok, ["object": "list", "data": [entry]])
        }
        router.post("/v1/chat/completions") { request, context in try await self.complete(request, chat: true, channel: context.channel) }
        router.post("/v1/completions") { request, context in try await self.complete(request, chat: false, channel: context.channel) }
        var batches: BatchService?
        if let directory = configuration.batchDirectory {
            let service = BatchService(store: try await BatchStore.open(directory: directory), server: self)
            try await service.resumeUnfinished()
            service.routes(router)
            batches = service
        } else {
            for path in ["/v1/files", "/v1/batches"] {
                let off: @Sendable (Request, ServerContext) async throws -> Response = { _, _ in
                    throw APIError(status: .notFound, message: "the Batch API is off: start the server with --batch-dir DIR")
                }
                for p in [path, path + "/**"] {
                    router.get(RouterPath(p), use: off)
                    router.post(RouterPath(p), use: off)
                }
            }
        }
        let app = Application(
            router: router,
            server: .http1(configuration: .init(
                additionalChannelHandlers: [ClientGoneHandler()], idleTimeout: .nanoseconds(Int64(configuration.idleTimeout * 1e9)))),
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port), serverName: "switchyard",
                availableConnectionsDelegate: MaximumAvailableConnections(configuration.connectionLimit)),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) })
        let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "switchyard")))
        let batchRuns = Task { [batches] in await batches?.run() }
        let signals = Task { [batches] in await shutdownOnSignals(group) { batches?.stop() } }
        defer {
            signals.cancel()
            batches?.stop()
        }
        try await group.run()
        batches?.stop()
        _ = await batchRuns.value
        await batches?.store.close()
    }

    /// The first SIGINT or SIGTERM stops accepting and lets requests finish for the deadline; then
    /// they are cancelled, and whatever still holds the process up (a connection that will not
    /// close, a step of the model) does not: it exits a few seconds past the deadline. A second
    /// signal exits at once. (Hummingbird's own graceful shutdown waits for every request before a
    /// service of ours would hear of it, so the deadline is kept here.)
    private func shutdownOnSignals(_ group: ServiceGroup, stopBatches: @Sendable () -> Void) async {
        let scheduler = self.scheduler, deadline = configuration.shutdownDeadline
        var received = 0
        for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
            received += 1
            guard received == 1 else { exit(130) }
            // Batch work stops at once (it resumes at the next start); interactive requests get the deadline.
            stopBatches()
            await group.triggerGracefulShutdown()
            _ = startThread("the shutdown deadline") {
                func sleep(_ seconds: Double) {
                    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - seconds.rounded(.down)) * 1e9))
                    var remaining = timespec()
                    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
                }
                sleep(deadline)
                scheduler.shutdown()  // the running sequences fail, their responses end
                sleep(5)
                exit(0)
            }
        }
    }

    func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: value.serialized())))
    }

    /// `Authorization: Bearer KEY` when the server has a key (the scheme is case-insensitive, as
    /// RFC 7235 says).
    func authorize(_ request: Request) throws {
        guard let key = configuration.apiKey else { return }
        let given = request.headers[.authorization] ?? ""
        let parts = given.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer", parts[1] == key else {
            throw APIError(status: .unauthorized, message: "missing or invalid API key", type: "authentication_error", code: "invalid_api_key")
        }
    }

    func complete(_ request: Request, chat: Bool, channel: any Channel) async throws -> Response {
        let endpoint = chat ? "chat" : "completions"
        do {
            try authorize(request)
            let parsed = try await parse(request, chat: chat)
            let submitted: (id: Int, events: AsyncStream<CompletionEvent>)
            do {
                submitted = try scheduler.submit(parsed.request)
            } catch {
                switch error.kind {
                case .queueFull: throw APIError(status: .tooManyRequests, message: "the server is busy: \(error.description)", type: "server_error", code: "queue_full", retryAfter: 1)
                case .tooLong: throw APIError(status: .badRequest, message: error.description, param: chat ? "messages" : "prompt", code: "context_length_exceeded")
                case .shuttingDown: throw APIError(status: .serviceUnavailable, message: error.description, type: "server_error", retryAfter: 5)
                }
            }
            metrics.request(endpoint, status: 200)
            if parsed.stream {
                return streamResponse(submitted, parsed, chat: chat)
            }
            return try await wholeResponse(submitted, parsed, chat: chat, channel: channel)
        } catch let error as APIError {
            metrics.request(endpoint, status: Int(error.status.code))
            return error.response
        }
    }
}

/// Closes a connection whose client has closed its side. Hummingbird lets a client half-close
/// (send FIN and still read), which HTTP/1.1 clients do not do while they wait for an answer: a
/// FIN means the client is gone, and closing lets a request still computing for it be cancelled
/// (its handler watches the connection's close) instead of running to the end for no one.
final class ClientGoneHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = Any

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
