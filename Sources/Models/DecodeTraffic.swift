import Kernels
import SwitchyardSupport

extension Model {
    /// Weight bytes one decoded token reads at batch 1: everything every token touches (attention,
    /// routers, shared experts, dense MLPs, the output head, one embedding row), plus top-k experts
    /// in each MoE layer. Norms and biases are small and not counted.
    public var weightBytesPerToken: Int {
        func bytes(_ m: WeightMatrix) -> Int { m.rows * m.rowBytes }
        var total = weights.lmHead.rows * weights.lmHead.rowBytes + weights.embedding.rowBytes
        for (layer, kind) in zip(weights.layers, config.feedForward) {
            let a = layer.attention
            total += bytes(a.query) + bytes(a.key) + bytes(a.value) + bytes(a.output)
            switch layer.feedForward {
            case .dense(let f):
                total += bytes(f.gate) + bytes(f.up) + bytes(f.down)
            case .mixtureOfExperts(let m):
                total += bytes(m.router)
                if let e = m.experts.first {
                    total += (kind.moe?.expertsPerToken ?? 0) * (bytes(e.gate) + bytes(e.up) + bytes(e.down))
                }
                if let s = m.sharedExpert { total += bytes(s.gate) + bytes(s.up) + bytes(s.down) }
                if let g = m.sharedExpertGate { total += bytes(g) }
            }
        }
        return total
    }
}
