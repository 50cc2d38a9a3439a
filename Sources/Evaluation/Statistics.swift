import SwitchyardSupport

/// A mean and its standard error from running sums, as llama-perplexity reports them: the error
/// is sqrt(variance / (n - 1)), and 0 for 10 values or fewer.
public struct Estimate: Sendable, Equatable {
    public var value: Double
    public var uncertainty: Double

    public init(value: Double, uncertainty: Double) {
        self.value = value
        self.uncertainty = uncertainty
    }

    public init(sum: Double, sumOfSquares: Double, count: Int) {
        guard count > 0 else {
            self.init(value: 0, uncertainty: 0)
            return
        }
        let mean = sum / Double(count)
        let variance = sumOfSquares / Double(count) - mean * mean
        self.init(value: mean, uncertainty: variance > 0 && count > 10 ? (variance / Double(count - 1)).squareRoot() : 0)
    }
}

/// Running sums of -log p over scored tokens: perplexity is e^(their mean).
public struct PerplexityTally: Sendable {
    public private(set) var count = 0
    public private(set) var sum = 0.0
    public private(set) var sumOfSquares = 0.0

    public init() {}

    public mutating func add(_ negativeLogLikelihood: Double) {
        count += 1
        sum += negativeLogLikelihood
        sumOfSquares += negativeLogLikelihood * negativeLogLikelihood
    }

    /// The mean -log p (nats per token) with its standard error.
    public var logPerplexity: Estimate { Estimate(sum: sum, sumOfSquares: sumOfSquares, count: count) }

    /// e^(mean -log p), its uncertainty carried through the exponential.
    public var perplexity: Estimate {
        let log = logPerplexity
        let value = exp(log.value)
        return Estimate(value: value, uncertainty: value * log.uncertainty)
    }
}

/// Everything a model's logits say against a base's over scored tokens: both perplexities, the KL
/// divergence of each token's distribution, the change in the probability of the token that came,
/// and how often the most likely tokens agree.
public struct DivergenceTally: Sendable {
    public private(set) var model = PerplexityTally()
    public private(set) var base = PerplexityTally()
    public private(set) var sumOfProducts = 0.0
    public private(set) var divergences: [Double] = []
    public private(set) var probabilityChanges: [Double] = []
    public private(set) var sameTop = 0

    public init() {}

    public var count: Int { divergences.count }

    public mutating func add(_ c: TokenComparison) {
        model.add(c.negativeLogLikelihood)
        base.add(c.baseNegativeLogLikelihood)
        sumOfProducts += c.negativeLogLikelihood * c.baseNegativeLogLikelihood
        divergences.append(c.divergence)
        probabilityChanges.append(c.probabilityChange)
        if c.sameTop { sameTop += 1 }
    }

    /// The covariance of the two mean log-perplexities (0 below 10 tokens).
    var logPerplexityCovariance: Double {
        guard count >= 10 else { return 0 }
        let n = Double(count)
        return (sumOfProducts / n - (model.sum / n) * (base.sum / n)) / (n - 1)
    }

    /// ln(PPL / PPL_base) with its uncertainty, which the two runs' correlation makes small.
    public var logPerplexityRatio: Estimate {
        let a = model.logPerplexity, b = base.logPerplexity
        let variance = a.uncertainty * a.uncertainty + b.uncertainty * b.uncertainty - 2 * logPerplexityCovariance
        return Estimate(value: a.value - b.value, uncertainty: max(0, variance).squareRoot())
    }

    public var meanDivergence: Estimate { Estimate(sum: divergences.reduce(0, +), sumOfSquares: divergences.reduce(0) { $0 + $1 * $1 }, count: count) }

    /// The root mean square of p - p_base for the token that came.
    public var probabilityChangeRMS: Estimate {
        let squares = probabilityChanges.map { $0 * $0 }
        let meanSquare = Estimate(sum: squares.reduce(0, +), sumOfSquares: squares.reduce(0) { $0 + $1 * $1 }, count: count)
        let rms = meanSquare.value.squareRoot()
        return Estimate(value: rms, uncertainty: rms > 0 ? 0.5 / rms * meanSquare.uncertainty : 0)
    }

    /// The share of tokens whose most likely token is the base's, with a binomial standard error.
    public var sameTopShare: Estimate {
        guard count > 1 else { return Estimate(value: count == 1 ? Double(sameTop) : 0, uncertainty: 0) }
        let p = Double(sameTop) / Double(count)
        return Estimate(value: p, uncertainty: (p * (1 - p) / Double(count - 1)).squareRoot())
    }

    public var summary: DivergenceSummary { DivergenceSummary(self) }
}

/// Linear interpolation between the two nearest ranks of sorted values (fraction 0: the least).
public func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
    guard let first = sorted.first, let last = sorted.last else { return 0 }
    if fraction <= 0 { return first }
    if fraction >= 1 { return last }
    let position = fraction * Double(sorted.count - 1)
    let low = Int(position)
    let weight = position - Double(low)
    return (1 - weight) * sorted[low] + weight * sorted[min(low + 1, sorted.count - 1)]
}

