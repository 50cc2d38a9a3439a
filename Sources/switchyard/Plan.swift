import ArgumentParser
import Kernels
import Models
import Orchestration
import SafeTensors
import SwitchyardJSON
import SwitchyardSupport

/// `switchyard plan`: where a model's weights would live and how fast it would run, from
/// config.json alone (a user can plan before downloading a 90 GB model).
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Place a model's tensors across GPU, RAM and disk under budgets and predict its speed, from config.json alone.")

    @Option(help: "A folder with config.json (default: the bundled demo model).")
    var model: String?

    @Option(name: .customLong("gpu-memory"), help: "Accelerator memory budget, e.g. 24GB or 512MiB (default: the hardware profile's; 0 without a GPU).")
    var gpuMemory: String?

    @Option(name: .customLong("ram-budget"), help: "Host RAM budget (default: the hardware profile's, or available RAM for local).")
    var ramBudget: String?

    @Option(help: "A hardware profile (\(HardwareProfile.known.map(\.name).joined(separator: ", "))) or local (measured here).")
    var hardware: String = "local"

    @Option(help: "A routing profile from `switchyard profile`: popular experts go to fast memory first.")
    var profile: String?

    @Option(name: .customLong("context-length"), help: "KV cache length to reserve (default: min(4096, the model's maximum)).")
    var contextLength: Int?

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingErrors {
            let directory = try modelDirectory(model)
            let config = try Model.readConfig(directory: directory)
            let dtype = try Model.storedDType(directory: directory)
            var machine: HardwareProfile
            if hardware == "local" {
                machine = measureLocal()
            } else if let known = HardwareProfile.known.first(where: { $0.name == hardware }) {
                machine = known
            } else {
                throw InputError("unknown hardware profile '\(hardware)' (known: local, \(HardwareProfile.known.map(\.name).joined(separator: ", ")))")
            }
            let gpu = try gpuMemory.map(parseByteSize) ?? machine.gpuMemory
            let ram = try ramBudget.map(parseByteSize) ?? machine.ramBytes
            let popularity = try profile.map { try expertPopularity(profile: $0, config: config) }
            let context = contextLength ?? min(4096, config.maxPositions)
            let plan = Planner.plan(config, weightBytes: dtype.byteSize, gpuBudget: gpu, ramBudget: ram, hardware: machine,
                                    contextLength: context, popularity: popularity)
            if json {
                var o = JSONObject()
                o["hardware"] = .string(machine.name)
                o["gpu_budget_bytes"] = .int(gpu)
                o["ram_budget_bytes"] = .int(ram)
                o["groups"] = .array(plan.groups.map { ["name": .string($0.name), "bytes": .int($0.bytes), "tier": .string($0.tier.rawValue)] })
                o["bytes_per_tier"] = .object(JSONObject(Plan.Tier.allCases.map { (key: $0.rawValue, value: .int(plan.bytesPerTier[$0] ?? 0)) }))
                o["experts_per_tier"] = .object(JSONObject(Plan.Tier.allCases.map { (key: $0.rawValue, value: .int(plan.expertsPerTier[$0] ?? 0)) }))
                o["decode_tokens_per_second"] = .double(plan.decodeOverlapped)
                o["decode_tokens_per_second_summed"] = .double(plan.decodeSummed)
                o["decode_tokens_per_second_fiddler"] = .double(plan.decodeFiddler)
                o["prefill_tokens_per_second"] = .double(plan.prefillOverlapped)
                writeOut(JSONValue.object(o).serialized() + "\n")
                return
            }
            writeOut("hardware: \(machine.name) — \(machine.description)\n")
            writeOut("budgets: GPU \(formatBytes(gpu, digits: 2)), RAM \(formatBytes(ram, digits: 2)); weights \(dtype); \(popularity == nil ? "experts placed uniformly (no --profile)" : "experts placed by popularity from \(profile!)")\n\n")
            writeOut("| group | size | tier |\n| --- | ---: | --- |\n")
            var dense: [Plan.Tier: (count: Int, bytes: Int)] = [:]
            for g in plan.groups {
                if g.name.hasPrefix("layer ") {
                    dense[g.tier, default: (0, 0)].count += 1
                    dense[g.tier, default: (0, 0)].bytes += g.bytes
                } else {
                    writeOut("| \(g.name) | \(formatBytes(g.bytes, digits: 2)) | \(g.tier.rawValue) |\n")
                }
            }
            for (tier, d) in dense.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                writeOut("| per-layer attention, routers, dense/shared MLPs (\(d.count) groups) | \(formatBytes(d.bytes, digits: 2)) | \(tier.rawValue) |\n")
            }
            writeOut("\nmemory: " + Plan.Tier.allCases.map { "\($0.rawValue) \(formatBytes(plan.bytesPerTier[$0] ?? 0, digits: 2))" }.joined(separator: ", "))
            writeOut("; experts: " + Plan.Tier.allCases.map { "\(plan.expertsPerTier[$0] ?? 0) on \($0.rawValue)" }.joined(separator: ", ") + " of \(plan.expertCount)\n")
            writeOut("predicted decode: \(fixed(plan.decodeOverlapped, 1)) tok/s with CPU, GPU and copies overlapped (\(fixed(plan.decodeSummed, 1)) if summed)\n")
            writeOut("predicted prefill (\(plan.prefillTokens) tokens): \(fixed(plan.prefillOverlapped, 0)) tok/s\n")
            writeOut("Fiddler's kernels on this placement: \(fixed(plan.decodeFiddler, 2)) tok/s decode; predicted gap \(fixed(plan.decodeOverlapped / plan.decodeFiddler, 1))x\n")
        }
    }

    /// This machine: CPU read bandwidth and f32 throughput measured now, RAM from /proc/meminfo; no GPU.
    func measureLocal() -> HardwareProfile {
        let pool = ThreadPool.shared
        let bandwidth = measureReadBandwidth(bytes: 256 << 20, pool: pool)
        // Dense throughput: a 1024 x 1024 bf16 product over 64 tokens, best of 3.
        let rows = 1024, columns = 1024, tokens = 64
        let weights = UnsafeMutableRawPointer.allocate(byteCount: rows * columns * 2, alignment: 64)
        defer { weights.deallocate() }
        weights.initializeMemory(as: UInt16.self, repeating: 0x3F80, count: rows * columns)
        let x = [Float](repeating: 0.5, count: tokens * columns)
        var y = [Float](repeating: 0, count: tokens * rows)
        let m = WeightMatrix(element: .bf16, rows: rows, columns: columns, data: weights)
        var best = 0.0
        for _ in 0..<3 {
            let start = ContinuousClock.now
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    matmul(m, input: xp.baseAddress!, inputStride: columns, output: yp.baseAddress!, outputStride: rows, tokens: tokens, pool: pool)
                }
            }
            best = max(best, Double(2 * rows * columns * tokens) / (ContinuousClock.now - start).seconds)
        }
        return HardwareProfile(
            name: "local", description: "this machine, measured: \(fixed(bandwidth / 1e9, 1)) GB/s read, \(fixed(best / 1e9, 0)) GFLOP/s; no GPU",
            gpuMemory: 0, gpuBandwidth: 0, gpuFlops: 0, linkBandwidth: 0,
            ramBytes: availableMemory(), cpuBandwidth: bandwidth, cpuFlops: best, diskBandwidth: 1.5e9)
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
func availableMemory() -> Int {
    guard let bytes = try? readFileBytes("/proc/meminfo") else { return 8 << 30 }
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("MemAvailable:") {
        if let kb = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) { return kb * 1024 }
    }
    return 8 << 30
}

