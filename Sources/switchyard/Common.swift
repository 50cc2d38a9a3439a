import ArgumentParser
import Synchronization
import Logging
import ChatTemplates
import CUDA
import Kernels
import Models
import Orchestration
import Tokenizers
import SwitchyardSupport

/// Options every command that loads a model shares.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A Hugging Face model folder (config.json, safetensors, tokenizer.json); default: the bundled demo model.")
    var model: String?

    @Option(name: [.short, .long], help: "Kernel threads (default: the cores this process may use).")
    var threads: Int?

    @Option(name: .long, help: "Activation precision: f32 (float32 activations and accumulation; weights widened exactly); int8 (products with Q8_0/Q4_0/Q4_K weights quantise activations per block of 32 and use integer dot products, AVX512-VNNI or AVX2 where present, as llama.cpp does: faster, about 1e-2 off); auto (the fastest path that keeps every fixture within 1e-2 of transformers with identical greedy tokens: f32 for now). bf16 is not available yet.")
    var precision: String = "auto"

    @Option(help: "Where to compute: cpu, emulated (a test accelerator on the host with its own memory, threads and copy engine; needs --gpu-memory), cuda (an NVIDIA GPU, through the driver loaded at run time), or auto (cuda when usable, else cpu).")
    var accelerator: String = "cpu"

    @Option(name: .customLong("gpu-memory"), help: "The accelerator's memory budget, e.g. 512MiB or 2GB: what every token touches goes there first, then the most popular experts, then an expert cache.")
    var gpuMemory: String?

    @Option(name: .customLong("accelerator-threads"), help: "Kernel threads of the emulated accelerator (default 1).")
    var acceleratorThreads: Int = 1

    @Option(name: .customLong("ram-budget"), help: "Host RAM for weights, KV cache and work memory, e.g. 800MiB: experts that do not fit are read from the model files when needed (O_DIRECT), through an expert cache with prefetch.")
    var ramBudget: String?

    @Option(name: .customLong("expert-policy"), help: "With --gpu-memory or --ram-budget: scheduled (smallest makespan per layer, cache, prefetch), cpu (never copy experts to the accelerator), copy (always copy), naive (fixed placement, read missing experts when needed, no cache or prefetch).")
    var expertPolicy: String = "scheduled"

    @Option(name: .customLong("profile"), help: "A routing profile from `switchyard profile`: the most popular experts are pinned in the fast tiers.")
    var routingProfile: String?

    @Flag(name: .customLong("no-prefetch"), help: "Do not predict and prefetch the next layer's experts.")
    var noPrefetch = false

    @Flag(help: "Measure the expert kernels, copies and disk reads again instead of using the cached cost table.")
    var recalibrate = false

    @Option(help: "Write one JSON line per MoE layer per step: experts, token counts, where each ran, cache and prefetch hits, predicted and measured times.")
    var trace: String?

    @Option(help: "Convert weights at load: none, q8_0, q4_0 or q4_k (GGUF's block formats; the routed experts unless --quantize-all).")
    var quantize: String = "none"

    @Flag(name: .customLong("quantize-all"), help: "Quantise every matrix but the routers and the embedding.")
    var quantizeAll = false

    @Flag(name: .customLong("random-weights"), help: "Use random weights of the right shapes and dtype instead of the folder's (which then needs only config.json): for benchmarks.")
    var randomWeights = false

    @Flag(name: .customLong("no-mmap"), help: "Copy the weights out of the memory-mapped files into anonymous memory of 2 MiB pages and release the files' pages. By default the mappings themselves use 2 MiB pages where the file system allows it (see --no-huge-pages); this is for those that do not. Resident memory is the same; the files' page cache is no longer shared with other processes. Not with --gpu-memory or --ram-budget.")
    var noMmap = false

    @Flag(name: .customLong("no-huge-pages"), help: "Map the weight files as their page cache holds them. By default a model held wholly in memory is read in at load and mapped with 2 MiB pages where the kernel can (decode reads every weight once per token; 4 KiB pages cost a page walk every 4 KiB): a file cached in 4 KiB pages is dropped from the cache and read again once to get them.")
    var noHugePages = false

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        guard ["f32", "int8", "auto"].contains(precision) else {
            throw ValidationError("--precision \(precision) is not available; supported: f32, int8, auto")
        }
        guard quantize == "none" || WeightQuantization.Format(rawValue: quantize) != nil else {
            throw ValidationError("--quantize must be none or \(WeightQuantization.Format.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard ["cpu", "emulated", "cuda", "auto"].contains(accelerator) else {
            throw ValidationError("--accelerator must be cpu, emulated, cuda or auto")
        }
        if accelerator == "emulated" && gpuMemory == nil {
            throw ValidationError("--accelerator emulated needs --gpu-memory (its memory budget, e.g. 512MiB)")
        }
        if noMmap && tiered {
            throw ValidationError("--no-mmap copies the weights into host memory; the tiers (--gpu-memory, --ram-budget) place them themselves")
        }
        if gpuMemory != nil && accelerator != "emulated" {
            throw ValidationError("--gpu-memory sizes an accelerator: use it with --accelerator emulated")
        }
        if acceleratorThreads < 1 { throw ValidationError("--accelerator-threads must be at least 1") }
        guard ExpertPolicy(rawValue: expertPolicy) != nil else {
            throw ValidationError("--expert-policy must be one of \(ExpertPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// Whether the model runs across tiers (an accelerator's memory or a RAM budget).
    var tiered: Bool { gpuMemory != nil || ramBudget != nil }

    /// - Parameter kvPositions: KV cache positions the command may fill (all sequences together):
    ///   a RAM budget must hold them besides the weights.
    func loadModel(kvPositions: Int? = nil) throws -> Model {
        if accelerator != "cpu" && accelerator != "emulated" {
            // The kernels compile (see the CUDA module) but the GPU execution path has not been
            // proven on a GPU yet, so it is not offered as working even where a driver is present.
            let problem: String
            do {
                let driver = try CUDADriver()
                problem = "the CUDA backend cannot run models yet (\(driver.deviceCount) GPU(s) found)"
            } catch {
                problem = error.description
            }
            if accelerator == "cuda" { throw InputError(problem) }
            printError("note: \(problem); running on the CPU")
        }
        let started = ContinuousClock.now
        let directory = try modelDirectory(model)
        let quantization = WeightQuantization.Format(rawValue: quantize).map { WeightQuantization(format: $0, all: quantizeAll) }
        let pool = threads.map { ThreadPool(threads: $0) } ?? .shared
        var emulated: EmulatedAccelerator?
        // auto is f32: int8 activations miss the 1e-2 bound on the fixtures (1.3% to 8% there).
        let activations: ActivationPrecision = precision == "int8" ? .int8 : .f32
        var device: ComputeDevice = CPUDevice(pool: pool, precision: activations)
        if let gpuMemory {
            let accelerator = EmulatedAccelerator(memory: try parseByteSize(gpuMemory), threads: acceleratorThreads)
            device = TieredDevice(cpu: CPUDevice(pool: pool, precision: activations), accelerator: accelerator)
            emulated = accelerator
        }
        let loaded = try Model(directory: directory, device: device, pool: pool, randomWeights: randomWeights, quantization: quantization,
                               regroup: !(tiered && ramBudget != nil),
                               residency: noMmap ? .copied : tiered || noHugePages ? .mapped : .mappedInHugePages)
        for (file, residency) in zip(loaded.checkpoint?.files ?? [], loaded.hugePageResidency) {
            logger.debug("\(file.path): \(residency.hugeBytes >> 20) of \(residency.bytes >> 20) MiB mapped in 2 MiB pages\(residency.reread ? " (its page cache was read again to get them)" : "")")
        }
        if tiered {
            var options = TierOptions()
            options.ramBudget = try ramBudget.map(parseByteSize)
            options.policy = ExpertPolicy(rawValue: expertPolicy)!
            options.prefetch = !noPrefetch
            options.recalibrate = recalibrate
            options.tracePath = trace
            let c = loaded.config
            // The KV cache (one sequence of up to 4096 positions unless the command knows better) and
            // work memory: the runtime, tokenizer and activations take about 40 MiB.
            let positions = kvPositions ?? min(c.maxPositions, 4096)
            options.reservedHostBytes = c.layerCount * 2 * c.keyValueWidth * positions * MemoryLayout<Float>.size + (48 << 20)
            options.popularity = try routingProfile.map { try expertPopularity(profile: $0, config: c) }
            let executor = try TieredExecutor(model: loaded, accelerator: emulated, options: options)
            logger.debug("placement: \(executor.placement.json.serialized()); costs: \(executor.costs.json.serialized())")
        }
        // The bf16 kernel for each token count, measured on an expert of this model's shape (small
        // models, whose products fit the caches, keep the default).
        if let expert = loaded.sampleExpert, expert.gate.element == .bf16, expert.gate.rows * expert.gate.rowBytes >= 1 << 20, KernelChoice.tileAvailable {
            let choice = KernelChoice.measure(rows: expert.gate.rows, columns: expert.gate.columns, pool: pool)
            choice.apply()
            logger.debug("\(choice.summary)")
            measuredKernelChoice.withLock { $0 = choice }
        }
        logger.debug("loaded \(loaded.config.modelType) from \(directory) in \(ContinuousClock.now - started)")
        return loaded
    }
}

/// The kernel choice measured at load, for `bench` to report.
let measuredKernelChoice = Mutex<KernelChoice?>(nil)

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
    } catch let error as TemplateError {
        printError("error: \(error)")
        throw ExitCode(1)
    } catch {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}

func printError(_ message: String) {
    var line = message
    if !line.hasSuffix("\n") { line += "\n" }
    writeAll(2, line)
}

/// Standard output, unbuffered, so streamed text appears as it is generated.
func writeOut(_ text: String) { writeAll(1, text) }

private func writeAll(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n <= 0 { return }  // a closed pipe: nothing more can be shown
        bytes = bytes.dropFirst(n)
    }
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

/// [layer][expert] share of routed tokens from a `switchyard profile` file, checked against the model.
func expertPopularity(profile path: String, config: DecoderConfig) throws -> [[Double]] {
    let p = try RoutingProfile(json: readJSON(path), file: path)
    guard p.modelType == config.modelType, p.counts.count == config.layerCount else {
        throw InputError("\(path): a profile of a \(p.modelType) with \(p.counts.count) layers, not of this \(config.modelType)")
    }
    return p.counts.indices.map { p.shares(layer: $0) }
}
