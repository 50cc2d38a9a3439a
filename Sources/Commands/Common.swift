import ArgumentParser
import Engine
import Logging
import Models
import Orchestration
import RemoteAttention
import SwitchyardSupport

extension EngineOptions.Precision: ExpressibleByArgument {}
extension EngineOptions.AcceleratorKind: ExpressibleByArgument {}
extension EngineOptions.ExpertKernel: ExpressibleByArgument {}
extension LatentAttentionForm: ExpressibleByArgument {}
extension PipelineSetting: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}
extension ExpertPolicy: ExpressibleByArgument {}
extension WeightQuantization.Format: ExpressibleByArgument {}

/// Options every command that loads a model shares; `engineOptions` turns them into the engine's.
public struct ModelOptions: ParsableArguments {
    public init() {}

    @Option(name: .long, help: "A Hugging Face model folder (config.json, safetensors, tokenizer.json) or a GGUF file; default: the bundled demo model.")
    var model: String?

    @Option(name: [.short, .long], help: "Kernel threads (default: the cores this process may use).")
    var threads: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Activation precision: f32, int8, bf16, int8+bf16 or auto.",
        discussion: "f32: float32 activations and accumulation, weights widened exactly (what the parity tests use). int8: products with Q8_0/Q4_0/Q4_K weights quantise activations per block of 32 and use integer dot products (AVX512-VNNI, AVX-VNNI or AVX2 where present), as llama.cpp does. bf16: products with bf16 weights round activations to bf16 and use AVX512-BF16's dot product where present, as llama.cpp does. int8+bf16: both. auto (the default): per weight type, the fastest of these this CPU has a kernel for, all within the precision contract (KL divergence from f32 measured with `switchyard perplexity`; README); `bench` and `generate --json` say which ran."))
    var precision: EngineOptions.Precision = .auto

    @Option(help: ArgumentHelp(
        "Where the accelerator's work goes: cpu, emulated, cuda or auto.",
        discussion: "emulated: a test accelerator on the host with its own memory, threads and copy engine (needs --accelerator-memory). cuda: an NVIDIA GPU through the driver loaded at run time. auto: cuda when usable, else cpu."))
    var accelerator: EngineOptions.AcceleratorKind = .cpu

    @Option(name: .customLong("accelerator-memory"), help: ArgumentHelp(
        "The accelerator's memory budget, e.g. 512MiB or 2GB.",
        discussion: "What every token touches goes there first, then the most popular experts, then an expert cache."))
    var acceleratorMemory: String?

    @Option(name: .customLong("accelerator-threads"), help: "Kernel threads of the emulated accelerator.")
    var acceleratorThreads: Int = 1

    @Option(name: .customLong("accelerator-link"), help: ArgumentHelp(
        "The emulated accelerator's host link, e.g. 2GB/s (default: host memory speed).",
        discussion: "Its kernels run at the host's speed, far below a GPU's; a slower link keeps copies in the proportion to compute they have on a real one."))
    var acceleratorLink: String?

    @Option(name: .customLong("ram-budget"), help: ArgumentHelp(
        "Host RAM for weights, KV cache and work memory, e.g. 800MiB.",
        discussion: "Experts that do not fit are read from the model files when needed (O_DIRECT), through an expert cache with prefetch."))
    var ramBudget: String?

    @Option(name: .customLong("expert-policy"), help: ArgumentHelp(
        "With --accelerator-memory or --ram-budget: scheduled, cpu, copy or naive.",
        discussion: "scheduled: smallest makespan per layer, cache, prefetch. cpu: never copy experts to the accelerator. copy: always copy. naive: fixed placement, read missing experts when needed, no cache or prefetch."))
    var expertPolicy: ExpertPolicy = .scheduled

    @Option(name: .customLong("profile"), help: "A routing profile from `switchyard profile`: the most popular experts are pinned in the fast tiers.")
    var routingProfile: String?

    @Flag(name: .customLong("no-prefetch"), help: "Do not predict and prefetch the next layer's experts.")
    var noPrefetch = false

    @Flag(help: "Measure the expert kernels, copies and disk reads again instead of using the cached cost table.")
    var recalibrate = false

    @Flag(name: .customLong("no-cost-learning"), help: "Keep the calibrated cost table as it is instead of correcting it with the times measured as the model runs.")
    var noCostLearning = false

    @Option(name: .customLong("expert-pipeline"), help: ArgumentHelp(
        "auto, off, or a number of groups: how a layer's experts that must move (disk reads, copies) are pipelined with compute.",
        discussion: "auto: N* = sqrt(C/k) from the cost model, off where it does not pay. off: every movement of the layer finishes before a moved expert computes."))
    var expertPipeline: PipelineSetting = .auto

    @Option(name: .customLong("expert-kernel"), help: ArgumentHelp(
        "auto, grouped or dense: how a layer's experts run on the CPU.",
        discussion: "grouped: all of them in one pass (two parallel regions); dense: one product each; auto: grouped below the tokens per expert where it measured faster at load. Same bits either way."))
    var expertKernel: EngineOptions.ExpertKernel = .auto

    @Option(name: .customLong("latent-attention"), help: ArgumentHelp(
        "How DeepSeek's latent attention computes a step: auto, absorbed, expanded.",
        discussion: "absorbed attends over the cached latent rows (decode's form); expanded up-projects every position's keys and values per head (cheaper for long prefill chunks, on this host only); auto takes the form of fewer operations per step. Same results within float32 rounding."))
    var latentAttention: LatentAttentionForm = .automatic

    @Option(name: .customLong("ubatch"), help: "Prompt tokens per forward pass (default: 64; 512 with --ram-budget or an accelerator, where each pass moves the experts it needs once).")
    var ubatch: Int?

    @Option(help: "Write one JSON line per MoE layer per step: experts, token counts, where each ran, cache and prefetch hits, predicted and measured times.")
    var trace: String?

    @Option(help: "Convert weights at load to a GGUF block format: q8_0, q4_0, q4_k or q6_k (the routed experts unless --quantize-all).")
    var quantize: WeightQuantization.Format?

    @Flag(name: .customLong("quantize-all"), help: "Quantise every matrix but the routers and the embedding.")
    var quantizeAll = false

    @Flag(name: .customLong("random-weights"), help: "Use random weights of the right shapes and dtype instead of the folder's (which then needs only config.json): for benchmarks.")
    var randomWeights = false

    @Flag(name: .customLong("no-mmap"), help: ArgumentHelp(
        "Copy every weight, the embedding and routers included, out of the memory-mapped files into anonymous 2 MiB pages.",
        discussion: "The files' pages are released. By default the mappings themselves use 2 MiB pages where the file system allows it (see --no-huge-pages); this is for those that do not. The whole embedding is then resident, not only the rows used, and the files' page cache is no longer shared with other processes. Not with --accelerator-memory or --ram-budget."))
    var noMmap = false

    @Flag(name: .customLong("check-tensors"), help: "Refuse weights that hold a NaN or an infinity (a pass over every byte at load).")
    var checkTensors = false

    @Flag(name: .customLong("no-huge-pages"), help: ArgumentHelp(
        "Map the weight files as their page cache holds them.",
        discussion: "By default a model held wholly in memory is read in at load and mapped with 2 MiB pages where the kernel can (decode reads every weight once per token; 4 KiB pages cost a page walk every 4 KiB): a file cached in 4 KiB pages is dropped from the cache and read again once to get them."))
    var noHugePages = false

    @Option(name: .customLong("attention-workers"), help: ArgumentHelp(
        "Attention workers, host:port,host:port,...: they hold the KV caches and compute attention (two-tier inference).",
        discussion: "Start each with `switchyard attention-worker --listen HOST:PORT --kv-memory SIZE`. This process keeps the weights and the residual stream and sends each layer only queries and new keys/values. A worker that dies or drops off the network loses its caches; the sequences it held are computed again on the others."))
    var attentionWorkers: String?

    @Option(name: .customLong("attention-workers-file"), help: ArgumentHelp(
        "A file listing the attention workers (host:port, separated by commas or lines), read again whenever it changes.",
        discussion: "For a supervisor (the Ray package) that restarts workers elsewhere: the running process takes up the new list without a restart. Workers no longer listed lose their sequences, which are computed again on the others."))
    var attentionWorkersFile: String?

    @Option(name: .customLong("expert-workers"), help: ArgumentHelp(
        "Expert hosts, HOST:PORT,... (`switchyard expert-worker`): routed experts are placed on them and run there.",
        discussion: "Each host gets only the tokens routed to its experts; outputs are the same bits as on one machine. A host that is lost hands its experts back to this host's tiers."))
    var expertWorkers: String?

    @Option(name: .customLong("expert-timeout"), help: "Seconds an expert host may take to answer before it counts as lost.")
    var expertTimeout: Double = 30

    @Option(name: .customLong("attention-timeout"), help: "Seconds an attention worker may take to answer before it counts as gone.")
    var attentionTimeout: Double = 30

    public func validate() throws {
        try checkRange(Float(attentionTimeout), "--attention-timeout", 0.001...3600)
        try checkRange(Float(expertTimeout), "--expert-timeout", 0.001...3600)
        if attentionWorkers != nil && attentionWorkersFile != nil {
            throw ValidationError("give the attention workers once: --attention-workers or --attention-workers-file")
        }
        try checkRange(threads, "--threads", 1...1024)
        try checkRange(ubatch, "--ubatch", 1...8192)
        try checkRange(acceleratorThreads, "--accelerator-threads", 1...256)
        if quantizeAll && quantize == nil { throw ValidationError("--quantize-all needs --quantize") }
    }

    /// The engine's options from the flags; sizes and files are checked here, with one-line errors.
    /// - Parameter kvPositions: KV cache positions the command may fill (all sequences together):
    ///   a RAM budget must hold them besides the weights.
    public func engineOptions(kvPositions: Int? = nil) throws -> EngineOptions {
        var o = EngineOptions(model: try modelDirectory(model))
        o.threads = threads
        o.precision = precision
        o.accelerator = accelerator
        o.acceleratorMemory = try acceleratorMemory.map(parseByteSize)
        o.acceleratorThreads = acceleratorThreads
        if let acceleratorLink {
            let perSecond = acceleratorLink.hasSuffix("/s") ? String(acceleratorLink.dropLast(2)) : acceleratorLink
            let rate = try parseByteSize(perSecond)
            guard rate >= 1 << 20 else { throw InputError("--accelerator-link: '\(acceleratorLink)' is below 1 MiB/s") }
            o.acceleratorLink = Double(rate)
        }
        o.ramBudget = try ramBudget.map(parseByteSize)
        o.expertPolicy = expertPolicy
        o.prefetch = !noPrefetch
        o.recalibrate = recalibrate
        o.tracePath = trace
        o.expertPipeline = expertPipeline
        o.learnCosts = !noCostLearning
        o.promptChunk = ubatch
        o.expertKernel = expertKernel
        o.latentAttention = latentAttention
        o.quantization = quantize.map { WeightQuantization(format: $0, all: quantizeAll) }
        o.randomWeights = randomWeights
        o.residency = noMmap ? .copied : noHugePages ? .mapped : .hugePages
        o.kvPositions = kvPositions
        o.checkTensors = checkTensors
        o.attentionWorkers = try attentionWorkersFile.map(readWorkerList) ?? attentionWorkers.map(parseWorkerList) ?? []
        if attentionWorkersFile != nil && o.attentionWorkers.isEmpty {
            throw InputError("\(attentionWorkersFile!): no attention workers listed")
        }
        o.attentionTimeout = .milliseconds(Int64(attentionTimeout * 1000))
        o.expertWorkers = expertWorkers.map(parseWorkerList) ?? []
        o.expertTimeout = .milliseconds(Int64(expertTimeout * 1000))
        if let routingProfile {
            o.popularity = try Engine.popularity(profile: routingProfile, config: try ModelFormats.open(o.model).readConfig())
        }
        return o
    }

    /// Loads the engine, logging what it chose.
    /// - Parameter holdWeightsInMemory: copy the weights out of the files (a server does, so that
    ///   a file that changes cannot end it).
    public func loadEngine(kvPositions: Int? = nil, holdWeightsInMemory: Bool = false) throws -> Engine {
        var options = try engineOptions(kvPositions: kvPositions)
        options.holdWeightsInMemory = holdWeightsInMemory
        let engine = try Engine.load(options)
        for note in engine.notes { printError("note: \(note)") }
        if let remote = engine.model.attention as? RemoteAttention {
            remote.report = { printError("note: \($0)") }
            if let attentionWorkersFile { watchWorkerList(attentionWorkersFile, remote: remote) }
        }
        let model = engine.model
        for (file, residency) in zip(model.tensors.files, model.hugePageResidency) {
            logger.debug("\(file.path): \(residency.hugeBytes >> 20) of \(residency.bytes >> 20) MiB mapped in 2 MiB pages\(residency.reread ? " (its page cache was read again to get them)" : "")")
        }
        engine.tiers?.notes = { printError("note: \($0)") }
        if let tiers = engine.tiers { logger.debug("placement: \(tiers.summary.json.serialized()); costs: \(tiers.costs.json.serialized())") }
        if let choice = engine.kernelChoice { logger.debug("\(choice.summary)") }
        if let choice = engine.expertKernelChoice { logger.debug("\(choice.summary)") }
        if let choice = engine.tileChoice { logger.debug("\(choice.summary)") }
        logger.debug("loaded \(model.config.modelType) from \(model.directory) in \(fixed(engine.loadSeconds, 2)) s")
        return engine
    }
}

