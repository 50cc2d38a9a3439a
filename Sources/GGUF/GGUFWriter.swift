import SwitchyardSupport

/// Writes a GGUF file (version 3, little-endian) tensor by tensor, as SafeTensorsWriter does: the
/// header is computed from the sizes, then each tensor's bytes are produced and written, each
/// padded to the alignment. The file appears under its name only once complete.
public enum GGUFWriter {
    public struct Tensor {
        public var name: String
        public var type: GGMLType
        /// ggml's order: the row length first.
        public var dimensions: [Int]
        /// Fills the tensor's bytes.
        public var bytes: (UnsafeMutableRawPointer) -> Void

        public init(name: String, type: GGMLType, dimensions: [Int], bytes: @escaping (UnsafeMutableRawPointer) -> Void) {
            self.name = name
            self.type = type
            self.dimensions = dimensions
            self.bytes = bytes
        }

        public var byteCount: Int { dimensions.reduce(1, *) / type.blockValues * type.blockBytes }
    }

    /// The header's bytes: magic, version, counts, metadata and tensor infos, padded to `alignment`.
    public static func header(metadata: [(key: String, value: GGUFValue)], tensors: [Tensor], alignment: Int) -> [UInt8] {
        var out: [UInt8] = Array("GGUF".utf8)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func put(string: [UInt8]) { put(UInt64(string.count)); out += string }
        func typeNumber(_ v: GGUFValue) -> UInt32 {
            switch v {
            case .uint8: return 0
            case .int8: return 1
            case .uint16: return 2
            case .int16: return 3
            case .uint32: return 4
            case .int32: return 5
            case .float32: return 6
            case .bool: return 7
            case .string: return 8
            case .array: return 9
            case .uint64: return 10
            case .int64: return 11
            case .float64: return 12
            }
        }
        func put(value: GGUFValue) {
            switch value {
            case .uint8(let v): put(v)
            case .int8(let v): put(v)
            case .uint16(let v): put(v)
            case .int16(let v): put(v)
            case .uint32(let v): put(v)
            case .int32(let v): put(v)
            case .uint64(let v): put(v)
            case .int64(let v): put(v)
            case .float32(let v): put(v.bitPattern)
            case .float64(let v): put(v.bitPattern)
            case .bool(let v): put(UInt8(v ? 1 : 0))
            case .string(let s): put(string: s)
            case .array(let elementType, let values):
                put(elementType)
                put(UInt64(values.count))
                for v in values { put(value: v) }
            }
        }
        put(UInt32(3))
        put(UInt64(tensors.count))
        put(UInt64(metadata.count))
        for (key, value) in metadata {
            put(string: Array(key.utf8))
            put(typeNumber(value))
            put(value: value)
        }
        var offset = 0
        for t in tensors {
            put(string: Array(t.name.utf8))
            put(UInt32(t.dimensions.count))
            for d in t.dimensions { put(UInt64(d)) }
            put(t.type.rawValue)
            put(UInt64(offset))
            offset += (t.byteCount + alignment - 1) / alignment * alignment
        }
        while out.count % alignment != 0 { out.append(0) }
        return out
    }

    public static func write(metadata: [(key: String, value: GGUFValue)], tensors: [Tensor], to path: String) throws(GGUFError) {
        var alignment = 32
        if let a = metadata.first(where: { $0.key == "general.alignment" })?.value.intValue { alignment = a }
        let head = header(metadata: metadata, tensors: tensors, alignment: alignment)
        let temporary = path + ".partial"
        guard let file = fopen(temporary, "wb") else { throw GGUFError("\(path): cannot write: \(errorText())") }
        var ok = head.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) } == head.count
        let zeros = [UInt8](repeating: 0, count: alignment)
        for t in tensors where ok {
            let count = t.byteCount
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
            t.bytes(buffer)
            ok = fwrite(buffer, 1, count, file) == count
            buffer.deallocate()
            let pad = (alignment - count % alignment) % alignment
            if ok && pad > 0 { ok = zeros.withUnsafeBytes { fwrite($0.baseAddress, 1, pad, file) } == pad }
        }
        ok = fclose(file) == 0 && ok
        guard ok, rename(temporary, path) == 0 else {
            let reason = errorText()
            unlink(temporary)
            throw GGUFError("\(path): writing failed: \(reason)")
        }
    }
}
