import Kernels
import SwitchyardSupport

/// The experts a token is routed to, in rank order, with their mixing weights.
public struct Routing: Sendable, Equatable {
    public var experts: [Int]
    public var weights: [Float]
}

/// Routes one token: gates the router's logits (softmax or sigmoid), chooses `k` experts by the
/// gated scores plus the selection bias if any (within the best groups when selection is
/// group-limited), and weighs each chosen expert by its gated score, normalised and scaled as
/// `config` says. Ties go to the lower index, as torch.topk does on the CPU. The one routing
/// function of every MoE architecture, as llama.cpp's `build_moe_ffn` is parameterised.
/// - Parameter selectionBias: [experts], added to the scores for choosing only.
public func route(
    logits: UnsafePointer<Float>, expertCount: Int, k: Int, config: RouterConfig, selectionBias: UnsafePointer<Float>? = nil
) -> Routing {
    var scores = Array(UnsafeBufferPointer(start: logits, count: expertCount))
    switch config.gating {
    case .softmax: scores.withUnsafeMutableBufferPointer { softmax($0.baseAddress!, expertCount) }
    case .sigmoid: for i in scores.indices { scores[i] = 1 / (1 + expf(-scores[i])) }
    }
    var choosing = scores
    if let selectionBias { for i in choosing.indices { choosing[i] += selectionBias[i] } }
    var taken = [Bool](repeating: false, count: expertCount)
    if case .groupLimited(let groups, let topGroups, let scoring) = config.selection, groups > 1 {
        // Experts outside the best groups are out of the running: marked taken.
        let size = expertCount / groups
        let groupScores = (0..<groups).map { g -> Float in
            let members = choosing[(g * size)..<((g + 1) * size)]
            switch scoring {
            case .max: return members.max() ?? -.infinity
            case .topTwoSum: return members.sorted(by: >).prefix(2).reduce(0, +)
            }
        }
        let kept = Set(bestIndices(groupScores, count: topGroups))
        for e in 0..<expertCount where !kept.contains(e / size) { taken[e] = true }
    }
    var chosen: [Int] = []
    chosen.reserveCapacity(k)
    for _ in 0..<k {
        var best = -1
        for e in 0..<expertCount where !taken[e] && (best < 0 || choosing[e] > choosing[best]) { best = e }
        guard best >= 0 else { break }
        taken[best] = true
        chosen.append(best)
    }
    var weights = chosen.map { scores[$0] }
    if config.normalize {
        let sum = weights.reduce(0, +)
        weights = weights.map { $0 / sum }
    }
    if config.scale != 1 { weights = weights.map { $0 * config.scale } }
    return Routing(experts: chosen, weights: weights)
}

/// Indices of the `count` largest values, largest first, ties to the lower index.
func bestIndices(_ values: [Float], count: Int) -> [Int] {
    var taken = [Bool](repeating: false, count: values.count)
    var out: [Int] = []
    for _ in 0..<min(count, values.count) {
        var best = -1
        for i in values.indices where !taken[i] && (best < 0 || values[i] > values[best]) { best = i }
        taken[best] = true
        out.append(best)
    }
    return out
}
