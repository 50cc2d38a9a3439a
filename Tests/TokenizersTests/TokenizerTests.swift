import Testing
import SwitchyardJSON
@testable import Tokenizers

let repositoryRoot: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()

let llamaDirectory = repositoryRoot + "/fixtures/tokenizers/llama-spm"

struct Vector: Sendable, CustomTestStringConvertible {
    let text: String
    let ids: [Int]
    let idsNoSpecial: [Int]
    let decoded: String
    let decodedWithSpecial: String
    var testDescription: String { String(reflecting: text) }
}

let vectors: [Vector] = {
    let bytes = try! readFile(llamaDirectory + "/vectors.json")
    let json = try! JSONValue.parse(bytes)
    return json["cases"]!.arrayValue!.map { c in
        Vector(
            text: c["text"]!.stringValue!,
            ids: c["ids"]!.arrayValue!.map { $0.intValue! },
            idsNoSpecial: c["ids_no_special"]!.arrayValue!.map { $0.intValue! },
            decoded: c["decoded"]!.stringValue!,
            decodedWithSpecial: c["decoded_with_special"]!.stringValue!)
    }
}()

let llama = try! Tokenizer(directory: llamaDirectory)

@Suite("llama-spm tokenizer.json against Hugging Face tokenizers")
struct TokenizerTests {
    @Test("encode with and without special tokens, decode", arguments: vectors)
    func matchesHuggingFace(v: Vector) {
        #expect(llama.encode(v.text) == v.ids)
        #expect(llama.encode(v.text, addSpecialTokens: false) == v.idsNoSpecial)
        #expect(llama.decode(v.ids) == v.decoded)
        #expect(llama.decode(v.ids, skipSpecialTokens: false) == v.decodedWithSpecial)
    }

    @Test func vectorsCoverEnoughCases() {
        #expect(vectors.count > 200)
    }

    @Test func unsupportedComponentIsNamed() throws {
        let json: JSONValue = ["model": ["type": "BPE", "vocab": ["a": 0], "merges": []], "pre_tokenizer": ["type": "UnicodeScripts"]]
        #expect(throws: TokenizerError.self) { try Tokenizer(json: json, path: "t.json") }
        do { _ = try Tokenizer(json: json, path: "t.json") } catch { #expect(error.description.contains("UnicodeScripts")) }
    }

    @Test func unknownModelIsNamed() {
        let json: JSONValue = ["model": ["type": "Unigram", "vocab": []]]
        do {
            _ = try Tokenizer(json: json, path: "t.json")
            Issue.record("expected an error")
        } catch { #expect(error.description.contains("Unigram")) }
    }
}
