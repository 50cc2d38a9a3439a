import ArgumentParser
import ChatTemplates
import Generation
import Models
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

/// `switchyard template`: render a conversation with a model's chat template.
struct Template: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a conversation rendered with the model's chat template, exactly as transformers renders it.")

    @Option(help: "A folder with tokenizer_config.json or chat_template.jinja (default: the bundled demo model).")
    var model: String?

    @Option(help: "A JSON file: an array of messages, or an object with \"messages\" and optionally \"tools\".")
    var messages: String

    @Flag(name: .customLong("no-generation-prompt"), help: "Do not end with the assistant's turn opening.")
    var noGenerationPrompt = false

    @Option(help: "Use this Jinja file instead of the model's template.")
    var template: String?

    @Option(name: .customLong("var"), help: "An extra template variable, key=value (value as JSON when it parses, else a string); repeatable.")
    var variables: [String] = []

    func run() throws {
        try reportingErrors {
            let directory = try modelDirectory(model)
            let configuration = try ChatTemplateConfiguration(directory: directory, templateFile: template)
            let json: JSONValue
            do { json = try JSONValue.parse(try readFileBytes(messages)) } catch let e as FileReadError {
                throw InputError(e.description)
            } catch {
                throw InputError("\(messages): malformed JSON: \(error)")
            }
            let conversation = json.arrayValue != nil ? json : (json["messages"] ?? .null)
            guard conversation.arrayValue != nil else { throw InputError("\(messages): expected an array of messages or an object with \"messages\"") }
            var vars = configuration.specialTokens
            for v in variables {
                guard let eq = v.firstIndex(of: "=") else { throw InputError("--var \(v): expected key=value") }
                let key = String(v[..<eq]), text = String(v[v.index(after: eq)...])
                vars[key] = (try? JSONValue.parse(text)) ?? .string(text)
            }
            let rendered = try configuration.template.render(
                messages: conversation, tools: json["tools"].flatMap { $0.isNull ? nil : $0 },
                addGenerationPrompt: !noGenerationPrompt, variables: vars)
            writeOut(rendered)
        }
    }
}

/// `switchyard chat`: an interactive conversation in the terminal.
struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat in the terminal: the conversation is kept and rendered with the model's chat template each turn.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var sampling: SamplingOptions

    @Option(help: "A system prompt.")
    var system: String?

    @Option(name: [.short, .customLong("max-tokens")], help: "Most tokens per reply.")
    var maxTokens: Int = 256

    @Option(name: .customLong("context-length"), help: "Context length (default: min(4096, the model's maximum)); when the conversation outgrows it, its oldest turns are dropped.")
    var contextLength: Int?

    func validate() throws {
        try checkRange(maxTokens, "--max-tokens", 0...positionLimit)
        try checkRange(contextLength, "--context-length", 1...positionLimit)
    }

    func run() throws {
        try reportingErrors {
            let model = try modelOptions.loadEngine().model
            let tokenizer = try Tokenizer(directory: model.directory)
            let chatConfiguration = try ChatTemplateConfiguration(directory: model.directory)
            let generator = Generator(model: model, tokenizer: tokenizer)
            let session = try model.makeSession(contextLength: contextLength ?? min(4096, model.config.maxPositions))
            // Room kept for a reply when old turns are dropped: the reply's limit, within half the context.
            let replyRoom = min(maxTokens, session.capacity / 2)
            var options = GenerationOptions()
            options.maxTokens = maxTokens
            options.stopStrings = sampling.stop
            options.sampling = sampling.parameters
            var messages: [JSONValue] = []
            if let system { messages.append(["role": "system", "content": .string(system)]) }
            printError("Chatting with \(model.directory) (\(model.config.modelType)). Empty line or Ctrl-D to quit.")
            while true {
                writeOut("> ")
                guard let line = readLine(), !line.isEmpty else { break }
                messages.append(["role": "user", "content": .string(line)])
                // As llama-cli shifts its context: a conversation that outgrows it loses its oldest
                // turns (the system prompt stays); a message too long on its own is refused, and
                // the conversation goes on.
                var tokens: [Int]
                while true {
                    let prompt = try chatConfiguration.template.render(
                        messages: .array(messages), addGenerationPrompt: true, variables: chatConfiguration.specialTokens)
                    // The template writes the special tokens itself, as apply_chat_template(tokenize=True).
                    tokens = tokenizer.encode(prompt, addSpecialTokens: false)
                    let first = system == nil ? 0 : 1
                    guard tokens.count + replyRoom >= session.capacity, messages.count - first > 1 else { break }
                    messages.remove(at: first)
                }
                guard tokens.count < session.capacity else {
                    printError("error: that message takes \(tokens.count) tokens; the context length is \(session.capacity)")
                    messages.removeLast()
                    continue
                }
                let result = try generator.generate(promptTokens: tokens, options: options, session: session) { writeOut($0) }
                writeOut("\n")
                messages.append(["role": "assistant", "content": .string(result.text.strippingLeadingSpace())])
            }
        }
    }
}

extension String {
    fileprivate func strippingLeadingSpace() -> String { hasPrefix(" ") ? String(dropFirst()) : self }
}
