import SwitchyardJSON
import SwitchyardSupport

/// Writes a safetensors file tensor by tensor, so a checkpoint larger than memory can be rewritten:
/// the header is computed from the sizes first, then each tensor's bytes are produced and written in
/// turn. The file appears under its name only once complete.
public enum SafeTensorsWriter {
    public struct Entry {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var byteCount: Int
        /// Fills `byteCount` bytes of the tensor.
        public var bytes: (UnsafeMutableRawPointer) -> Void

        public init(name: String, dtype: DType, shape: [Int], byteCount: Int, bytes: @escaping (UnsafeMutableRawPointer) -> Void) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.byteCount = byteCount
            self.bytes = bytes
        }
    }

    public static func write(_ entries: [Entry], metadata: [String: String], to path: String) throws(CheckpointError) {
        var header = JSONObject()
        if !metadata.isEmpty {
            var meta = JSONObject()
            for key in metadata.keys.sorted() { meta[key] = .string(metadata[key]!) }
            header["__metadata__"] = .object(meta)
        }
        var offset = 0
        for e in entries {
            var o = JSONObject()
            o["dtype"] = .string(e.dtype.rawValue)
            o["shape"] = .array(e.shape.map { .int($0) })
            o["data_offsets"] = .array([.int(offset), .int(offset + e.byteCount)])
            header[e.name] = .object(o)
            offset += e.byteCount
        }
        var text = Array(JSONValue.object(header).serialized().utf8)
        while text.count % 8 != 0 { text.append(0x20) }
        let temporary = path + ".partial"
        guard let file = fopen(temporary, "wb") else {
            throw CheckpointError("\(path): cannot write: \(errorText())")
        }
        var ok = true
        var length = UInt64(text.count).littleEndian
        ok = ok && fwrite(&length, 8, 1, file) == 1
        ok = ok && text.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) } == text.count
        for e in entries where ok {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(e.byteCount, 1), alignment: 64)
            e.bytes(buffer)
            ok = fwrite(buffer, 1, e.byteCount, file) == e.byteCount
            buffer.deallocate()
        }
        ok = fclose(file) == 0 && ok
        guard ok, rename(temporary, path) == 0 else {
            let reason = errorText()
            unlink(temporary)
            throw CheckpointError("\(path): writing failed: \(reason)")
        }
    }
}