/// Diagnostics on stderr; SWITCHYARD_LOG_LEVEL=debug (or info, trace...) shows more.
let logger: Logger = {
    var l = Logger(label: "switchyard")
    let level = getenv("SWITCHYARD_LOG_LEVEL").map { String(cString: $0) } ?? "warning"
    l.logLevel = Logger.Level(rawValue: level) ?? .warning
    return l
}()

/// Runs a command body; a failure prints one line to stderr and exits 1 (never a crash trace).
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ValidationError {
        throw error
    } catch let error as ExitCode {
        throw error
    } catch {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}

public func printError(_ message: String) {
    var line = message
    if !line.hasSuffix("\n") { line += "\n" }
    writeAll(2, line)  // nowhere left to report a failure to
}

/// Standard error without a line end added (a progress bar redrawn in place).
func writeError(_ text: String) {
    writeAll(2, text)
}

/// Standard output, unbuffered, so streamed text appears as it is generated. A reader that went
/// away (EPIPE: `switchyard generate ... | head`) ends the command quietly, as it ends coreutils'
/// commands; any other failure (a full disk) is one error line and exit status 1, never a result
/// lost behind exit status 0.
func writeOut(_ text: String) {
    guard let failure = writeAll(1, text) else { return }
    if failure == EPIPE { exit(0) }
    printError("error: write error: \(errorText(failure))")
    exit(1)
}

