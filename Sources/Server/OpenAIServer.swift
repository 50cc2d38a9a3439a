import Batching
import ChatTemplates
import Generation
import HTTPTypes
import Hummingbird
import ServiceLifecycle
import Synchronization
import SwitchyardJSON
import Tokenizers
import SwitchyardSupport

public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var apiKey: String?
    /// The name clients use in `model` (the model folder's name by default).
    public var modelName: String
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM before they are cancelled.
    public var shutdownDeadline: Double = 10

    public init(modelName: String) { self.modelName = modelName }
}

/// An OpenAI-style error: the status and `{"error": {"message", "type", "param", "code"}}`. Thrown
/// from any route, Hummingbird answers with it.
struct APIError: HTTPResponseError {
    var status: HTTPResponse.Status
    var message: String
    var type = "invalid_request_error"
    var param: String?
    var code: String?
    var retryAfter: Int?

    var response: Response {
        var e = JSONObject()
        e["message"] = .string(message)
        e["type"] = .string(type)
        e["param"] = param.map { .string($0) } ?? .null
        e["code"] = code.map { .string($0) } ?? .null
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[HTTPField.Name("Retry-After")!] = String(retryAfter) }
        let body: JSONValue = ["error": .object(e)]
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body.serialized())))
    }

    func response(from request: Request, context: some RequestContext) throws -> Response { response }
}

/// The OpenAI-compatible server: /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics.
public final class OpenAIServer: Sendable {
    let configuration: ServerConfiguration
    let scheduler: BatchScheduler
    let tokenizer: Tokenizer
    let chat: ChatTemplateConfiguration?
    let metrics = Metrics()
    let created = Int(time(nil))

    public init(configuration: ServerConfiguration, scheduler: BatchScheduler, tokenizer: Tokenizer, chat: ChatTemplateConfiguration?) {
        self.configuration = configuration
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.chat = chat
    }

