import SwitchyardSupport

/// The softmax of one row of logits, as its log-normaliser: log p(i) = logits[i] - max - logSumExp.
/// Sums in double of single-precision exponentials, as llama-perplexity sums them.
public struct RowSoftmax: Sendable {
    public var max: Float
    /// The first index holding the largest logit.
    public var argmax: Int
    public var logSumExp: Float

    public init(_ logits: UnsafeBufferPointer<Float>) {
        var best = logits[0], index = 0
        for i in 1..<logits.count where logits[i] > best {
            best = logits[i]
            index = i
        }
        var sum = 0.0
        for value in logits { sum += Double(expf(value - best)) }
        max = best
        argmax = index
        logSumExp = Float(log(sum))
    }

    /// -log p(token).
    public func negativeLogLikelihood(_ logits: UnsafeBufferPointer<Float>, _ token: Int) -> Double {
        Double(max) + Double(logSumExp) - Double(logits[token])
    }
}

/// One row of log-probabilities in 16 bits, llama-perplexity's `--kl-divergence-base` layout: two
/// float32 (`scale`, `minimum`, the log-probability of code 0) then one code per token, log p(i) =
/// scale x code + minimum. Codes cover the 16 nats below the most likely token (about 2.4e-4 nats a
/// step); anything less likely is code 0, and the divergence ignores tokens of the base below -16.
public enum LogProbabilityCodes {
    /// UInt16 words in a row for a vocabulary: 4 for the two floats, the codes padded to an even count.
    public static func rowWords(vocabulary: Int) -> Int { 2 * ((vocabulary + 1) / 2) + 4 }

    /// Writes the row of `logits` into `row` (rowWords words); returns -log p(token).
    public static func encode(_ logits: UnsafeBufferPointer<Float>, token: Int, into row: UnsafeMutablePointer<UInt16>) -> Double {
        let softmax = RowSoftmax(logits)
        var lowest = logits[0]
        for value in logits { lowest = min(lowest, value) }
        lowest = max(lowest, softmax.max - 16)
        let minimum = lowest - softmax.max - softmax.logSumExp
        let scale = (softmax.max - lowest) / 65535
        let header = UnsafeMutableRawPointer(row)
        header.storeBytes(of: scale, as: Float.self)
        header.storeBytes(of: minimum, toByteOffset: 4, as: Float.self)
        let codes = row + 4
        if scale > 0 {
            let inverse = 1 / scale
            for (i, value) in logits.enumerated() {
                codes[i] = value > lowest ? UInt16(min(65535, ((value - lowest) * inverse).rounded(.toNearestOrEven))) : 0
            }
        } else {
            codes.initialize(repeating: 0, count: logits.count)
        }
        let padding = rowWords(vocabulary: logits.count) - 4 - logits.count
        (codes + logits.count).initialize(repeating: 0, count: padding)
        return softmax.negativeLogLikelihood(logits, token)
    }

    /// The row's scale and minimum, which a file from outside may hold as anything.
    public static func header(_ row: UnsafePointer<UInt16>) -> (scale: Float, minimum: Float) {
        let raw = UnsafeRawPointer(row)
        return (raw.loadUnaligned(as: Float.self), raw.loadUnaligned(fromByteOffset: 4, as: Float.self))
    }
}

/// What one scored token says about a model against a base: its own and the base's -log p of the
/// token, the KL divergence of its distribution from the base's, p - p_base of the token, and
/// whether the two agree on the most likely token.
public struct TokenComparison: Sendable {
    public var negativeLogLikelihood: Double
    public var baseNegativeLogLikelihood: Double
    public var divergence: Double
    public var probabilityChange: Double
    public var sameTop: Bool

    /// KL(base || model) over the tokens the base gives more than e^-16, from the base's codes.
    public init(_ logits: UnsafeBufferPointer<Float>, base row: UnsafePointer<UInt16>, token: Int) {
        let softmax = RowSoftmax(logits)
        let (scale, minimum) = LogProbabilityCodes.header(row)
        let codes = row + 4
        let normaliser = softmax.max + softmax.logSumExp
        var sum = 0.0
        var baseTop = 0
        var baseBest = -Float.infinity
        for i in 0..<logits.count {
            let baseLog = scale * Float(codes[i]) + minimum
            if i == 0 || baseLog > baseBest {
                baseBest = baseLog
                baseTop = i
            }
            if baseLog > -16 {
                sum += Double(expf(baseLog)) * Double(baseLog - logits[i] + normaliser)
            }
        }
        negativeLogLikelihood = softmax.negativeLogLikelihood(logits, token)
        baseNegativeLogLikelihood = -Double(scale * Float(codes[token]) + minimum)
        divergence = sum
        probabilityChange = exp(-negativeLogLikelihood) - exp(-baseNegativeLogLikelihood)
        sameTop = baseTop == softmax.argmax
    }
}
