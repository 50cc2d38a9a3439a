import SwitchyardJSON
import SwitchyardSupport
import WeightFiles

/// Anything wrong with a checkpoint's files. The message names the file and, where there is one,
/// the tensor.
public struct CheckpointError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One tensor in a safetensors file: its type, shape and bytes (inside the file's mapping).
public struct TensorView: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    /// Row-major shape, outermost first, as PyTorch stores it (a Linear weight is [out, in]).
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let byteCount: Int
    /// Which file the bytes live in, for error messages and placement decisions.
    public let file: String
    /// Keeps the mapping alive as long as a view of it exists.
    public let owner: AnyObject?

    public init(name: String, dtype: DType, shape: [Int], data: UnsafeRawPointer, byteCount: Int, file: String, owner: AnyObject?) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
        self.byteCount = byteCount
        self.file = file
        self.owner = owner
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// A parsed and validated safetensors file.
///
/// Validation refuses any header that lies about the data: a header longer than the file,
/// malformed JSON, unknown dtypes, negative or absurd shapes, offsets outside the data section,
/// a byte range that does not match dtype x shape, or tensors that overlap.
public final class SafeTensorsFile: @unchecked Sendable {
    public let mapping: MappedFile
    public let metadata: [String: String]
    public let tensors: [String: TensorView]
    /// Tensor names in file order (by offset).
    public let names: [String]

    public var path: String { mapping.path }

    public convenience init(path: String) throws(CheckpointError) {
        let mapping: MappedFile
        do { mapping = try MappedFile(path: path) } catch { throw CheckpointError(error.description) }
        try self.init(mapping: mapping)
    }

    public init(mapping: MappedFile) throws(CheckpointError) {
        self.mapping = mapping
        let path = mapping.path
        let size = mapping.size
        guard size >= 8 else {
            throw CheckpointError("\(path): truncated safetensors file (\(size) bytes; the 8-byte header length is missing)")
        }
        let headerLength = Int(truncatingIfNeeded: mapping.base.loadUnaligned(as: UInt64.self).littleEndian)
        guard headerLength >= 2, headerLength <= 100_000_000 else {
            throw CheckpointError("\(path): invalid safetensors header length \(headerLength)")
        }
        guard 8 + headerLength <= size else {
            throw CheckpointError("\(path): truncated safetensors file: the header says it is \(headerLength) bytes but the file has \(size - 8) after the length")
        }
        let headerBytes = UnsafeRawBufferPointer(start: mapping.base + 8, count: headerLength)
        let header: JSONValue
        do {
            header = try JSONValue.parse(headerBytes)
        } catch {
            throw CheckpointError("\(path): malformed safetensors header: \(error)")
        }
        guard let object = header.objectValue else {
            throw CheckpointError("\(path): safetensors header is a JSON \(header.typeName), expected an object")
        }
        let dataStart = 8 + headerLength
        let dataSize = size - dataStart
        var metadata: [String: String] = [:]
        var tensors: [String: TensorView] = [:]
        var ranges: [(begin: Int, end: Int, name: String)] = []
        for (name, value) in object.entries {
            if name == "__metadata__" {
                if let meta = value.objectValue {
                    for (k, v) in meta.entries { metadata[k] = v.stringValue ?? v.serialized() }
                }
                continue
            }
            guard let info = value.objectValue else {
                throw CheckpointError("\(path): tensor '\(name)': header entry is a \(value.typeName), expected an object")
            }
            guard let dtypeName = info["dtype"]?.stringValue else {
                throw CheckpointError("\(path): tensor '\(name)': missing or non-string 'dtype'")
            }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw CheckpointError("\(path): tensor '\(name)': unknown dtype '\(dtypeName)' (known: \(DType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard let shapeArray = info["shape"]?.arrayValue else {
                throw CheckpointError("\(path): tensor '\(name)': missing or non-array 'shape'")
            }
            var shape: [Int] = []
            var elements = 1
            for dim in shapeArray {
                guard let d = dim.intValue, d >= 0 else {
                    throw CheckpointError("\(path): tensor '\(name)': invalid shape \(JSONValue.array(shapeArray).serialized())")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow, product <= Int(Int32.max) * 64 else {
                    throw CheckpointError("\(path): tensor '\(name)': shape \(JSONValue.array(shapeArray).serialized()) is too large")
                }
                elements = product
                shape.append(d)
            }
            guard let offsets = info["data_offsets"]?.arrayValue, offsets.count == 2,
                let begin = offsets[0].intValue, let end = offsets[1].intValue
            else {
                throw CheckpointError("\(path): tensor '\(name)': missing or invalid 'data_offsets'")
            }
            guard begin >= 0, begin <= end else {
                throw CheckpointError("\(path): tensor '\(name)': invalid data_offsets [\(begin), \(end)]")
            }
            guard end <= dataSize else {
                throw CheckpointError("\(path): tensor '\(name)': data_offsets [\(begin), \(end)] are outside the data section (\(dataSize) bytes); the file is truncated or the header is wrong")
            }
            let expected = elements * dtype.byteSize
            guard end - begin == expected else {
                throw CheckpointError("\(path): tensor '\(name)': \(end - begin) bytes stored, but \(dtype.rawValue) \(shape) needs \(expected)")
            }
            let pointer = mapping.base + dataStart + begin
            guard Int(bitPattern: pointer) % dtype.byteSize == 0 else {
                throw CheckpointError("\(path): tensor '\(name)': data is not aligned to its \(dtype.byteSize)-byte elements (the header length should be padded to a multiple of 8)")
            }
            tensors[name] = TensorView(name: name, dtype: dtype, shape: shape, data: pointer, byteCount: expected, file: path, owner: mapping)
            ranges.append((begin, end, name))
        }
        ranges.sort { $0.begin != $1.begin ? $0.begin < $1.begin : $0.end < $1.end }
        for i in ranges.indices.dropFirst() where ranges[i].begin < ranges[i - 1].end && ranges[i].end > ranges[i].begin {
            throw CheckpointError("\(path): tensors '\(ranges[i - 1].name)' and '\(ranges[i].name)' overlap in the data section")
        }
        self.metadata = metadata
        self.tensors = tensors
        self.names = ranges.map(\.name)
    }
}
