import Runtime
import SwitchyardSupport
import WeightFiles

/// Where everything lives between steps: the one placement algorithm, which `plan` and the
/// executor both call (a test holds them equal). What every token touches goes to the accelerator
/// first, tensor by tensor as far as it fits; then routed experts, most popular first (equal
/// shares alternate layers, so no layer is left all slow): a share of the accelerator's remaining
/// room is pinned with experts and the rest becomes its expert cache; under a RAM budget, host
/// memory holds what every token touches, the reserved bytes (KV cache, work memory) and then
/// pinned experts and a RAM cache for experts read from disk; every other expert stays on disk
/// (none when the budget holds them all).
public struct ExpertPlacement: Sendable, Equatable {
    public struct Budgets: Sendable {
        /// The accelerator's memory (nil: none), and how much of it is already in use.
        public var acceleratorMemory: Int?
        public var acceleratorUsed = 0
        /// Host RAM for weights, KV cache and work memory (nil: every weight stays mapped).
        public var ramBudget: Int?
        /// Host memory the RAM budget must also hold besides weights (KV cache, work buffers).
        public var reservedHostBytes = 0
        public var policy: ExpertPolicy = .scheduled
        /// Share of each tier's room for experts that is pinned (the rest is its cache). Without a
        /// routing profile the RAM tier pins nothing (its cache learns the popular experts); the
        /// accelerator pins this share regardless, since decode rarely pays for a copy.
        public var pinnedFraction = 0.5
        /// [layer][expert] share of routed tokens (a routing profile); uniform when nil.
        public var popularity: [[Double]]?

        public init() {}
    }

    /// Per tensor of the footprint's `always`: whether it lives on the accelerator.
    public var alwaysOnAccelerator: [Bool]
    /// Accelerator memory the always-touched tensors take (alignment included; 0 when none went).
    public var acceleratorTensorBytes: Int
    /// Host bytes of the always-touched tensors that did not go to the accelerator.
    public var alwaysHostBytes: Int
    /// Every routed expert, most popular first.
    public var order: [ExpertKey]
    /// Each expert's home between steps: pinned on the accelerator, pinned in RAM, or on disk.
    public var homes: [ExpertKey: Tier]
    public var acceleratorCacheSlots: Int
    public var ramCacheSlots: Int
    /// The naive policy reads experts missing from RAM into one staging buffer.
    public var stagingBuffer: Bool

    public func experts(on tier: Tier) -> [ExpertKey] { order.filter { homes[$0] == tier } }

    /// An accelerator slot: the three matrices back to back, each 64-byte aligned.
    public static func acceleratorSlotOffsets(_ matrixBytes: [Int]) -> [Int] {
        var offsets: [Int] = [], at = 0
        for b in matrixBytes {
            offsets.append(at)
            at = (at + b + 63) & ~63
        }
        return offsets + [at]
    }

    public static func acceleratorSlotBytes(_ matrixBytes: [Int]) -> Int { acceleratorSlotOffsets(matrixBytes).last! }

    /// A RAM slot for an expert read from disk: each matrix gets the aligned span a direct read needs.
    public static func ramSlotOffsets(_ matrixBytes: [Int]) -> [Int] {
        var offsets: [Int] = [], at = 0
        for b in matrixBytes {
            offsets.append(at)
            at += DirectReader.span(b)
        }
        return offsets + [at]
    }

    public static func ramSlotBytes(_ matrixBytes: [Int]) -> Int { ramSlotOffsets(matrixBytes).last! }

