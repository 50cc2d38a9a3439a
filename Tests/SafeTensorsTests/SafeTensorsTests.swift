import Testing
@testable import SafeTensors
import SwitchyardSupport
import SwitchyardTestSupport

/// Writes a safetensors file from a header text and a data section, byte for byte as given.
func writeSafetensors(_ header: String, data: [UInt8], padTo8: Bool = true, declaredLength: UInt64? = nil) -> String {
    var headerBytes = Array(header.utf8)
    if padTo8 { while headerBytes.count % 8 != 0 { headerBytes.append(0x20) } }
    var bytes: [UInt8] = []
    let length = declaredLength ?? UInt64(headerBytes.count)
    for i in 0..<8 { bytes.append(UInt8((length >> (8 * UInt64(i))) & 0xFF)) }
    bytes += headerBytes + data
    let path = "/tmp/switchyard-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).safetensors"
    let f = fopen(path, "wb")!
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
    fclose(f)
    return path
}

func expectError(containing parts: [String], _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error containing \(parts)")
    } catch {
        let message = "\(error)"
        for part in parts { #expect(message.contains(part), "'\(message)' should mention '\(part)'") }
        #expect(!message.contains("\n"), "errors are one line")
    }
}

@Suite("safetensors files")
struct SafeTensorsTests {
    @Test func readsTensorsInPlace() throws {
        let values: [Float] = [1, 2, 3, 4, 5, 6]
        var data: [UInt8] = []
        values.withUnsafeBytes { data += $0 }
        data += [0x80, 0x3F, 0x00, 0x40]  // bf16 1.0 and 2.0 (little-endian 0x3F80, 0x4000)
        let path = writeSafetensors(#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[24,28]}}"#, data: data)
        let file = try SafeTensorsFile(path: path)
        #expect(file.metadata["format"] == "pt")
        let a = try #require(file.tensors["a"])
        #expect(a.shape == [2, 3] && a.dtype == .f32)
        #expect(a.data.load(fromByteOffset: 20, as: Float.self) == 6)
        #expect(a.data >= file.mapping.base && a.data < file.mapping.base + file.mapping.size, "no copy: the view points into the mapping")
        let b = try #require(file.tensors["b"])
        #expect(b.data.load(fromByteOffset: 2, as: UInt16.self) == 0x4000)
        #expect(file.names == ["a", "b"])
    }

    @Test func truncatedFile() {
        let path = writeSafetensors(#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: [0, 0, 0, 0])
        expectError(containing: [path, "'w'", "truncated"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func fileShorterThanHeader() {
        let path = writeSafetensors(#"{"w":{}}"#, data: [], declaredLength: 4096)
        expectError(containing: [path, "truncated"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func emptyFile() {
        let path = writeSafetensors("", data: [], padTo8: false, declaredLength: 0)
        truncate(path, 3)
        expectError(containing: [path, "truncated"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func offsetsOutOfRange() {
        let path = writeSafetensors(#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, data: [0, 0, 0, 0])
        expectError(containing: [path, "'w'", "outside the data section"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func overlappingTensors() {
        let path = writeSafetensors(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: Array(repeating: 0, count: 12))
        expectError(containing: [path, "'a'", "'b'", "overlap"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func wrongSizeForDtypeAndShape() {
        let path = writeSafetensors(#"{"w":{"dtype":"BF16","shape":[3,3],"data_offsets":[0,16]}}"#, data: Array(repeating: 0, count: 16))
        expectError(containing: [path, "'w'", "18"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func unknownDtype() {
        let path = writeSafetensors(#"{"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0])
        expectError(containing: [path, "'w'", "unknown dtype 'Q4_K'"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func malformedHeader() {
        let path = writeSafetensors(#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]"#, data: [0, 0, 0, 0])
        expectError(containing: [path, "malformed"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func negativeShape() {
        let path = writeSafetensors(#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
        expectError(containing: [path, "'w'", "shape"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func missingCheckpoint() {
        expectError(containing: ["/nonexistent-folder", "no weights"]) { _ = try Checkpoint(directory: "/nonexistent-folder") }
    }

    @Test func shardIndexPointsToMissingShard() throws {
        let dir = "/tmp/switchyard-index-\(getpid())"
        mkdir(dir, 0o755)
        let f = fopen(dir + "/model.safetensors.index.json", "w")!
        fputs(#"{"metadata":{},"weight_map":{"w":"model-00001-of-00002.safetensors"}}"#, f)
        fclose(f)
        expectError(containing: ["'w'", "model-00001-of-00002.safetensors", "does not exist"]) { _ = try Checkpoint(directory: dir) }
    }
}
