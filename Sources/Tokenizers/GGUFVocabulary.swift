import GGUF
import SwitchyardJSON
import SwitchyardSupport

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
enum GGUFTokenType: Int {
    case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

extension Tokenizer {
    /// The tokenizer a GGUF file's metadata describes, as llama.cpp builds it: `tokenizer.ggml.model`
    /// "llama" (SentencePiece: merges in the order of the scores of what they make, byte fallback,
    /// a space prefix) or "gpt2" (byte-level BPE with the split regexes `tokenizer.ggml.pre`
    /// names); control and user-defined tokens matched in text; BOS/EOS added as add_bos_token /
    /// add_eos_token say. It is expressed as the tokenizer.json that would say the same, so both
    /// paths share one encoder.
    public convenience init(gguf metadata: [String: GGUFValue], path: String) throws(TokenizerError) {
        try self.init(json: try Self.tokenizerJSON(gguf: metadata, path: path), path: path)
    }

    /// An array of strings from the metadata (nil when the key is absent).
    static func ggufStrings(_ metadata: [String: GGUFValue], _ key: String, path: String) throws(TokenizerError) -> [[UInt8]]? {
        guard let value = metadata[key] else { return nil }
        guard let array = value.arrayValue else { throw TokenizerError("\(path): metadata '\(key)' is a \(value.typeName), expected an array of strings") }
        var out: [[UInt8]] = []
        out.reserveCapacity(array.count)
        for (i, v) in array.enumerated() {
            guard let s = v.stringBytes else { throw TokenizerError("\(path): metadata '\(key)'[\(i)] is a \(v.typeName), expected a string") }
            out.append(s)
        }
        return out
    }

