import GGUF
import Kernels
import SwitchyardJSON
import SwitchyardSupport

/// `switchyard quantize --out NAME.gguf`: a model written as a GGUF file in llama.cpp's layout (its
/// architecture names, metadata keys and tensor names; llama's q/k rows permuted for adjacent-pair
/// rotary; experts merged into [experts, rows, columns] tensors; norms and biases in F32), with the
/// chosen matrices in a block format and the tokenizer and chat template in the metadata. What
/// `GGUFSource` reads back, and what the gguf package and llama.cpp read.
public enum GGUFExport {
    /// model_type → (llama.cpp's architecture, whether q/k rows are permuted).
    static let architectures: [String: (name: String, permuted: Bool)] = [
        "llama": ("llama", true), "mixtral": ("llama", true), "qwen2": ("qwen2", false), "qwen3": ("qwen3", false),
        "qwen2_moe": ("qwen2moe", false), "qwen3_moe": ("qwen3moe", false), "olmoe": ("olmoe", false),
    ]

    /// llama.cpp's general.file_type for a model mostly in `format`.
    static func fileType(_ format: WeightQuantization.Format) -> UInt32 {
        switch format {
        case .q8_0: return 7
        case .q4_0: return 2
        case .q4_k: return 15
        case .q6_k: return 18
        }
    }

    static func ggmlType(_ element: WeightElement) -> GGMLType? {
        switch element {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        case .q4_0: return .q4_0
        case .q4_k: return .q4_K
        case .mxfp4: return .mxfp4
        case .q4_1: return .q4_1
        case .q5_0: return .q5_0
        case .q5_1: return .q5_1
        case .q2_k: return .q2_K
        case .q3_k: return .q3_K
        case .q5_k: return .q5_K
        case .q6_k: return .q6_K
        case .iq4_nl: return .iq4_nl
        case .iq4_xs: return .iq4_xs
        case .q8_0x4, .q4_0x4: return nil
        }
    }

