import Runtime

/// How the experts that are not resident on the accelerator are handled.
public enum ExpertPolicy: String, Sendable, CaseIterable {
    /// Per layer and step, run each where its weights are or copy it to the accelerator, whichever
    /// gives the layer the smallest makespan with CPU work, accelerator work, copies and disk reads
    /// overlapped; cache and prefetch.
    case scheduled
    /// Always run them on the CPU (cache and prefetch for the disk tier still work).
    case cpu
    /// Always copy them to the accelerator and run them there.
    case copy
    /// The baseline: a fixed placement filling the budgets; an expert missing from RAM is read
    /// from disk when needed into one buffer and run on the CPU; no cache, no prefetch.
    case naive
}

/// What the scheduler decided for one expert of a layer.
public enum ExpertAction: String, Sendable {
    case accelerator          // resident there: run there
    case cpu                  // in RAM: run on the CPU
    case copyToAccelerator    // in RAM: copy, then run on the accelerator
    case readThenCPU          // on disk: read into RAM, run on the CPU
    case readThenCopy         // on disk: read into RAM, copy, run on the accelerator
    case remote               // on an expert host: send its tokens there, take the outputs back

    /// Whether the expert computes on the accelerator.
    public var runsOnAccelerator: Bool { self == .accelerator || self == .copyToAccelerator || self == .readThenCopy }
}

/// The copy-or-compute rule, once for the engine: a pure function of token counts, locations and
/// costs. Execution calls it at every MoE layer of every step with measured costs; prefetch calls
/// it to decide whether a predicted expert is worth copying; `plan` calls it with costs predicted
/// from a hardware profile.
public enum LayerScheduler {
    public struct Decision: Sendable {
        public var actions: [ExpertAction]
        /// When each resource would finish: the layer's predicted makespan is the largest. `remote`
        /// is the expert hosts' share, spread over the hosts: a round trip, then their transfers and
        /// their kernels overlapped as the other resources are (the expert pipeline's limit).
        public var cpu = 0.0, accelerator = 0.0, link = 0.0, disk = 0.0, remote = 0.0
        public var makespan: Double { max(cpu, accelerator, link, disk, remote) }
    }

    /// - Parameters:
    ///   - locations: where each expert's weights are now (accelerator, ram or disk).
    ///   - copySlots: how many experts the accelerator's cache can take this layer.
    ///   - remoteHosts: expert hosts the remote experts are spread over.
    public static func decide(
        tokens: [Int], locations: [Tier], costs: CostModel, policy: ExpertPolicy,
        hasAccelerator: Bool, copySlots: Int, remoteHosts: Int = 1
    ) -> Decision {
        var d = Decision(actions: Array(repeating: .cpu, count: tokens.count))
        var transfer = 0.0, kernels = 0.0
        for i in tokens.indices where locations[i] == .remote {
            d.actions[i] = .remote
            transfer += costs.remoteTransfer(tokens: tokens[i])
            kernels += costs.cpu(tokens: tokens[i]) * costs.remoteComputeScale
        }
        if transfer + kernels > 0 { d.remote = costs.remoteRoundTrip + max(transfer, kernels) / Double(max(1, remoteHosts)) }
        var slots = copySlots
        // Largest first: the big decisions are made while every resource is still free.
        let order = tokens.indices.sorted { tokens[$0] > tokens[$1] || (tokens[$0] == tokens[$1] && $0 < $1) }
        for i in order where locations[i] != .remote {
            let n = tokens[i]
            let c = costs.cpu(tokens: n)
            if locations[i] == .accelerator {
                d.actions[i] = .accelerator
                d.accelerator += costs.accelerator(tokens: n)
                continue
            }
            let onDisk = locations[i] == .disk
            if policy == .naive {
                // Read, then compute, one after the other on the CPU's timeline.
                d.cpu += (onDisk ? costs.diskSeconds : 0) + c
                d.disk = max(d.disk, d.cpu)
                d.actions[i] = onDisk ? .readThenCPU : .cpu
                continue
            }
            let ready = onDisk ? d.disk + costs.diskSeconds : 0
            var viaCPU = d
            viaCPU.disk = onDisk ? ready : d.disk
            viaCPU.cpu = max(d.cpu, ready) + c
            viaCPU.actions[i] = onDisk ? .readThenCPU : .cpu
            var viaCopy = viaCPU
            let canCopy = hasAccelerator && slots > 0
            if canCopy {
                viaCopy = d
                viaCopy.disk = onDisk ? ready : d.disk
                viaCopy.link = max(d.link, ready) + costs.copySeconds
                viaCopy.accelerator = max(d.accelerator, viaCopy.link) + costs.accelerator(tokens: n)
                viaCopy.actions[i] = onDisk ? .readThenCopy : .copyToAccelerator
            }
            let copy: Bool
            switch policy {
            case .copy: copy = canCopy
            case .scheduled: copy = canCopy && viaCopy.makespan < viaCPU.makespan
            case .cpu, .naive: copy = false
            }
            d = copy ? viaCopy : viaCPU
            if copy { slots -= 1 }
        }
        return d
    }

    /// Whether one expert in host memory with `tokens` tokens would be copied to the accelerator
    /// (the rule above for a layer of that expert alone).
    public static func wouldCopy(tokens: Int, costs: CostModel, policy: ExpertPolicy) -> Bool {
        decide(tokens: [tokens], locations: [.ram], costs: costs, policy: policy, hasAccelerator: true, copySlots: 1)
            .actions[0] == .copyToAccelerator
    }
}