    public static func place(_ footprint: ModelFootprint, _ budgets: Budgets) throws(OrchestrationError) -> ExpertPlacement {
        // What every token touches: to the accelerator as far as each tensor fits, in order.
        var used = budgets.acceleratorUsed
        var onAccelerator: [Bool] = []
        var movedBytes = 0, hostBytes = 0
        for t in footprint.always {
            let start = (used + 63) & ~63
            if t.acceleratorEligible, let capacity = budgets.acceleratorMemory, start + t.bytes <= capacity {
                used = start + t.bytes
                movedBytes += t.bytes
                onAccelerator.append(true)
            } else {
                hostBytes += t.bytes
                onAccelerator.append(false)
            }
        }

        // Experts, most popular first; equal shares alternate layers so no layer is left all slow.
        var order: [ExpertKey] = []
        for (l, n) in footprint.expertsPerLayer.enumerated() { for e in 0..<n { order.append(ExpertKey(layer: l, expert: e)) } }
        let popularity = budgets.popularity
        func share(_ k: ExpertKey) -> Double {
            guard let p = popularity, k.layer < p.count, k.expert < p[k.layer].count else { return 1 }
            return p[k.layer][k.expert]
        }
        order.sort { a, b in
            let sa = share(a), sb = share(b)
            if sa != sb { return sa > sb }
            return (a.expert, a.layer) < (b.expert, b.layer)
        }
        var homes: [ExpertKey: Tier] = [:]
        var remaining = order[...]
        let hasExperts = !order.isEmpty && footprint.expertBytes > 0

        var acceleratorSlots = 0
        if let capacity = budgets.acceleratorMemory, hasExperts {
            let slotBytes = acceleratorSlotBytes(footprint.expertMatrixBytes)
            let room = max(0, capacity - ((used + 63) & ~63)) / slotBytes
            let fraction = budgets.policy == .naive || budgets.policy == .cpu ? 1.0 : budgets.pinnedFraction
            // Everything fits: all pinned, no cache needed.
            let pinned = room >= remaining.count ? remaining.count : Int((Double(room) * fraction).rounded(.down))
            for key in remaining.prefix(pinned) { homes[key] = .accelerator }
            remaining = remaining.dropFirst(pinned)
            acceleratorSlots = min(room - pinned, remaining.count)
        }

        var ramSlots = 0
        var staging = false
        if let budget = budgets.ramBudget {
            let always = hostBytes + budgets.reservedHostBytes
            let slotBytes = hasExperts ? ramSlotBytes(footprint.expertMatrixBytes) : 0
            guard budget >= always + slotBytes else {
                throw OrchestrationError("--ram-budget \(formatBytes(budget)) is too small: what every token touches (\(formatBytes(hostBytes)) of weights) and the KV cache and work memory (\(formatBytes(budgets.reservedHostBytes))) take \(formatBytes(always))" + (hasExperts ? ", and at least one expert (\(formatBytes(slotBytes))) must fit beside them" : ""))
            }
            if hasExperts {
                let room = (budget - always) / slotBytes
                var pinned: Int
                if room >= remaining.count {
                    pinned = remaining.count  // everything fits: no disk tier
                } else if budgets.policy == .naive {
                    pinned = room - 1  // and one staging buffer
                } else {
                    let fraction = budgets.popularity == nil && budgets.policy != .cpu ? 0 : budgets.pinnedFraction
                    pinned = min(remaining.count, Int((Double(room) * fraction).rounded(.down)))
                    if pinned == room && pinned > 0 && pinned < remaining.count { pinned -= 1 }  // keep a cache slot
                }
                for key in remaining.prefix(pinned) { homes[key] = .ram }
                remaining = remaining.dropFirst(pinned)
                for key in remaining { homes[key] = .disk }
                if budgets.policy == .naive {
                    staging = !remaining.isEmpty
                } else {
                    ramSlots = min(room - pinned, remaining.count)
                }
            }
        } else {
            for key in remaining { homes[key] = .ram }
        }
        return ExpertPlacement(
            alwaysOnAccelerator: onAccelerator, acceleratorTensorBytes: movedBytes > 0 ? used : 0, alwaysHostBytes: hostBytes,
            order: order, homes: homes, acceleratorCacheSlots: acceleratorSlots, ramCacheSlots: ramSlots, stagingBuffer: staging)
    }
}
