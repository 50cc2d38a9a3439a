import Kernels
import Models
import Runtime
import SwitchyardSupport

/// Where a model would live under budgets and how fast it would run there.
public struct Plan: Sendable {
    public var footprint: ModelFootprint
    /// The placement the executor would make with the same budgets.
    public var placement: ExpertPlacement
    public var hardware: HardwareProfile
    public var acceleratorMemory: Int?
    public var ramBudget: Int?
    public var reservedHostBytes: Int
    /// Bytes each tier holds: weights, caches' slots, and (RAM) the reservation; `.remote`, the
    /// experts on expert hosts.
    public var bytesPerTier: [Tier: Int]
    /// Experts on each expert host, and how many experts live on each tier between steps (the
    /// placement's, with those on hosts moved to `.remote`).
    public var expertsOnHosts: [Int]
    public var pinnedExperts: [Tier: Int]
    /// Predicted tokens/s: decode at batch 1 with CPU, accelerator, copies and disk reads
    /// overlapped within each layer (and summed, as Fiddler's code runs them); prefill of
    /// `prefillTokens` tokens, overlapped.
    public var decodeOverlapped: Double
    public var decodeSummed: Double
    public var prefillOverlapped: Double
    public var prefillTokens: Int
    /// Prefill with EPS-MoE's expert pipeline (each layer's moved experts in the groups it would
    /// choose), without it (each layer's movement before its moved experts compute), and the
    /// groups chosen per MoE layer.
    public var prefillPipelined: Double
    public var prefillUnpipelined: Double
    public var pipelineGroups: [Int]
    /// Fiddler's own rates on this placement (its CPU kernels and pageable copies, summed).
    public var decodeFiddler: Double
}

