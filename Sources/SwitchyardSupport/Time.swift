extension Duration {
    /// The duration in seconds, as a Double (for rates and logs).
    public var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) * 1e-18
    }
}

/// The fastest of `repetitions` runs of `body`, in seconds, after one run to warm caches and pages.
public func fastestSeconds(repetitions: Int = 3, _ body: () -> Void) -> Double {
    body()
    var best = Double.infinity
    for _ in 0..<repetitions {
        let started = ContinuousClock.now
        body()
        best = min(best, (ContinuousClock.now - started).seconds)
    }
    return best
}
