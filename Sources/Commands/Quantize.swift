import ArgumentParser
import Kernels
import Models
import SwitchyardSupport

/// `switchyard quantize`: convert a model folder's matrices to a GGUF block format once, instead of
/// at every load.
struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a copy of a model folder with its routed experts (or every matrix) in Q8_0, Q4_0 or Q4_K.")

    @Option(help: "A Hugging Face model folder (default: the bundled demo model).")
    var model: String?

    @Option(help: "q8_0, q4_0 or q4_k (GGUF's block formats).")
    var type: WeightQuantization.Format

    @Flag(help: "Convert every matrix but the embedding and the routers, not only the routed experts.")
    var all = false

    @Option(help: "The folder to write (created if needed).")
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
            let result = try QuantizedCheckpoint.write(from: directory, to: out, format: type,
                                                       all: all, pool: pool)
            printError("\(out): \(result.converted) tensors in \(type.rawValue), \(fixed(Double(result.bytes) / 1e6, 1)) MB of weights, in \(ContinuousClock.now - started)")
        }
    }
}
