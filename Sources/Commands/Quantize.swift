import ArgumentParser
import ChatTemplates
import GGUF
import Kernels
import Models
import SwitchyardSupport
import Tokenizers

/// `switchyard quantize`: convert a model's matrices to a GGUF block format once, instead of at every
/// load: into a model folder of Switchyard's safetensors, or into a GGUF file (`--out NAME.gguf`) that
/// llama.cpp and the gguf package read too.
struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a copy of a model with its routed experts (or every matrix) in Q8_0, Q4_0, Q4_K or Q6_K: a model folder, or a GGUF file.")

    @Option(help: "A Hugging Face model folder or a GGUF file (default: the bundled demo model).")
    var model: String?

    @Option(help: "q8_0, q4_0, q4_k or q6_k (GGUF's block formats).")
    var type: WeightQuantization.Format

    @Flag(help: "Convert every matrix but the embedding and the routers, not only the routed experts.")
    var all = false

    @Option(help: "The folder to write (created if needed), or a file ending in .gguf to write GGUF.")
    var out: String

    @Option(name: [.short, .long], help: "Threads (default: the cores this process may use).")
    var threads: Int?

    func validate() throws {
        try checkRange(threads, "--threads", 1...1024)
    }

    func run() throws {
        try reportingErrors {
            let directory = try modelDirectory(model)
            let started = ContinuousClock.now
            let pool = threads.map { ThreadPool(threads: $0) } ?? .shared
            let result: (converted: Int, bytes: Int)
            if out.hasSuffix(".gguf") {
                let config = try ModelFormats.open(directory).readConfig()
                var tokenizer = try Tokenizer.ggufMetadata(model: directory, bosTokenID: config.bosTokenID, eosTokenID: config.eosTokenIDs.first)
                if !isGGUFFile(directory), let template = try? ChatTemplateConfiguration(directory: directory) {
                    tokenizer.append(("tokenizer.chat_template", .string(Array(template.template.source.utf8))))
                }
                result = try GGUFExport.write(from: directory, to: out, format: type, all: all, tokenizer: tokenizer, pool: pool)
            } else {
                if type == .q6_k { throw InputError("--type q6_k is written to GGUF files only (--out NAME.gguf)") }
                result = try QuantizedCheckpoint.write(from: directory, to: out, format: type, all: all, pool: pool)
            }
            printError("\(out): \(result.converted) tensors in \(type.rawValue), \(fixed(Double(result.bytes) / 1e6, 1)) MB of weights, in \(ContinuousClock.now - started)")
        }
    }
}