/// Writes all of `text`; the errno of a failed write, or nil.
@discardableResult
private func writeAll(_ fd: Int32, _ text: String) -> Int32? {
    Array(text.utf8).withUnsafeBytes { writeAll(fd, $0) }
}

/// A problem with what the user gave (a value, not a flag's spelling): reported in one line.
struct InputError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// "1,2,3" or "1 2 3" or "[1, 2, 3]".
func parseTokenList(_ text: String) throws -> [Int] {
    let cleaned = text.filter { $0 != "[" && $0 != "]" }
    let parts = cleaned.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\n" })
    var ids: [Int] = []
    for part in parts {
        guard let id = Int(part), id >= 0 else { throw InputError("'\(part)' is not a token id") }
        ids.append(id)
    }
    guard !ids.isEmpty else { throw InputError("no token ids given") }
    return ids
}

/// The bundled demo model's folder inside the repository.
let demoModelPath = "models/switchyard-kjv-moe"

/// `--model` if given; otherwise $SWITCHYARD_MODEL, or the demo model found next to the executable
/// (it lives in the repository's .build folder) or under the current directory.
func modelDirectory(_ given: String?) throws -> String {
    if let given { return given }
    if let env = getenv("SWITCHYARD_MODEL") { return String(cString: env) }
    var candidates: [String] = []
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    if n > 0 {
        var parts = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "/")
        while parts.count > 1 {
            parts.removeLast()
            candidates.append("/" + parts.joined(separator: "/") + "/" + demoModelPath)
        }
    }
    candidates.append(demoModelPath)
    for c in candidates where access(c + "/config.json", R_OK) == 0 { return c }
    throw InputError("no --model given, and the bundled demo model (\(demoModelPath)) was not found next to the executable or in the current directory; set --model DIR or SWITCHYARD_MODEL")
}