    /// Writes `output` and returns (tensors converted, bytes of tensor data).
    /// - Parameter tokenizer: the tokenizer's and chat template's metadata (`Tokenizer.ggufMetadata`).
    public static func write(from path: String, to output: String, format: WeightQuantization.Format, all: Bool,
                             tokenizer: [(key: String, value: GGUFValue)], pool: ThreadPool) throws(ModelError) -> (converted: Int, bytes: Int) {
        let source = try ModelFormats.open(path)
        let loaded = try LoadedModel.load(source, pool: pool, regroup: false)
        let config = loaded.config, weights = loaded.weights
        guard let (arch, permuted) = architectures[config.modelType] else {
            throw ModelError("\(path): cannot write \(config.modelType) as GGUF (supported: \(architectures.keys.sorted().joined(separator: ", ")))")
        }
        if config.slidingWindows.contains(where: { $0 != nil }) {
            throw ModelError("\(path): sliding-window attention has no GGUF form for \(arch) here")
        }
        var metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(Array(arch.utf8))),
            ("general.name", .string(Array(lastComponent(path).utf8))),
            ("general.alignment", .uint32(32)),
            ("general.file_type", .uint32(fileType(format))),
            ("general.quantization_version", .uint32(2)),
        ]
        func put(_ key: String, _ value: GGUFValue) { metadata.append((arch + "." + key, value)) }
        put("context_length", .uint32(UInt32(clamping: config.maxPositions)))
        put("embedding_length", .uint32(UInt32(config.hiddenSize)))
        put("block_count", .uint32(UInt32(config.layerCount)))
        put("attention.head_count", .uint32(UInt32(config.headCount)))
        put("attention.head_count_kv", .uint32(UInt32(config.keyValueHeadCount)))
        put("attention.key_length", .uint32(UInt32(config.headDim)))
        put("attention.value_length", .uint32(UInt32(config.headDim)))
        put("attention.layer_norm_rms_epsilon", .float32(config.rmsNormEpsilon))
        put("rope.freq_base", .float32(Float(config.rope.theta)))
        put("rope.dimension_count", .uint32(UInt32(Int(Double(config.headDim) * config.rope.partialRotaryFactor))))
        switch config.rope.kind {
        case .default: break
        case .linear, .yarn:
            put("rope.scaling.type", .string(Array(config.rope.kind.rawValue.utf8)))
            put("rope.scaling.factor", .float32(Float(config.rope.factor)))
            if let original = config.rope.originalMaxPositions { put("rope.scaling.original_context_length", .uint32(UInt32(clamping: original))) }
            if config.rope.kind == .yarn {
                put("rope.scaling.yarn_beta_fast", .float32(Float(config.rope.betaFast)))
                put("rope.scaling.yarn_beta_slow", .float32(Float(config.rope.betaSlow)))
            }
        default:
            throw ModelError("\(path): rope type '\(config.rope.kind.rawValue)' has no GGUF form here (default, linear, yarn)")
        }
        if let clip = config.clipQKV { put("attention.clamp_kqv", .float32(clip)) }
        let moes = config.feedForward.compactMap(\.moe)
        if let moe = moes.first {
            guard moes.count == config.layerCount else {
                throw ModelError("\(path): dense layers among the MoE layers have no GGUF form for \(arch)")
            }
            put("expert_count", .uint32(UInt32(moe.expertCount)))
            put("expert_used_count", .uint32(UInt32(moe.expertsPerToken)))
            put("expert_feed_forward_length", .uint32(UInt32(moe.expertIntermediateSize)))
            put("feed_forward_length", .uint32(UInt32(moe.expertIntermediateSize)))
            if let shared = moe.sharedExpertIntermediateSize { put("expert_shared_feed_forward_length", .uint32(UInt32(shared))) }
            guard moe.router.gating == .softmax, moe.router.selection == .topK, !moe.router.selectionBias, moe.router.scale == 1 else {
                throw ModelError("\(path): this router has no GGUF form for \(arch) (softmax top-k only)")
            }
            put("expert_weights_norm", .bool(moe.router.normalize))
        } else if case .dense(let inner) = config.feedForward[0] {
            put("feed_forward_length", .uint32(UInt32(inner)))
        }
        metadata += tokenizer

        // The tensors, in llama.cpp's order, each with how its bytes are made.
        var tensors: [GGUFWriter.Tensor] = []
        var converted = 0
        let naming = GGUFNaming()
        func vector(_ name: String, _ values: [Float]) {
            tensors.append(GGUFWriter.Tensor(name: name, type: .f32, dimensions: [values.count]) { out in
                values.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            })
        }
        /// `matrices` (one, or every expert's) as one tensor: in `format` when `quantized`, rows
        /// permuted per head for llama's q/k (`heads`), otherwise as stored.
        func matrix(_ name: String, _ matrices: [WeightMatrix], quantized wanted: Bool, heads: Int? = nil) throws(ModelError) {
            let first = matrices[0]
            let target = wanted ? format.stored(columns: first.columns) : nil
            let element = target?.element ?? first.element
            guard let type = ggmlType(element) else {
                throw ModelError("\(path): tensor '\(name)' is \(first.element); it cannot be written to GGUF as it is (quantise it)")
            }
            if target != nil { converted += 1 }
            let dimensions = [first.columns, first.rows] + (matrices.count > 1 ? [matrices.count] : [])
            let rowBytes = element.rowBytes(first.columns)
            tensors.append(GGUFWriter.Tensor(name: name, type: type, dimensions: dimensions) { out in
                for (index, m) in matrices.enumerated() {
                    let base = out + index * m.rows * rowBytes
                    // Source row of each output row: llama.cpp's permutation takes each head's rows
                    // (first half, second half) to interleaved pairs.
                    func sourceRow(_ r: Int) -> Int {
                        guard let heads else { return r }
                        let perHead = m.rows / heads, head = r / perHead, i = r % perHead
                        return head * perHead + (i % 2) * (perHead / 2) + i / 2
                    }
                    if let target {
                        pool.parallelFor((m.rows + 15) / 16) { chunk in
                            withUnsafeTemporaryAllocation(of: Float.self, capacity: m.columns) { row in
                                for r in (chunk * 16)..<min(m.rows, chunk * 16 + 16) {
                                    m.widenRow(sourceRow(r), into: row.baseAddress!)
                                    target.quantize(row.baseAddress!, count: m.columns, into: base + r * rowBytes)
                                }
                            }
                        }
                    } else {
                        for r in 0..<m.rows { (base + r * rowBytes).copyMemory(from: m.data + sourceRow(r) * m.rowBytes, byteCount: rowBytes) }
                    }
                }
            })
        }
        func permutedVector(_ name: String, _ values: [Float], heads: Int) {
            let perHead = values.count / heads
            vector(name, (0..<values.count).map { r in
                let head = r / perHead, i = r % perHead
                return values[head * perHead + (i % 2) * (perHead / 2) + i / 2]
            })
        }
        try matrix(naming.stored(.embedding), [weights.embedding], quantized: false)
        for (l, layer) in weights.layers.enumerated() {
            vector(naming.stored(.inputNorm(layer: l)), layer.inputNorm)
            guard let a = layer.attention as? GroupedQueryAttention else {
                throw ModelError("\(path): layer \(l)'s attention has no GGUF form here")
            }
            // A GGUF source's q/k rows are permuted already (it runs with adjacent-pair rotary).
            let permute = permuted && !config.interleavedRotary
            let q = permute ? config.headCount : nil, k = permute ? config.keyValueHeadCount : nil
            try matrix(naming.stored(.attention(layer: l, .query)), [a.query], quantized: all, heads: q)
            try matrix(naming.stored(.attention(layer: l, .key)), [a.key], quantized: all, heads: k)
            try matrix(naming.stored(.attention(layer: l, .value)), [a.value], quantized: all)
            try matrix(naming.stored(.attention(layer: l, .output)), [a.output], quantized: all)
            if let b = a.queryBias { if let q { permutedVector(naming.stored(.attention(layer: l, .queryBias)), b, heads: q) } else { vector(naming.stored(.attention(layer: l, .queryBias)), b) } }
            if let b = a.keyBias { if let k { permutedVector(naming.stored(.attention(layer: l, .keyBias)), b, heads: k) } else { vector(naming.stored(.attention(layer: l, .keyBias)), b) } }
            if let b = a.valueBias { vector(naming.stored(.attention(layer: l, .valueBias)), b) }
            if let b = a.outputBias { vector(naming.stored(.attention(layer: l, .outputBias)), b) }
            if let n = a.queryNorm { vector(naming.stored(.attention(layer: l, .queryNorm)), n) }
            if let n = a.keyNorm { vector(naming.stored(.attention(layer: l, .keyNorm)), n) }
            vector(naming.stored(.postAttentionNorm(layer: l)), layer.postAttentionNorm)
            switch layer.feedForward {
            case .dense(let f):
                try matrix(naming.stored(.mlp(layer: l, .gate)), [f.gate], quantized: all)
                try matrix(naming.stored(.mlp(layer: l, .up)), [f.up], quantized: all)
                try matrix(naming.stored(.mlp(layer: l, .down)), [f.down], quantized: all)
            case .mixtureOfExperts(let m):
                guard m.routerBias == nil, m.routerLogitBias == nil, m.experts.allSatisfy({ $0.biases == nil && $0.activation == .swiGLU }) else {
                    throw ModelError("\(path): layer \(l)'s experts have biases or an activation with no GGUF form here")
                }
                try matrix(naming.stored(.router(layer: l)), [m.router], quantized: false)
                for p in [TensorName.Projection.gate, .up, .down] {
                    let name = String(naming.stored(.expert(layer: l, expert: 0, p)).dropLast("[0]".count))
                    try matrix(name, m.experts.map { p == .gate ? $0.gate : p == .up ? $0.up : $0.down }, quantized: true)
                }
                if let shared = m.sharedExpert {
                    try matrix(naming.stored(.sharedExpert(layer: l, .gate)), [shared.gate], quantized: all)
                    try matrix(naming.stored(.sharedExpert(layer: l, .up)), [shared.up], quantized: all)
                    try matrix(naming.stored(.sharedExpert(layer: l, .down)), [shared.down], quantized: all)
                }
                if let gate = m.sharedExpertGate {
                    vector(naming.stored(.sharedExpertGate(layer: l)), (0..<gate.columns).map { gate.value(0, $0) })
                }
            }
        }
        vector(naming.stored(.finalNorm), weights.finalNorm)
        if !config.tieWordEmbeddings { try matrix(naming.stored(.outputHead), [weights.lmHead], quantized: all) }
        do { try GGUFWriter.write(metadata: metadata, tensors: tensors, to: output) } catch { throw ModelError(error.description) }
        return (converted, tensors.reduce(0) { $0 + $1.byteCount })
    }

    static func lastComponent(_ path: String) -> String {
        String(path.split(separator: "/").last ?? Substring(path))
    }
}