public enum Planner {
    /// Places a model from its config alone, with the executor's placement, and predicts its speed
    /// with the executor's copy-or-compute rule (`LayerScheduler`) over costs predicted from
    /// `hardware`. An expert cache is taken to hold the most popular experts not pinned (the steady
    /// state of its frequency-based admission).
    /// - Parameters:
    ///   - element: how the weights are stored (bf16 for most checkpoints).
    ///   - contextLength: KV cache positions the RAM budget must hold.
    ///   - popularity: [layer][expert] share of routed tokens (a routing profile); uniform when nil.
    ///   - hosts: expert hosts (each one's memory), reached with `hostRoundTrip` seconds of round
    ///     trip and `hostBandwidth` bytes per second; their kernels are taken to be this CPU's.
    public static func plan(
        _ c: DecoderConfig, element: WeightElement, hardware: HardwareProfile, acceleratorMemory: Int?, ramBudget: Int?,
        contextLength: Int, popularity: [[Double]]? = nil, policy: ExpertPolicy = .scheduled, prefillTokens: Int = 512,
        hosts: [HostCapacity] = [], hostRoundTrip: Double = 0, hostBandwidth: Double = 0, expertElement: WeightElement? = nil
    ) throws(OrchestrationError) -> Plan {
        let footprint = ModelFootprint(config: c, element: element, expertElement: expertElement)
        var options = TierOptions()
        options.ramBudget = ramBudget
        options.reservedHostBytes = TierOptions.hostReservation(c, positions: contextLength)
        options.policy = policy
        options.popularity = popularity
        let placement = try ExpertPlacement.place(footprint, options.budgets(acceleratorMemory: acceleratorMemory))
        let hasAccelerator = acceleratorMemory != nil && hardware.acceleratorMemory > 0

        let expertBytes = footprint.expertBytes
        let expertFlops = 2 * Double(footprint.expertParameters)
        let counts = CostModel.measuredTokenCounts
        func time(_ n: Int, flops: Double, bandwidth: Double) -> Double {
            max(Double(n) * expertFlops / flops, Double(expertBytes) / bandwidth)
        }
        var costs = CostModel(
            key: "predicted for \(hardware.name)", tokenCounts: counts,
            cpuSeconds: counts.map { time($0, flops: hardware.cpuFlops, bandwidth: hardware.cpuBandwidth) },
            acceleratorSeconds: hasAccelerator ? counts.map { time($0, flops: hardware.acceleratorFlops, bandwidth: hardware.acceleratorBandwidth) } : [],
            copyBytesPerSecond: hasAccelerator ? hardware.linkBandwidth : 0, diskBytesPerSecond: hardware.diskBandwidth,
            expertBytes: expertBytes)

        costs.remoteRoundTrip = hostRoundTrip
        costs.remoteBytesPerSecond = hostBandwidth
        costs.tokenRowBytes = c.hiddenSize * 4

        // Where each expert effectively is: on the hosts the executor would place it on; caches
        // hold the most popular experts not pinned.
        var effective = placement.homes
        let onHost = footprint.expertBytes > 0 ? footprint.expertMatrixBytes.reduce(0) { $0 + (($1 + 63) & ~63) } : 0
        let remote = placement.remoteHomes(hosts: hosts, expertBytes: onHost, ramBudget: ramBudget)
        for key in remote.keys { effective[key] = .remote }
        var acceleratorCache = policy == .cpu || policy == .naive ? 0 : placement.acceleratorCacheSlots
        var ramCache = placement.ramCacheSlots
        for key in placement.order {
            switch effective[key] {
            case .ram? where acceleratorCache > 0 && policy == .copy:
                effective[key] = .accelerator
                acceleratorCache -= 1
            case .disk? where ramCache > 0:
                effective[key] = .ram
                ramCache -= 1
            default: break
            }
        }
        func share(_ key: ExpertKey) -> Double {
            guard let p = popularity, key.layer < p.count, key.expert < p[key.layer].count else {
                return 1 / Double(max(1, footprint.expertsPerLayer[key.layer]))
            }
            return p[key.layer][key.expert]
        }

        // Per layer: the always-touched tensors where they were placed, then the experts.
        let T = Double(prefillTokens)
        let acceleratorFlops = hasAccelerator ? hardware.acceleratorFlops : hardware.cpuFlops
        var denseDecode = [Double](repeating: 0, count: footprint.expertsPerLayer.count + 1)
        var densePrefill = denseDecode
        var denseFiddler = 0.0
        for (t, onAccelerator) in zip(footprint.always, placement.alwaysOnAccelerator) where t.name != "embedding" {
            let layer = t.name.hasPrefix("layer ") ? Int(t.name.split(separator: " ")[1])! : footprint.expertsPerLayer.count
            let read = Double(t.bytes) / (onAccelerator && hasAccelerator ? hardware.acceleratorBandwidth : hardware.cpuBandwidth)
            denseDecode[layer] += read
            densePrefill[layer] += max(T * 2 * Double(t.parameters) / (onAccelerator ? acceleratorFlops : hardware.cpuFlops), read)
            denseFiddler += onAccelerator && hasAccelerator ? read : Double(t.bytes) / HardwareProfile.fiddlerCPUBandwidth
        }
        var decodeOverlapped = denseDecode.reduce(0, +), decodeSummed = decodeOverlapped
        var prefill = densePrefill.reduce(0, +)
        var pipelined = prefill, unpipelined = prefill
        var groups: [Int] = []
        var fiddler = denseFiddler
        for (layer, n) in footprint.expertsPerLayer.enumerated() where n > 0 {
            let keys = (0..<n).map { ExpertKey(layer: layer, expert: $0) }
            let k = Double(footprint.expertsPerToken[layer])
            // Decode: each expert runs with one token with probability k x its share.
            var cpu = 0.0, accelerator = 0.0, link = 0.0, disk = 0.0, onHosts = 0.0, hostShare = 0.0
            for key in keys {
                let p = min(1, k * share(key))
                let tier = effective[key] ?? .ram
                let d = LayerScheduler.decide(tokens: [1], locations: [tier], costs: costs, policy: policy, hasAccelerator: hasAccelerator,
                                              copySlots: placement.acceleratorCacheSlots > 0 ? 1 : 0, remoteHosts: max(1, hosts.count))
                cpu += p * d.cpu; accelerator += p * d.accelerator; link += p * d.link; disk += p * d.disk
                // A host's round trip is paid once per layer that sends it anything.
                if tier == .remote { onHosts += p * (d.remote - costs.remoteRoundTrip); hostShare += p }
                switch tier {
                case .accelerator: fiddler += p * costs.accelerator(tokens: 1)
                case .ram: fiddler += p * Double(expertBytes) / HardwareProfile.fiddlerCPUBandwidth
                case .disk, .remote: fiddler += p * (costs.diskSeconds + Double(expertBytes) / HardwareProfile.fiddlerCPUBandwidth)
                }
            }
            onHosts += costs.remoteRoundTrip * min(1, hostShare)
            decodeOverlapped += max(cpu, accelerator, link, disk, onHosts)
            decodeSummed += cpu + accelerator + link + disk + onHosts
            // Prefill: each expert takes its expected share of the T tokens.
            let tokens = keys.map { Int((T * k * share($0)).rounded()) }
            let active = keys.indices.filter { tokens[$0] > 0 }
            let d = LayerScheduler.decide(tokens: active.map { tokens[$0] }, locations: active.map { effective[keys[$0]] ?? .ram },
                                          costs: costs, policy: policy, hasAccelerator: hasAccelerator,
                                          copySlots: placement.acceleratorCacheSlots, remoteHosts: max(1, hosts.count))
            prefill += d.makespan
            // The pipeline as the executor would choose it for this layer.
            let (pipeline, _) = ExpertPipeline.forLayer(d, tokens: active.map { tokens[$0] }, costs: costs, hosts: hosts.count,
                                                        slots: placement.ramCacheSlots, setting: .auto)
            pipelined += pipeline.predicted
            unpipelined += pipeline.unpipelined
            groups.append(pipeline.overlapped ? pipeline.groups : 1)
        }

        let slotOnAccelerator = footprint.expertBytes > 0 ? ExpertPlacement.acceleratorSlotBytes(footprint.expertMatrixBytes) : 0
        let slotInRAM = footprint.expertBytes > 0 ? ExpertPlacement.ramSlotBytes(footprint.expertMatrixBytes) : 0
        var bytes: [Tier: Int] = [:]
        bytes[.accelerator] = placement.acceleratorTensorBytes
            + (placement.experts(on: .accelerator).count + placement.acceleratorCacheSlots) * slotOnAccelerator
        bytes[.ram] = placement.alwaysHostBytes + options.reservedHostBytes + placement.experts(on: .ram).filter { remote[$0] == nil }.count * expertBytes
            + placement.ramCacheSlots * slotInRAM
        bytes[.disk] = placement.experts(on: .disk).filter { remote[$0] == nil }.count * expertBytes
        bytes[.remote] = remote.count * expertBytes
        return Plan(
            footprint: footprint, placement: placement, hardware: hardware, acceleratorMemory: acceleratorMemory, ramBudget: ramBudget,
            reservedHostBytes: options.reservedHostBytes, bytesPerTier: bytes,
            expertsOnHosts: hosts.indices.map { h in remote.values.filter { $0 == h }.count },
            pinnedExperts: Dictionary(grouping: placement.order) { remote[$0] == nil ? placement.homes[$0] ?? .ram : .remote }.mapValues(\.count),
            decodeOverlapped: 1 / max(decodeOverlapped, 1e-9), decodeSummed: 1 / max(decodeSummed, 1e-9),
            prefillOverlapped: T / max(prefill, 1e-9), prefillTokens: prefillTokens,
            prefillPipelined: T / max(pipelined, 1e-9), prefillUnpipelined: T / max(unpipelined, 1e-9), pipelineGroups: groups,
            decodeFiddler: 1 / max(fiddler, 1e-9))
    }
}
