import Runtime
import SwitchyardSupport

/// Rotary position embedding parameters, normalised from either config form: transformers 5's
/// `rope_parameters` object, or the older top-level `rope_theta` plus `rope_scaling`.
public struct RopeParameters: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case `default`, linear, llama3, yarn
    }

    public var kind: Kind
    public var theta: Double
    public var partialRotaryFactor: Double = 1
    public var factor: Double = 1
    // llama3
    public var lowFrequencyFactor: Double = 1
    public var highFrequencyFactor: Double = 4
    public var originalMaxPositions: Int?
    // yarn
    public var attentionFactor: Double?
    public var betaFast: Double = 32
    public var betaSlow: Double = 1
    public var mscale: Double?
    public var mscaleAllDim: Double?
    public var truncate: Bool = true

    public init(kind: Kind = .default, theta: Double) {
        self.kind = kind
        self.theta = theta
    }

    static func parse(_ config: ConfigReader, defaultTheta: Double) throws(ModelError) -> RopeParameters {
        // transformers 5 writes rope_parameters; older configs have rope_theta and rope_scaling.
        var scaling = try config.object("rope_parameters")
        if scaling == nil { scaling = try config.object("rope_scaling") }
        var rope = RopeParameters(theta: try config.double("rope_theta", default: defaultTheta))
        rope.partialRotaryFactor = try config.double("partial_rotary_factor", default: 1)
        guard let scaling else { return rope }
        if let theta = try scaling.optionalDouble("rope_theta") { rope.theta = theta }
        if let partial = try scaling.optionalDouble("partial_rotary_factor") { rope.partialRotaryFactor = partial }
        var typeName = try scaling.string("rope_type")
        if typeName == nil { typeName = try scaling.string("type") }
        let kindName = typeName ?? "default"
        guard let kind = Kind(rawValue: kindName) else {
            throw ModelError("\(scaling.file): rope type '\(kindName)' is not supported (supported: \(Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        rope.kind = kind
        switch kind {
        case .default:
            break
        case .linear:
            rope.factor = try scaling.double("factor")
        case .llama3:
            rope.factor = try scaling.double("factor")
            rope.lowFrequencyFactor = try scaling.double("low_freq_factor")
            rope.highFrequencyFactor = try scaling.double("high_freq_factor")
            rope.originalMaxPositions = try scaling.int("original_max_position_embeddings")
        case .yarn:
            rope.factor = try scaling.double("factor", default: 0)
            rope.originalMaxPositions = try scaling.optionalInt("original_max_position_embeddings")
            rope.attentionFactor = try scaling.optionalDouble("attention_factor")
            rope.betaFast = try scaling.double("beta_fast", default: 32)
            rope.betaSlow = try scaling.double("beta_slow", default: 1)
            rope.mscale = try scaling.optionalDouble("mscale")
            rope.mscaleAllDim = try scaling.optionalDouble("mscale_all_dim")
            rope.truncate = try scaling.bool("truncate", default: true)
        }
        return rope
    }
}

/// Precomputed inverse frequencies for one model, and the cos/sin of any position.
public struct RotaryEmbedding: Sendable {
    /// Rotated dimensions per head (head_dim x partial_rotary_factor).
    public let rotaryDim: Int
    /// [rotaryDim / 2]
    public let inverseFrequencies: [Float]
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    public let attentionScaling: Float

    public init(_ rope: RopeParameters, headDim: Int, maxPositions: Int) {
        let dim = Int(Double(headDim) * rope.partialRotaryFactor)
        rotaryDim = dim
        let base = rope.theta
        // transformers computes base ** (arange(0, dim, 2) / dim) in float32.
        var inv = stride(from: 0, to: dim, by: 2).map { i -> Float in
            1 / Float(pow(base, Double(Float(i) / Float(dim))))
        }
        var scaling: Float = 1
        switch rope.kind {
        case .default:
            break
        case .linear:
            inv = inv.map { $0 / Float(rope.factor) }
        case .llama3:
            let factor = rope.factor
            let old = Double(rope.originalMaxPositions ?? maxPositions)
            let lowWavelength = old / rope.lowFrequencyFactor
            let highWavelength = old / rope.highFrequencyFactor
            inv = inv.map { f -> Float in
                let wavelength = 2 * Double.pi / Double(f)
                if wavelength < highWavelength { return f }
                if wavelength > lowWavelength { return f / Float(factor) }
                let smooth = (old / wavelength - rope.lowFrequencyFactor) / (rope.highFrequencyFactor - rope.lowFrequencyFactor)
                return Float((1 - smooth) * Double(f) / factor + smooth * Double(f))
            }
        case .yarn:
            let original = Double(rope.originalMaxPositions ?? maxPositions)
            let factor = rope.factor > 0 ? rope.factor : Double(maxPositions) / original
            func mscale(_ scale: Double, _ m: Double = 1) -> Double { scale <= 1 ? 1 : 0.1 * m * log(scale) + 1 }
            if let given = rope.attentionFactor {
                scaling = Float(given)
            } else if let m = rope.mscale, let all = rope.mscaleAllDim, m != 0, all != 0 {
                scaling = Float(mscale(factor, m) / mscale(factor, all))
            } else {
                scaling = Float(mscale(factor))
            }
            func correctionDim(_ rotations: Double) -> Double {
                Double(dim) * log(original / (rotations * 2 * Double.pi)) / (2 * log(base))
            }
            var low = correctionDim(rope.betaFast)
            var high = correctionDim(rope.betaSlow)
            if rope.truncate { low = low.rounded(.down); high = high.rounded(.up) }
            low = max(low, 0)
            high = min(high, Double(dim - 1))
            if low == high { high += 0.001 }
            inv = inv.enumerated().map { (i, extrapolation) -> Float in
                let interpolation = extrapolation / Float(factor)
                let ramp = Float(min(max((Double(i) - low) / (high - low), 0), 1))
                let extrapolationFactor = 1 - ramp
                return interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor
            }
        }
        inverseFrequencies = inv
        attentionScaling = scaling
    }

    /// cos and sin of position x frequency, times the attention scaling, for each frequency.
    public func cosSin(position: Int, cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        for (i, f) in inverseFrequencies.enumerated() {
            // The angle is a float32 product, as in transformers; cos/sin of it are then exact to an ulp.
            let angle = Double(Float(position) * f)
            cos[i] = Float(cosine(angle)) * attentionScaling
            sin[i] = Float(sine(angle)) * attentionScaling
        }
    }
}

@inline(__always) private func cosine(_ x: Double) -> Double { cos(x) }
@inline(__always) private func sine(_ x: Double) -> Double { sin(x) }
