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
