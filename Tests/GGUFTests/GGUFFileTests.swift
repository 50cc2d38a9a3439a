import Testing
@testable import GGUF
import SwitchyardSupport
import SwitchyardTestSupport

let testFolder = "/tmp/switchyard-gguf-file-tests-\(getpid())"

/// A small file with a value of every type, an array of arrays, and three tensors.
func writeSample(_ path: String, alignment: UInt32 = 64, extra: [(key: String, value: GGUFValue)] = []) throws {
    let metadata: [(key: String, value: GGUFValue)] = [
        ("general.architecture", .string(Array("llama".utf8))), ("general.alignment", .uint32(alignment)),
        ("u8", .uint8(200)), ("i8", .int8(-5)), ("u16", .uint16(60_000)), ("i16", .int16(-30_000)), ("u32", .uint32(4_000_000_000)),
        ("i32", .int32(-2_000_000_000)), ("u64", .uint64(1 << 40)), ("i64", .int64(-(1 << 40))), ("f32", .float32(1.5)), ("f64", .float64(-0.25)),
        ("yes", .bool(true)), ("strings", .array(elementType: 8, [.string(Array("a".utf8)), .string([0xFF, 0x00])])),
        ("nested", .array(elementType: 9, [.array(elementType: 5, [.int32(1), .int32(2)]), .array(elementType: 5, [])])),
    ] + extra
    let tensors = [
        GGUFWriter.Tensor(name: "a", type: .f32, dimensions: [3, 2]) { p in
            for i in 0..<6 { p.storeBytes(of: Float(i), toByteOffset: 4 * i, as: Float.self) }
        },
        GGUFWriter.Tensor(name: "b", type: .q8_0, dimensions: [64, 3]) { p in for i in 0..<(3 * 68) { p.storeBytes(of: UInt8(i % 251), toByteOffset: i, as: UInt8.self) } },
        GGUFWriter.Tensor(name: "c", type: .q6_K, dimensions: [256]) { p in for i in 0..<210 { p.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) } },
    ]
    try GGUFWriter.write(metadata: metadata, tensors: tensors, to: path)
}

@Suite("GGUF files")
struct GGUFFileTests {
    init() throws { try makeFolders(testFolder) }

    @Test func everyValueTypeRoundTrips() throws {
        let path = testFolder + "/sample.gguf"
        try writeSample(path)
        let file = try GGUFFile(path: path)
        #expect(file.version == 3 && file.alignment == 64)
        #expect(file.metadata["u8"] == .uint8(200) && file.metadata["i16"] == .int16(-30_000) && file.metadata["u64"]?.intValue == 1 << 40)
        #expect(file.metadata["i64"]?.intValue == -(1 << 40) && file.metadata["f32"]?.doubleValue == 1.5 && file.metadata["yes"]?.boolValue == true)
        #expect(file.metadata["strings"]?.arrayValue?[1].stringBytes == [0xFF, 0x00])
        #expect(file.metadata["nested"]?.arrayValue?[0].arrayValue?.map(\.intValue) == [1, 2])
        #expect(file.keys.first == "general.architecture")
        let a = try #require(file.tensor("a"))
        #expect(a.shape == [2, 3] && a.byteCount == 24 && a.data.load(fromByteOffset: 20, as: Float.self) == 5)
        let b = try #require(file.tensor("b"))
        #expect(b.shape == [3, 64] && b.byteCount == 3 * 68 && b.offset % 64 == 0)
        #expect(file.tensor("c")?.byteCount == 210)
        #expect((file.dataOffset + b.offset) % 64 == 0)
    }

