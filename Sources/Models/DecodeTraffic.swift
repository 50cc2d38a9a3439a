import Kernels
import Runtime
import SwitchyardSupport

extension Model {
    /// Weight bytes one decoded token reads at batch 1: everything every token touches (attention,
    /// routers, shared experts, dense MLPs, the output head, one embedding row), plus top-k experts
    /// in each MoE layer. Norms and biases are small and not counted.
    public var weightBytesPerToken: Int {
        func bytes(_ m: WeightMatrix) -> Int { m.byteCount }
        var total = weights.lmHead.byteCount + weights.embedding.rowBytes
        for (layer, kind) in zip(weights.layers, config.feedForward) {
            total += layer.attention.decodeBytes
            switch layer.feedForward {
            case .dense(let f):
                total += f.byteCount
            case .mixtureOfExperts(let m):
                total += bytes(m.router)
                if let e = m.experts.first {
                    total += (kind.moe?.expertsPerToken ?? 0) * e.byteCount
                }
                if let s = m.sharedExpert { total += s.byteCount }
                if let g = m.sharedExpertGate { total += bytes(g) }
            }
        }
        return total
    }
}
