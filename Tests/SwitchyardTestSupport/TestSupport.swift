import NPY
import SwitchyardJSON
import SwitchyardSupport

/// The repository root, found from this file's path (tests run from any directory).
public let repositoryRoot: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

/// The fixture checkpoint of an architecture (tiny random weights saved by transformers).
public func fixturePath(_ arch: String) -> String { repositoryRoot + "/fixtures/models/" + arch }

/// The bundled demo model.
public let demoModelPath = repositoryRoot + "/models/switchyard-kjv-moe"

/// Every fixture architecture, and those with routed experts.
/// GGUF fixtures (scripts/gguf_fixtures.py): each case's file and its reference folder; together
/// they hold every GGUF type Switchyard computes with.
public let ggufCases = ["llama-q4_k_m", "mixtral-q8_0", "qwen2-q5", "qwen3-iq4", "qwen2_moe-k", "qwen3_moe-mxfp4", "olmoe-k",
                        "deepseek_v2-q8", "deepseek_v3-q8", "gpt_oss-mxfp4"]
public let ggufMoECases = ["mixtral-q8_0", "qwen2_moe-k", "qwen3_moe-mxfp4", "olmoe-k", "deepseek_v2-q8", "deepseek_v3-q8", "gpt_oss-mxfp4"]
public func ggufFixturePath(_ name: String) -> String { repositoryRoot + "/fixtures/gguf/" + name + ".gguf" }
public func ggufReferencePath(_ name: String) -> String { repositoryRoot + "/fixtures/gguf/" + name + ".reference" }

public let allArchitectures = ["llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss", "gpt_oss_mxfp4"]
public let moeArchitectures = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss", "gpt_oss_mxfp4"]

/// A fresh cost-table cache per test process, so tests measure rather than trust another run's table.
public let costDirectory = "/tmp/switchyard-tests-costs-\(getpid())"

/// transformers' float32 logits for a fixture's prompt, and its greedy continuation.
public struct Reference {
    public let promptTokens: [Int]
    public let greedyTokens: [Int]
    public let logits: [Float]
    public let vocab: Int

    public init(_ arch: String) throws { try self.init(folder: fixturePath(arch) + "/reference") }

    /// The reference in `ref` (reference.json and prompt_logits.npy).
    public init(folder ref: String) throws {
        let json = try JSONValue.parse(try readFileBytes(ref + "/reference.json"))
        promptTokens = json["prompt_tokens"]!.arrayValue!.map { $0.intValue! }
        greedyTokens = json["greedy_tokens"]!.arrayValue!.map { $0.intValue! }
        let (values, shape) = try NPY.decode(try readFileBytes(ref + "/prompt_logits.npy"))
        logits = values
        vocab = shape[1]
    }
}

/// ‖a − b‖ / ‖b‖ (the absolute error where b is all zeros, as a zero embedding row makes it 0/0).
public func relativeError(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Double {
    var diff = 0.0, norm = 0.0
    for (x, y) in zip(a, b) {
        diff += Double(x - y) * Double(x - y)
        norm += Double(y) * Double(y)
    }
    return norm == 0 ? diff.squareRoot() : (diff / norm).squareRoot()
}

/// Normalised mean squared error, mse(a, b) / mse(b, 0), as ggml's test-backend-ops compares a
/// backend with the CPU.
public func nmse(_ a: [Float], _ b: [Float]) -> Double {
    var diff = 0.0, norm = 0.0
    for (x, y) in zip(a, b) {
        diff += Double(x - y) * Double(x - y)
        norm += Double(y) * Double(y)
    }
    return norm == 0 ? diff : diff / norm
}

/// Index of the first value whose bits differ (a failing == on large arrays makes the test
/// library compute a diff for minutes).
public func firstDifference(_ a: [Float], _ b: [Float]) -> Int? {
    guard a.count == b.count else { return min(a.count, b.count) }
    return a.indices.first { a[$0].bitPattern != b[$0].bitPattern }
}

/// Index of the largest value (ties to the first), as greedy decoding picks.
public func argmaxIndex(_ values: ArraySlice<Float>) -> Int {
    var best = values.startIndex
    for i in values.indices where values[i] > values[best] { best = i }
    return best - values.startIndex
}
