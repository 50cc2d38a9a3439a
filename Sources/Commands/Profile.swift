import ArgumentParser
import ChatTemplates
import Generation
import Models
import Orchestration
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

/// `switchyard profile`: which experts real prompts use.
struct Profile: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Record how often each (layer, expert) is chosen on a set of prompts, and which experts follow which.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "A JSON Lines file: each line a string, {\"prompt\": \"...\"}, or {\"messages\": [...]} (rendered with the chat template).")
    var prompts: String

    @Option(help: "Where to write the profile (JSON).")
    var out: String

    @Option(name: [.short, .customLong("max-tokens")], help: "Tokens to generate (greedy) after each prompt, so decode routing counts too.")
    var maxTokens: Int = 32

    func validate() throws {
        try checkRange(maxTokens, "--max-tokens", 0...positionLimit)
    }

    func run() throws {
        try reportingErrors {
            let model = try modelOptions.loadEngine().model
            let tokenizer = try Tokenizer(directory: model.directory)
            let chat = try? ChatTemplateConfiguration(directory: model.directory)
            let lines = String(decoding: try readFileBytes(prompts), as: UTF8.self).split(separator: "\n").filter { !$0.allSatisfy(\.isWhitespace) }
            guard !lines.isEmpty else { throw InputError("\(prompts): no prompts") }
            let workspace = Workspace()
            let recorder = RoutingRecorder(model: model, workspace: workspace)
            for (number, line) in lines.enumerated() {
                let json: JSONValue
                do { json = try JSONValue.parse(String(line)) } catch { throw InputError("\(prompts) line \(number + 1): \(error)") }
                let ids: [Int]
                if let text = json.stringValue ?? json["prompt"]?.stringValue {
                    ids = tokenizer.encode(text)
                } else if let messages = json["messages"], messages.arrayValue != nil {
                    guard let chat else { throw InputError("\(prompts) line \(number + 1): messages given, but the model has no chat template") }
                    let text = try chat.template.render(messages: messages, variables: chat.specialTokens)
                    ids = tokenizer.encode(text, addSpecialTokens: false)
                } else {
                    throw InputError("\(prompts) line \(number + 1): expected a string, {\"prompt\"} or {\"messages\"}")
                }
                // Greedy, to the model's end-of-sequence token or the limit, recording routing.
                var options = GenerationOptions()
                options.sampling.temperature = 0
                options.maxTokens = maxTokens
                _ = try Generator(model: model, tokenizer: nil).generate(
                    promptTokens: ids, options: options, contextLength: min(model.config.maxPositions, ids.count + maxTokens + 1), workspace: workspace)
            }
            let profile = recorder.profile
            guard let file = fopen(out, "w") else { throw InputError("cannot write \(out)") }
            fputs(profile.json.serialized() + "\n", file)
            fclose(file)
            writeOut("\(profile.tokens) tokens routed; share of routed tokens per expert (%), most/least used:\n")
            for (layer, counts) in profile.counts.enumerated() where !counts.isEmpty {
                let shares = profile.shares(layer: layer)
                let row = shares.map { fixed($0 * 100, 1) }.joined(separator: " ")
                let lo = shares.min() ?? 0, hi = shares.max() ?? 0
                writeOut("layer \(layer): \(row)   \(lo > 0 ? fixed(hi / lo, 1) + "x" : "an expert unused")\n")
            }
        }
    }
}

