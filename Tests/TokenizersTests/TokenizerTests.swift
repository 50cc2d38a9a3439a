import Testing
import SwitchyardJSON
@testable import Tokenizers
import SwitchyardSupport
import SwitchyardTestSupport
let tokenizerFixtures = repositoryRoot + "/fixtures/tokenizers"

func loadJSON(_ path: String) -> JSONValue { try! JSONValue.parse(try! readFile(path)) }

/// The base tokenizer.json files, and each variant's pipeline applied over its base, as
/// scripts/tokenizer_vectors.py builds them for the Hugging Face side.
func tokenizerJSON(_ name: String) -> JSONValue {
    if let base = try? readFile("\(tokenizerFixtures)/\(name)/tokenizer.json") { return try! JSONValue.parse(base) }
    let variant = loadJSON(tokenizerFixtures + "/variants.json")[name]!.objectValue!
    var data = tokenizerJSON(variant["base"]!.stringValue!).objectValue!
    for (key, value) in variant.entries where key != "base" {
        switch key {
        case "model":
            var model = data["model"]!.objectValue!
            for e in value.objectValue!.entries { model[e.key] = e.value }
            data["model"] = .object(model)
        case "added_tokens":
            data["added_tokens"] = .array(data["added_tokens"]!.arrayValue! + value.arrayValue!)
        default:
            data[key] = value
        }
    }
    return .object(data)
}

struct Case: Sendable {
    let text: String
    let ids: [Int]
    let idsNoSpecial: [Int]
    let decoded: String
    let decodedWithSpecial: String
}

let tokenizerNames = ["llama-spm", "gpt-2", "qwen2", "llama3", "deepseek-v3", "gpt-oss", "olmoe", "byte-level-prefix",
                      "split-behaviours", "whitespace-digits", "metaspace-split", "prepend-normalizer", "nfkc-lowercase",
                      "nfd-metaspace", "trained-suffix", "trained-prefix"]

func cases(_ name: String) -> [Case] {
    let file = loadJSON("\(tokenizerFixtures)/\(name).vectors.json")
    let prefix = file["special_prefix"]!.intValue!
    return file["cases"]!.arrayValue!.map { c in
        let ids = c["ids"]!.arrayValue!.map { $0.intValue! }
        let text = c["text"]!.stringValue!
        let decoded = c["decoded"]?.stringValue ?? text
        return Case(
            text: text, ids: ids,
            idsNoSpecial: c["ids_no_special"]?.arrayValue?.map { $0.intValue! } ?? Array(ids.dropFirst(prefix)),
            decoded: decoded, decodedWithSpecial: c["decoded_with_special"]?.stringValue ?? decoded)
    }
}

@Suite("tokenizer.json against Hugging Face tokenizers")
struct TokenizerTests {
    @Test("2,000+ strings: ids with and without special tokens, decoded text", arguments: tokenizerNames)
    func matchesHuggingFace(name: String) throws {
        let tokenizer = try Tokenizer(json: tokenizerJSON(name), path: name)
        let all = cases(name)
        #expect(all.count >= 2000)
        var failures = 0
        for c in all {
            let ids = tokenizer.encode(c.text)
            let noSpecial = tokenizer.encode(c.text, addSpecialTokens: false)
            let decoded = tokenizer.decode(c.ids)
            let withSpecial = tokenizer.decode(c.ids, skipSpecialTokens: false)
            if ids != c.ids || noSpecial != c.idsNoSpecial || decoded != c.decoded || withSpecial != c.decodedWithSpecial {
                failures += 1
                if failures <= 5 {
                    Issue.record("""
                        \(name) \(String(reflecting: c.text)):
                          ids      \(ids == c.ids ? "ok" : "\(ids) expected \(c.ids)")
                          no-spec  \(noSpecial == c.idsNoSpecial ? "ok" : "\(noSpecial) expected \(c.idsNoSpecial)")
                          decoded  \(decoded == c.decoded ? "ok" : "\(String(reflecting: decoded)) expected \(String(reflecting: c.decoded))")
                          special  \(withSpecial == c.decodedWithSpecial ? "ok" : "\(String(reflecting: withSpecial)) expected \(String(reflecting: c.decodedWithSpecial))")
                        """)
                }
            }
        }
        #expect(failures == 0, "\(name): \(failures) of \(all.count) strings differ")
    }

    @Test func unsupportedComponentIsNamed() throws {
        let json: JSONValue = ["model": ["type": "BPE", "vocab": ["a": 0], "merges": []], "pre_tokenizer": ["type": "UnicodeScripts"]]
        do {
            _ = try Tokenizer(json: json, path: "t.json")
            Issue.record("expected an error")
        } catch { #expect(error.description.contains("UnicodeScripts") && error.description.contains("t.json")) }
    }

    @Test func unknownModelIsNamed() {
        let json: JSONValue = ["model": ["type": "Unigram", "vocab": []]]
        do {
            _ = try Tokenizer(json: json, path: "t.json")
            Issue.record("expected an error")
        } catch { #expect(error.description.contains("Unigram")) }
    }
}

@Test("\\w matches digits between CJK characters (a Swift Regex bug worked around)")
func wordClassAroundCJK() {
    let pattern = TextPattern(regex: #"\w+|[^\w\s]+"#)
    let text = "工1天 工作1314151天"
    #expect(pattern.matches(in: text).map { String(text.unicodeScalars[$0]) } == ["工1天", "工作1314151天"])
    #expect(TextPattern.explicitWordClasses(#"[^\w\s]\W"#) == #"[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}\s][^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]"#)
}

@Test("NFC, NFD, NFKC, NFKD as Python's unicodedata")
func normalizationForms() {
    let cases = loadJSON(tokenizerFixtures + "/normalization.json")["cases"]!.arrayValue!
    #expect(cases.count > 500)
    var failures = 0
    for c in cases {
        let text = c["text"]!.stringValue!
        for form in [NormalizationForm.nfc, .nfd, .nfkc, .nfkd] {
            let ours = UnicodeNormalization.normalize(text, form)
            let expected = c[form.rawValue]!.stringValue!
            if !ours.unicodeScalars.elementsEqual(expected.unicodeScalars) {
                failures += 1
                if failures < 5 { Issue.record("\(form) of \(String(reflecting: text)): \(String(reflecting: ours)) expected \(String(reflecting: expected))") }
            }
        }
    }
    #expect(failures == 0)
    #expect(UnicodeNormalization.normalize("\u{1112}\u{1161}\u{11AB}", .nfc) == "한", "Hangul jamo compose")
    #expect(Array(UnicodeNormalization.normalize("한", .nfd).unicodeScalars).count == 3)
}

@Suite("tokenizer.json that cannot be trusted")
struct HostileTokenizerTests {
    @Test func repetitionsOfRepetitionsAreRefused() {
        #expect(TextPattern.repeatsARepetition("(a+)+$"))
        #expect(TextPattern.repeatsARepetition(#"(?:\s*x)*"#))
        #expect(TextPattern.repeatsARepetition("((ab)*c){2,}"))
        #expect(!TextPattern.repeatsARepetition("(ab)+c*"))
        #expect(!TextPattern.repeatsARepetition(#"[(a+)]+"#), "a class is not a group")
        #expect(!TextPattern.repeatsARepetition(#"\(a+\)+"#), "escaped parentheses are not a group")
        #expect(!TextPattern.repeatsARepetition("(a+){1,3}"), "a bounded repetition of one is fine")
        // The patterns of the real tokenizers.
        #expect(!TextPattern.repeatsARepetition(#"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#))
        #expect(!TextPattern.repeatsARepetition(
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#))
    }
}
