import ArgumentParser
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text as a JSON array.")

    @Option(help: "A folder with tokenizer.json (default: the bundled demo model).")
    var model: String?

    @Option(help: "The text.")
    var text: String?

    @Option(help: "A file whose exact bytes are the text.")
    var file: String?

    @Flag(name: .customLong("no-special"), help: "Do not add BOS/EOS (add_special_tokens=False).")
    var noSpecial = false

    func validate() throws {
        if (text == nil) == (file == nil) { throw ValidationError("give exactly one of --text or --file") }
    }

    func run() throws {
        try reportingErrors {
            let tokenizer = try Tokenizer(directory: modelDirectory(model))
            let input: String
            if let file {
                let bytes = try readFileBytes(file)
                guard let s = String(validating: bytes, as: UTF8.self) else {
                    throw InputError("\(file): not valid UTF-8 text")
                }
                input = s
            } else {
                input = text ?? ""
            }
            let ids = tokenizer.encode(input, addSpecialTokens: !noSpecial)
            writeOut(JSONValue.array(ids.map { .int($0) }).serialized() + "\n")
        }
    }
}

struct Detokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the text of token ids.")

    @Option(help: "A folder with tokenizer.json (default: the bundled demo model).")
    var model: String?

    @Option(help: "Token ids, comma-separated.")
    var tokens: String

    @Flag(name: .customLong("keep-special"), help: "Keep special tokens such as <s> in the text.")
    var keepSpecial = false

    func run() throws {
        try reportingErrors {
            let ids = try parseTokenList(tokens)
            let tokenizer = try Tokenizer(directory: modelDirectory(model))
            if let bad = ids.first(where: { $0 >= tokenizer.vocabularySize }) {
                throw InputError("token id \(bad) is outside the vocabulary (0..<\(tokenizer.vocabularySize))")
            }
            writeOut(tokenizer.decode(ids, skipSpecialTokens: !keepSpecial) + "\n")
        }
    }
}
