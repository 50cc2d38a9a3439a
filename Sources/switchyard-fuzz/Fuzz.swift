import Batching
import ChatTemplates
import Models
import Orchestration
import SafeTensors
import Server
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

/// A seeded mutation fuzzer for every parser of outside input: JSON, safetensors headers,
/// config.json, tokenizer.json, chat templates and OpenAI request bodies. Each target starts from
/// real inputs of the repository, replays the committed regression cases, then mutates for a
/// bounded time. An input that ends the process by a signal (a trap, an overflow, a stack
/// overflow) is written to `--out` before the process dies, to be committed as a regression case.
///
///     switchyard-fuzz TARGET [--seconds N] [--seed S] [--out DIR]
///     TARGET: json, safetensors, config, tokenizer, template, request, all
@main
enum Fuzz {
    static func main() {
        var arguments = Array(CommandLine.arguments.dropFirst())
        func option(_ name: String) -> String? {
            guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count else { return nil }
            defer { arguments.removeSubrange(i...(i + 1)) }
            return arguments[i + 1]
        }
        func number<T: LosslessStringConvertible>(_ name: String, _ fallback: T, _ valid: (T) -> Bool) -> T {
            guard let text = option(name) else { return fallback }
            guard let value = T(text), valid(value) else {
                printLine("error: \(name) '\(text)' is out of range")
                exit(2)
            }
            return value
        }
        let seconds = number("--seconds", 10.0) { $0.isFinite && $0 >= 0 && $0 <= 86_400 }
        let seed = number("--seed", UInt64(1)) { _ in true }
        let out = option("--out") ?? "/tmp/switchyard-fuzz"
        let names = ["json", "safetensors", "gguf", "config", "tokenizer", "template", "request", "wire", "expert-wire", "batch", "upload", "logprobs"]
        guard let target = arguments.first, target == "all" || names.contains(target) else {
            printLine("usage: switchyard-fuzz \(names.joined(separator: "|"))|all [--seconds N] [--seed S] [--out DIR]")
            exit(2)
        }
        let root = repositoryRoot()
        CrashCatcher.install(directory: out)
        let targets = target == "all" ? names : [target]
        for name in targets {
            let fuzzer: Target
            switch name {
            case "json": fuzzer = JSONTarget(root: root)
            case "safetensors": fuzzer = SafeTensorsTarget(root: root)
            case "gguf": fuzzer = GGUFTarget(root: root)
            case "config": fuzzer = ConfigTarget(root: root)
            case "tokenizer": fuzzer = TokenizerTarget(root: root)
            case "template": fuzzer = TemplateTarget(root: root)
            case "wire": fuzzer = WireTarget()
            case "expert-wire": fuzzer = ExpertWireTarget(root: root)
            case "batch": fuzzer = BatchTarget()
            case "upload": fuzzer = UploadTarget()
            case "logprobs": fuzzer = LogProbabilityTarget()
            default: fuzzer = RequestTarget(root: root)
            }
            run(fuzzer, name: name, root: root, seconds: seconds / Double(targets.count), seed: seed)
        }
    }

    static func run(_ target: Target, name: String, root: String, seconds: Double, seed: UInt64) {
        var regressions = 0
        let corpus = root + "/fixtures/fuzz/" + name
        for file in listFiles(corpus) {
            guard let bytes = try? readFileBytes(corpus + "/" + file) else { continue }
            CrashCatcher.current(name, bytes)
            target.exercise(bytes)
            regressions += 1
        }
        var random = Random(seed: seed)
        let started = ContinuousClock.now
        var runs = 0, refused = 0
        while (ContinuousClock.now - started).seconds < seconds {
            var input = target.seeds[random.below(target.seeds.count)]
            for _ in 0...random.below(4) { Mutations.apply(&input, seeds: target.seeds, random: &random) }
            CrashCatcher.current(name, input)
            if !target.exercise(input) { refused += 1 }
            runs += 1
        }
        printLine("\(name): \(regressions) regression cases, \(runs) mutated inputs in \(fixed(seconds, 0)) s (\(refused) refused with an error), no crash")
    }
}

/// One parser under test: real inputs to start from, and what to do with one input (true when
/// the parser accepted it; a refusal with an error is just as fine).
protocol Target {
    var seeds: [[UInt8]] { get }
    @discardableResult func exercise(_ input: [UInt8]) -> Bool
}

/// Writes a mutated input where a target's parser reads files from; false if it cannot.
func writeInput(_ input: [UInt8], to path: String) -> Bool {
    guard let file = fopen(path, "wb") else { return false }
    _ = input.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    fclose(file)
    return true
}

func printLine(_ text: String) {
    let line = text + "\n"
    _ = line.withCString { write(1, $0, strlen($0)) }
}

func repositoryRoot() -> String {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    let fromSource = parts.joined(separator: "/")
    return fileExists(fromSource + "/Package.swift") ? fromSource : "."
}

func listFiles(_ directory: String) -> [String] {
    guard let listing = opendir(directory) else { return [] }
    defer { closedir(listing) }
    var names: [String] = []
    while let entry = readdir(listing) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if !name.hasPrefix(".") { names.append(name) }
    }
    return names.sorted()
}
