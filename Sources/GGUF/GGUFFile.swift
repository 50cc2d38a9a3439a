import Synchronization
import SwitchyardSupport
import WeightFiles

/// Anything wrong with a GGUF file; the message names the file and the key or tensor.
public struct GGUFError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A metadata value of a GGUF file, of any of the format's thirteen types. Strings are kept as
/// their bytes: a vocabulary's tokens need not be valid UTF-8.
public indirect enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool)
    case string([UInt8])
    /// An array: its element type's number and the values.
    case array(elementType: UInt32, [GGUFValue])

    /// An integer of any width (nil for other types, or an unsigned value past Int.max).
    public var intValue: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        case .bool(let v): return v ? 1 : 0
        default: return nil
        }
    }

    /// A number of any type as a Double.
    public var doubleValue: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return intValue.map(Double.init)
        }
    }

    public var boolValue: Bool? {
        if case .bool(let v) = self { return v }
        return nil
    }

    public var stringBytes: [UInt8]? {
        if case .string(let v) = self { return v }
        return nil
    }

    public var stringValue: String? { stringBytes.map { String(decoding: $0, as: UTF8.self) } }

    public var arrayValue: [GGUFValue]? {
        if case .array(_, let v) = self { return v }
        return nil
    }

    /// The type's name as the format lists them, for messages.
    public var typeName: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .uint16: return "uint16"
        case .int16: return "int16"
        case .uint32: return "uint32"
        case .int32: return "int32"
        case .uint64: return "uint64"
        case .int64: return "int64"
        case .float32: return "float32"
        case .float64: return "float64"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        }
    }

    /// A short rendering for `info` (arrays as their length).
    public var summary: String {
        switch self {
        case .string: return "\"" + (stringValue ?? "") + "\""
        case .array(_, let values): return "[\(values.count) values]"
        case .float32(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        case .bool(let v): return "\(v)"
        default: return intValue.map(String.init) ?? "\(self)"
        }
    }
}

/// One tensor of a GGUF file: its type, its shape and where its bytes are.
public struct GGUFTensorInfo: @unchecked Sendable {
    public let name: String
    public let type: GGMLType
    /// ggml's order: the innermost (a row's length) first.
    public let dimensions: [Int]
    /// Offset from the start of the file's data section.
    public let offset: Int
    public let byteCount: Int
    /// The bytes, inside the file's mapping.
    public let data: UnsafeRawPointer

    /// Row-major shape, outermost first (a matrix is [rows, columns]).
    public var shape: [Int] { dimensions.reversed() }
    public var elementCount: Int { dimensions.reduce(1, *) }
}

/// A parsed and validated GGUF file (versions 2 and 3, little-endian), its tensor data mapped.
///
/// Every count, length and offset is checked against the bytes that remain before it is used:
/// a truncated file, an absurd count, a tensor outside the data section, two tensors overlapping,
/// a row that is not whole blocks, an alignment that is not a power of two are errors naming the
/// key or tensor, never a read past the mapping.
public final class GGUFFile: @unchecked Sendable {
    public let mapping: MappedFile
    public let version: Int
    /// Metadata in file order (keys are unique).
    public let keys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let tensorsByName: [String: Int]
    public let alignment: Int
    /// Where the data section starts in the file.
    public let dataOffset: Int

    public var path: String { mapping.path }

    /// Most dimensions a ggml tensor has.
    public static let maxDimensions = 4
    /// Arrays nest at most this deep (the format allows arrays of arrays; no real file goes past 2).
    static let maxArrayDepth = 4

    public convenience init(path: String) throws(GGUFError) {
        let mapping: MappedFile
        do { mapping = try MappedFile(path: path) } catch { throw GGUFError(error.description) }
        try self.init(mapping: mapping)
    }

