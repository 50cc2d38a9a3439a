import Batching
import ChatTemplates
import Generation
import Hummingbird
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

extension OpenAIServer {
    struct Parsed: Sendable {
        var request: CompletionRequest
        var stream: Bool
        var includeUsage: Bool
        var logprobs: Bool
        var started = ContinuousClock.now
    }

    /// The request's body, read within the body timeout and the size limit, decoded and tokenised
    /// on the server's own threads (never on the executor that serves every connection).
    func parse(_ request: Request, chat: Bool) async throws -> Parsed {
        let bytes = try await body(of: request, limit: configuration.maxRequestBytes, flag: "--max-request-bytes")
        return try await offload.run { () throws(APIError) in try self.parse(body: bytes, chat: chat) }
    }

    /// A request's body, if it arrives within the body timeout and is at most `limit` bytes
    /// (`flag` sets the limit).
    func body(of request: Request, limit: Int, flag: String) async throws(APIError) -> [UInt8] {
        let timeout = configuration.bodyTimeout
        let body: ByteBuffer
        do {
            body = try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
                group.addTask { try await request.body.collect(upTo: limit) }
                group.addTask {
                    try await Task.sleep(for: .seconds(timeout))
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let body = first else {
                    throw APIError(status: .requestTimeout, message: "the request body did not arrive within \(fixed(timeout, 0)) s")
                }
                return body
            }
        } catch let error as APIError {
            throw error
        } catch {
            throw APIError(status: .contentTooLarge, message: "the request body is larger than \(formatBytes(limit)) (\(flag))")
        }
        return Array(body.readableBytesView)
    }

    /// Whether a request body would be accepted: nil, or the error message a client would get
    /// (for the fuzz target, which runs the parser on inputs no client has sent yet).
    public func check(requestBody body: [UInt8], chat: Bool) -> String? {
        do {
            _ = try parse(body: body, chat: chat)
            return nil
        } catch {
            return error.message
        }
    }

