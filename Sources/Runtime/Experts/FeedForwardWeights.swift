import Kernels

/// A SwiGLU feed-forward network: down(silu(gate(x)) * up(x)). A routed expert, a shared expert
/// or a dense layer's MLP.
public struct FeedForwardWeights: Sendable {
    public var gate: WeightMatrix  // [intermediate, hidden]
    public var up: WeightMatrix    // [intermediate, hidden]
    public var down: WeightMatrix  // [hidden, intermediate]
    /// Biases of the three products (GPT-OSS's experts), small: widened to f32 at load.
    public var biases: FeedForwardBiases?
    public var activation = GatedActivation.swiGLU

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

    /// The same network (biases, activation) over `matrices`, in `matrices` order.
    public func withMatrices(_ matrices: [WeightMatrix]) -> FeedForwardWeights {
        precondition(matrices.count == 3)
        var f = self
        f.gate = matrices[0]
        f.up = matrices[1]
        f.down = matrices[2]
        return f
    }

    /// The same network with each matrix replaced by `transform(matrix)` (moved, converted), its
    /// biases and activation kept.
    public func mapMatrices(_ transform: (WeightMatrix) -> WeightMatrix) -> FeedForwardWeights {
        var f = self
        f.gate = transform(gate)
        f.up = transform(up)
        f.down = transform(down)
        return f
    }
}

/// The biases of a feed-forward network's three products.
public struct FeedForwardBiases: Sendable {
    public var gate: [Float]  // [intermediate]
    public var up: [Float]    // [intermediate]
    public var down: [Float]  // [hidden]

    public init(gate: [Float], up: [Float], down: [Float]) {
        self.gate = gate
        self.up = up
        self.down = down
    }
}

/// What joins a feed-forward network's gate and up products.
public enum GatedActivation: Sendable, Equatable {
    /// silu(gate) x up (Llama, Mixtral, Qwen, DeepSeek).
    case swiGLU
    /// GPT-OSS's: the gate clamped above at `limit` and the up product to ±`limit`, then
    /// gate x sigmoid(alpha x gate) x (up + 1).
    case clampedSwiGLU(alpha: Float, limit: Float)

    /// gate[i] = activation(gate[i], up[i]) over `n` values.
    @inlinable
    public func apply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafeMutablePointer<Float>, _ n: Int) {
        switch self {
        case .swiGLU: siluMultiply(gate, up, n)
        case .clampedSwiGLU(let alpha, let limit): clampedSiluMultiply(gate, up, n, alpha: alpha, limit: limit)
        }
    }
}
