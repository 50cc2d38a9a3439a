import Kernels
import SwitchyardSupport
import WeightFiles

/// One stored tensor, in terms no file format owns: its element (block-quantised types are
/// elements in their own right), its logical shape in values, and its bytes.
public struct StoredTensor: @unchecked Sendable {
    /// The name in its file.
    public let name: String
    /// What the engine computes with, or nil for a type it cannot (named by `typeName`).
    public let element: WeightElement?
    /// The format's own name for the type ("BF16", "q8_0"), for messages and `info`.
    public let typeName: String
    /// Row-major shape in values, outermost first (a Linear weight is [out, in]).
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let byteCount: Int
    /// The file the bytes live in, for messages.
    public let file: String
    /// Keeps the memory alive as long as the tensor is.
    let owner: AnyObject?

    public init(name: String, element: WeightElement?, typeName: String, shape: [Int], data: UnsafeRawPointer, byteCount: Int,
                file: String, owner: AnyObject?) {
        self.name = name
        self.element = element
        self.typeName = typeName
        self.shape = shape
        self.data = data
        self.byteCount = byteCount
        self.file = file
        self.owner = owner
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// Where a model's tensors come from: a checkpoint's files, or random values (`--random-weights`)
/// for benchmarking models whose files cannot be had. Names are the format's own (a
/// `TensorNaming` maps logical names to them).
public protocol TensorSource: AnyObject, Sendable {
    /// The tensor stored as `name`; `shape` is what the config implies (a file's tensor is checked
    /// against it by the binder, random weights are made with it).
    func tensor(_ name: String, shape: [Int]) throws(ModelError) -> StoredTensor
    /// Whether an optional tensor (a bias, a separate output head) exists.
    func contains(_ name: String) -> Bool
    /// Every tensor the model has, for parameter counts and sizes.
    var allTensors: [StoredTensor] { get }
    /// The mapped files behind the tensors (the disk tier reads experts from them); empty for
    /// tensors that are not in files.
    var files: [MappedFile] { get }
}
