import Batching
import Generation
import Hummingbird
import NIOCore
import Synchronization
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

extension OpenAIServer {
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

    /// The whole completion as one JSON body, once it is done. A client that goes away (its
    /// connection closes) cancels the sequence at once, as a streaming one does.
    func wholeResponse(_ submitted: (id: Int, events: AsyncStream<CompletionEvent>), _ p: Parsed, chat: Bool, channel: any Channel) async throws -> Response {
        let scheduler = self.scheduler, metrics = self.metrics
        let answered = Flag()
        defer { answered.set() }
        channel.closeFuture.whenComplete { _ in
            guard !answered.isSet else { return }
            scheduler.cancel(submitted.id)
            metrics.disconnected()
        }
        return json(.ok, try await completionBody(submitted.events, p, chat: chat))
    }

    /// The JSON body of a whole completion once its events end (what a non-streaming request and a
    /// batch line get).
    func completionBody(_ events: AsyncStream<CompletionEvent>, _ p: Parsed, chat: Bool) async throws(APIError) -> JSONValue {
        var text = "", logprobs: [TokenLogprob] = []
        var finish = FinishReason.length, promptTokens = p.request.promptTokens.count, completionTokens = 0
        var first = true, finished = false
        for await event in events {
            switch event {
            case .text(let piece, _, let lp):
                if first { metrics.firstToken(ContinuousClock.now - p.started); first = false }
                text += piece
                logprobs += lp
            case .finished(let reason, let pt, let ct):
                finish = reason; promptTokens = pt; completionTokens = ct
                finished = true
            case .failed(let message):
                throw APIError(status: .internalServerError, message: message, type: "server_error")
            }
        }
        // The events end without an outcome when the request was cancelled.
        guard finished else { throw APIError(status: .serviceUnavailable, message: "the request was cancelled", type: "server_error") }
        metrics.tokens(prompt: promptTokens, completion: completionTokens)
        var choice = JSONObject()
        choice["index"] = 0
        if chat { choice["message"] = ["role": "assistant", "content": .string(text)] } else { choice["text"] = .string(text) }
        choice["logprobs"] = p.logprobs ? logprobsJSON(logprobs, chat: chat) : .null
        choice["finish_reason"] = .string(finish.rawValue)
        return [
            "id": .string((chat ? "chatcmpl-" : "cmpl-") + String(UInt64.random(in: 0...UInt64.max), radix: 36)),
            "object": .string(chat ? "chat.completion" : "text_completion"),
            "created": .int(Int(time(nil))), "model": .string(configuration.modelName),
            "choices": [.object(choice)], "usage": usage(promptTokens, completionTokens),
        ]
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

/// A one-way switch threads share.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}
