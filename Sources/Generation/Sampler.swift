import SwitchyardSupport

/// How the next token is chosen. Defaults are llama.cpp's.
public struct SamplingParameters: Sendable, Equatable {
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it.
    public var temperature: Float = 0.8
    /// Keep the k most likely tokens; 0 keeps all.
    public var topK: Int = 40
    /// Keep the smallest set of most likely tokens whose probabilities add up to at least p; 1 keeps all.
    public var topP: Float = 0.95
    /// Drop tokens less likely than minP x the most likely one; 0 keeps all.
    public var minP: Float = 0.05
    /// Divide positive logits (multiply negative ones) of recently seen tokens; 1 disables.
    public var repeatPenalty: Float = 1.0
    /// How many recent tokens (prompt included) the penalty looks at; -1 for all of them.
    public var repeatLastN: Int = 64
    /// OpenAI's penalties over the generated tokens: logit -= frequency x count + presence x (count > 0).
    public var frequencyPenalty: Float = 0
    public var presencePenalty: Float = 0
    public var seed: UInt64 = 0
    /// Added to the logits of these tokens before anything else (OpenAI's logit_bias).
    public var logitBias: [Int: Float] = [:]

    public init() {}
}

/// A small, fast, seedable generator (xoshiro256**), so that a seed gives the same text on every
/// machine.
public struct RandomGenerator: Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        // SplitMix64 spreads the seed over the state.
        var x = seed
        func next() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (next(), next(), next(), next())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// Picks tokens from logits following `SamplingParameters`, in transformers' order: repetition
/// penalty, temperature, top-k, top-p, min-p, then a draw.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var random: RandomGenerator

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        random = RandomGenerator(seed: parameters.seed)
    }

    /// - Parameters:
    ///   - history: prompt and generated tokens so far, for the repetition penalty.
    ///   - generatedCount: how many of `history` were generated (for the frequency and presence penalties).
    public mutating func sample(logits input: [Float], history: [Int], generatedCount: Int = 0) -> Int {
        var logits = input
        let p = parameters
        for (token, bias) in p.logitBias where token >= 0 && token < logits.count { logits[token] += bias }
        if (p.frequencyPenalty != 0 || p.presencePenalty != 0) && generatedCount > 0 {
            var counts: [Int: Int] = [:]
            for t in history.suffix(generatedCount) { counts[t, default: 0] += 1 }
            for (t, n) in counts where t >= 0 && t < logits.count {
                logits[t] -= p.frequencyPenalty * Float(n) + p.presencePenalty
            }
        }
        if p.repeatPenalty != 1, p.repeatLastN != 0 {
            let window = p.repeatLastN < 0 ? history[...] : history.suffix(p.repeatLastN)
            for token in Set(window) where token >= 0 && token < logits.count {
                logits[token] = logits[token] < 0 ? logits[token] * p.repeatPenalty : logits[token] / p.repeatPenalty
            }
        }
        // Below 1e-5 a temperature only turns logits into infinities: it is greedy decoding, as
        // vLLM treats it.
        if p.temperature < 1e-5 { return argmax(logits) }

        // Candidates by logit, most likely first; ties keep the lower id first.
        let candidates = mostLikely(logits, count: p.topK > 0 ? p.topK : logits.count)
        let scaled = candidates.map { Double(logits[$0] / p.temperature) }
        let maximum = scaled[0]
        var probabilities = scaled.map { exp($0 - maximum) }
        var total = probabilities.reduce(0, +)
        for i in probabilities.indices { probabilities[i] /= total }
        var keep = candidates.count
        if p.topP < 1 {
            var cumulative = 0.0
            for (i, q) in probabilities.enumerated() {
                cumulative += q
                if cumulative >= Double(p.topP) { keep = i + 1; break }
            }
        }
        if p.minP > 0 {
            let threshold = Double(p.minP) * probabilities[0]
            keep = max(1, min(keep, probabilities.prefix(keep).filter { $0 >= threshold }.count))
        }
        total = probabilities.prefix(keep).reduce(0, +)
        var draw = random.nextUnit() * total
        for i in 0..<keep {
            draw -= probabilities[i]
            if draw < 0 { return candidates[i] }
        }
        return candidates[keep - 1]
    }
}

/// Indices of the `count` largest values, largest first, lower index first among equals. With a
/// small `count` (top-k) this keeps a sorted window instead of sorting the whole vocabulary.
func mostLikely(_ values: [Float], count requested: Int) -> [Int] {
    let count = min(requested, values.count)
    func before(_ a: Int, _ b: Int) -> Bool { values[a] > values[b] || (values[a] == values[b] && a < b) }
    if count >= values.count / 8 {
        return Array(values.indices.sorted(by: before).prefix(count))
    }
    var best: [Int] = []
    best.reserveCapacity(count + 1)
    for i in values.indices {
        if best.count == count, !before(i, best[count - 1]) { continue }
        var at = best.count
        while at > 0, before(i, best[at - 1]) { at -= 1 }
        best.insert(i, at: at)
        if best.count > count { best.removeLast() }
    }
    return best
}

/// Index of the largest value; the lowest index among equals (as torch.argmax).
public func argmax(_ values: [Float]) -> Int {
    var best = 0
    for i in values.indices where values[i] > values[best] { best = i }
    return best
}