    /// Serves until SIGINT or SIGTERM, then lets requests finish for the deadline and returns.
    public func run(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let router = Router()
        router.get("/health") { _, _ in self.json(.ok, ["status": "ok"]) }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: self.metrics.render(self.scheduler.stats))))
        }
        router.get("/v1/models") { request, _ in
            try self.authorize(request)
            let entry: JSONValue = ["id": .string(self.configuration.modelName), "object": "model", "created": .int(self.created), "owned_by": "switchyard"]
            return self.json(.ok, ["object": "list", "data": [entry]])
        }
        router.post("/v1/chat/completions") { request, _ in try await self.complete(request, chat: true) }
        router.post("/v1/completions") { request, _ in try await self.complete(request, chat: false) }
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "switchyard"),
            services: [ShutdownDeadline(scheduler: scheduler, seconds: configuration.shutdownDeadline)],
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) })
        try await app.runService(gracefulShutdownSignals: [.sigterm, .sigint])
    }

    func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: value.serialized())))
    }

    func authorize(_ request: Request) throws {
        guard let key = configuration.apiKey else { return }
        guard request.headers[.authorization] == "Bearer \(key)" else {
            throw APIError(status: .unauthorized, message: "missing or invalid API key", type: "authentication_error", code: "invalid_api_key")
        }
    }

    func complete(_ request: Request, chat: Bool) async throws -> Response {
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
            return try await wholeResponse(submitted.events, parsed, chat: chat)
        } catch let error as APIError {
            metrics.request(endpoint, status: Int(error.status.code))
            return error.response
        }
    }

    struct Parsed: Sendable {
        var request: CompletionRequest
        var stream: Bool
        var includeUsage: Bool
        var logprobs: Bool
        var started = ContinuousClock.now
    }

    func parse(_ request: Request, chat: Bool) async throws -> Parsed {
        let body = try await request.body.collect(upTo: 8 << 20)
        return try parse(body: Array(body.readableBytesView), chat: chat)
    }

    /// A request body to what the scheduler runs, or the OpenAI error that names what is wrong.
    func parse(body: [UInt8], chat: Bool) throws(APIError) -> Parsed {
        let json: JSONValue
        do { json = try JSONValue.parse(body) } catch {
            throw APIError(status: .badRequest, message: "malformed JSON body: \(error)")
        }
        guard let o = json.objectValue else { throw APIError(status: .badRequest, message: "the body must be a JSON object") }
        func wrong(_ key: String, _ expected: String) -> APIError {
            APIError(status: .badRequest, message: "'\(key)' must be \(expected)", param: key)
        }
        func number(_ key: String) throws(APIError) -> Double? {
            guard let v = o[key], !v.isNull else { return nil }
            guard let d = v.doubleValue else { throw wrong(key, "a number") }
            return d
        }
        func integer(_ key: String) throws(APIError) -> Int? {
            guard let v = o[key], !v.isNull else { return nil }
            guard let i = v.intValue else { throw wrong(key, "an integer") }
            return i
        }
        func flag(_ key: String) throws(APIError) -> Bool {
            guard let v = o[key], !v.isNull else { return false }
            guard let b = v.boolValue else { throw wrong(key, "a boolean") }
            return b
        }
        guard let model = o["model"]?.stringValue else { throw wrong("model", "a string") }
        guard model == configuration.modelName else {
            throw APIError(status: .badRequest, message: "unknown model '\(model)'; this server serves '\(configuration.modelName)'", param: "model", code: "model_not_found")
        }
        if let n = try integer("n"), n != 1 { throw APIError(status: .badRequest, message: "only n=1 is supported", param: "n") }
        var tokens: [Int]
        if chat {
            guard let messages = o["messages"], let list = messages.arrayValue, !list.isEmpty,
                list.allSatisfy({ $0["role"]?.stringValue != nil })
            else { throw wrong("messages", "a non-empty array of messages with roles") }
            guard let template = self.chat else { throw APIError(status: .badRequest, message: "this model has no chat template; use /v1/completions") }
            let rendered: String
            do {
                rendered = try template.template.render(messages: messages, tools: o["tools"].flatMap { $0.isNull ? nil : $0 },
                                                        addGenerationPrompt: true, variables: template.specialTokens)
            } catch {
                throw APIError(status: .badRequest, message: "the chat template refused the conversation: \(error.description)", param: "messages")
            }
            tokens = tokenizer.encode(rendered, addSpecialTokens: false)
        } else {
            if let text = o["prompt"]?.stringValue {
                tokens = tokenizer.encode(text)
            } else if let list = o["prompt"]?.arrayValue, list.count == 1, let text = list[0].stringValue {
                tokens = tokenizer.encode(text)
            } else if let list = o["prompt"]?.arrayValue, !list.isEmpty, list.allSatisfy({ $0.intValue != nil }) {
                tokens = list.map { $0.intValue! }
                guard tokens.allSatisfy({ $0 >= 0 && $0 < tokenizer.vocabularySize }) else { throw wrong("prompt", "token ids inside the vocabulary") }
            } else {
                throw wrong("prompt", "a string, a one-string array or an array of token ids")
            }
        }
        var sampling = SamplingParameters()
        sampling.topK = 0
        sampling.minP = 0
        sampling.temperature = Float(try number("temperature") ?? 1)
        sampling.topP = Float(try number("top_p") ?? 1)
        sampling.frequencyPenalty = Float(try number("frequency_penalty") ?? 0)
        sampling.presencePenalty = Float(try number("presence_penalty") ?? 0)
        sampling.seed = UInt64(bitPattern: Int64(try integer("seed") ?? Int.random(in: 0...Int.max)))
        guard sampling.temperature >= 0, sampling.temperature <= 2 else { throw wrong("temperature", "between 0 and 2") }
        guard sampling.topP > 0, sampling.topP <= 1 else { throw wrong("top_p", "in (0, 1]") }
        var requested = try integer("max_completion_tokens")
        if requested == nil { requested = try integer("max_tokens") }
        let maxTokens = requested ?? 256
        guard maxTokens > 0 else { throw wrong("max_tokens", "positive") }
        var stops: [String] = []
        if let s = o["stop"], !s.isNull {
            if let one = s.stringValue { stops = [one] } else if let many = s.arrayValue, many.allSatisfy({ $0.stringValue != nil }), many.count <= 4 {
                stops = many.map { $0.stringValue! }
            } else { throw wrong("stop", "a string or an array of up to 4 strings") }
        }
        let logprobs: Bool
        var top: Int?
        if chat {
            logprobs = try flag("logprobs")
            if logprobs { top = try integer("top_logprobs") ?? 0 }
        } else {
            top = try integer("logprobs")
            logprobs = top != nil
        }
        let stream = try flag("stream")
        let includeUsage = o["stream_options"]?["include_usage"]?.boolValue ?? false
        guard tokens.count < scheduler.contextLength else {
            throw APIError(status: .badRequest, message: "the prompt has \(tokens.count) tokens; this server's context length is \(scheduler.contextLength)",
                           param: chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        return Parsed(
            request: CompletionRequest(promptTokens: tokens, maxTokens: maxTokens, sampling: sampling, stopStrings: stops, topLogprobs: top),
            stream: stream, includeUsage: includeUsage, logprobs: logprobs)
    }

    // MARK: Responses

    func logprobsJSON(_ items: [TokenLogprob], chat: Bool) -> JSONValue {
        if chat {
            return ["content": .array(items.map { lp in
                let text = tokenizer.decode([lp.token], skipSpecialTokens: false)
                return ["token": .string(text), "logprob": .double(Double(lp.logprob)), "bytes": .array(Array(text.utf8).map { .int(Int($0)) }),
                        "top_logprobs": .array(lp.top.map { t in
                            let s = tokenizer.decode([t.token], skipSpecialTokens: false)
                            return ["token": .string(s), "logprob": .double(Double(t.logprob)), "bytes": .array(Array(s.utf8).map { .int(Int($0)) })]
                        })]
            })]
        }
        return ["tokens": .array(items.map { .string(tokenizer.decode([$0.token], skipSpecialTokens: false)) }),
                "token_logprobs": .array(items.map { .double(Double($0.logprob)) }),
                "top_logprobs": .array(items.map { lp in .object(JSONObject(lp.top.map { (key: tokenizer.decode([$0.token], skipSpecialTokens: false), value: .double(Double($0.logprob))) })) })]
    }

    func usage(_ prompt: Int, _ completion: Int) -> JSONValue {
        ["prompt_tokens": .int(prompt), "completion_tokens": .int(completion), "total_tokens": .int(prompt + completion)]
    }

    func wholeResponse(_ events: AsyncStream<CompletionEvent>, _ p: Parsed, chat: Bool) async throws -> Response {
        var text = "", logprobs: [TokenLogprob] = []
        var finish = FinishReason.length, promptTokens = p.request.promptTokens.count, completionTokens = 0
        var first = true
        for await event in events {
            switch event {
            case .text(let piece, _, let lp):
                if first { metrics.firstToken(ContinuousClock.now - p.started); first = false }
                text += piece
                logprobs += lp
            case .finished(let reason, let pt, let ct):
                finish = reason; promptTokens = pt; completionTokens = ct
            case .failed(let message):
                throw APIError(status: .internalServerError, message: message, type: "server_error")
            }
        }
        metrics.tokens(prompt: promptTokens, completion: completionTokens)
        var choice = JSONObject()
        choice["index"] = 0
        if chat { choice["message"] = ["role": "assistant", "content": .string(text)] } else { choice["text"] = .string(text) }
        choice["logprobs"] = p.logprobs ? logprobsJSON(logprobs, chat: chat) : .null
        choice["finish_reason"] = .string(finish.rawValue)
        let object: JSONValue = [
            "id": .string((chat ? "chatcmpl-" : "cmpl-") + String(UInt64.random(in: 0...UInt64.max), radix: 36)),
            "object": .string(chat ? "chat.completion" : "text_completion"),
            "created": .int(Int(time(nil))), "model": .string(configuration.modelName),
            "choices": [.object(choice)], "usage": usage(promptTokens, completionTokens),
        ]
        return json(.ok, object)
    }

    /// Server-sent events as OpenAI sends them: chunks, then `data: [DONE]`. A client that goes away
    /// cancels its sequence at once.
    func streamResponse(_ submitted: (id: Int, events: AsyncStream<CompletionEvent>), _ p: Parsed, chat: Bool) -> Response {
        let id = (chat ? "chatcmpl-" : "cmpl-") + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let created = Int(time(nil))
        let body = ResponseBody { (writer: inout any ResponseBodyWriter) async throws in
            func chunk(_ choice: JSONObject?, usage: JSONValue? = nil) -> ByteBuffer {
                var o = JSONObject()
                o["id"] = .string(id)
                o["object"] = .string(chat ? "chat.completion.chunk" : "text_completion")
                o["created"] = .int(created)
                o["model"] = .string(self.configuration.modelName)
                o["choices"] = .array(choice.map { [.object($0)] } ?? [])
                if p.includeUsage { o["usage"] = usage ?? .null }
                return ByteBuffer(string: serverSentEvent(.object(o)))
            }
            func choice(_ text: String?, finish: FinishReason?, logprobs: [TokenLogprob], role: Bool = false) -> JSONObject {
                var c = JSONObject()
                c["index"] = 0
                if chat {
                    var delta = JSONObject()
                    if role { delta["role"] = "assistant" }
                    if let text { delta["content"] = .string(text) }
                    c["delta"] = .object(delta)
                } else {
                    c["text"] = .string(text ?? "")
                }
                c["logprobs"] = p.logprobs && !logprobs.isEmpty ? self.logprobsJSON(logprobs, chat: chat) : .null
                c["finish_reason"] = finish.map { .string($0.rawValue) } ?? .null
                return c
            }
            var first = true
            var last = ContinuousClock.now
            do {
                if chat { try await writer.write(chunk(choice("", finish: nil, logprobs: [], role: true))) }
                for await event in submitted.events {
                    switch event {
                    case .text(let piece, _, let lp):
                        let now = ContinuousClock.now
                        if first { self.metrics.firstToken(now - p.started); first = false } else { self.metrics.interToken(now - last) }
                        last = now
                        try await writer.write(chunk(choice(piece, finish: nil, logprobs: lp)))
                    case .finished(let reason, let pt, let ct):
                        self.metrics.tokens(prompt: pt, completion: ct)
                        try await writer.write(chunk(choice(chat ? nil : "", finish: reason, logprobs: [])))
                        if p.includeUsage { try await writer.write(chunk(nil, usage: self.usage(pt, ct))) }
                    case .failed(let message):
                        let error: JSONValue = ["error": ["message": .string(message), "type": "server_error"]]
                        try await writer.write(ByteBuffer(string: serverSentEvent(error)))
                    }
                }
                try await writer.write(ByteBuffer(string: serverSentDone))
                try await writer.finish(nil)
            } catch {
                self.scheduler.cancel(submitted.id)
                self.metrics.disconnected()
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}

/// One server-sent event carrying a JSON object, as OpenAI frames them.
func serverSentEvent(_ value: JSONValue) -> String { "data: " + value.serialized() + "\n\n" }

/// The event that ends an OpenAI stream.
let serverSentDone = "data: [DONE]\n\n"

/// After SIGINT/SIGTERM the server stops accepting; requests still running after the deadline are
/// cancelled so that the process can exit.
struct ShutdownDeadline: Service {
    let scheduler: BatchScheduler
    let seconds: Double

    func run() async throws {
        try? await gracefulShutdown()
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let s = scheduler.stats
            if s.running == 0 && s.queued == 0 { break }
            try? await Task.sleep(for: .milliseconds(100))
        }
        scheduler.shutdown()
    }
}
