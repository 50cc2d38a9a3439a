import SwitchyardSupport

/// One routed expert's part of an MoE layer in one step: its tokens are rows
/// firstRow..<firstRow+tokens of the gathered input, and its outputs go to the same rows.
public struct ExpertTask: Sendable, Equatable {
    public var expert: Int
    public var tokens: Int
    public var firstRow: Int

    public init(expert: Int, tokens: Int, firstRow: Int) {
        self.expert = expert
        self.tokens = tokens
        self.firstRow = firstRow
    }
}

/// Runs the routed experts of MoE layers somewhere other than in place on the model's device:
/// across devices and memory tiers (the Orchestration module), or on another host. It must give
/// each task exactly what `ComputeDevice.feedForward` over the expert's stored weights gives; the
/// model then mixes the outputs in ascending expert order, so results never depend on where an
/// expert ran.
public protocol ExpertExecutor: AnyObject {
    /// Called before a forward pass over `tokens` tokens.
    func beginStep(tokens: Int)
    /// output[firstRow..., hidden] = FFN_(layer, expert)(input[firstRow..., hidden]) for each task.
    /// `layerInput` [tokens, hidden] is the layer's normalised input, from which the next layer's
    /// experts can be predicted. A failure (a disk read, a lost host) is thrown once no work of the
    /// call is still running; the step fails, the process goes on.
    func runExperts(layer: Int, tasks: [ExpertTask], input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                    layerInput: UnsafePointer<Float>, tokens: Int) throws(WorkFailure)
    /// Called after the last layer of a forward pass, whether it succeeded or not.
    func endStep()
}
