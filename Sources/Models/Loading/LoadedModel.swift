import Kernels
import Runtime
import SwitchyardSupport
import WeightFiles

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

/// A model's configuration and weights as read, bound and converted at load, before anything
/// places them on a device: what the tiers place and a `Model` is made from.
public struct LoadedModel: @unchecked Sendable {
    public let source: ModelSource
    public let config: DecoderConfig
    /// Where the weights come from: the files' tensors, or random values.
    public let tensors: TensorSource
    public let weights: DecoderWeights
    /// How weights were converted at load, if they were.
    public let quantization: WeightQuantization?
    /// The memory of converted, regrouped or copied weights.
    let storage: [HostBuffer]
    /// How each weight file came to be mapped, with `.mappedInHugePages`; empty otherwise (and
    /// when stored Q8_0/Q4_0 weights are regrouped for int8 activations: they are copied out).
    public let hugePageResidency: [HugePageResidency]

    /// Reads and binds the model at `source`.
    /// - Parameters:
    ///   - randomWeights: ignore the stored weights (only the config is needed) and use random
    ///     values of the right shapes, in the element the config names (bf16 by default).
    ///   - quantization: convert weights at load (routed experts only by default).
    ///   - regroup: with int8 activations, regroup Q8_0 and Q4_0 weights for the integer kernels;
    ///     false keeps them as stored (the disk tier reads experts from the files as stored).
    ///   - residency: how the weights read from the files are held.
    ///   - checkTensors: refuse weights with a NaN or an infinity (a pass over every byte).
    public static func load(
        _ source: ModelSource, pool: ThreadPool, precision: ActivationPrecision = .f32, randomWeights: Bool = false,
        quantization: WeightQuantization? = nil, regroup: Bool = true, residency: WeightResidency = .mapped, checkTensors: Bool = false
    ) throws(ModelError) -> LoadedModel {
        let config = try source.readConfig()
        let tensors: TensorSource
        var hugePages: [HugePageResidency] = []
        if randomWeights {
            // The matrices --quantize converts are made random in their quantised format at once: a
            // model whose bf16 weights would not fit in memory can then be benchmarked.
            tensors = RandomTensors(config: config, element: try source.storedElement(), quantization: quantization, pool: pool)
        } else {
            tensors = try source.openTensors()
            // Quantised weights regrouped below are copied out and their file pages released as
            // they go; reading the whole file in first would hold both at once.
            let regroupsStored = regroup && precision.quantizesActivations && tensors.allTensors.contains { $0.element?.isBlockQuantized ?? false }
            if residency == .mappedInHugePages && !regroupsStored {
                // Before converting at load, so the weights kept as stored are read in 2 MiB pages.
                hugePages = tensors.files.map { $0.holdInHugePages() }
            }
        }
        if checkTensors {
            for t in tensors.allTensors {
                if let i = t.firstNonFinite(pool: pool) {
                    throw ModelError("\(t.file): tensor '\(t.name)' holds a NaN or an infinity (its \(t.element?.isBlockQuantized == true ? "block \(i)'s scale" : "value \(i)"))")
                }
            }
        }
        let bound = try DecoderWeights.bind(config, from: tensors, naming: randomWeights ? config.naming : source.naming(for: config))
        var storage: [HostBuffer] = []
        var weights = quantization.map { bound.quantized($0, pool: pool, storage: &storage) } ?? bound
        if regroup && precision.quantizesActivations {
            weights = weights.regrouped(pool: pool, storage: &storage, fileBacked: !tensors.files.isEmpty)
        }
        if residency == .copied && !tensors.files.isEmpty {
            weights = weights.copiedToHugePages(pool: pool, storage: &storage)
        }
        return LoadedModel(source: source, config: config, tensors: tensors, weights: weights, quantization: quantization,
                           storage: storage, hugePageResidency: hugePages)
    }

    /// The same model with its weights replaced (by placement: copies in an accelerator's memory).
    public func with(weights: DecoderWeights) -> LoadedModel {
        LoadedModel(source: source, config: config, tensors: tensors, weights: weights, quantization: quantization, storage: storage,
                    hugePageResidency: hugePageResidency)
    }
}
