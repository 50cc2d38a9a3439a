/// What the placement needs to know of an expert host.
public struct HostCapacity: Sendable, Equatable {
    /// Bytes its experts may take.
    public var memory: Int
    /// The experts it holds of its own accord (`--experts`), or nil: it takes what it is assigned.
    public var fixed: Set<ExpertKey>?

    public init(memory: Int, fixed: Set<ExpertKey>?) {
        self.memory = memory
        self.fixed = fixed
    }
}

extension ExpertPlacement {
    /// Which routed experts run on which expert host (a tier between RAM and disk: only tokens
    /// cross the link, never weights). A host with its own set keeps it. The others take, up to
    /// their memory: under a RAM budget, the experts it left on disk, most popular first and dealt
    /// in turn; without
    /// one, an equal share of every layer (tier 1 and each host alike, as EPS-MoE spreads experts
    /// over devices), so each step's experts run on every machine at once.
    /// - Parameters:
    ///   - expertBytes: one expert's bytes on a host (each matrix 64-byte aligned).
    /// - Returns: host index per expert placed on one.
    public func remoteHomes(hosts: [HostCapacity], expertBytes: Int, ramBudget: Int?) -> [ExpertKey: Int] {
        var result: [ExpertKey: Int] = [:]
        for (h, host) in hosts.enumerated() {
            for key in host.fixed ?? [] where homes[key] != nil && homes[key] != .accelerator && result[key] == nil { result[key] = h }
        }
        let assignable = hosts.indices.filter { hosts[$0].fixed == nil }
        guard !assignable.isEmpty, expertBytes > 0 else { return result }
        var room = hosts.map { $0.memory / expertBytes }
        var candidates: [(key: ExpertKey, hosts: [Int])]
        if ramBudget != nil {
            // In turn over the hosts, so each computes a share of every step.
            candidates = experts(on: .disk).filter { result[$0] == nil }.enumerated().map { i, key in
                let first = i % assignable.count
                return (key, Array(assignable[first...] + assignable[..<first]))
            }
        } else {
            // Participant 0 is tier 1; experts are dealt in turn within each layer, the deal
            // starting one further each layer so no participant takes every layer's most popular.
            let participants = assignable.count + 1
            var perLayer: [Int: Int] = [:]
            candidates = []
            for key in order where result[key] == nil && homes[key] != .accelerator {
                let turn = perLayer[key.layer, default: 0]
                perLayer[key.layer] = turn + 1
                let p = (turn + key.layer) % participants
                if p > 0 { candidates.append((key, [assignable[p - 1]] + assignable.filter { $0 != assignable[p - 1] })) }
            }
        }
        for c in candidates {
            guard let h = c.hosts.first(where: { room[$0] > 0 }) else { continue }
            result[c.key] = h
            room[h] -= 1
        }
        return result
    }
}
