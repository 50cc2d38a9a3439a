import Kernels
import Models
import Runtime

/// The bytes placement works with, in the order it places them: what every token touches (in the
/// order the executor moves it to the accelerator), and one routed expert's matrices. Made from
/// loaded weights for execution, or from the config alone for `plan`; for the same model in its
/// stored element both give the same footprint (tested), so both place alike.
public struct ModelFootprint: Sendable, Equatable {
    public struct Tensor: Sendable, Equatable {
        public var name: String
        public var bytes: Int
        /// Weight values, for FLOP counts (2 per value per token).
        public var parameters: Int
        /// Whether it may live on the accelerator (embedding lookups and routing stay on the host).
        public var acceleratorEligible: Bool
    }

    /// Everything but the routed experts, in placement order.
    public var always: [Tensor]
    /// Bytes of one routed expert's gate, up and down matrices (every expert has one shape), and its
    /// weight values.
    public var expertMatrixBytes: [Int]
    public var expertParameters: Int
    /// Routed experts per MoE layer (0 for dense layers), and experts chosen per token.
    public var expertsPerLayer: [Int]
    public var expertsPerToken: [Int]

    public var expertBytes: Int { expertMatrixBytes.reduce(0, +) }

    /// From loaded (not yet placed) weights.
    public init(weights: DecoderWeights, config c: DecoderConfig) {
        var always: [Tensor] = []
        var w = weights
        w.visitAlways(tiedHead: c.tieWordEmbeddings) { name, m, eligible in
            always.append(Tensor(name: name, bytes: m.byteCount, parameters: m.rows * m.columns, acceleratorEligible: eligible))
        }
        self.always = always
        let sample = weights.sampleExpertIfMoE
        expertMatrixBytes = sample.map { $0.matrices.map(\.byteCount) } ?? []
        expertParameters = sample.map { $0.matrices.reduce(0) { $0 + $1.rows * $1.columns } } ?? 0
        expertsPerLayer = c.feedForward.map { $0.moe?.expertCount ?? 0 }
        expertsPerToken = c.feedForward.map { $0.moe?.expertsPerToken ?? 0 }
    }

    /// From the config alone, every matrix stored as `element`, the routed experts as
    /// `expertElement` when given (converted at load) unless the config says how they are stored.
    public init(config c: DecoderConfig, element: WeightElement, expertElement: WeightElement? = nil) {
        var always: [Tensor] = []
        let H = c.hiddenSize
        func add(_ name: String, _ rows: Int, _ columns: Int, eligible: Bool = true) {
            always.append(Tensor(name: name, bytes: rows * element.rowBytes(columns), parameters: rows * columns, acceleratorEligible: eligible))
        }
        for (l, kind) in c.feedForward.enumerated() {
            for (i, shape) in c.attentionMatrixShapes.enumerated() { add("layer \(l) attention \(i)", shape.rows, shape.columns) }
            switch kind {
            case .dense(let inner):
                add("layer \(l) mlp 0", inner, H); add("layer \(l) mlp 1", inner, H); add("layer \(l) mlp 2", H, inner)
            case .mixtureOfExperts(let m):
                add("layer \(l) router", m.expertCount, H, eligible: false)
                if let s = m.sharedExpertIntermediateSize {
                    add("layer \(l) shared expert 0", s, H); add("layer \(l) shared expert 1", s, H); add("layer \(l) shared expert 2", H, s)
                }
                if m.sharedExpertGated { add("layer \(l) shared expert gate", 1, H, eligible: false) }
            }
        }
        if !c.tieWordEmbeddings { add("output head", c.vocabularySize, H) }
        add("embedding", c.vocabularySize, H, eligible: false)
        self.always = always
        if let m = c.feedForward.compactMap(\.moe).first {
            let inner = m.expertIntermediateSize
            let element = m.expertElement ?? expertElement ?? element
            expertMatrixBytes = [inner * element.rowBytes(H), inner * element.rowBytes(H), H * element.rowBytes(inner)]
            expertParameters = 3 * inner * H
        } else {
            expertMatrixBytes = []
            expertParameters = 0
        }
        expertsPerLayer = c.feedForward.map { $0.moe?.expertCount ?? 0 }
        expertsPerToken = c.feedForward.map { $0.moe?.expertsPerToken ?? 0 }
    }
}

extension DecoderWeights {
    /// Visits every matrix but the routed experts, in placement order, letting `visit` replace it
    /// (with a copy elsewhere): per layer its attention, then its dense MLP or its router, shared
    /// expert and shared-expert gate; then the output head (unless tied to the embedding) and the
    /// embedding. `eligible` says whether the matrix may live on the accelerator.
    mutating func visitAlways(tiedHead: Bool, _ visit: (_ name: String, _ matrix: inout WeightMatrix, _ eligible: Bool) -> Void) {
        for l in layers.indices {
            var index = 0
            layers[l].attention = layers[l].attention.mapMatrices { m in
                var m = m
                visit("layer \(l) attention \(index)", &m, true)
                index += 1
                return m
            }
            func visitAll(_ f: inout FeedForwardWeights, _ name: String) {
                visit(name + " 0", &f.gate, true); visit(name + " 1", &f.up, true); visit(name + " 2", &f.down, true)
            }
            switch layers[l].feedForward {
            case .dense(var f):
                visitAll(&f, "layer \(l) mlp")
                layers[l].feedForward = .dense(f)
            case .mixtureOfExperts(var m):
                visit("layer \(l) router", &m.router, false)
                if var s = m.sharedExpert { visitAll(&s, "layer \(l) shared expert"); m.sharedExpert = s }
                if var g = m.sharedExpertGate { visit("layer \(l) shared expert gate", &g, false); m.sharedExpertGate = g }
                layers[l].feedForward = .mixtureOfExperts(m)
            }
        }
        if !tiedHead { visit("output head", &lmHead, true) }
        visit("embedding", &embedding, false)
    }

    /// The first routed expert, nil for a dense model.
    var sampleExpertIfMoE: FeedForwardWeights? {
        for layer in layers { if case .mixtureOfExperts(let m) = layer.feedForward, let e = m.experts.first { return e } }
        return nil
    }
}
