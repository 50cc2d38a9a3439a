import ArgumentParser
import Engine
import Kernels
import Models
import Orchestration
import Runtime
import SwitchyardJSON
import SwitchyardSupport

/// `switchyard plan`: where a model's weights would live and how fast it would run, from
/// config.json alone (a user can plan before downloading a 90 GB model), with the placement the
/// executor makes for the same budgets.
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Place a model across accelerator, RAM and disk under budgets and predict its speed, from config.json alone.")

    @Option(help: "A folder with config.json (default: the bundled demo model).")
    var model: String?

    @Option(name: .customLong("accelerator-memory"), help: "Accelerator memory budget, e.g. 24GB or 512MiB (default: the hardware profile's; none without one).")
    var acceleratorMemory: String?

    @Option(name: .customLong("ram-budget"), help: "Host RAM for weights, KV cache and work memory (default: the hardware profile's, or available RAM for local).")
    var ramBudget: String?

    @Option(help: "A hardware profile (\(HardwareProfile.known.map(\.name).joined(separator: ", "))) or local (measured here).")
    var hardware: String = "local"

    @Option(help: "A routing profile from `switchyard profile`: popular experts go to fast memory first.")
    var profile: String?

    @Option(name: .customLong("expert-policy"), help: "scheduled, cpu, copy or naive, as for the compute commands.")
    var expertPolicy: ExpertPolicy = .scheduled

    @Option(help: ArgumentHelp(
        "Plan the routed experts in q8_0, q4_0, q4_k or q6_k.",
        discussion: "As a folder `switchyard quantize` wrote holds them (what --ram-budget runs read from disk), or as --quantize converts them at load without a RAM budget. Experts a config stores in a block format (GPT-OSS's MXFP4) stay as stored."))
    var quantize: WeightQuantization.Format?

    @Option(name: .customLong("context-length"), help: "KV cache positions the RAM budget must hold (default: min(4096, the model's maximum)).")
    var contextLength: Int?

    @Flag(help: "Print JSON.")
    var json = false

    @Option(name: .customLong("attention-workers"), help: ArgumentHelp(
        "Plan two-tier decode with this many attention workers holding the KV caches instead.",
        discussion: "Predicts throughput over batch sizes, the best batch and micro-batches in flight, Little's law's count, and single-tier decode at the batch --tier1-kv-memory holds; the workers are machines like --hardware."))
    var attentionWorkers: Int?

    @Option(help: "Added round trip per attention request, milliseconds, or several comma-separated (two tiers).")
    var rtt: String = "0.1"

    @Option(name: .customLong("network-gbps"), help: "Each link's bandwidth in Gbit/s (two tiers).")
    var networkGbps: Double = 10

    @Option(name: .customLong("tier1-kv-memory"), help: "KV memory tier 1 would have on its own, e.g. 1GiB (two tiers; default: 8 sequences of --context-length).")
    var tier1KVMemory: String?

    @Option(name: .customLong("worker-kv-memory"), help: "KV memory of each attention worker (two tiers).")
    var workerKVMemory: String = "64GiB"

    @Option(name: .customLong("mean-positions"), help: "Positions each sequence attends on average (two tiers; default: half the context length).")
    var meanPositions: Int?

    @Option(name: .customLong("expert-hosts"), help: "Plan with this many expert hosts (`expert-worker`) taking experts as a tier.")
    var expertHosts: Int?

    @Option(name: .customLong("host-memory"), help: "Memory each expert host gives its experts (expert hosts).")
    var hostMemory: String = "64GiB"

    @Option(name: .customLong("host-rtt"), help: "Round trip to an expert host, milliseconds.")
    var hostRTT: Double = 0.1

    @Option(name: .customLong("host-gbps"), help: "Each expert host's link in Gbit/s.")
    var hostGbps: Double = 10

    @Flag(name: .customLong("shared-cores"), help: "Tier 1 and the workers share this machine's cores (a test on one machine), not separate hosts.")
    var sharedCores = false

    func validate() throws {
        try checkRange(contextLength, "--context-length", 1...positionLimit)
        try checkRange(attentionWorkers, "--attention-workers", 1...4096)
        try checkRange(meanPositions, "--mean-positions", 1...positionLimit)
        for r in try rtts() { try checkRange(Float(r), "--rtt", 0...100_000) }
        try checkRange(Float(networkGbps), "--network-gbps", 0.001...100_000)
        try checkRange(expertHosts, "--expert-hosts", 1...4096)
        try checkRange(Float(hostRTT), "--host-rtt", 0...100_000)
        try checkRange(Float(hostGbps), "--host-gbps", 0.001...100_000)
    }

    func run() throws {
        try reportingErrors {
            let source = try ModelFormats.open(try modelDirectory(model))
            let config = try source.readConfig()
            let element = try source.storedElement()
            let machine: HardwareProfile
            if hardware == "local" {
                machine = HardwareProfile.measureLocal()
            } else if let known = HardwareProfile.known.first(where: { $0.name == hardware }) {
                machine = known
            } else {
                throw InputError("unknown hardware profile '\(hardware)' (known: local, \(HardwareProfile.known.map(\.name).joined(separator: ", ")))")
            }
            let accelerator = try acceleratorMemory.map(parseByteSize) ?? (machine.acceleratorMemory > 0 ? machine.acceleratorMemory : nil)
            let ram = try ramBudget.map(parseByteSize) ?? machine.ramBytes
            let popularity = try profile.map { try Engine.popularity(profile: $0, config: config) }
            let context = contextLength ?? min(4096, config.maxPositions)
            if let attentionWorkers {
                try planTwoTier(config: config, element: element, machine: machine, workers: attentionWorkers, context: context)
                return
            }
            let hostBytes = try parseByteSize(hostMemory)
            let hosts = (0..<(expertHosts ?? 0)).map { _ in HostCapacity(memory: hostBytes, fixed: nil) }
            let plan = try Planner.plan(config, element: element, hardware: machine, acceleratorMemory: accelerator, ramBudget: ram,
                                        contextLength: context, popularity: popularity, policy: expertPolicy, hosts: hosts,
                                        hostRoundTrip: hostRTT / 1000, hostBandwidth: hostGbps * 1e9 / 8, expertElement: quantize?.element)
            let p = plan.placement
            let experts: [String: Int] = [
                "accelerator_pinned": p.experts(on: .accelerator).count, "accelerator_cache_slots": p.acceleratorCacheSlots,
                "ram_pinned": plan.pinnedExperts[.ram] ?? 0, "ram_cache_slots": p.ramCacheSlots, "disk": plan.pinnedExperts[.disk] ?? 0,
                "on_hosts": plan.pinnedExperts[.remote] ?? 0,
            ]
            let tiers: [Tier] = hosts.isEmpty ? [.accelerator, .ram, .disk] : [.accelerator, .ram, .disk, .remote]
            if json {
                var o = JSONObject()
                o["hardware"] = .string(machine.name)
                o["accelerator_memory"] = accelerator.map { .int($0) } ?? .null
                o["ram_budget"] = .int(ram)
                o["bytes_per_tier"] = .object(JSONObject(tiers.map { (key: $0.rawValue, value: .int(plan.bytesPerTier[$0] ?? 0)) }))
                o["experts"] = .object(JSONObject(experts.sorted { $0.key < $1.key }.map { (key: $0.key, value: .int($0.value)) }))
                o["expert_bytes"] = .int(plan.footprint.expertBytes)
                o["expert_ram_slot_bytes"] = .int(plan.footprint.expertBytes > 0 ? ExpertPlacement.ramSlotBytes(plan.footprint.expertMatrixBytes) : 0)
                o["always_on_accelerator_bytes"] = .int(p.acceleratorTensorBytes)
                o["always_on_host_bytes"] = .int(p.alwaysHostBytes)
                o["reserved_host_bytes"] = .int(plan.reservedHostBytes)
                o["decode_tokens_per_second"] = .double(plan.decodeOverlapped)
                o["decode_tokens_per_second_summed"] = .double(plan.decodeSummed)
                o["decode_tokens_per_second_fiddler"] = .double(plan.decodeFiddler)
                o["prefill_tokens_per_second"] = .double(plan.prefillOverlapped)
                o["prefill_tokens"] = .int(plan.prefillTokens)
                o["prefill_pipelined_tokens_per_second"] = .double(plan.prefillPipelined)
                o["prefill_unpipelined_tokens_per_second"] = .double(plan.prefillUnpipelined)
                o["pipeline_groups"] = .array(plan.pipelineGroups.map { .int($0) })
                writeOut(JSONValue.object(o).serialized() + "\n")
                return
            }
            let profileNote = popularity == nil ? "experts placed uniformly (no --profile)" : "experts placed by popularity from \(profile!)"
            writeOut("hardware: \(machine.name) — \(machine.description)\n")
            let stored = config.feedForward.compactMap { $0.moe?.expertElement }.first ?? quantize?.element
            writeOut("budgets: accelerator \(accelerator.map { formatBytes($0, digits: 2) } ?? "none"), RAM \(formatBytes(ram, digits: 2)); weights \(element)\(stored.map { ", routed experts \($0)" } ?? ""); \(profileNote)\n\n")
            let onAccelerator = p.alwaysOnAccelerator.filter { $0 }.count
            let eligible = plan.footprint.always.filter(\.acceleratorEligible).count
            writeOut("| what | size | where |\n| --- | ---: | --- |\n")
            writeOut("| what every token touches: \(onAccelerator) of the \(eligible) tensors that may go there | \(formatBytes(p.acceleratorTensorBytes, digits: 2)) | accelerator |\n")
            writeOut("| what every token touches: the embedding and routers\(onAccelerator < eligible ? ", and what did not fit" : "") | \(formatBytes(p.alwaysHostBytes, digits: 2)) | ram |\n")
            writeOut("| KV cache (\(context) positions, f32) and work memory | \(formatBytes(plan.reservedHostBytes, digits: 2)) | ram |\n")
            let expertSize = plan.footprint.expertBytes
            for (label, count, tier) in [("experts pinned", experts["accelerator_pinned"]!, "accelerator"), ("expert cache slots", experts["accelerator_cache_slots"]!, "accelerator"),
                                          ("experts pinned", experts["ram_pinned"]!, "ram"), ("expert cache slots", experts["ram_cache_slots"]!, "ram"),
                                          ("experts", experts["disk"]!, "disk"),
                                          ("experts on \(hosts.count) expert host(s)", experts["on_hosts"]!, "remote")] where count > 0 {
                writeOut("| \(label) (\(count) x \(formatBytes(expertSize, digits: 2))) | \(formatBytes(count * expertSize, digits: 2)) | \(tier) |\n")
            }
            writeOut("\nmemory: " + tiers.map { "\($0.rawValue) \(formatBytes(plan.bytesPerTier[$0] ?? 0, digits: 2))" }.joined(separator: ", ") + "\n")
            if config.naming.stackedExpertsTransposed && (plan.pinnedExperts[.disk] ?? 0) > 0 {
                writeOut("note: \(config.modelType)'s experts are rearranged at load (all of them in memory once); those on disk are then written to a spill file in $TMPDIR, which needs \(formatBytes((plan.pinnedExperts[.disk] ?? 0) * plan.footprint.expertBytes, digits: 2)) free\n")
            }
            writeOut("predicted decode: \(fixed(plan.decodeOverlapped, 1)) tok/s with CPU, accelerator, copies and reads overlapped (\(fixed(plan.decodeSummed, 1)) if summed)\n")
            writeOut("predicted prefill (\(plan.prefillTokens) tokens a pass): \(fixed(plan.prefillPipelined, 0)) tok/s with the expert pipeline (groups per MoE layer: \(plan.pipelineGroups.map(String.init).joined(separator: " "))), \(fixed(plan.prefillUnpipelined, 0)) tok/s without; \(fixed(plan.prefillOverlapped, 0)) tok/s if every transfer overlapped perfectly\n")
            writeOut("Fiddler's kernels on this placement: \(fixed(plan.decodeFiddler, 2)) tok/s decode; predicted gap \(fixed(plan.decodeOverlapped / plan.decodeFiddler, 1))x\n")
        }
    }

    func rtts() throws -> [Double] {
        try rtt.split(separator: ",").map { part in
            guard let v = Double(part.trimmed(" ")) else { throw ValidationError("--rtt: '\(part)' is not a number of milliseconds") }
            return v
        }
    }

    func planTwoTier(config: DecoderConfig, element: WeightElement, machine: HardwareProfile, workers: Int, context: Int) throws {
        let sequenceKV = config.kvLayout.bytes(positions: context)
        var plans: [(rtt: Double, plan: TwoTierPlanner.Plan)] = []
        var inputs: TwoTierPlanner.Inputs?
        for r in try rtts() {
            let i = TwoTierPlanner.Inputs(
                config: config, element: element, hardware: machine, workers: workers, roundTrip: r / 1000, networkBandwidth: networkGbps * 1e9 / 8,
                tier1KVBytes: try tier1KVMemory.map(parseByteSize) ?? 8 * sequenceKV, workerKVBytes: try parseByteSize(workerKVMemory),
                contextLength: context, meanPositions: min(context, meanPositions ?? max(1, context / 2)), sharedCores: sharedCores)
            do { plans.append((r, try TwoTierPlanner.plan(i))) } catch { throw InputError(error.description) }
            inputs = i
        }
        if json {
            for (r, plan) in plans {
                var o = JSONObject()
                o["hardware"] = .string(machine.name)
                o["attention_workers"] = .int(workers)
                o["rtt_ms"] = .double(r)
                o["shared_cores"] = .bool(sharedCores)
                o["batch"] = .int(plan.best.batch)
                o["micro_batches"] = .int(plan.best.microBatches)
                o["littles_law_micro_batches"] = .int(plan.littlesLawMicroBatches)
                o["decode_tokens_per_second"] = .double(plan.best.tokensPerSecond)
                o["single_tier_batch"] = .int(plan.singleTierBatch)
                o["single_tier_decode_tokens_per_second"] = .double(plan.singleTierTokensPerSecond)
                o["wire_bytes_per_token_per_layer"] = .int(plan.wireBytesPerTokenPerLayer)
                o["glinthawk_wire_bytes_per_token_per_layer"] = .int(plan.glinthawkWireBytesPerTokenPerLayer)
                o["curve"] = .array(plan.curve.map { p in
                    var c = JSONObject()
                    c["batch"] = .int(p.batch)
                    c["micro_batches"] = .int(p.microBatches)
                    c["decode_tokens_per_second"] = .double(p.tokensPerSecond)
                    return .object(c)
                })
                writeOut(JSONValue.object(o).serialized() + "\n")
            }
            return
        }
        let first = plans[0].plan
        writeOut("hardware: \(machine.name) — \(machine.description)\n")
        writeOut("two tiers: \(workers) attention worker(s) of \(workerKVMemory) KV memory, \(fixed(networkGbps, 1)) Gbit/s links\(sharedCores ? ", all processes on this machine's cores" : ", separate hosts"); \(context) positions per sequence, \(inputs!.meanPositions) attended on average\n\n")
        writeOut("| batch | " + plans.map { "\(fixed($0.rtt, 1)) ms: micro-batches, tok/s" }.joined(separator: " | ") + " |\n")
        writeOut("| ---: |" + String(repeating: " ---: |", count: plans.count) + "\n")
        for (k, p) in first.curve.enumerated() {
            writeOut("| \(p.batch) | " + plans.map { "\($0.plan.curve[k].microBatches), \(fixed($0.plan.curve[k].tokensPerSecond, 1))" }.joined(separator: " | ") + " |\n")
        }
        writeOut("\n")
        for (r, plan) in plans {
            writeOut("\(fixed(r, 1)) ms: best batch \(plan.best.batch) with \(plan.best.microBatches) micro-batches in flight, \(fixed(plan.best.tokensPerSecond, 1)) tok/s (Little's law: \(plan.littlesLawMicroBatches))\n")
        }
        writeOut("single tier, batch \(first.singleTierBatch) (what the tier-1 KV memory holds): \(fixed(first.singleTierTokensPerSecond, 1)) tok/s; two tiers \(fixed(first.best.tokensPerSecond / first.singleTierTokensPerSecond, 2))x at \(fixed(plans[0].rtt, 1)) ms\n")
        writeOut("wire bytes per token per layer: \(first.wireBytesPerTokenPerLayer) (Glinthawk, which also ships the residual both ways: \(first.glinthawkWireBytesPerTokenPerLayer))\n")
    }
}
