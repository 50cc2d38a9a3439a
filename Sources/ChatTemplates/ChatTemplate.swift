import GGUF
import SwitchyardJSON
import SwitchyardSupport

/// A chat template: Jinja source as transformers' `apply_chat_template` renders it (trim_blocks and
/// lstrip_blocks on, the `loopcontrols` extension, `raise_exception` and `strftime_now`, its
/// `tojson`), with no Python.
/// Immutable once parsed, so it may be shared (the AST holds only primitive literals).
public struct ChatTemplate: @unchecked Sendable {
    public let source: String
    private let nodes: [Node]

    public init(source: String) throws(TemplateError) {
        self.source = source
        var parser = Parser(try lex(source))
        nodes = try parser.parseBody(until: []).nodes
    }

    /// Renders a conversation.
    ///
    /// - Parameters:
    ///   - messages: an array of message objects (`role`, `content`, `tool_calls`...).
    ///   - tools: tool definitions, or nil (the template then sees `tools` as none, as in transformers).
    ///   - variables: `bos_token`, `eos_token` and any extra keyword arguments (`enable_thinking`...).
    ///   - time: what `strftime_now` formats (seconds since 1970), now by default; tests pin it.
    /// Bounds on what one rendering may do, as jinja2's sandbox bounds it (transformers renders in
    /// one): a template from a downloaded file, or a conversation from a client, must not take
    /// unbounded time, memory or stack. Passing one is an error naming it.
    public struct Limits: Sendable {
        /// Nodes executed, expressions evaluated and loop iterations, all together.
        public var steps = 1_000_000
        /// Nested evaluations (a macro that calls itself, deeply nested expressions).
        public var depth = 200
        /// Bytes of output, and of any one string or list a template builds.
        public var outputBytes = 64 << 20

        public init(steps: Int = 1_000_000, depth: Int = 200, outputBytes: Int = 64 << 20) {
            self.steps = steps
            self.depth = depth
            self.outputBytes = outputBytes
        }
    }

    public func render(
        messages: JSONValue, tools: JSONValue? = nil, addGenerationPrompt: Bool = true,
        variables: [String: JSONValue] = [:], time fixedTime: Int? = nil, limits: Limits = Limits()
    ) throws(TemplateError) -> String {
        var globals: [String: Value] = [:]
        for (k, v) in variables { globals[k] = Value(json: v) }
        globals["messages"] = Value(json: messages)
        // Without tools the name stays undefined (not Jinja's none); the vectors rendered by
        // transformers for every template in fixtures/chat-templates agree.
        if let tools { globals["tools"] = Value(json: tools) }
        globals["add_generation_prompt"] = .bool(addGenerationPrompt)
        globals["range"] = .callable(Value.Callable("range") { a, _ throws(TemplateError) in
            var ints: [Int] = []
            for v in a {
                guard case .int(let i) = v else { throw TemplateError("range() takes integers", line: 0) }
                ints.append(i)
            }
            let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints.first ?? 0, ints.count > 1 ? ints[1] : 0, ints.count > 2 ? ints[2] : 1)
            guard step != 0 else { throw TemplateError("range() step must not be zero", line: 0) }
            // jinja2's sandbox refuses ranges of more than 100,000 items (MAX_RANGE).
            let count = Double(stop) / Double(step) - Double(start) / Double(step)
            guard count <= 100_000 else { throw TemplateError("range() of more than 100000 items", line: 0) }
            return .list(Array(stride(from: start, to: stop, by: step)).map { .int($0) })
        })
        globals["namespace"] = .callable(Value.Callable("namespace") { a, k in
            let ns = Value.Namespace()
            if case .dict(let d)? = a.first { ns.values = d }
            for (key, value) in k { ns.values[key] = value }
            return .namespace(ns)
        })
        globals["dict"] = .callable(Value.Callable("dict") { a, k in
            var d = Value.Dictionary()
            if case .dict(let initial)? = a.first { d = initial }
            for (key, value) in k { d[key] = value }
            return .dict(d)
        })
        globals["raise_exception"] = .callable(Value.Callable("raise_exception") { a, _ throws(TemplateError) in
            throw TemplateError("the template raised an exception: \(a.first?.text ?? "")", line: 0)
        })
        globals["strftime_now"] = .callable(Value.Callable("strftime_now") { a, _ in
            var now = fixedTime.map { time_t($0) } ?? time(nil)
            var parts = tm()
            localtime_r(&now, &parts)
            var buffer = [CChar](repeating: 0, count: 256)
            let n = strftime(&buffer, buffer.count, a.first?.text ?? "%Y-%m-%d", &parts)
            return .string(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        })
        return try Renderer(globals: globals, limits: limits).render(nodes)
    }
}