/// The most memory this process has had resident (bytes), from getrusage.
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Int(usage.ru_maxrss) * 1024
}

/// Worker addresses separated by commas, spaces or lines.
func parseWorkerList(_ text: String) -> [String] {
    text.split(whereSeparator: { $0 == "," || $0 == "\n" || $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
}

func readWorkerList(_ path: String) throws -> [String] {
    do { return parseWorkerList(String(decoding: try readFileBytes(path), as: UTF8.self)) } catch {
        throw InputError("--attention-workers-file: \(error)")
    }
}

/// Reads the worker list again whenever the file changes, and hands it to tier 1. A list that
/// cannot be read or parsed is reported and ignored.
func watchWorkerList(_ path: String, remote: RemoteAttention) {
    func stamp() -> (Int, Int) {
        var info = stat()
        return stat(path, &info) == 0 ? (Int(info.st_mtim.tv_sec) * 1_000_000_000 + Int(info.st_mtim.tv_nsec), Int(info.st_size)) : (0, 0)
    }
    var last = stamp()
    _ = startThread("worker list") {
        while true {
            usleep(200_000)
            let now = stamp()
            guard now != last else { continue }
            last = now
            do {
                let addresses = try readWorkerList(path).map { try WorkerAddress(parsing: $0) }
                guard !addresses.isEmpty else { continue }
                remote.setWorkers(addresses)
                printError("note: attention workers now \(addresses.map(\.description).joined(separator: ","))")
            } catch {
                printError("warning: \(path): \(error); keeping the attention workers as they were")
            }
        }
    }
}
