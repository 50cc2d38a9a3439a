import ArgumentParser
import Models
import NPY
import SwitchyardSupport

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the logits of every position as a float32 .npy of shape [tokens, vocab].")

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "Token ids, comma-separated.")
    var tokens: String

    @Option(help: "Output .npy file.")
    var out: String

    func run() throws {
        try reportingErrors {
            let ids = try parseTokenList(tokens)
            let model = try modelOptions.loadEngine().model
            let session = try model.makeSession(contextLength: ids.count)
            let logits = try session.forward(ids, allLogits: true)
            try NPY.write(logits, shape: [ids.count, model.config.vocabularySize], to: out)
        }
    }
}
