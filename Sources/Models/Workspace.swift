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
    /// Latent attention: the compressed query, every head's full query, every head's values.
    let compressedQuery = FloatBuffer(), fullQuery = FloatBuffer(), headValues = FloatBuffer()
    /// Latent attention expanded: a sequence's cached rows widened to float32, and one head's keys
    /// and values up-projected from them.
    let latentRows = FloatBuffer(), expandedRows = FloatBuffer()
    /// Whether the latest latent attention step ran expanded (its outputs are per-head values).
    var latentExpanded = false
    /// Per token of the step: cos then sin of its position, rotaryDim / 2 each.
    let cosSin = FloatBuffer()
    var rotaryDim = 0

    /// Mean seconds of tier-1 work per layer per micro-batch, lately: with the attention round
    /// trip, it sets how many micro-batches to keep in flight (Little's law).
    public private(set) var meanLayerCompute: Double?

    func recordLayerCompute(_ seconds: Double) {
        meanLayerCompute = meanLayerCompute.map { 0.95 * $0 + 0.05 * seconds } ?? seconds
    }

    /// How many micro-batches the automatic choice runs, by measurement.
    public let microBatchTuner = MicroBatchTuner()

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

/// Chooses how many micro-batches a step keeps in flight by measuring: Little's law gives the
/// count that hides the attention round trip, but each micro-batch reads the layer's weights
/// again, which costs more than the wait hides when the round trip is short or the workers share
/// tier 1's cores. So 1, 2 and Little's count are each tried for a few steps, the fastest per
/// token is kept, and the trial is repeated every `period` steps or when the batch changes size.
public final class MicroBatchTuner {
    private var sequences = 0
    private var samples: [Int: (seconds: Double, count: Int)] = [:]
    private var steps = 0
    /// Steps each candidate runs before the choice, and steps before the next trial.
    let trialSteps = 3, period = 128
    /// The count chosen for the latest step.
    public private(set) var lastChoice = 1

    func choose(littlesLaw: Int, sequences n: Int) -> Int {
        if n * 4 < sequences * 3 || n * 4 > sequences * 5 || steps >= period {
            samples = [:]
            steps = 0
            sequences = n
        }
        steps += 1
        let candidates = Set([1, min(2, sequences), littlesLaw]).sorted()
        if let untried = candidates.first(where: { (samples[$0]?.count ?? 0) < trialSteps }) {
            lastChoice = untried
        } else {
            lastChoice = candidates.min { samples[$0]!.seconds < samples[$1]!.seconds }!
        }
        return lastChoice
    }

    /// Seconds per token of a step run with `count` micro-batches.
    func record(count: Int, secondsPerToken: Double) {
        // The first step of a trial is a warm-up (work memory grows), so it is not counted.
        if let s = samples[count] {
            let n = Double(max(1, s.count))
            samples[count] = (s.count == 0 ? secondsPerToken : (s.seconds * (n - 1) + secondsPerToken) / n, s.count + 1)
        } else {
            samples[count] = (0, 0)
        }
    }
}
