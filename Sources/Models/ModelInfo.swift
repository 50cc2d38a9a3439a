import Kernels
import Runtime
import SwitchyardSupport

/// Sizes a user wants before running a model: parameters, active parameters, memory.
public struct ModelInfo: Sendable {
    public var totalParameters: Int
    /// Parameters one token touches: everything but the experts it is not routed to.
    public var activeParameters: Int
    public var expertParameters: Int
    public var weightBytes: Int
    /// Tensor count and bytes per stored dtype.
    public var dtypes: [(dtype: String, tensors: Int, bytes: Int)]
    /// float32 keys and values, all layers.
    public var kvCacheBytesPerToken: Int
    /// Values cached per token per layer: keys and values of every KV head, or latent attention's
    /// kv_lora_rank + qk_rope.
    public var kvValuesPerTokenPerLayer: Int
    /// Weights made at load beside the stored ones (latent attention's W_UKᵀ per head).
    public var derivedWeightBytes: Int

    public init(_ model: Model) {
        let c = model.config
        var total = 0, bytes = 0
        var byType: [String: (Int, Int)] = [:]
        for t in model.tensors.allTensors {
            // MXFP4 as released: two values a byte in `_blocks`, and `_scales` that are not values.
            let mxfp4 = t.typeName.uppercased() == "U8" && t.element == nil
            total += mxfp4 ? (t.name.hasSuffix("_blocks") ? 2 * t.elementCount : 0) : t.elementCount
            bytes += t.byteCount
            let key = t.typeName.lowercased()
            byType[key, default: (0, 0)].0 += 1
            byType[key, default: (0, 0)].1 += t.byteCount
        }
        if c.tieWordEmbeddings, model.tensors.contains("lm_head.weight"),
            let head = model.tensors.allTensors.first(where: { $0.name == "lm_head.weight" }) {
            // A stored copy of a tied head is not a parameter of its own.
            total -= head.elementCount
        }
        var experts = 0, inactive = 0
        for (layer, kind) in zip(model.weights.layers, c.feedForward) {
            guard case .mixtureOfExperts(let moe) = layer.feedForward, let m = kind.moe else { continue }
            let perExpert = moe.experts.map { $0.gate.rows * $0.gate.columns + $0.up.rows * $0.up.columns + $0.down.rows * $0.down.columns }
            experts += perExpert.reduce(0, +)
            // Experts are the same size within a layer, so which ones are inactive does not matter.
            inactive += (m.expertCount - m.expertsPerToken) * (perExpert.first ?? 0)
        }
        totalParameters = total
        expertParameters = experts
        activeParameters = total - inactive
        weightBytes = bytes
        dtypes = byType.map { ($0.key, $0.value.0, $0.value.1) }.sorted { $0.bytes > $1.bytes }
        kvCacheBytesPerToken = c.kvLayout.bytesPerPosition
        kvValuesPerTokenPerLayer = c.kvLayout.keyWidth + c.kvLayout.valueWidth
        derivedWeightBytes = model.weights.layers.reduce(0) { $0 + (($1.attention as? LatentAttention)?.keyAbsorb.byteCount ?? 0) }
    }

    /// From the config alone, every tensor stored as `element` (what `info --random-weights`
    /// reports, without making weights: a 671B model's would not fit in memory).
    public init(config c: DecoderConfig, element: WeightElement) {
        let H = c.hiddenSize
        var tensors = 0, values = 0, bytes = 0, experts = 0, inactive = 0, derived = 0
        /// `count` matrices of [rows, columns], stored as `count` tensors or as one stacked.
        func add(_ rows: Int, _ columns: Int, count: Int = 1, stacked: Bool = false, as stored: WeightElement? = nil) {
            let element = stored ?? element
            tensors += stacked ? 1 : count
            values += count * rows * columns
            bytes += count * rows * (columns % element.blockValues == 0 ? element.rowBytes(columns) : 4 * columns)
        }
        add(c.vocabularySize, H)
        if !c.tieWordEmbeddings { add(c.vocabularySize, H) }
        add(1, H)
        for kind in c.feedForward {
            add(1, H, count: 2)
            for shape in c.attentionMatrixShapes {
                if shape.derived { derived += shape.rows * element.rowBytes(shape.columns) } else { add(shape.rows, shape.columns) }
            }
            for length in c.attentionVectorLengths { add(1, length) }
            switch kind {
            case .dense(let inner):
                add(inner, H, count: 2); add(H, inner)
            case .mixtureOfExperts(let m):
                add(m.expertCount, H)
                if m.router.selectionBias { add(1, m.expertCount) }
                if m.routerLogitBias { add(1, m.expertCount) }
                if let s = m.sharedExpertIntermediateSize { add(s, H, count: 2); add(H, s) }
                if m.sharedExpertGated { add(1, H) }
                let perExpert = 3 * m.expertIntermediateSize * H
                if m.expertElement == .mxfp4 {
                    // As released: `_blocks` and `_scales` of each stacked tensor.
                    add(2 * m.expertIntermediateSize, H, count: m.expertCount, stacked: true, as: .mxfp4)
                    add(H, m.expertIntermediateSize, count: m.expertCount, stacked: true, as: .mxfp4)
                    tensors += 2
                } else if c.naming.stackedExpertsTransposed {
                    // GPT-OSS: [experts, hidden, 2 x inner] and [experts, inner, hidden].
                    add(H, 2 * m.expertIntermediateSize, count: m.expertCount, stacked: true)
                    add(m.expertIntermediateSize, H, count: m.expertCount, stacked: true)
                } else {
                    add(m.expertIntermediateSize, H, count: 2 * m.expertCount); add(H, m.expertIntermediateSize, count: m.expertCount)
                }
                if m.expertBiases {
                    add(1, 2 * m.expertIntermediateSize, count: m.expertCount, stacked: true)
                    add(1, H, count: m.expertCount, stacked: true)
                }
                experts += m.expertCount * perExpert
                inactive += (m.expertCount - m.expertsPerToken) * perExpert
            }
        }
        totalParameters = values
        expertParameters = experts
        activeParameters = values - inactive
        weightBytes = bytes
        let expertNote = c.feedForward.compactMap { $0.moe?.expertElement }.first.map { ", experts \($0)" } ?? ""
        dtypes = [("\(element)\(expertNote)", tensors, bytes)]
        kvCacheBytesPerToken = c.kvLayout.bytesPerPosition
        kvValuesPerTokenPerLayer = c.kvLayout.keyWidth + c.kvLayout.valueWidth
        derivedWeightBytes = derived
    }
}
