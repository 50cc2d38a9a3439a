import Kernels
import SwitchyardSupport

/// How a layer's experts run on the CPU at each load, from costs measured on this machine (EPS-MoE's
/// choice between GroupGemm and DenseGemm): with few tokens each, one grouped pass over all of them
/// saves a parallel region's start and tail per product; with many, each expert's own products cost
/// the same either way. Same bits either way, so the choice is only about speed.
public struct ExpertKernelChoice: Sendable {
    /// Tokens per expert measured, and the seconds of a layer's worth of experts at each, run one
    /// after another and as one grouped pass.
    public var tokenCounts: [Int] = []
    public var denseSeconds: [Double] = []
    public var groupedSeconds: [Double] = []
    /// Grouped below this many tokens per expert (0: never).
    public var groupedBelow = 0

    public init() {}

    /// Times `experts` (a layer's, as loaded) at 1 to 16 tokens each, dense and grouped, best of
    /// `repetitions` after a warm-up.
    public static func measure(experts: [FeedForwardWeights], device: CPUDevice, repetitions: Int = 3) -> ExpertKernelChoice {
        var choice = ExpertKernelChoice()
        guard experts.count > 1, let first = experts.first else { return choice }
        let counts = [1, 2, 4, 8, 16]
        let hidden = first.down.rows, inner = first.intermediateSize
        let rows = counts.last! * experts.count
        let x = UnsafeMutablePointer<Float>.allocate(capacity: rows * hidden)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: rows * hidden)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * rows * inner)
        defer { x.deallocate(); y.deallocate(); scratch.deallocate() }
        for i in 0..<(rows * hidden) { x[i] = Float((i * 7919) % 1000) / 1000 - 0.5 }
        for n in counts {
            let group = experts.enumerated().map { GroupedExpert($1, firstRow: $0 * n, tokens: n) }
            choice.tokenCounts.append(n)
            choice.denseSeconds.append(fastestSeconds(repetitions: repetitions) {
                for e in group {
                    device.feedForward(e.weights, input: x + e.firstRow * hidden, output: y + e.firstRow * hidden, tokens: n,
                                       gate: scratch, up: scratch + n * inner)
                }
            })
            choice.groupedSeconds.append(fastestSeconds(repetitions: repetitions) {
                device.feedForward(group: group, input: x, output: y, gate: scratch, up: scratch + rows * inner)
            })
        }
        // Grouped up to the first count at which it stops winning.
        let stop = choice.tokenCounts.indices.first { choice.groupedSeconds[$0] >= choice.denseSeconds[$0] }
        choice.groupedBelow = stop.map { choice.tokenCounts[$0] } ?? 2 * counts.last!
        return choice
    }

    /// One line for logs and the bench report.
    public var summary: String {
        let pairs = tokenCounts.indices.map { i in
            "\(tokenCounts[i]): \(Int((denseSeconds[i] * 1e6).rounded())) / \(Int((groupedSeconds[i] * 1e6).rounded())) µs"
        }
        let verdict = groupedBelow > 0 ? "grouped below \(groupedBelow) tokens per expert" : "dense at every count"
        return "expert kernel choice (tokens per expert: dense / grouped, a layer's experts): \(pairs.joined(separator: ", ")); \(verdict)"
    }
}