/// The final statistics of a divergence run, in llama-perplexity's terms.
public struct DivergenceSummary: Sendable {
    public var tokens: Int
    public var perplexity: Estimate
    public var basePerplexity: Estimate
    /// The covariance of the two runs' mean -log p, and their correlation.
    public var logPerplexityCovariance: Double
    public var logPerplexityCorrelation: Double
    public var logPerplexityRatio: Estimate
    public var meanDivergence: Estimate
    /// (label, fraction) pairs: 1 is the maximum, 0.5 the median, 0 the minimum.
    public var divergencePercentiles: [(fraction: Double, value: Double)]
    public var meanProbabilityChange: Estimate
    public var probabilityChangePercentiles: [(fraction: Double, value: Double)]
    public var probabilityChangeRMS: Estimate
    public var sameTop: Estimate

    static let divergenceFractions = [1, 0.999, 0.99, 0.95, 0.9, 0.5, 0.1, 0.05, 0.01, 0.001, 0]
    static let changeFractions = [1, 0.999, 0.99, 0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001, 0]

    init(_ tally: DivergenceTally) {
        tokens = tally.count
        perplexity = tally.model.perplexity
        basePerplexity = tally.base.perplexity
        let a = tally.model.logPerplexity.uncertainty, b = tally.base.logPerplexity.uncertainty
        logPerplexityCovariance = tally.logPerplexityCovariance
        logPerplexityCorrelation = a > 0 && b > 0 ? logPerplexityCovariance / (a * b) : 0
        logPerplexityRatio = tally.logPerplexityRatio
        meanDivergence = tally.meanDivergence
        let divergences = tally.divergences.sorted()
        divergencePercentiles = Self.divergenceFractions.map { ($0, percentile(divergences, $0)) }
        let changes = tally.probabilityChanges
        meanProbabilityChange = Estimate(sum: changes.reduce(0, +), sumOfSquares: changes.reduce(0) { $0 + $1 * $1 }, count: changes.count)
        let sortedChanges = changes.sorted()
        probabilityChangePercentiles = Self.changeFractions.map { ($0, percentile(sortedChanges, $0)) }
        probabilityChangeRMS = tally.probabilityChangeRMS
        sameTop = tally.sameTopShare
    }

    public func value(atFraction fraction: Double) -> Double? {
        divergencePercentiles.first { $0.fraction == fraction }?.value
    }

    /// The summary as llama-perplexity prints it after `--kl-divergence`.
    public var report: String {
        func label(_ fraction: Double, _ what: String) -> String {
            switch fraction {
            case 1: return "Maximum \(what)"
            case 0: return "Minimum \(what)"
            case 0.5: return "Median  \(what)"
            default:
                let percent = fixed(fraction * 100, 1) + "%"
                return (percent.count < 5 ? " " : "") + percent + "   " + what
            }
        }
        func pm(_ e: Estimate, _ digits: Int, scale: Double = 1) -> String {
            "\(padded(fixed(e.value * scale, digits), 10)) ± \(padded(fixed(e.uncertainty * scale, digits), 10))"
        }
        let ratio = Estimate(value: exp(logPerplexityRatio.value), uncertainty: exp(logPerplexityRatio.value) * logPerplexityRatio.uncertainty)
        let difference = perplexity.value - basePerplexity.value
        let covariance = perplexity.value * basePerplexity.value * logPerplexityCovariance
        let differenceError = max(0, perplexity.uncertainty * perplexity.uncertainty + basePerplexity.uncertainty * basePerplexity.uncertainty - 2 * covariance).squareRoot()
        var lines = [
            "====== Perplexity statistics ======",
            "Mean PPL(Q)                   : \(pm(perplexity, 6))",
            "Mean PPL(base)                : \(pm(basePerplexity, 6))",
            "Cor(ln(PPL(Q)), ln(PPL(base))): \(padded(fixed(100 * logPerplexityCorrelation, 2), 6))%",
            "Mean ln(PPL(Q)/PPL(base))     : \(pm(logPerplexityRatio, 6))",
            "Mean PPL(Q)/PPL(base)         : \(pm(ratio, 6))",
            "Mean PPL(Q)-PPL(base)         : \(pm(Estimate(value: difference, uncertainty: differenceError), 6))",
            "",
            "====== KL divergence statistics ======",
            "Mean    KLD: \(pm(meanDivergence, 6))",
        ]
        lines += divergencePercentiles.map { "\(label($0.fraction, "KLD")): \(padded(fixed($0.value, 6), 10))" }
        lines += ["", "====== Token probability statistics ======",
                  "Mean    Δp: \(padded(fixed(100 * meanProbabilityChange.value, 3), 6)) ± \(fixed(100 * meanProbabilityChange.uncertainty, 3)) %"]
        lines += probabilityChangePercentiles.map { "\(label($0.fraction, "Δp")): \(padded(fixed(100 * $0.value, 3), 6))%" }
        lines += ["RMS Δp    : \(padded(fixed(100 * probabilityChangeRMS.value, 3), 6)) ± \(fixed(100 * probabilityChangeRMS.uncertainty, 3)) %",
                  "Same top p: \(padded(fixed(100 * sameTop.value, 3), 6)) ± \(fixed(100 * sameTop.uncertainty, 3)) %"]
        return lines.joined(separator: "\n") + "\n"
    }
}
