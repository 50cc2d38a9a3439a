import Models
import Runtime
import SwitchyardJSON
import SwitchyardSupport

/// How often each (layer, expert) is chosen, and which experts follow which from one MoE layer to
/// the next: what the planner uses to keep the most popular experts in fast memory and what the
/// prefetcher learns from.
public struct RoutingProfile: Sendable, Equatable {
    public var modelType: String
    /// Tokens routed (each chose `expertsPerToken` experts in every MoE layer).
    public var tokens = 0
    /// [layer][expert]: how many tokens chose the expert; all zero for dense layers.
    public var counts: [[Int]]
    /// [layer][expert in this layer][expert in the next MoE layer]: co-occurrences along tokens.
    public var transitions: [[[Int]]]

    public init(model: Model) {
        let c = model.config
        let experts = c.feedForward.map { $0.moe?.expertCount ?? 0 }
        modelType = c.modelType
        counts = experts.map { [Int](repeating: 0, count: $0) }
        transitions = experts.enumerated().map { (layer, n) in
            let next = experts[(layer + 1)...].first { $0 > 0 } ?? 0
            return [[Int]](repeating: [Int](repeating: 0, count: next), count: next > 0 ? n : 0)
        }
    }

    /// Share of routed choices each expert of `layer` received.
    public func shares(layer: Int) -> [Double] {
        let total = counts[layer].reduce(0, +)
        return counts[layer].map { total > 0 ? Double($0) / Double(total) : 0 }
    }

    public var json: JSONValue {
        var o = JSONObject()
        o["model_type"] = .string(modelType)
        o["tokens"] = .int(tokens)
        o["counts"] = .array(counts.map { .array($0.map { .int($0) }) })
        o["transitions"] = .array(transitions.map { .array($0.map { .array($0.map { .int($0) }) }) })
        return .object(o)
    }

    public init(json: JSONValue, file: String) throws(ModelError) {
        func ints(_ v: JSONValue?) -> [Int]? { v?.arrayValue?.compactMap(\.intValue) }
        guard let type = json["model_type"]?.stringValue, let tokens = json["tokens"]?.intValue,
            let counts = json["counts"]?.arrayValue?.compactMap({ ints($0) }),
            let transitions = json["transitions"]?.arrayValue?.map({ $0.arrayValue?.compactMap { ints($0) } ?? [] })
        else { throw ModelError("\(file): not a routing profile (model_type, tokens, counts, transitions)") }
        modelType = type
        self.tokens = tokens
        self.counts = counts
        self.transitions = transitions
    }
}

/// Adds the routing of every step run with `workspace` to a profile.
public final class RoutingRecorder {
    public private(set) var profile: RoutingProfile
    private var previous: (layer: Int, chosen: [[Int]])?

    public init(model: Model, workspace: Workspace) {
        profile = RoutingProfile(model: model)
        workspace.routingObserver = { [unowned self] layer, chosen in self.record(layer, chosen) }
    }

    func record(_ layer: Int, _ chosen: [[Int]]) {
        if layer <= (previous?.layer ?? -1) {
            previous = nil  // a new step starts at the first MoE layer
        }
        if previous == nil { profile.tokens += chosen.count }
        for experts in chosen { for e in experts { profile.counts[layer][e] += 1 } }
        if let (p, before) = previous, before.count == chosen.count, !profile.transitions[p].isEmpty {
            for (from, to) in zip(before, chosen) {
                for a in from { for b in to { profile.transitions[p][a][b] += 1 } }
            }
        }
        previous = (layer, chosen)
    }
}
