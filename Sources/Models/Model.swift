import Kernels
import SafeTensors
import SwitchyardJSON
import SwitchyardSupport
import WeightFiles

/// A loaded model: its configuration, its weights bound by name, and the device it computes on.
/// Immutable and shareable; each sequence runs in its own `Session`.
public final class Model: @unchecked Sendable {
    public let directory: String
    public let config: DecoderConfig
    /// Where the weights come from: the folder's safetensors, or random values.
    public let tensors: TensorSource
    /// The weights the forward pass reads; `place(_:executor:)` may repoint them (to copies in an
    /// accelerator's memory) before the first forward pass.
    public private(set) var weights: DecoderWeights
    /// Runs the routed experts across tiers and devices when set; in place on `device` when nil.
    public private(set) var expertExecutor: ExpertExecutor?
    public let rotary: RotaryEmbedding
    public let device: ComputeDevice
    /// Threads for the host-side work between weight products (attention, norms).
    public let pool: ThreadPool
    /// How weights were converted at load, if they were.
    public let quantization: WeightQuantization?
    /// The memory of converted, regrouped or copied weights.
    let quantizedStorage: [OwnedBytes]
    /// How each safetensors file came to be mapped, with `.mappedInHugePages`; empty otherwise (and
    /// when stored Q8_0/Q4_0 weights are regrouped for int8 activations: they are copied out).
    public private(set) var hugePageResidency: [HugePageResidency] = []

    /// A routed expert (or, in a dense model, the first layer's MLP): the shape and element of the
    /// products that dominate the forward pass.
    public var sampleExpert: FeedForwardWeights? {
        for layer in weights.layers {
            switch layer.feedForward {
            case .mixtureOfExperts(let m): if let e = m.experts.first { return e }
            case .dense(let f): return f
            }
        }
        return nil
    }

    /// The safetensors files behind the weights; nil for random weights.
    public var checkpoint: Checkpoint? { (tensors as? CheckpointTensors)?.checkpoint }

    /// How the weights used as stored (not converted) are held in memory.
    public enum WeightResidency: Sendable {
        /// In the files' mappings, read when first used: the tiers read experts on demand.
        case mapped
        /// In the files' mappings, read in at load and mapped with 2 MiB pages where the kernel can
        /// (`MappedFile.holdInHugePages`): for a model held wholly in memory.
        case mappedInHugePages
        /// Copied out of the mappings into anonymous 2 MiB pages, the files' pages released (`--no-mmap`).
        case copied
    }

    public static var supportedModelTypes: [String] { Architectures.supportedModelTypes }

    /// - Parameter randomWeights: ignore the folder's weights (it needs only config.json) and use
    ///   random values of the right shapes, in the dtype config.json names (bf16 by default).
    /// - Parameter quantization: convert weights at load (experts only by default).
    public convenience init(directory: String, threads: Int? = nil, randomWeights: Bool = false, quantization: WeightQuantization? = nil) throws(ModelError) {
        let pool = threads.map { ThreadPool(threads: $0) } ?? .shared
        try self.init(directory: directory, device: CPUDevice(pool: pool), pool: pool, randomWeights: randomWeights, quantization: quantization)
    }

    /// - Parameter regroup: with int8 activations on `device`, regroup Q8_0 and Q4_0 weights for
    ///   the integer kernels (GroupedBlocks); false keeps them as stored (the disk tier reads
    ///   experts from the files, so it needs the stored layout).
    /// - Parameter residency: how the weights read from the files are held (mapped and read when
    ///   first used by default).
    public init(
        directory: String, device: ComputeDevice, pool: ThreadPool, randomWeights: Bool = false,
        quantization: WeightQuantization? = nil, regroup: Bool = true, residency: WeightResidency = .mapped
    ) throws(ModelError) {
        self.directory = directory
        config = try Model.readConfig(directory: directory)
        if randomWeights {
            tensors = RandomTensors(config: config, dtype: try Model.storedDType(directory: directory), pool: pool)
        } else {
            let checkpoint: Checkpoint
            do {
                checkpoint = try Checkpoint(directory: directory)
            } catch {
                throw ModelError(error.description)
            }
            // Quantised weights regrouped below are copied out and their file pages released as
            // they go; reading the whole file in first would hold both at once.
            let regroupsStored = regroup && device.precision == .int8
                && checkpoint.files.contains { $0.metadata.keys.contains { $0.hasPrefix(quantizationMetadataKey("")) } }
            if residency == .mappedInHugePages && !regroupsStored {
                // Before converting at load, so the weights kept as stored are read in 2 MiB pages.
                hugePageResidency = checkpoint.files.map { $0.mapping.holdInHugePages() }
            }
            tensors = CheckpointTensors(checkpoint)
        }
        let bound = try DecoderWeights.bind(config, from: tensors)
        var storage: [OwnedBytes] = []
        var weights = quantization.map { bound.quantized($0, pool: pool, storage: &storage) } ?? bound
        if regroup && device.precision == .int8 {
            weights = weights.regrouped(pool: pool, storage: &storage, fileBacked: tensors is CheckpointTensors)
        }
        if residency == .copied && tensors is CheckpointTensors {
            weights = weights.copiedToHugePages(pool: pool, storage: &storage)
        }
        self.weights = weights
        quantizedStorage = storage
        self.quantization = quantization
        rotary = RotaryEmbedding(config.rope, headDim: config.headDim, maxPositions: config.maxPositions)
        self.device = device
        self.pool = pool
    }

