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
    /// How latent attention computes this step.
    public let latentForm: LatentAttentionForm
}

/// One layer's attention: its weights and how it computes, one variant per file in this folder
/// (grouped-query attention, DeepSeek's latent attention), in two halves around the
/// attention executor, so that the attention itself may run elsewhere while tier 1 works on
/// another micro-batch. The tiers move and convert the weights through `matrices` and
/// `mapMatrices`.
public protocol AttentionBlock: Sendable {
    /// Every weight matrix of the block (biases and norm weights are small and stay on the host).
    var matrices: [WeightMatrix] { get }
    /// Weight bytes one decoded token reads (all of `matrices` unless some serve other steps only).
    var decodeBytes: Int { get }
    /// The block with each matrix replaced by `transform(matrix)`, in `matrices` order.
    func mapMatrices(_ transform: (WeightMatrix) -> WeightMatrix) -> Self
    /// The projections of input[T, hidden] and whatever the variant does to queries and keys,
    /// into the workspace's query [T, heads x head_dim], key and value [T, kv_heads x head_dim];
    /// returns the shape of the attention over them.
    func project(layer: Int, input: UnsafePointer<Float>, tokens: Int, context: LayerContext) -> AttentionShape
    /// output[T, hidden] from the workspace's attention outputs [T, heads x head_dim].
    func outputProjection(output: UnsafeMutablePointer<Float>, tokens: Int, context: LayerContext)
    /// Stores the step's keys and values and computes its attention itself, when the block has a
    /// cheaper way for this step than the executor's (latent attention expanded per head, over a
    /// cache on this host); false leaves both to the executor.
    func attendDirectly(layer: Int, shape: AttentionShape, slots: [TokenSlot], context: LayerContext) -> Bool
}

extension AttentionBlock {
    public var decodeBytes: Int { matrices.reduce(0) { $0 + $1.byteCount } }

    public func attendDirectly(layer: Int, shape: AttentionShape, slots: [TokenSlot], context: LayerContext) -> Bool { false }

    /// output[T, hidden] = attention(input[T, hidden]) for the step's tokens at `slots`, the
    /// attention itself through `context.attention` (which stores the new keys and values).
    public func forward(layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, slots: [TokenSlot],
                        context: LayerContext) throws(WorkFailure) {
        let s = context.workspace
        let shape = project(layer: layer, input: input, tokens: slots.count, context: context)
        if !attendDirectly(layer: layer, shape: shape, slots: slots, context: context) {
            try context.attention.attend(layer: layer, shape: shape, queries: s.query.pointer, keys: s.key.pointer, values: s.value.pointer,
                                         slots: slots, output: s.attention.pointer, scratch: s.scores)
        }
        outputProjection(output: output, tokens: slots.count, context: context)
    }
}
