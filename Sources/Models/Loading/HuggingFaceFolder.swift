import Kernels
import SafeTensors
import SwitchyardJSON
import SwitchyardSupport
import WeightFiles

/// A Hugging Face model folder: config.json (and generation_config.json), and safetensors weights,
/// one file or shards. Tensors written by `switchyard quantize` are stored as U8 with their last
/// dimension in bytes and their block format named in the file's metadata; here they become
/// tensors of that element like any other.
public struct HuggingFaceFolder: ModelSource {
    public let directory: String
    public var path: String { directory }

    public init(directory: String) { self.directory = directory }

    /// A config.json's value as a decoder configuration (what `readConfig` does with the file).
    public static func decoderConfig(json: JSONValue, file: String) throws(ModelError) -> DecoderConfig {
        try Architectures.decoderConfig(json, file: file)
    }

    public func readConfig() throws(ModelError) -> DecoderConfig {
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
    public func storedElement() throws(ModelError) -> WeightElement {
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

    public func openTensors() throws(ModelError) -> TensorSource {
        do { return SafeTensorsSource(try Checkpoint(directory: directory)) } catch { throw ModelError(error.description) }
    }

    public func naming(for config: DecoderConfig) -> TensorNaming { config.naming }
}

/// The safetensors metadata key that marks a quantised tensor (value: its format, e.g. "q8_0").
public func quantizationMetadataKey(_ tensor: String) -> String { "switchyard.quantization." + tensor }

/// The tensors of safetensors files, read in place.
final class SafeTensorsSource: TensorSource {
    let checkpoint: Checkpoint
    private let tensors: [String: StoredTensor]

    init(_ checkpoint: Checkpoint) {
        self.checkpoint = checkpoint
        var tensors: [String: StoredTensor] = [:]
        for file in checkpoint.files {
            for (name, view) in file.tensors {
                tensors[name] = SafeTensorsSource.stored(view, quantization: file.metadata[quantizationMetadataKey(name)])
            }
        }
        self.tensors = tensors
    }

    /// A safetensors tensor as a format-neutral one: plain floats by their dtype; U8 marked in the
    /// metadata as its block format, with the last dimension converted from bytes to values.
    static func stored(_ view: TensorView, quantization: String?) -> StoredTensor {
        if view.dtype == .u8, let q = quantization.flatMap(WeightQuantization.Format.init(rawValue:)), let last = view.shape.last {
            let shape = view.shape.dropLast() + [q.element.columns(rowBytes: last)]
            return StoredTensor(name: view.name, element: q.element, typeName: q.rawValue.uppercased(), shape: Array(shape), data: view.data,
                                byteCount: view.byteCount, file: view.file, owner: view.owner)
        }
        let element: WeightElement?
        switch view.dtype {
        case .bf16: element = .bf16
        case .f16: element = .f16
        case .f32: element = .f32
        default: element = nil
        }
        return StoredTensor(name: view.name, element: element, typeName: view.dtype.rawValue, shape: view.shape, data: view.data,
                            byteCount: view.byteCount, file: view.file, owner: view.owner)
    }

    func tensor(_ name: String, shape: [Int]) throws(ModelError) -> StoredTensor {
        guard let t = tensors[name] else { throw ModelError("\(checkpoint.directory): tensor '\(name)' not found in the checkpoint") }
        return t
    }

    func contains(_ name: String) -> Bool { tensors[name] != nil }
    var allTensors: [StoredTensor] { Array(tensors.values) }
    var files: [MappedFile] { checkpoint.files.map(\.mapping) }
}
