import Kernels
import Runtime
import SwitchyardSupport

/// What a layer's block needs from the model during one forward step.
public struct LayerContext {
    public let config: DecoderConfig
    /// Where weight products run.
    public let device: ComputeDevice
    /// Where attention over the KV cache runs, and the cache.
    public let attention: AttentionExecutor
    /// Work memory of this step.
    public let workspace: Workspace
}

/// One layer's attention: its weights and how it computes, one variant per file in this folder
/// (grouped-query attention; DeepSeek's latent attention next). The decoder loop calls `forward`;
/// the tiers move and convert the weights through `matrices` and `mapMatrices`.
public protocol AttentionBlock: Sendable {
    /// Every weight matrix of the block (biases and norm weights are small and stay on the host).
    var matrices: [WeightMatrix] { get }
    /// The block with each matrix replaced by `transform(matrix)`, in `matrices` order.
    func mapMatrices(_ transform: (WeightMatrix) -> WeightMatrix) -> Self
    /// output[T, hidden] = attention(input[T, hidden]) for the step's tokens at `slots`: the
    /// projections and whatever the variant does to queries and keys here, the attention itself
    /// through `context.attention` (which stores the new keys and values), the output projection.
    func forward(layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, slots: [TokenSlot],
                 context: LayerContext) throws(WorkFailure)
}