    @Test("a file is parsed once for the model, its tokenizer and its template; a changed file again")
    func sharedParses() throws {
        let path = testFolder + "/shared.gguf"
        try writeSample(path)
        let first = try GGUFFile.shared(path: path), again = try GGUFFile.shared(path: path)
        #expect(first === again)
        #expect(try GGUFFile(path: path) !== first)
        try writeSample(path, extra: [("added", .uint32(7))])
        let changed = try GGUFFile.shared(path: path)
        #expect(changed !== first && changed.metadata["added"] == .uint32(7) && first.metadata["added"] == nil)
        #expect(throws: GGUFError.self) { try GGUFFile.shared(path: testFolder + "/missing.gguf") }

        // Rewritten in place (same inode and size; within one tick of the file system's clock its
        // modification time would not change either): a new value of the same length.
        var before = stat()
        #expect(stat(path, &before) == 0)
        var bytes = try readFileBytes(path)
        // The key "added", its type (uint32: 4) and then its value.
        let pattern = Array("added".utf8) + [4, 0, 0, 0, 7]
        let at = try #require(bytes.indices.dropLast(pattern.count).first { Array(bytes[$0..<($0 + pattern.count)]) == pattern })
        bytes[at + pattern.count - 1] = 9
        let handle = try #require(fopen(path, "r+b"))
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, handle) }
        fclose(handle)
        var after = stat()
        #expect(stat(path, &after) == 0 && after.st_ino == before.st_ino && after.st_size == before.st_size)
        let rewritten = try GGUFFile.shared(path: path)
        #expect(rewritten !== changed && rewritten.metadata["added"] == .uint32(9))
        #expect(try GGUFFile.shared(path: path) === rewritten)
    }

    @Test func theSharedVocabulariesParse() throws {
        let file = try GGUFFile(path: repositoryRoot + "/../shared/data/vocab/ggml-vocab-qwen2.gguf")
        #expect(file.metadata["tokenizer.ggml.model"]?.stringValue == "gpt2")
        #expect(file.metadata["tokenizer.ggml.tokens"]?.arrayValue?.count == 151_936)
    }

    @Test("every truncation is an error that names the file, never a crash")
    func truncations() throws {
        let path = testFolder + "/whole.gguf"
        try writeSample(path)
        let bytes = try readFileBytes(path)
        let cut = testFolder + "/cut.gguf"
        // The last tensor's last byte (what follows it is padding).
        let whole = try GGUFFile(path: path), c = try #require(whole.tensor("c"))
        let end = whole.dataOffset + c.offset + c.byteCount
        for length in Array(0..<600) + [end - 1] {
            try writeFileDurably(cut, bytes.prefix(length))
            #expect(throws: GGUFError.self, "\(length) bytes") { try GGUFFile(path: cut) }
        }
        try writeFileDurably(cut, bytes.prefix(end - 1))
        #expect { try GGUFFile(path: cut) } throws: { "\($0)".contains("tensor 'c'") && "\($0)".contains("truncated") && "\($0)".contains(cut) }
    }

    @Test("lies in the header are named")
    func inconsistentHeaders() throws {
        let path = testFolder + "/bad.gguf"
        try writeSample(path, alignment: 48)
        #expect { try GGUFFile(path: path) } throws: { "\($0)".contains("general.alignment") }
        var bytes = Array("GGUF".utf8) + [4, 0, 0, 0] + [UInt8](repeating: 0, count: 16)
        try writeFileDurably(path, bytes[...])
        #expect { try GGUFFile(path: path) } throws: { "\($0)".contains("version 4") }
        bytes = Array("GGUF".utf8) + [3, 0, 0, 0] + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F] + [UInt8](repeating: 0, count: 8)
        try writeFileDurably(path, bytes[...])
        #expect { try GGUFFile(path: path) } throws: { "\($0)".contains("tensor count") }
        try writeFileDurably(path, Array("GGML".utf8)[...] + [UInt8](repeating: 0, count: 20))
        #expect { try GGUFFile(path: path) } throws: { "\($0)".contains("not a GGUF file") }
        // A tensor whose row is not whole blocks.
        try GGUFWriter.write(metadata: [], tensors: [GGUFWriter.Tensor(name: "odd", type: .q4_0, dimensions: [48, 2]) { _ in }], to: path)
        #expect { try GGUFFile(path: path) } throws: { "\($0)".contains("'odd'") && "\($0)".contains("multiple of its 32-value blocks") }
        // A duplicated key.
        try writeSample(path, extra: [("u8", .uint8(1))])
        #expect { try GGUFFile(path: path) } throws: { "\($0)".contains("'u8' appears twice") }
    }

    @Test("split files are one model")
    func splits() throws {
        let first = testFolder + "/m-00001-of-00002.gguf", second = testFolder + "/m-00002-of-00002.gguf"
        try GGUFWriter.write(metadata: [("split.no", .uint16(0)), ("split.count", .uint16(2)), ("split.tensors.count", .int32(2))],
                             tensors: [GGUFWriter.Tensor(name: "x", type: .f32, dimensions: [4]) { p in p.initializeMemory(as: UInt8.self, repeating: 1, count: 16) }],
                             to: first)
        try GGUFWriter.write(metadata: [("split.no", .uint16(1)), ("split.count", .uint16(2)), ("split.tensors.count", .int32(2))],
                             tensors: [GGUFWriter.Tensor(name: "y", type: .f16, dimensions: [8]) { p in p.initializeMemory(as: UInt8.self, repeating: 2, count: 16) }],
                             to: second)
        let model = try GGUFModel(path: first)
        #expect(model.files.count == 2 && model.tensorCount == 2)
        #expect(model.tensor("y")?.type == .f16 && model.file(of: "y")?.path == second)
        #expect { try GGUFModel(path: second) } throws: { "\($0)".contains("open the first split") }
        unlink(second)
        #expect { try GGUFModel(path: first) } throws: { "\($0)".contains("split 2 of 2 is missing") }
    }
}