    /// The file at `path` parsed once for the whole process: the model, its tokenizer and (for chat
    /// and the server) its chat template each read a GGUF file's metadata, and a vocabulary of
    /// 151,000 strings took 65 ms to parse (AMD EPYC Zen 4); `generate` parsed its file twice. A file
    /// replaced (another inode), resized, or whose bytes before the tensor data differ from those
    /// parsed (rewritten in place) is parsed again. The last one parsed stays held (the tokenizer and
    /// the template drop theirs before or after the model takes its own); others go with their holders.
    public static func shared(path: String) throws(GGUFError) -> GGUFFile {
        var info = stat()
        guard stat(path, &info) == 0 else { return try GGUFFile(path: path) }  // GGUFFile names the error
        let identity = [UInt64(info.st_dev), UInt64(info.st_ino), UInt64(info.st_size)]
        return try opened.withLock { (state: inout OpenedFiles) throws(GGUFError) -> GGUFFile in
            // The mapping shows the file's bytes as they are now; the entry keeps those the parse read.
            if let entry = state.files[path], entry.identity == identity, let file = entry.file,
               entry.header.withUnsafeBytes({ memcmp($0.baseAddress!, file.mapping.base, $0.count) == 0 }) {
                return file
            }
            let file = try GGUFFile(path: path)
            state.files = state.files.filter { $0.value.file != nil }
            let header = [UInt8](UnsafeRawBufferPointer(start: file.mapping.base, count: min(file.dataOffset, file.mapping.size)))
            state.files[path] = OpenedFile(file: file, identity: identity, header: header)
            state.last = file
            return file
        }
    }

    private struct OpenedFile {
        weak var file: GGUFFile?
        /// Device, inode and size when parsed.
        let identity: [UInt64]
        let header: [UInt8]
    }

    private struct OpenedFiles {
        var files: [String: OpenedFile] = [:]
        var last: GGUFFile?
    }

    private static let opened = Mutex(OpenedFiles())