    /// Reads config.json, and the EOS tokens from generation_config.json when it has them.
    public static func readConfig(directory: String) throws(ModelError) -> DecoderConfig {
        let path = directory + "/config.json"
        guard fileExists(path) else { throw ModelError("\(directory): no config.json (is this a Hugging Face model folder?)") }
        var config = try Architectures.decoderConfig(try readJSON(path), file: path)
        let generationPath = directory + "/generation_config.json"
        if fileExists(generationPath) {
            let generation = try ConfigReader(try readJSON(generationPath), file: generationPath)
            if let eos = try generation.tokenIDs("eos_token_id") { config.eosTokenIDs = eos }
            if let bos = try generation.optionalInt("bos_token_id") { config.bosTokenID = bos }
        }
        return config
    }

    /// The dtype config.json says the weights are stored in (`torch_dtype`, or transformers 5's `dtype`).
    public static func storedDType(directory: String) throws(ModelError) -> DType {
        let path = directory + "/config.json"
        let config = try ConfigReader(try readJSON(path), file: path)
        var name = try config.string("dtype")
        if name == nil { name = try config.string("torch_dtype") }
        switch name ?? "bfloat16" {
        case "bfloat16": return .bf16
        case "float16": return .f16
        case "float32": return .f32
        case let other: throw ModelError("\(path): dtype '\(other)' cannot be used for random weights (bfloat16, float16, float32)")
        }
    }

    /// Hands the model to an orchestrator before any forward pass: it may repoint weights (to copies
    /// it made) and take over the routed experts. Not safe while a forward pass runs.
    public func place(_ transform: (inout DecoderWeights) throws(ModelError) -> Void, executor: ExpertExecutor?) throws(ModelError) {
        try transform(&weights)
        expertExecutor = executor
    }

    public func makeSession(contextLength: Int? = nil) -> Session {
        Session(model: self, capacity: min(contextLength ?? config.maxPositions, config.maxPositions))
    }
}

public func readJSON(_ path: String) throws(ModelError) -> JSONValue {
    let bytes: [UInt8]
    do { bytes = try readFileBytes(path) } catch { throw ModelError(error.description) }
    do { return try JSONValue.parse(bytes) } catch { throw ModelError("\(path): malformed JSON: \(error)") }
}

/// A growable float buffer that keeps its memory between forward passes.
public final class FloatBuffer {
    public private(set) var pointer: UnsafeMutablePointer<Float>
    public private(set) var count: Int

    public init(_ count: Int = 0) {
        self.count = max(count, 1)
        pointer = .allocate(capacity: self.count)
    }

    public func reserve(_ needed: Int) {
        if needed <= count { return }
        pointer.deallocate()
        count = needed
        pointer = .allocate(capacity: needed)
    }

    deinit { pointer.deallocate() }
}

/// Work memory of forward passes, sized for the largest step seen so far and kept between steps.
/// One workspace serves one forward pass at a time.
public final class Workspace {
    public init() {}

    /// Called for every MoE layer of every step with the layer index and, per token of the step,
    /// the experts it was routed to (in rank order): routing profiles, traces.
    public var routingObserver: ((_ layer: Int, _ expertsPerToken: [[Int]]) -> Void)?

    let residual = FloatBuffer(), normed = FloatBuffer()
    let query = FloatBuffer(), key = FloatBuffer(), value = FloatBuffer()
    let attention = FloatBuffer(), projected = FloatBuffer(), scores = FloatBuffer()
    let gate = FloatBuffer(), up = FloatBuffer()
    let routerLogits = FloatBuffer(), gathered = FloatBuffer(), expertOutput = FloatBuffer()
    let cosSin = FloatBuffer()
}