/// What a model folder says about chat: its template and the special tokens templates use.
public struct ChatTemplateConfiguration: Sendable {
    public var template: ChatTemplate
    /// bos_token, eos_token, unk_token, pad_token as strings, for the template.
    public var specialTokens: [String: JSONValue]

    public init(template: ChatTemplate, specialTokens: [String: JSONValue] = [:]) {
        self.template = template
        self.specialTokens = specialTokens
    }

    /// Reads `chat_template.jinja`, or `chat_template` in tokenizer_config.json (a string, or a list
    /// of named templates of which "default" is used), as transformers does.
    public init(directory: String, templateFile: String? = nil) throws(TemplateError) {
        if templateFile == nil, isGGUFFile(directory) {
            self = try ChatTemplateConfiguration(gguf: directory)
            return
        }
        let configPath = directory + "/tokenizer_config.json"
        var config = JSONObject()
        if let bytes = try? readFileBytes(configPath) {
            do {
                guard let o = try JSONValue.parse(bytes).objectValue else { throw TemplateError("\(configPath): not a JSON object", line: 0) }
                config = o
            } catch let e as TemplateError {
                throw e
            } catch {
                throw TemplateError("\(configPath): malformed JSON: \(error)", line: 0)
            }
        }
        var source: String?
        if let templateFile {
            guard let bytes = try? readFileBytes(templateFile) else { throw TemplateError("cannot read \(templateFile)", line: 0) }
            source = String(decoding: bytes, as: UTF8.self)
        } else if let bytes = try? readFileBytes(directory + "/chat_template.jinja") {
            source = String(decoding: bytes, as: UTF8.self)
        } else if let t = config["chat_template"] {
            if let s = t.stringValue {
                source = s
            } else if let list = t.arrayValue {
                source = (list.first { $0["name"]?.stringValue == "default" } ?? list.first)?["template"]?.stringValue
            }
        }
        guard let source else {
            throw TemplateError("\(directory) has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)", line: 0)
        }
        template = try ChatTemplate(source: source)
        specialTokens = [:]
        for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let v = config[name] {
                if let s = v.stringValue { specialTokens[name] = .string(s) } else if let c = v["content"]?.stringValue { specialTokens[name] = .string(c) }
            }
        }
    }
}

extension ChatTemplateConfiguration {
    /// The template in a GGUF file's metadata (`tokenizer.chat_template`), with its BOS and EOS
    /// tokens as the template's `bos_token` and `eos_token`.
    init(gguf path: String) throws(TemplateError) {
        let file: GGUFFile
        do { file = try GGUFFile.shared(path: path) } catch { throw TemplateError(error.description, line: 0) }
        guard let source = file.metadata["tokenizer.chat_template"]?.stringValue else {
            throw TemplateError("\(path) has no chat template (no 'tokenizer.chat_template' in its metadata)", line: 0)
        }
        var specialTokens: [String: JSONValue] = [:]
        if let tokens = file.metadata["tokenizer.ggml.tokens"]?.arrayValue {
            for (name, key) in [("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")] {
                if let id = file.metadata[key]?.intValue, tokens.indices.contains(id), let text = tokens[id].stringValue {
                    specialTokens[name] = .string(text)
                }
            }
        }
        self.init(template: try ChatTemplate(source: source), specialTokens: specialTokens)
    }
}