    public init(mapping: MappedFile) throws(GGUFError) {
        self.mapping = mapping
        var reader = Reader(base: mapping.base, size: mapping.size, path: mapping.path)
        let magic = try reader.bytes(4, what: "the magic number")
        guard magic == Array("GGUF".utf8) else {
            throw GGUFError("\(mapping.path): not a GGUF file (it starts with \(magic.map { String($0, radix: 16) }), not 'GGUF')")
        }
        let version = try reader.u32(what: "the version")
        guard version == 2 || version == 3 else {
            if version.byteSwapped == 2 || version.byteSwapped == 3 {
                throw GGUFError("\(mapping.path): a big-endian GGUF file; only little-endian files are read")
            }
            throw GGUFError("\(mapping.path): GGUF version \(version) is not supported (2 and 3 are)")
        }
        self.version = Int(version)
        let tensorCount = try reader.count(what: "the tensor count", minimumBytesEach: 32)
        let keyCount = try reader.count(what: "the metadata count", minimumBytesEach: 12)
        var keys: [String] = []
        var metadata: [String: GGUFValue] = [:]
        keys.reserveCapacity(keyCount)
        for index in 0..<keyCount {
            let key = try reader.string(what: "metadata key \(index)")
            let name = String(decoding: key, as: UTF8.self)
            guard metadata[name] == nil else { throw GGUFError("\(mapping.path): metadata key '\(name)' appears twice") }
            let type = try reader.u32(what: "the type of metadata '\(name)'")
            metadata[name] = try reader.value(type: type, key: name, depth: 0)
            keys.append(name)
        }
        var alignment = 32
        if let value = metadata["general.alignment"] {
            guard case .uint32(let a) = value else {
                throw GGUFError("\(mapping.path): metadata 'general.alignment' is a \(value.typeName), expected uint32")
            }
            guard a > 0, a & (a - 1) == 0, a <= 1 << 20 else {
                throw GGUFError("\(mapping.path): metadata 'general.alignment' = \(a) is not a power of two up to 2^20")
            }
            alignment = Int(a)
        }
        struct Pending { let name: String; let type: GGMLType; let dimensions: [Int]; let offset: Int; let byteCount: Int }
        var pending: [Pending] = []
        var byName: [String: Int] = [:]
        pending.reserveCapacity(tensorCount)
        for index in 0..<tensorCount {
            let name = String(decoding: try reader.string(what: "the name of tensor \(index)"), as: UTF8.self)
            guard byName[name] == nil else { throw GGUFError("\(mapping.path): tensor '\(name)' appears twice") }
            let dimensionCount = try reader.u32(what: "tensor '\(name)''s dimension count")
            guard (1...UInt32(Self.maxDimensions)).contains(dimensionCount) else {
                throw GGUFError("\(mapping.path): tensor '\(name)' has \(dimensionCount) dimensions (1 to \(Self.maxDimensions))")
            }
            var dimensions: [Int] = []
            var elements = 1
            for d in 0..<Int(dimensionCount) {
                let raw = try reader.u64(what: "tensor '\(name)''s dimension \(d)")
                guard raw <= UInt64(Int32.max) * 64 else {
                    throw GGUFError("\(mapping.path): tensor '\(name)' dimension \(d) is \(raw), too large")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(raw))
                guard !overflow, product <= Int(Int32.max) * 64 else {
                    throw GGUFError("\(mapping.path): tensor '\(name)' has too many elements")
                }
                elements = product
                dimensions.append(Int(raw))
            }
            let type = GGMLType(rawValue: try reader.u32(what: "tensor '\(name)''s type"))
            guard type.isKnown else { throw GGUFError("\(mapping.path): tensor '\(name)' has unknown ggml type \(type.rawValue)") }
            guard dimensions[0] % type.blockValues == 0 else {
                throw GGUFError("\(mapping.path): tensor '\(name)' (\(type)) has rows of \(dimensions[0]) values, not a multiple of its \(type.blockValues)-value blocks")
            }
            let rawOffset = try reader.u64(what: "tensor '\(name)''s offset")
            guard rawOffset <= UInt64(mapping.size) else {
                throw GGUFError("\(mapping.path): tensor '\(name)' has offset \(rawOffset), past the end of the file (\(mapping.size) bytes); the file is truncated or corrupt")
            }
            let offset = Int(rawOffset)
            guard offset % alignment == 0 else {
                throw GGUFError("\(mapping.path): tensor '\(name)' has offset \(offset), not a multiple of the alignment \(alignment)")
            }
            let byteCount = elements / type.blockValues * type.blockBytes
            byName[name] = index
            pending.append(Pending(name: name, type: type, dimensions: dimensions, offset: offset, byteCount: byteCount))
        }
        let dataOffset = (reader.offset + alignment - 1) / alignment * alignment
        let dataSize = max(0, mapping.size - dataOffset)
        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(pending.count)
        for p in pending {
            guard p.offset + p.byteCount <= dataSize, dataOffset <= mapping.size else {
                throw GGUFError("\(mapping.path): tensor '\(p.name)' (\(p.type) \(p.dimensions)) needs bytes \(p.offset) to \(p.offset + p.byteCount) of the data section, which has \(dataSize); the file is truncated")
            }
            tensors.append(GGUFTensorInfo(name: p.name, type: p.type, dimensions: p.dimensions, offset: p.offset, byteCount: p.byteCount,
                                          data: mapping.base + dataOffset + p.offset))
        }
        let ordered = tensors.sorted { $0.offset != $1.offset ? $0.offset < $1.offset : $0.byteCount < $1.byteCount }
        for i in ordered.indices.dropFirst() where ordered[i].offset < ordered[i - 1].offset + ordered[i - 1].byteCount && ordered[i].byteCount > 0 {
            throw GGUFError("\(mapping.path): tensors '\(ordered[i - 1].name)' and '\(ordered[i].name)' overlap in the data section")
        }
        self.keys = keys
        self.metadata = metadata
        self.tensors = tensors
        self.tensorsByName = byName
        self.alignment = alignment
        self.dataOffset = dataOffset
    }

    public func tensor(_ name: String) -> GGUFTensorInfo? { tensorsByName[name].map { tensors[$0] } }
}

/// Reads the header's little-endian fields, each checked against the bytes left.
struct Reader {
    let base: UnsafeRawPointer
    let size: Int
    let path: String
    var offset = 0

    init(base: UnsafeRawPointer, size: Int, path: String) {
        self.base = base
        self.size = size
        self.path = path
    }

    var remaining: Int { size - offset }

    mutating func need(_ n: Int, what: @autoclosure () -> String) throws(GGUFError) {
        guard n >= 0, n <= remaining else {
            throw GGUFError("\(path): truncated GGUF file: \(what()) needs \(n) bytes at offset \(offset), the file has \(remaining) left")
        }
    }

