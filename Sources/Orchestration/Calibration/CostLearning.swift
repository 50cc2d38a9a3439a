import SwitchyardSupport

/// What one MoE layer's run measured, for `CostModel.learn`: each kernel's time where it ran, and
/// how long each link was busy moving how many bytes. Times are taken as the work ran, with every
/// device and link busy at once, so they include what calibration (each timed alone) cannot see:
/// threads competing for cores, memory bandwidth shared between a device and a copy.
public struct LayerMeasurement: Sendable {
    public var cpu: [(tokens: Int, seconds: Double)] = []
    public var accelerator: [(tokens: Int, seconds: Double)] = []
    public var diskBytes = 0, diskBusySeconds = 0.0
    public var copyBytes = 0, copyBusySeconds = 0.0
    /// Requests to expert hosts: each one's experts' token counts, and its time from sending to
    /// the outputs in place.
    public var remote: [(tokens: [Int], seconds: Double)] = []

    public init() {}

    public typealias Interval = (start: ContinuousClock.Instant, end: ContinuousClock.Instant)

    /// `intervals` as disjoint intervals in order (work on parallel queues counts once).
    static func merged(_ intervals: [Interval]) -> [Interval] {
        var out: [Interval] = []
        for i in intervals.sorted(by: { $0.start < $1.start }) where i.end > i.start {
            if let last = out.last, i.start <= last.end {
                out[out.count - 1].end = max(last.end, i.end)
            } else {
                out.append(i)
            }
        }
        return out
    }

    /// Seconds covered by at least one of `intervals`.
    public static func busySeconds(_ intervals: [Interval]) -> Double {
        merged(intervals).reduce(0) { $0 + ($1.end - $1.start).seconds }
    }

    /// Seconds covered by at least one of `a` and at least one of `b` at once.
    public static func overlapSeconds(_ a: [Interval], _ b: [Interval]) -> Double {
        let x = merged(a), y = merged(b)
        var i = 0, j = 0, total = 0.0
        while i < x.count && j < y.count {
            let start = max(x[i].start, y[j].start), end = min(x[i].end, y[j].end)
            if end > start { total += (end - start).seconds }
            if x[i].end < y[j].end { i += 1 } else { j += 1 }
        }
        return total
    }
}

extension CostModel {
    /// How far one observation moves the table: about the last ten observations of a cost count.
    static let learningRate = 0.25

    /// Moves the table toward what a layer measured, so predictions follow the machine as it runs
    /// (contention, a drive that slows down, a device that warms up) rather than only as it was
    /// calibrated. A kernel time moves the two measured token counts around its own, in proportion
    /// to their share of the interpolation; a link's rate moves toward bytes over busy time. Each
    /// ratio is clamped to 4x either way, so one outlier (a page fault, a preempted thread) cannot
    /// throw the table off.
    public mutating func learn(_ m: LayerMeasurement) {
        func adjust(_ table: inout [Double], _ n: Int, _ seconds: Double) {
            guard !table.isEmpty, n > 0, seconds > 0 else { return }
            let predicted = CostModel.interpolate(tokenCounts, table, n)
            guard predicted > 0 else { return }
            let ratio = min(4, max(0.25, seconds / predicted))
            var weights: [(Int, Double)]
            if n <= tokenCounts[0] {
                weights = [(0, 1)]
            } else if let i = tokenCounts.indices.dropFirst().first(where: { n <= tokenCounts[$0] }) {
                let f = Double(n - tokenCounts[i - 1]) / Double(tokenCounts[i] - tokenCounts[i - 1])
                weights = [(i - 1, 1 - f), (i, f)]
            } else {
                // Beyond the largest count the table is proportional to its last entry.
                weights = [(table.count - 1, 1)]
            }
            for (i, w) in weights { table[i] *= 1 + CostModel.learningRate * w * (ratio - 1) }
            observations += 1
        }
        func rate(_ current: inout Double, bytes: Int, seconds: Double) {
            guard bytes > 0, seconds > 0, current > 0 else { return }
            let observed = min(4 * current, max(current / 4, Double(bytes) / seconds))
            current += CostModel.learningRate * (observed - current)
            observations += 1
        }
        for o in m.cpu { adjust(&cpuSeconds, o.tokens, o.seconds) }
        for o in m.accelerator { adjust(&acceleratorSeconds, o.tokens, o.seconds) }
        // A host's kernels: what a request took beyond the round trip and its transfers, against
        // what this CPU would take for the same experts.
        for r in m.remote where remoteBytesPerSecond > 0 {
            let local = r.tokens.reduce(0) { $0 + cpu(tokens: $1) }
            let there = r.seconds - remoteRoundTrip - r.tokens.reduce(0) { $0 + remoteTransfer(tokens: $1) }
            guard local > 0 else { continue }
            let observed = min(4 * remoteComputeScale, max(remoteComputeScale / 4, max(there, 0) / local))
            remoteComputeScale += CostModel.learningRate * (observed - remoteComputeScale)
            observations += 1
        }
        rate(&diskBytesPerSecond, bytes: m.diskBytes, seconds: m.diskBusySeconds)
        rate(&copyBytesPerSecond, bytes: m.copyBytes, seconds: m.copyBusySeconds)
    }
}
