import Kernels

/// A SwiGLU feed-forward network: down(silu(gate(x)) * up(x)). A routed expert, a shared expert
/// or a dense layer's MLP.
public struct FeedForwardWeights: Sendable {
    public var gate: WeightMatrix  // [intermediate, hidden]
    public var up: WeightMatrix    // [intermediate, hidden]
    public var down: WeightMatrix  // [hidden, intermediate]

    public var intermediateSize: Int { gate.rows }
    /// The three matrices, in the order tiers store and copy them.
    public var matrices: [WeightMatrix] { [gate, up, down] }
    public var byteCount: Int { gate.byteCount + up.byteCount + down.byteCount }

    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) {
        self.gate = gate
        self.up = up
        self.down = down
    }

    /// The network from its three matrices in `matrices` order.
    public init(_ matrices: [WeightMatrix]) {
        precondition(matrices.count == 3)
        self.init(gate: matrices[0], up: matrices[1], down: matrices[2])
    }
}
