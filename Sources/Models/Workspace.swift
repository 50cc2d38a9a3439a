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

    /// Mean seconds of tier-1 work per layer per micro-batch, lately: with the attention round
    /// trip, it sets how many micro-batches to keep in flight (Little's law).
    public private(set) var meanLayerCompute: Double?

    func recordLayerCompute(_ seconds: Double) {
        meanLayerCompute = meanLayerCompute.map { 0.95 * $0 + 0.05 * seconds } ?? seconds
    }

    /// Work memory of the step's other micro-batches.
    private var others: [Workspace] = []

    /// The workspace of micro-batch `i` (this one for 0).
    func microBatch(_ i: Int) -> Workspace {
        if i == 0 { return self }
        while others.count < i { others.append(Workspace()) }
        let w = others[i - 1]
        w.routingObserver = routingObserver
        return w
    }
}