    static func tokenizerJSON(gguf metadata: [String: GGUFValue], path: String) throws(TokenizerError) -> JSONValue {
        guard let modelValue = metadata["tokenizer.ggml.model"] else {
            throw TokenizerError("\(path): no tokenizer in the GGUF metadata (no 'tokenizer.ggml.model')")
        }
        guard let model = modelValue.stringValue else { throw TokenizerError("\(path): metadata 'tokenizer.ggml.model' is not a string") }
        guard let tokens = try ggufStrings(metadata, "tokenizer.ggml.tokens", path: path), !tokens.isEmpty else {
            throw TokenizerError("\(path): metadata 'tokenizer.ggml.tokens' is missing or empty")
        }
        guard tokens.count <= idLimit else { throw TokenizerError("\(path): \(tokens.count) tokens, more than \(idLimit)") }
        func intArray(_ key: String) throws(TokenizerError) -> [Int]? {
            guard let value = metadata[key] else { return nil }
            guard let a = value.arrayValue, a.count == tokens.count else {
                throw TokenizerError("\(path): metadata '\(key)' is not an array of \(tokens.count) values (one per token)")
            }
            var out: [Int] = []
            for (i, v) in a.enumerated() {
                guard let n = v.intValue else { throw TokenizerError("\(path): metadata '\(key)'[\(i)] is a \(v.typeName), expected an integer") }
                out.append(n)
            }
            return out
        }
        let types = try intArray("tokenizer.ggml.token_type") ?? Array(repeating: GGUFTokenType.normal.rawValue, count: tokens.count)
        func tokenID(_ key: String) throws(TokenizerError) -> Int? {
            guard let value = metadata[key] else { return nil }
            guard let id = value.intValue, (0..<tokens.count).contains(id) else {
                throw TokenizerError("\(path): metadata '\(key)' = \(value.summary) is not a token id (0 to \(tokens.count - 1))")
            }
            return id
        }
        func flag(_ key: String) throws(TokenizerError) -> Bool? {
            guard let value = metadata[key] else { return nil }
            guard let b = value.boolValue else { throw TokenizerError("\(path): metadata '\(key)' is a \(value.typeName), expected a bool") }
            return b
        }
        let bos = try tokenID("tokenizer.ggml.bos_token_id")
        let eos = try tokenID("tokenizer.ggml.eos_token_id")
        let unk = try tokenID("tokenizer.ggml.unknown_token_id")
        let strings = tokens.map { String(decoding: $0, as: UTF8.self) }

        var vocab: [(key: String, value: JSONValue)] = []
        vocab.reserveCapacity(tokens.count)
        var added: [JSONValue] = []
        for (id, token) in strings.enumerated() {
            let type = GGUFTokenType(rawValue: types[id]) ?? .normal
            switch type {
            case .control, .userDefined, .unknown:
                added.append(.object(JSONObject([
                    ("id", .int(id)), ("content", .string(token)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                    ("rstrip", .bool(false)), ("normalized", .bool(false)), ("special", .bool(type != .userDefined)),
                ])))
            default: break
            }
            vocab.append((token, .int(id)))
        }

        var modelJSON: [(key: String, value: JSONValue)] = [("type", .string("BPE")), ("vocab", .object(JSONObject(vocab)))]
        var json: [(key: String, value: JSONValue)] = [("version", .string("1.0")), ("added_tokens", .array(added))]
        let addBOS: Bool
        let addEOS: Bool
        switch model {
        case "llama":
            // SentencePiece BPE merges the adjacent pair whose union scores highest: the same as
            // BPE with every split of every normal token as a merge, ranked by the union's score.
            guard let scoreValues = metadata["tokenizer.ggml.scores"]?.arrayValue, scoreValues.count == tokens.count else {
                throw TokenizerError("\(path): metadata 'tokenizer.ggml.scores' is not an array of \(tokens.count) numbers (one per token)")
            }
            var scores: [Double] = []
            scores.reserveCapacity(tokens.count)
            for (i, v) in scoreValues.enumerated() {
                guard let s = v.doubleValue else { throw TokenizerError("\(path): metadata 'tokenizer.ggml.scores'[\(i)] is not a number") }
                scores.append(s)
            }
            var ids: [String: Int] = [:]
            for (id, s) in strings.enumerated() where types[id] == GGUFTokenType.normal.rawValue || types[id] == GGUFTokenType.userDefined.rawValue {
                if ids[s] == nil { ids[s] = id }
            }
            var merges: [(score: Double, id: Int, left: String, right: String)] = []
            for (id, s) in strings.enumerated() where types[id] == GGUFTokenType.normal.rawValue {
                let scalars = Array(s.unicodeScalars)
                guard scalars.count > 1 else { continue }
                for cut in 1..<scalars.count {
                    let left = String(String.UnicodeScalarView(scalars[..<cut])), right = String(String.UnicodeScalarView(scalars[cut...]))
                    if ids[left] != nil, ids[right] != nil { merges.append((scores[id], id, left, right)) }
                }
            }
            merges.sort { $0.score != $1.score ? $0.score > $1.score : $0.id < $1.id }
            modelJSON += [
                ("merges", .array(merges.map { .array([.string($0.left), .string($0.right)]) })),
                ("byte_fallback", .bool(true)), ("fuse_unk", .bool(true)),
            ]
            if let unk { modelJSON.append(("unk_token", .string(strings[unk]))) }
            var normalizers: [JSONValue] = []
            if try flag("tokenizer.ggml.add_space_prefix") ?? true {
                normalizers.append(.object(JSONObject([("type", .string("Prepend")), ("prepend", .string("\u{2581}"))])))
            }
            normalizers.append(.object(JSONObject([
                ("type", .string("Replace")), ("pattern", .object(JSONObject([("String", .string(" "))]))), ("content", .string("\u{2581}")),
            ])))
            json.append(("normalizer", .object(JSONObject([("type", .string("Sequence")), ("normalizers", .array(normalizers))]))))
            json.append(("pre_tokenizer", .null))
            json.append(("decoder", .object(JSONObject([("type", .string("Sequence")), ("decoders", .array([
                .object(JSONObject([("type", .string("Replace")), ("pattern", .object(JSONObject([("String", .string("\u{2581}"))]))), ("content", .string(" "))])),
                .object(JSONObject([("type", .string("ByteFallback"))])),
                .object(JSONObject([("type", .string("Fuse"))])),
                .object(JSONObject([("type", .string("Strip")), ("content", .string(" ")), ("start", .int(1)), ("stop", .int(0))])),
            ]))]))))
            addBOS = try flag("tokenizer.ggml.add_bos_token") ?? true
            addEOS = try flag("tokenizer.ggml.add_eos_token") ?? false
        case "gpt2":
            guard let mergeList = try ggufStrings(metadata, "tokenizer.ggml.merges", path: path) else {
                throw TokenizerError("\(path): a gpt2 tokenizer without 'tokenizer.ggml.merges'")
            }
            modelJSON.append(("merges", .array(mergeList.map { .string(String(decoding: $0, as: UTF8.self)) })))
            let pre = metadata["tokenizer.ggml.pre"]?.stringValue ?? "default"
            guard let split = GGUFPreTokenizer(name: pre) else {
                throw TokenizerError("\(path): metadata 'tokenizer.ggml.pre' = '\(pre)' is not a pre-tokenizer Switchyard knows (known: \(GGUFPreTokenizer.known.joined(separator: ", ")))")
            }
            if split.ignoresMerges { modelJSON.append(("ignore_merges", .bool(true))) }
            var pretokenizers: [JSONValue] = split.patterns.map { pattern in
                .object(JSONObject([
                    ("type", .string("Split")), ("pattern", .object(JSONObject([("Regex", .string(pattern))]))),
                    ("behavior", .string("Isolated")), ("invert", .bool(false)),
                ]))
            }
            pretokenizers.append(.object(JSONObject([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("use_regex", .bool(false))])))
            json.append(("normalizer", .null))
            json.append(("pre_tokenizer", .object(JSONObject([("type", .string("Sequence")), ("pretokenizers", .array(pretokenizers))]))))
            json.append(("decoder", .object(JSONObject([("type", .string("ByteLevel"))]))))
            // llama.cpp adds BOS by default for Llama 3's vocabularies.
            addBOS = try flag("tokenizer.ggml.add_bos_token") ?? ["llama3", "llama-v3", "llama-bpe"].contains(pre)
            addEOS = try flag("tokenizer.ggml.add_eos_token") ?? false
        default:
            throw TokenizerError("\(path): metadata 'tokenizer.ggml.model' = '\(model)' is not supported (llama, gpt2)")
        }
        json.append(("model", .object(JSONObject(modelJSON))))
        var single: [JSONValue] = []
        var special: [(key: String, value: JSONValue)] = []
        if addBOS, let bos {
            single.append(.object(JSONObject([("SpecialToken", .object(JSONObject([("id", .string(strings[bos]))])))])))
            special.append((strings[bos], .object(JSONObject([("ids", .array([.int(bos)]))]))))
        }
        single.append(.object(JSONObject([("Sequence", .object(JSONObject([("id", .string("A"))])))])))
        if addEOS, let eos {
            single.append(.object(JSONObject([("SpecialToken", .object(JSONObject([("id", .string(strings[eos]))])))])))
            if !special.contains(where: { $0.key == strings[eos] }) {
                special.append((strings[eos], .object(JSONObject([("ids", .array([.int(eos)]))]))))
            }
        }
        json.append(("post_processor", .object(JSONObject([
            ("type", .string("TemplateProcessing")), ("single", .array(single)), ("special_tokens", .object(JSONObject(special))),
        ]))))
        return .object(JSONObject(json))
    }
}

/// The split regexes llama.cpp applies before byte-level BPE, by `tokenizer.ggml.pre` (llama-vocab.cpp's
/// table); several patterns are applied one after the other, each isolating its matches.
struct GGUFPreTokenizer {
    let patterns: [String]
    /// A word that is itself a token is that token (Llama 3).
    let ignoresMerges: Bool