    mutating func load<T: FixedWidthInteger>(_ type: T.Type, what: @autoclosure () -> String) throws(GGUFError) -> T {
        try need(MemoryLayout<T>.size, what: what())
        let v = T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func u32(what: @autoclosure () -> String) throws(GGUFError) -> UInt32 { try load(UInt32.self, what: what()) }
    mutating func u64(what: @autoclosure () -> String) throws(GGUFError) -> UInt64 { try load(UInt64.self, what: what()) }

    mutating func bytes(_ n: Int, what: @autoclosure () -> String) throws(GGUFError) -> [UInt8] {
        try need(n, what: what())
        let out = Array(UnsafeRawBufferPointer(start: base + offset, count: n))
        offset += n
        return out
    }

    /// A count of items each at least `minimumBytesEach` long: more than the bytes left can hold is
    /// a corrupt or truncated file, found before anything is reserved for them.
    mutating func count(what: @autoclosure () -> String, minimumBytesEach: Int) throws(GGUFError) -> Int {
        let raw = try u64(what: what())
        guard raw <= UInt64(remaining / max(1, minimumBytesEach)) else {
            throw GGUFError("\(path): \(what()) is \(raw), more than the \(remaining) bytes left can hold; the file is truncated or corrupt")
        }
        return Int(raw)
    }

    mutating func string(what: @autoclosure () -> String) throws(GGUFError) -> [UInt8] {
        let length = try u64(what: what())
        guard length <= UInt64(remaining) else {
            throw GGUFError("\(path): truncated GGUF file: \(what()) is a string of \(length) bytes at offset \(offset), the file has \(remaining) left")
        }
        return try bytes(Int(length), what: what())
    }

    /// Bytes of the smallest value of a type (for bounding an array's count).
    static func minimumBytes(_ type: UInt32) -> Int {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        case 9: return 12
        default: return 1
        }
    }

    mutating func value(type: UInt32, key: String, depth: Int) throws(GGUFError) -> GGUFValue {
        let what = "metadata '\(key)'"
        switch type {
        case 0: return .uint8(try load(UInt8.self, what: what))
        case 1: return .int8(try load(Int8.self, what: what))
        case 2: return .uint16(try load(UInt16.self, what: what))
        case 3: return .int16(try load(Int16.self, what: what))
        case 4: return .uint32(try load(UInt32.self, what: what))
        case 5: return .int32(try load(Int32.self, what: what))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self, what: what)))
        case 7:
            let b = try load(UInt8.self, what: what)
            guard b <= 1 else { throw GGUFError("\(path): \(what) is a bool stored as \(b) (0 or 1)") }
            return .bool(b == 1)
        case 8: return .string(try string(what: what))
        case 9:
            guard depth < GGUFFile.maxArrayDepth else { throw GGUFError("\(path): \(what) nests arrays deeper than \(GGUFFile.maxArrayDepth)") }
            let elementType = try u32(what: what + "'s element type")
            guard elementType <= 12 else { throw GGUFError("\(path): \(what) is an array of unknown type \(elementType)") }
            let n = try count(what: what + "'s length", minimumBytesEach: Self.minimumBytes(elementType))
            var values: [GGUFValue] = []
            values.reserveCapacity(n)
            for _ in 0..<n { values.append(try value(type: elementType, key: key, depth: depth + 1)) }
            return .array(elementType: elementType, values)
        case 10: return .uint64(try load(UInt64.self, what: what))
        case 11: return .int64(try load(Int64.self, what: what))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self, what: what)))
        default: throw GGUFError("\(path): \(what) has unknown value type \(type)")
        }
    }
}

/// Whether `path` is a file (not a folder) that starts with GGUF's magic number.
public func isGGUFFile(_ path: String) -> Bool {
    guard let file = fopen(path, "rb") else { return false }
    defer { fclose(file) }
    var info = stat()
    guard fstat(fileno(file), &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
    var magic = [UInt8](repeating: 0, count: 4)
    return fread(&magic, 1, 4, file) == 4 && magic == Array("GGUF".utf8)
}
