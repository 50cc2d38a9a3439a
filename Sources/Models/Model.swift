import Kernels
import Runtime
import SwitchyardSupport
import WeightFiles

/// A model ready to run: its configuration, its weights where they were placed, the device that
/// computes with them, where attention runs (with the KV cache), and where the routed experts run.
/// Immutable once made, and shared by every sequence; each sequence runs in its own `Session`.
public final class Model: @unchecked Sendable {
    public let config: DecoderConfig
    /// The folder or file it was read from.
    public let directory: String
    public let tensors: TensorSource
    public let weights: DecoderWeights
    /// Runs the routed experts across tiers and devices when set; in place on `device` when nil.
    public let expertExecutor: ExpertExecutor?
    /// Where attention runs; its cache holds every session's keys and values.
    public let attention: AttentionExecutor
    public let rotary: RotaryEmbedding
    public let device: ComputeDevice
    /// Threads for the host-side work between weight products (attention, norms).
    public let pool: ThreadPool
    /// How weights were converted at load, if they were.
    public let quantization: WeightQuantization?
    public let hugePageResidency: [HugePageResidency]
    /// Keeps the memory of converted weights alive.
    let loaded: LoadedModel
    /// Prompt tokens new sessions push through the layers at once (`Session.chunkSize`).
    public var promptChunk = Model.defaultPromptChunk
    public static let defaultPromptChunk = 64
    /// How latent attention (DeepSeek) computes each step: by the cost of each form for the
    /// step's tokens and context (automatic), or always one form. Both give the same results
    /// within float32 rounding.
    public var latentAttentionForm = LatentAttentionForm.automatic

    /// - Parameters:
    ///   - loaded: the model as read; its weights are used unless placement gives `weights`.
    ///   - attention: where attention runs (on this host, over a host KV cache, by default).
    ///   - expertExecutor: where routed experts run (on `device` when nil).
    public init(
        _ loaded: LoadedModel, device: ComputeDevice, pool: ThreadPool, weights: DecoderWeights? = nil,
        attention: AttentionExecutor? = nil, expertExecutor: ExpertExecutor? = nil
    ) {
        self.loaded = loaded
        config = loaded.config
        directory = loaded.source.path
        tensors = loaded.tensors
        self.weights = weights ?? loaded.weights
        self.device = device
        self.pool = pool
        self.attention = attention ?? LocalAttention(cache: LocalKVCache(layout: loaded.config.kvLayout), pool: pool)
        self.expertExecutor = expertExecutor
        quantization = loaded.quantization
        hugePageResidency = loaded.hugePageResidency
        rotary = RotaryEmbedding(config.rope, headDim: config.headDim, maxPositions: config.maxPositions)
    }

    /// A model of the folder at `directory` on the CPU, its weights as `LoadedModel.load` reads them.
    public convenience init(
        directory: String, device: ComputeDevice, pool: ThreadPool, randomWeights: Bool = false,
        quantization: WeightQuantization? = nil, regroup: Bool = true, residency: WeightResidency = .mapped
    ) throws(ModelError) {
        let loaded = try LoadedModel.load(
            try ModelFormats.open(directory), pool: pool, precision: device.precision, randomWeights: randomWeights,
            quantization: quantization, regroup: regroup, residency: residency)
        self.init(loaded, device: device, pool: pool)
    }

    /// A model of the folder at `directory` on the CPU's `threads` (all cores by default).
    public convenience init(directory: String, threads: Int? = nil, randomWeights: Bool = false, quantization: WeightQuantization? = nil) throws(ModelError) {
        let pool = threads.map { ThreadPool(threads: $0) } ?? .shared
        try self.init(directory: directory, device: CPUDevice(pool: pool), pool: pool, randomWeights: randomWeights, quantization: quantization)
    }

    public static var supportedModelTypes: [String] { Architectures.supportedModelTypes }

    /// A routed expert (or, in a dense model, the first layer's MLP): the shape and element of the
    /// products that dominate the forward pass.
    public var sampleExpert: FeedForwardWeights? { weights.sampleExpert }

    /// A new sequence with room for `contextLength` positions (the model's maximum by default).
    public func makeSession(contextLength: Int? = nil) throws(ModelError) -> Session {
        try Session(model: self, capacity: min(contextLength ?? config.maxPositions, config.maxPositions))
    }
}

extension DecoderWeights {
    /// A routed expert (or, in a dense model, the first layer's MLP).
    public var sampleExpert: FeedForwardWeights? {
        for layer in layers {
            switch layer.feedForward {
            case .mixtureOfExperts(let m): if let e = m.experts.first { return e }
            case .dense(let f): return f
            }
        }
        return nil
    }
}