    static let gpt2 = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"#
    static let qwen2 = #"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let llama3 = #"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let gpt4o = #"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    static let deepseekV3 = [#"\p{N}{1,3}"#, "[一-龥぀-ゟ゠-ヿ]+",
                             ##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##]
    static let deepseekLLM = ["[\r\n]",
                              #"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"#,
                              #"\s?[!-/:-~！-／：-～‘-‟　-。]+"#, #"\s+$"#, "[一-龥ࠀ-一가-퟿]+", #"\p{N}+"#]

    static let byName: [String: GGUFPreTokenizer] = [
        "deepseek-v3": GGUFPreTokenizer(patterns: deepseekV3, ignoresMerges: false),
        "deepseek-llm": GGUFPreTokenizer(patterns: deepseekLLM, ignoresMerges: false),
        "llama4": GGUFPreTokenizer(patterns: [gpt4o], ignoresMerges: false),
        "default": GGUFPreTokenizer(patterns: [#"[\p{P}\$\+<=>\^~\|]+"#, gpt2, #"\p{N}+"#, "[0-9][0-9][0-9]"], ignoresMerges: false),
        "gpt-2": GGUFPreTokenizer(patterns: [gpt2], ignoresMerges: false),
        "olmo": GGUFPreTokenizer(patterns: [gpt2], ignoresMerges: false),
        "qwen2": GGUFPreTokenizer(patterns: [qwen2], ignoresMerges: false),
        "deepseek-r1-qwen": GGUFPreTokenizer(patterns: [qwen2], ignoresMerges: false),
        "llama3": GGUFPreTokenizer(patterns: [llama3], ignoresMerges: true),
        "llama-v3": GGUFPreTokenizer(patterns: [llama3], ignoresMerges: true),
        "llama-bpe": GGUFPreTokenizer(patterns: [llama3], ignoresMerges: true),
        "gpt-4o": GGUFPreTokenizer(patterns: [gpt4o], ignoresMerges: false),
    ]

    static var known: [String] { byName.keys.sorted() }

    /// A split regex written one way: tokenizer.json's case-insensitive contractions as llama.cpp
    /// spells them, and a needlessly escaped quote unescaped.
    static func canonical(_ pattern: String) -> String {
        pattern.replacingAll("(?i:'s|'t|'re|'ve|'m|'ll|'d)", with: "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])")
            .replacingAll(#"\""#, with: "\"")
    }

    init(patterns: [String], ignoresMerges: Bool) {
        self.patterns = patterns
        self.ignoresMerges = ignoresMerges
    }

    init?(name: String) {
        guard let found = Self.byName[name] else { return nil }
        self = found
    }
}

extension Tokenizer {
    /// The GGUF metadata that says what a model folder's tokenizer.json (and chat template) says, as
    /// llama.cpp's converter writes it: byte-level BPE as "gpt2" with its merges and the
    /// pre-tokenizer named by its split regex; SentencePiece-style BPE (byte fallback) as "llama" with
    /// scores that rank each token by the merge that makes it (llama.cpp merges by score, so the
    /// order is the merges'). A GGUF file's own tokenizer keys are copied. Empty for a folder with no
    /// tokenizer.json.
    public static func ggufMetadata(model path: String, bosTokenID: Int?, eosTokenID: Int?) throws(TokenizerError) -> [(key: String, value: GGUFValue)] {
        if isGGUFFile(path) {
            let file: GGUFFile
            do { file = try GGUFFile.shared(path: path) } catch { throw TokenizerError(error.description) }
            return file.keys.filter { $0.hasPrefix("tokenizer.") }.map { ($0, file.metadata[$0]!) }
        }
        let jsonPath = path + "/tokenizer.json"
        guard fileExists(jsonPath) else { return [] }
        let bytes = try readFile(jsonPath)
        let json: JSONValue
        do { json = try JSONValue.parse(bytes) } catch { throw TokenizerError("\(jsonPath): malformed JSON: \(error)") }
        let tokenizer = try Tokenizer(json: json, path: jsonPath)
        var out: [(key: String, value: GGUFValue)] = []
        func strings(_ list: [[UInt8]]) -> GGUFValue { .array(elementType: 8, list.map { .string($0) }) }
        let count = tokenizer.tokens.count
        var types = [Int32](repeating: Int32(GGUFTokenType.normal.rawValue), count: count)
        var present = [Bool](repeating: false, count: count)
        for id in tokenizer.vocabulary.values { present[id] = true }
        for a in tokenizer.addedTokens {
            present[a.id] = true
            types[a.id] = Int32((a.special ? (a.id == tokenizer.unknownID ? GGUFTokenType.unknown : .control) : .userDefined).rawValue)
        }
        var tokens = tokenizer.tokens
        for id in 0..<count where !present[id] {
            tokens[id] = Array("[PAD\(id)]".utf8)
            types[id] = Int32(GGUFTokenType.unused.rawValue)
        }
        let byteLevel = json.serialized().contains("\"ByteLevel\"")
        if byteLevel {
            out.append(("tokenizer.ggml.model", .string(Array("gpt2".utf8))))
            let patterns = Self.splitPatterns(json["pre_tokenizer"])
            let normalized = patterns.map(GGUFPreTokenizer.canonical)
            let usesGPT2Regex = json["pre_tokenizer"].map(Self.byteLevelUsesRegex) ?? false
            let found = usesGPT2Regex && normalized.isEmpty ? "gpt-2"
                : GGUFPreTokenizer.byName.sorted { $0.key < $1.key }.first { $0.value.patterns.map(GGUFPreTokenizer.canonical) == normalized && $0.key != "default" }?.key
            guard let pre = found else {
                throw TokenizerError("\(jsonPath): its pre-tokenizer matches none of llama.cpp's (\(GGUFPreTokenizer.known.joined(separator: ", "))); a GGUF tokenizer cannot be written for it")
            }
            out.append(("tokenizer.ggml.pre", .string(Array(pre.utf8))))
            out.append(("tokenizer.ggml.tokens", strings(tokens)))
            out.append(("tokenizer.ggml.token_type", .array(elementType: 5, types.map { .int32($0) })))
            let merges = tokenizer.merges.sorted { $0.value.rank < $1.value.rank }.map { key, _ in
                tokenizer.tokens[Int(key >> 32)] + [0x20] + tokenizer.tokens[Int(key & 0xFFFF_FFFF)]
            }
            out.append(("tokenizer.ggml.merges", strings(merges)))
        } else {
            guard tokenizer.byteFallback else {
                throw TokenizerError("\(jsonPath): neither byte-level nor byte-fallback BPE; a GGUF tokenizer cannot be written for it")
            }
            out.append(("tokenizer.ggml.model", .string(Array("llama".utf8))))
            out.append(("tokenizer.ggml.pre", .string(Array("default".utf8))))
            // Each token scores minus the rank of the first merge that makes it; tokens no merge
            // makes (characters, bytes, specials) score below every merge.
            var scores = [Float](repeating: -1e9, count: count)
            for (_, merge) in tokenizer.merges { scores[merge.id] = max(scores[merge.id], -Float(merge.rank)) }
            for id in 0..<count where types[id] == Int32(GGUFTokenType.normal.rawValue) {
                let t = tokens[id]
                if t.count == 6, t.starts(with: Array("<0x".utf8)), t.last == UInt8(ascii: ">") { types[id] = Int32(GGUFTokenType.byte.rawValue) }
            }
            out.append(("tokenizer.ggml.tokens", strings(tokens)))
            out.append(("tokenizer.ggml.scores", .array(elementType: 6, scores.map { .float32($0) })))
            out.append(("tokenizer.ggml.token_type", .array(elementType: 5, types.map { .int32($0) })))
            let prefixed = json.serialized().contains("\"Prepend\"") || (json["pre_tokenizer"]?["prepend_scheme"]?.stringValue ?? "always") != "never"
            out.append(("tokenizer.ggml.add_space_prefix", .bool(prefixed)))
        }
        if let bos = bosTokenID, bos < count { out.append(("tokenizer.ggml.bos_token_id", .uint32(UInt32(bos)))) }
        if let eos = eosTokenID, eos < count { out.append(("tokenizer.ggml.eos_token_id", .uint32(UInt32(eos)))) }
        if let unk = tokenizer.unknownID { out.append(("tokenizer.ggml.unknown_token_id", .uint32(UInt32(unk)))) }
        out.append(("tokenizer.ggml.add_bos_token", .bool(bosTokenID.map { tokenizer.prefixIDs.contains($0) } ?? false)))
        out.append(("tokenizer.ggml.add_eos_token", .bool(eosTokenID.map { tokenizer.suffixIDs.contains($0) } ?? false)))
        return out
    }

    /// The regexes of a pre-tokenizer's Split steps, in order.
    static func splitPatterns(_ json: JSONValue?) -> [String] {
        guard let json else { return [] }
        if json["type"]?.stringValue == "Sequence" { return (json["pretokenizers"]?.arrayValue ?? []).flatMap { splitPatterns($0) } }
        if json["type"]?.stringValue == "Split", let pattern = json["pattern"]?["Regex"]?.stringValue { return [pattern] }
        return []
    }

    /// Whether a pre-tokenizer's ByteLevel step splits with GPT-2's own regex.
    static func byteLevelUsesRegex(_ json: JSONValue) -> Bool {
        if json["type"]?.stringValue == "Sequence" { return (json["pretokenizers"]?.arrayValue ?? []).contains { byteLevelUsesRegex($0) } }
        return json["type"]?.stringValue == "ByteLevel" && (json["use_regex"]?.boolValue ?? true)
    }
}
