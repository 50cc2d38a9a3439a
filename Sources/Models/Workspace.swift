import Runtime

/// Work memory of forward passes, sized for the largest step seen so far and kept between steps.
/// One workspace serves one forward pass at a time.
public final class Workspace {
    public init() {}

    /// Called for every MoE layer of every step with the layer index and, per token of the step,
    /// the experts it was routed to (in rank order): routing profiles, traces.
    public var routingObserver: ((_ layer: Int, _ expertsPerToken: [[Int]]) -> Void)?

    let residual = FloatBuffer(), normed = FloatBuffer()
    let query = FloatBuffer(), key = FloatBuffer(), value = FloatBuffer()
    let attention = FloatBuffer(), projected = FloatBuffer(), scores = FloatBuffer()
    let gate = FloatBuffer(), up = FloatBuffer()
    let routerLogits = FloatBuffer(), gathered = FloatBuffer(), expertOutput = FloatBuffer()
    /// Per token of the step: cos then sin of its position, rotaryDim / 2 each.
    let cosSin = FloatBuffer()
    var rotaryDim = 0
}