    /// A request body to what the scheduler runs, or the OpenAI error that names what is wrong.
    /// Every number is range-checked as OpenAI's API documents it before it is used; a prompt
    /// that cannot fit the context is refused before it is tokenised.
    func parse(body: [UInt8], chat: Bool) throws(APIError) -> Parsed {
        let json: JSONValue
        do { json = try JSONValue.parse(body) } catch {
            throw APIError(status: .badRequest, message: "malformed JSON body: \(error)")
        }
        guard let o = json.objectValue else { throw APIError(status: .badRequest, message: "the body must be a JSON object") }
        func wrong(_ key: String, _ expected: String) -> APIError {
            APIError(status: .badRequest, message: "'\(key)' must be \(expected)", param: key)
        }
        func number(_ key: String, in range: ClosedRange<Double>) throws(APIError) -> Double? {
            guard let v = o[key], !v.isNull else { return nil }
            guard let d = v.doubleValue, d.isFinite, range.contains(d) else {
                func text(_ x: Double) -> String { x == x.rounded() ? String(Int(x)) : "\(x)" }
                throw wrong(key, "a number between \(text(range.lowerBound)) and \(text(range.upperBound))")
            }
            return d
        }
        func integer(_ key: String, in range: ClosedRange<Int> = Int.min...Int.max) throws(APIError) -> Int? {
            guard let v = o[key], !v.isNull else { return nil }
            guard let i = v.intValue else { throw wrong(key, "an integer") }
            guard range.contains(i) else { throw wrong(key, "between \(range.lowerBound) and \(range.upperBound)") }
            return i
        }
        func flag(_ key: String) throws(APIError) -> Bool {
            guard let v = o[key], !v.isNull else { return false }
            guard let b = v.boolValue else { throw wrong(key, "a boolean") }
            return b
        }
        guard let model = o["model"]?.stringValue else { throw wrong("model", "a string") }
        if configuration.strictModelName && model != configuration.modelName {
            throw APIError(status: .badRequest, message: "unknown model '\(model)'; this server serves '\(configuration.modelName)'", param: "model", code: "model_not_found")
        }
        if let n = try integer("n"), n != 1 { throw APIError(status: .badRequest, message: "only n=1 is supported", param: "n") }
        if let format = o["response_format"], !format.isNull {
            guard let type = format["type"]?.stringValue else { throw wrong("response_format", "an object with a 'type'") }
            guard type == "text" else {
                throw APIError(status: .badRequest, message: "response_format '\(type)' is not supported (only 'text')", param: "response_format")
            }
        }
        let context = scheduler.contextLength
        func tooLong(_ what: String) -> APIError {
            APIError(status: .badRequest, message: "\(what); this server's context length is \(context) tokens",
                     param: chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        // A text of n bytes has at least n / longestTokenBytes tokens (normalisers aside: twice
        // that many bytes are allowed before refusing without tokenising).
        let textLimit = context * tokenBytesBound * 2
        var tokens: [Int]
        if chat {
            guard let messages = o["messages"], let list = messages.arrayValue, !list.isEmpty,
                list.allSatisfy({ $0["role"]?.stringValue != nil })
            else { throw wrong("messages", "a non-empty array of messages with roles") }
            if let tools = o["tools"], !tools.isNull, tools.arrayValue == nil { throw wrong("tools", "an array") }
            guard let template = self.chat else { throw APIError(status: .badRequest, message: "this model has no chat template; use /v1/completions") }
            let rendered: String
            do {
                rendered = try template.template.render(
                    messages: messages, tools: o["tools"].flatMap { $0.isNull ? nil : $0 }, addGenerationPrompt: true,
                    variables: template.specialTokens, limits: ChatTemplate.Limits(outputBytes: textLimit))
            } catch {
                if error.description.contains("output passes") { throw tooLong("the conversation rendered by the chat template passes \(formatBytes(textLimit))") }
                throw APIError(status: .badRequest, message: "the chat template refused the conversation: \(error.description)", param: "messages")
            }
            tokens = tokenizer.encode(rendered, addSpecialTokens: false)
        } else {
            func text(_ t: String) throws(APIError) -> [Int] {
                guard t.utf8.count <= textLimit else { throw tooLong("the prompt has \(t.utf8.count) bytes") }
                return tokenizer.encode(t)
            }
            if let t = o["prompt"]?.stringValue {
                tokens = try text(t)
            } else if let list = o["prompt"]?.arrayValue, list.count == 1, let t = list[0].stringValue {
                tokens = try text(t)
            } else if let list = o["prompt"]?.arrayValue, !list.isEmpty, list.allSatisfy({ $0.intValue != nil }) {
                tokens = list.map { $0.intValue! }
                guard tokens.allSatisfy({ $0 >= 0 && $0 < tokenizer.vocabularySize }) else { throw wrong("prompt", "token ids inside the vocabulary") }
            } else {
                throw wrong("prompt", "a string, a one-string array or an array of token ids")
            }
        }
        guard tokens.count < context else { throw tooLong("the prompt has \(tokens.count) tokens") }
        var sampling = SamplingParameters()
        sampling.topK = 0
        sampling.minP = 0
        sampling.temperature = Float(try number("temperature", in: 0...2) ?? 1)
        sampling.topP = Float(try number("top_p", in: 0...1) ?? 1)
        guard sampling.topP > 0 else { throw wrong("top_p", "in (0, 1]") }
        sampling.frequencyPenalty = Float(try number("frequency_penalty", in: -2...2) ?? 0)
        sampling.presencePenalty = Float(try number("presence_penalty", in: -2...2) ?? 0)
        sampling.seed = UInt64(bitPattern: Int64(try integer("seed") ?? Int.random(in: 0...Int.max)))
        if let bias = o["logit_bias"], !bias.isNull {
            guard let entries = bias.objectValue?.entries, entries.count <= 1024 else { throw wrong("logit_bias", "an object of at most 1024 token ids") }
            for (key, value) in entries {
                guard let id = Int(key), id >= 0, id < tokenizer.vocabularySize else { throw wrong("logit_bias", "keyed by token ids inside the vocabulary") }
                guard let b = value.doubleValue, b.isFinite, (-100...100).contains(b) else { throw wrong("logit_bias", "values between -100 and 100") }
                sampling.logitBias[id] = Float(b)
            }
        }
        var requested = try integer("max_completion_tokens", in: 1...Int.max)
        if requested == nil { requested = try integer("max_tokens", in: 1...Int.max) }
        // As llama-server does: a limit past the context means "as long as the context allows".
        let maxTokens = min(requested ?? 256, context)
        var stops: [String] = []
        if let s = o["stop"], !s.isNull {
            if let one = s.stringValue { stops = [one] } else if let many = s.arrayValue, many.allSatisfy({ $0.stringValue != nil }), many.count <= 4 {
                stops = many.map { $0.stringValue! }
            } else { throw wrong("stop", "a string or an array of up to 4 strings") }
            guard stops.allSatisfy({ $0.utf8.count <= 1024 }) else { throw wrong("stop", "strings of at most 1024 bytes") }
        }
        let logprobs: Bool
        var top: Int?
        if chat {
            logprobs = try flag("logprobs")
            let requestedTop = try integer("top_logprobs", in: 0...20)
            if requestedTop != nil && !logprobs { throw wrong("top_logprobs", "used with logprobs: true") }
            if logprobs { top = requestedTop ?? 0 }
        } else {
            top = try integer("logprobs", in: 0...20)
            logprobs = top != nil
        }
        let stream = try flag("stream")
        let includeUsage = o["stream_options"]?["include_usage"]?.boolValue ?? false
        var request = CompletionRequest(promptTokens: tokens, maxTokens: maxTokens, sampling: sampling, stopStrings: stops, topLogprobs: top)
        request.ignoreEOS = try flag("ignore_eos")
        return Parsed(request: request, stream: stream, includeUsage: includeUsage, logprobs: logprobs)
    }
}
