import ArgumentParser
import Engine
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

    @Option(name: .customLong("context-length"), help: "KV cache positions the RAM budget must hold (default: min(4096, the model's maximum)).")
    var contextLength: Int?

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        try checkRange(contextLength, "--context-length", 1...positionLimit)
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
            let plan = try Planner.plan(config, element: element, hardware: machine, acceleratorMemory: accelerator, ramBudget: ram,
                                        contextLength: context, popularity: popularity, policy: expertPolicy)
            let p = plan.placement
            let experts: [String: Int] = [
                "accelerator_pinned": p.experts(on: .accelerator).count, "accelerator_cache_slots": p.acceleratorCacheSlots,
                "ram_pinned": p.experts(on: .ram).count, "ram_cache_slots": p.ramCacheSlots, "disk": p.experts(on: .disk).count,
            ]
            let tiers: [Tier] = [.accelerator, .ram, .disk]
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
                writeOut(JSONValue.object(o).serialized() + "\n")
                return
            }
            let profileNote = popularity == nil ? "experts placed uniformly (no --profile)" : "experts placed by popularity from \(profile!)"
            writeOut("hardware: \(machine.name) — \(machine.description)\n")
            writeOut("budgets: accelerator \(accelerator.map { formatBytes($0, digits: 2) } ?? "none"), RAM \(formatBytes(ram, digits: 2)); weights \(element); \(profileNote)\n\n")
            let onAccelerator = p.alwaysOnAccelerator.filter { $0 }.count
            let eligible = plan.footprint.always.filter(\.acceleratorEligible).count
            writeOut("| what | size | where |\n| --- | ---: | --- |\n")
            writeOut("| what every token touches: \(onAccelerator) of the \(eligible) tensors that may go there | \(formatBytes(p.acceleratorTensorBytes, digits: 2)) | accelerator |\n")
            writeOut("| what every token touches: the embedding and routers\(onAccelerator < eligible ? ", and what did not fit" : "") | \(formatBytes(p.alwaysHostBytes, digits: 2)) | ram |\n")
            writeOut("| KV cache (\(context) positions, f32) and work memory | \(formatBytes(plan.reservedHostBytes, digits: 2)) | ram |\n")
            let expertSize = plan.footprint.expertBytes
            for (label, count, tier) in [("experts pinned", experts["accelerator_pinned"]!, "accelerator"), ("expert cache slots", experts["accelerator_cache_slots"]!, "accelerator"),
                                          ("experts pinned", experts["ram_pinned"]!, "ram"), ("expert cache slots", experts["ram_cache_slots"]!, "ram"),
                                          ("experts", experts["disk"]!, "disk")] where count > 0 {
                writeOut("| \(label) (\(count) x \(formatBytes(expertSize, digits: 2))) | \(formatBytes(count * expertSize, digits: 2)) | \(tier) |\n")
            }
            writeOut("\nmemory: " + tiers.map { "\($0.rawValue) \(formatBytes(plan.bytesPerTier[$0] ?? 0, digits: 2))" }.joined(separator: ", ") + "\n")
            writeOut("predicted decode: \(fixed(plan.decodeOverlapped, 1)) tok/s with CPU, accelerator, copies and reads overlapped (\(fixed(plan.decodeSummed, 1)) if summed)\n")
            writeOut("predicted prefill (\(plan.prefillTokens) tokens): \(fixed(plan.prefillOverlapped, 0)) tok/s\n")
            writeOut("Fiddler's kernels on this placement: \(fixed(plan.decodeFiddler, 2)) tok/s decode; predicted gap \(fixed(plan.decodeOverlapped / plan.decodeFiddler, 1))x\n")
        }
    }
}
