import Kernels
import SafeTensors
import SwitchyardSupport

/// Where a model's tensors come from: a checkpoint on disk, or random values (`--random-weights`)
/// for benchmarking models whose files cannot be had.
public protocol TensorSource: AnyObject, Sendable {
    /// The tensor called `name`; `shape` is what config.json implies (a checkpoint is checked
    /// against it by the caller, random weights are made with it).
    func tensor(_ name: String, shape: [Int]) throws(ModelError) -> TensorView
    /// Whether an optional tensor (a bias, a separate output head) exists.
    func contains(_ name: String) -> Bool
    /// Every tensor the model has, for parameter counts and sizes.
    var allTensors: [TensorView] { get }
    /// The block format of a tensor `switchyard quantize` wrote (stored as U8, its last dimension
    /// in bytes), or nil for a tensor stored as its values.
    func storedQuantization(of name: String) -> WeightQuantization.Format?
}

/// The safetensors metadata key that marks a quantised tensor (value: its format, e.g. "q8_0").
public func quantizationMetadataKey(_ tensor: String) -> String { "switchyard.quantization." + tensor }

/// The tensors of safetensors files, read in place.
final class CheckpointTensors: TensorSource {
    let checkpoint: Checkpoint
    init(_ checkpoint: Checkpoint) { self.checkpoint = checkpoint }

    func tensor(_ name: String, shape: [Int]) throws(ModelError) -> TensorView {
        do { return try checkpoint.tensor(name) } catch { throw ModelError(error.description) }
    }

    func contains(_ name: String) -> Bool { checkpoint.contains(name) }
    var allTensors: [TensorView] { checkpoint.allTensors }

    func storedQuantization(of name: String) -> WeightQuantization.Format? {
        guard let view = try? checkpoint.tensor(name), view.dtype == .u8,
              let file = checkpoint.files.first(where: { $0.path == view.file }),
              let format = file.metadata[quantizationMetadataKey(name)] else { return nil }
        return WeightQuantization.Format(rawValue: format)
    }
}

/// Random weights of the shapes config.json implies and a chosen dtype, made when first asked for:
/// normal-like values of standard deviation 0.02 (uniform in ±0.02·√3), norm weights near 1.
final class RandomTensors: TensorSource, @unchecked Sendable {
    let config: DecoderConfig
    let dtype: DType
    let pool: ThreadPool
    private var made: [TensorView] = []
    private var seed: UInt64 = 0x5EED

    /// Owns the memory of one random tensor.
    final class Buffer {
        let pointer: UnsafeMutableRawPointer
        init(bytes: Int) { pointer = .allocate(byteCount: max(bytes, 1), alignment: 64) }
        deinit { pointer.deallocate() }
    }

    init(config: DecoderConfig, dtype: DType, pool: ThreadPool) {
        self.config = config
        self.dtype = dtype
        self.pool = pool
    }

    func contains(_ name: String) -> Bool {
        let c = config
        if name == "lm_head.weight" { return !c.tieWordEmbeddings }
        if name.hasSuffix("experts.gate_up_proj") { return false }
        if name.hasSuffix("o_proj.bias") { return c.outputBias }
        if name.hasSuffix("q_proj.bias") || name.hasSuffix("k_proj.bias") || name.hasSuffix("v_proj.bias") { return c.queryKeyValueBias }
        return true
    }

    var allTensors: [TensorView] { made }

    func storedQuantization(of name: String) -> WeightQuantization.Format? { nil }

    func tensor(_ name: String, shape: [Int]) throws(ModelError) -> TensorView {
        let count = shape.reduce(1, *)
        let buffer = Buffer(bytes: count * dtype.byteSize)
        let isNorm = shape.count == 1 && name.contains("norm")
        seed &+= 0x9E37_79B9_7F4A_7C15
        fillRandom(buffer.pointer, count: count, center: isNorm ? 1 : 0, halfWidth: isNorm ? 0.1 : 0.02 * 3.0.squareRoot(), seed: seed)
        let view = TensorView(name: name, dtype: dtype, shape: shape, data: UnsafeRawPointer(buffer.pointer),
                              byteCount: count * dtype.byteSize, file: "(random weights)", owner: buffer)
        made.append(view)
        return view
    }

    private func fillRandom(_ p: UnsafeMutableRawPointer, count: Int, center: Double, halfWidth: Double, seed: UInt64) {
        let chunk = 1 << 16
        let dtype = self.dtype
        pool.parallelFor((count + chunk - 1) / chunk) { item in
            var state = seed ^ (UInt64(item) &* 0xD1B5_4A32_D192_ED03)
            for i in (item * chunk)..<min(count, (item + 1) * chunk) {
                // xorshift64*: fast and good enough for benchmark weights.
                state ^= state >> 12; state ^= state << 25; state ^= state >> 27
                let unit = Double((state &* 0x2545_F491_4F6C_DD1D) >> 11) * 0x1.0p-53
                let value = Float(center + (2 * unit - 1) * halfWidth)
                switch dtype {
                case .bf16: p.storeBytes(of: UInt16(truncatingIfNeeded: value.bitPattern >> 16), toByteOffset: 2 * i, as: UInt16.self)
                case .f16: p.storeBytes(of: Float16(value), toByteOffset: 2 * i, as: Float16.self)
                default: p.storeBytes(of: value, toByteOffset: 4 * i, as: Float.self)
                }
            }
        }
    }
}
