import GGUF
import Testing
@testable import Tokenizers
import SwitchyardSupport
import SwitchyardTestSupport

let sharedVocabulary = repositoryRoot + "/../shared/data/vocab"

/// llama.cpp's own vocabulary test vectors: `NAME.gguf.inp` holds the texts, each followed by
/// `__ggml_vocab_test__`; `NAME.gguf.out` one line of ids per text.
func ggufVectors(_ name: String) throws -> [(text: String, ids: [Int])] {
    let input = try readFileBytes("\(sharedVocabulary)/\(name).inp")
    let output = String(decoding: try readFileBytes("\(sharedVocabulary)/\(name).out"), as: UTF8.self)
    let separator = Array("\n__ggml_vocab_test__\n".utf8)
    var texts: [String] = []
    var start = 0, i = 0
    while i + separator.count <= input.count {
        if input[i..<i + separator.count].elementsEqual(separator) {
            texts.append(String(decoding: input[start..<i], as: UTF8.self))
            i += separator.count
            start = i
        } else {
            i += 1
        }
    }
    var lines = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if lines.last?.isEmpty == true { lines.removeLast() }
    return zip(texts, lines).map { ($0, $1.split(separator: " ").map { Int($0)! }) }
}

@Suite("GGUF vocabularies against llama.cpp's test vectors")
struct GGUFVocabularyTests {
    @Test("every vector of every vocabulary in ../shared", arguments: ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-qwen2.gguf"])
    func vectors(name: String) throws {
        let file = try GGUFFile(path: "\(sharedVocabulary)/\(name)")
        let tokenizer = try Tokenizer(gguf: file.metadata, path: file.path)
        let vectors = try ggufVectors(name)
        #expect(vectors.count > 30)
        for (text, ids) in vectors {
            #expect(tokenizer.encode(text, addSpecialTokens: false) == ids, "\(name): \(String(reflecting: text))")
        }
    }

    @Test func llamaAddsBOSAndDecodes() throws {
        let file = try GGUFFile(path: "\(sharedVocabulary)/ggml-vocab-llama-spm.gguf")
        let tokenizer = try Tokenizer(gguf: file.metadata, path: file.path)
        let ids = tokenizer.encode("Hello world")
        #expect(ids == [1, 15043, 3186])
        #expect(tokenizer.decode(ids, skipSpecialTokens: true) == "Hello world")
    }

    @Test func unknownPreTokenizerIsNamed() throws {
        var metadata = try GGUFFile(path: "\(sharedVocabulary)/ggml-vocab-gpt-2.gguf").metadata
        metadata["tokenizer.ggml.pre"] = .string(Array("tekken-9".utf8))
        #expect { try Tokenizer(gguf: metadata, path: "x.gguf") } throws: { "\($0)".contains("'tekken-9'") }
        metadata["tokenizer.ggml.model"] = .string(Array("t5".utf8))
        #expect { try Tokenizer(gguf: metadata, path: "x.gguf") } throws: { "\($0)".contains("'t5' is not supported") }
        metadata["tokenizer.ggml.model"] = .string(Array("gpt2".utf8))
        metadata["tokenizer.ggml.bos_token_id"] = .uint32(1 << 30)
        #expect { try Tokenizer(gguf: metadata, path: "x.gguf") } throws: { "\($0)".contains("tokenizer.ggml.bos_token_id") }
    }
}

@Suite("tokenizer.json written as GGUF metadata")
struct GGUFExportTokenizerTests {
    /// Each real tokenizer (and the bundled model's) written as GGUF metadata and read back encodes
    /// every test text as the tokenizer.json does.
    @Test(arguments: ["llama-spm", "gpt-2", "qwen2", "llama3", "deepseek-v3", "gpt-oss", "olmoe", "demo"])
    func roundTrip(name: String) throws {
        let folder = "/tmp/switchyard-gguf-tokenizer-\(getpid())-\(name)"
        try makeFolders(folder)
        let json = name == "demo" ? loadJSON(demoModelPath + "/tokenizer.json") : tokenizerJSON(name)
        try writeFileDurably(folder + "/tokenizer.json", Array(json.serialized().utf8)[...])
        let original = try Tokenizer(directory: folder)
        let metadata = try Tokenizer.ggufMetadata(model: folder, bosTokenID: original.prefixTokens.first, eosTokenID: nil)
        var byKey: [String: GGUFValue] = [:]
        for (k, v) in metadata { byKey[k] = v }
        let fromGGUF = try Tokenizer(gguf: byKey, path: folder + ".gguf")
        let texts = name == "demo"
            ? String(decoding: try readFileBytes(demoModelPath + "/held-out.txt"), as: UTF8.self).split(separator: "\n").prefix(200).map(String.init)
            : cases(name).map(\.text)
        // GGUF tokenizers work as llama.cpp's, which differ from tokenizer.json by design in three
        // places these texts avoid: GGUF has no normalizer (Qwen2's NFC), no lstrip/rstrip on added
        // tokens, and llama.cpp's SentencePiece puts a "▁" before leading spaces (as the .out
        // vectors above say).
        // (Compared as bytes and scalars: String's == and contains() see canonically equivalent
        // texts as equal.)
        func containsBytes(_ text: [UInt8], _ part: [UInt8]) -> Bool {
            !part.isEmpty && text.count >= part.count && (0...(text.count - part.count)).contains { text[$0..<$0 + part.count].elementsEqual(part) }
        }
        let comparable = texts.filter { text in
            let bytes = Array(text.utf8)
            return !original.addedTokens.contains { containsBytes(bytes, $0.content) }
                && UnicodeNormalization.normalize(text, .nfc).unicodeScalars.elementsEqual(text.unicodeScalars)
                && !(name == "llama-spm" && (text.unicodeScalars.first?.properties.isWhitespace == true || text.contains("\u{2581}")))
        }
        #expect(comparable.count >= texts.count / 2, "\(name): \(comparable.count) of \(texts.count) texts comparable")
        var differ = 0
        for text in comparable where fromGGUF.encode(text, addSpecialTokens: false) != original.encode(text, addSpecialTokens: false) {
            differ += 1
            if differ <= 3 { Issue.record("\(name): \(String(reflecting: text.prefix(60))) encodes differently") }
        }
        #expect(differ == 0, "\(name): \(differ) of \(comparable.count) texts encode differently")
        #expect(fromGGUF.encode("Hello world") == original.encode("Hello world"))
    }
}
