import GGUF
import Synchronization
import SwitchyardJSON
import SwitchyardSupport

/// A token the tokenizer matches in raw text before anything else (special tokens such as `<s>`,
/// and tokens added after training).
struct AddedToken {
    let id: Int
    let content: [UInt8]
    let special: Bool
    let lstrip: Bool
    let rstrip: Bool
    let singleWord: Bool
    /// Matched in the normalized text rather than the raw input.
    let normalized: Bool
}

/// A Hugging Face tokenizer.json: added tokens, normalizer, pre-tokenizer, BPE model,
/// post-processor and decoder. Vocabularies are keyed by UTF-8 bytes, never by `String`, whose
/// equality would merge canonically equivalent tokens.
public final class Tokenizer: @unchecked Sendable {
    let vocabulary: [[UInt8]: Int]
    /// Token id → its bytes as written in the vocabulary.
    let tokens: [[UInt8]]
    /// (left id, right id) → (rank, merged id).
    let merges: [UInt64: (rank: Int, id: Int)]
    let byteFallback: Bool
    /// Llama 3 style: a word that is itself in the vocabulary is one token, whatever the merges say.
    let ignoreMerges: Bool
    /// Put before every symbol but a word's first ("##"), and after its last ("</w>").
    let subwordPrefix: [UInt8]
    let wordSuffix: [UInt8]
    let fuseUnknown: Bool
    let unknownID: Int?
    let addedTokens: [AddedToken]
    let specialIDs: Set<Int>
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let decoder: Decoder?
    /// TemplateProcessing for one sequence: ids before and after it.
    let prefixIDs: [Int]
    let suffixIDs: [Int]
    /// Word (UTF-8 bytes: a String key would merge canonically equivalent words) → ids. The server
    /// shares one tokenizer across requests.
    private let cache = Mutex<[[UInt8]: [Int]]>([:])

    /// The largest token id a tokenizer.json may use, plus one.
    static let idLimit = 1 << 24

    public var vocabularySize: Int { tokens.count }
    /// What the post-processor puts before a sequence: a BOS token, or nothing.
    public var prefixTokens: [Int] { prefixIDs }

    /// The most bytes of text one token stands for (its stored form is never shorter): a text of
    /// n bytes has at least n / longestTokenBytes tokens, which lets a server refuse an over-long
    /// prompt before tokenising it.
    public var longestTokenBytes: Int { max(1, tokens.lazy.map(\.count).max() ?? 1) }

    /// Loads `tokenizer.json` from a model folder, or the tokenizer in a GGUF file's metadata.
    public convenience init(directory: String) throws(TokenizerError) {
        if isGGUFFile(directory) {
            let file: GGUFFile
            do { file = try GGUFFile.shared(path: directory) } catch { throw TokenizerError(error.description) }
            try self.init(gguf: file.metadata, path: directory)
            return
        }
        let path = directory + "/tokenizer.json"
        let bytes = try readFile(path)
        let json: JSONValue
        do { json = try JSONValue.parse(bytes) } catch { throw TokenizerError("\(path): malformed JSON: \(error)") }
        try self.init(json: json, path: path)
    }

    public init(json: JSONValue, path: String) throws(TokenizerError) {
        guard let model = json["model"] else { throw TokenizerError("\(path): no 'model'") }
        let modelType = model["type"]?.stringValue ?? "BPE"
        guard modelType == "BPE" else {
            throw TokenizerError("\(path): model '\(modelType)' is not supported yet (supported: BPE)")
        }
        let subwordPrefix = Array((model["continuing_subword_prefix"]?.stringValue ?? "").utf8)
        let wordSuffix = Array((model["end_of_word_suffix"]?.stringValue ?? "").utf8)
        guard let vocabObject = model["vocab"]?.objectValue else { throw TokenizerError("\(path): model has no 'vocab' object") }
        var vocabulary: [[UInt8]: Int] = [:]
        vocabulary.reserveCapacity(vocabObject.count)
        var maxID = -1
        for (token, value) in vocabObject.entries {
            // Ids index a table: above 2^24 (every real vocabulary is under 2^18) is not a vocabulary.
            guard let id = value.intValue, (0..<Self.idLimit).contains(id) else {
                throw TokenizerError("\(path): vocab entry '\(token)' has no valid id (0 to \(Self.idLimit - 1)), found \(value.serialized())")
            }
            vocabulary[Array(token.utf8)] = id
            maxID = max(maxID, id)
        }
        var added: [AddedToken] = []
        for entry in json["added_tokens"]?.arrayValue ?? [] {
            guard let id = entry["id"]?.intValue, let content = entry["content"]?.stringValue else {
                throw TokenizerError("\(path): added token without id or content")
            }
            guard (0..<Self.idLimit).contains(id) else {
                throw TokenizerError("\(path): added token '\(content)' has id \(id), outside 0 to \(Self.idLimit - 1)")
            }
            added.append(AddedToken(
                id: id, content: Array(content.utf8), special: entry["special"]?.boolValue ?? false,
                lstrip: entry["lstrip"]?.boolValue ?? false, rstrip: entry["rstrip"]?.boolValue ?? false,
                singleWord: entry["single_word"]?.boolValue ?? false,
                normalized: entry["normalized"]?.boolValue ?? !(entry["special"]?.boolValue ?? false)))
            maxID = max(maxID, id)
        }
        var tokens = [[UInt8]](repeating: [], count: maxID + 1)
        for (bytes, id) in vocabulary { tokens[id] = bytes }
        for a in added { tokens[a.id] = a.content }
        var merges: [UInt64: (rank: Int, id: Int)] = [:]
        for (rank, entry) in (model["merges"]?.arrayValue ?? []).enumerated() {
            let pair: (String, String)
            if let s = entry.stringValue {
                let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw TokenizerError("\(path): merge \(rank) '\(s)' is not two tokens") }
                pair = (String(parts[0]), String(parts[1]))
            } else if let a = entry.arrayValue, a.count == 2, let l = a[0].stringValue, let r = a[1].stringValue {
                pair = (l, r)
            } else {
                throw TokenizerError("\(path): merge \(rank) is neither \"a b\" nor [a, b]")
            }
            let left = Array(pair.0.utf8), right = Array(pair.1.utf8)
            // With a continuing-subword prefix ("##"), "a ##b" merges into "ab".
            let joined = left + (!subwordPrefix.isEmpty && right.starts(with: subwordPrefix) ? Array(right.dropFirst(subwordPrefix.count)) : right)
            guard let l = vocabulary[left], let r = vocabulary[right], let m = vocabulary[joined] else {
                throw TokenizerError("\(path): merge \(rank) '\(pair.0) \(pair.1)' uses tokens missing from the vocabulary")
            }
            let key = UInt64(l) << 32 | UInt64(r)
            if merges[key] == nil { merges[key] = (rank, m) }
        }
        self.vocabulary = vocabulary
        self.subwordPrefix = subwordPrefix
        self.wordSuffix = wordSuffix
        self.tokens = tokens
        self.merges = merges
        byteFallback = model["byte_fallback"]?.boolValue ?? false
        ignoreMerges = model["ignore_merges"]?.boolValue ?? false
        fuseUnknown = model["fuse_unk"]?.boolValue ?? false
        if let unk = model["unk_token"]?.stringValue {
            unknownID = vocabulary[Array(unk.utf8)]
        } else {
            unknownID = nil
        }
        // Longest first, so that the leftmost match found first is also the longest.
        addedTokens = added.sorted { $0.content.count > $1.content.count }
        specialIDs = Set(added.filter(\.special).map(\.id))
        if let n = json["normalizer"], !n.isNull { normalizer = try Normalizer(n, path: path) } else { normalizer = nil }
        if let p = json["pre_tokenizer"], !p.isNull { preTokenizer = try PreTokenizer(p, path: path) } else { preTokenizer = nil }
        if let d = json["decoder"], !d.isNull { decoder = try Decoder(d, path: path) } else { decoder = nil }
        var prefix: [Int] = [], suffix: [Int] = []
        if let post = json["post_processor"], !post.isNull {
            // A Sequence (Llama 3: ByteLevel then TemplateProcessing) applies each in turn; only
            // TemplateProcessing changes ids.
            let processors = post["type"]?.stringValue == "Sequence" ? post["processors"]?.arrayValue ?? [] : [post]
            for processor in processors {
                let type = processor["type"]?.stringValue ?? "?"
                switch type {
                case "TemplateProcessing":
                    var seenSequence = false
                    for piece in processor["single"]?.arrayValue ?? [] {
                        if piece["Sequence"] != nil { seenSequence = true; continue }
                        guard let name = piece["SpecialToken"]?["id"]?.stringValue,
                            let ids = processor["special_tokens"]?[name]?["ids"]?.arrayValue
                        else { throw TokenizerError("\(path): TemplateProcessing names an unknown special token") }
                        let values = ids.compactMap(\.intValue)
                        if seenSequence { suffix += values } else { prefix += values }
                    }
                case "ByteLevel":
                    break
                default:
                    throw TokenizerError("\(path): post-processor '\(type)' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)")
                }
            }
        }
        prefixIDs = prefix
        suffixIDs = suffix
    }

    // MARK: Encoding

    /// Token ids of `text`; with `addSpecialTokens`, the post-processor's BOS/EOS as transformers'
    /// `add_special_tokens=True` adds them.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var ids: [Int] = addSpecialTokens ? prefixIDs : []
        let bytes = Array(text.utf8)
        // As the Rust library: tokens matched on raw text first, then each remaining piece is
        // normalized and cut at the tokens matched on normalized text.
        for segment in splitOnAddedTokens(bytes, rawAddedTokens) {
            switch segment {
            case .added(let id): ids.append(id)
            case .text(let range):
                var piece = String(decoding: bytes[range], as: UTF8.self)
                if let normalizer { piece = normalizer.apply(piece) }
                let normalizedBytes = Array(piece.utf8)
                for inner in splitOnAddedTokens(normalizedBytes, normalizedAddedTokens) {
                    switch inner {
                    case .added(let id): ids.append(id)
                    case .text(let r):
                        let word = String(decoding: normalizedBytes[r], as: UTF8.self)
                        ids += encodeNormalized(word, atStart: range.lowerBound == 0 && r.lowerBound == 0)
                    }
                }
            }
        }
        if addSpecialTokens { ids += suffixIDs }
        return ids
    }

    /// Added tokens matched on the raw input: the non-normalized ones, or all without a normalizer.
    var rawAddedTokens: [AddedToken] { normalizer == nil ? addedTokens : addedTokens.filter { !$0.normalized } }
    var normalizedAddedTokens: [AddedToken] { normalizer == nil ? [] : addedTokens.filter(\.normalized) }

    enum Segment { case added(Int), text(Range<Int>) }

    /// Cuts the input at every added token (leftmost, then longest match), applying their
    /// lstrip/rstrip (which swallow neighbouring whitespace) and single_word rules, with Unicode's
    /// whitespace and alphanumerics as the Rust library uses them.
    func splitOnAddedTokens(_ bytes: [UInt8], _ candidates: [AddedToken]) -> [Segment] {
        var segments: [Segment] = []
        var textStart = 0
        var i = 0
        while i < bytes.count {
            var matched: AddedToken?
            for token in candidates where !token.content.isEmpty && i + token.content.count <= bytes.count {
                if bytes[i..<i + token.content.count].elementsEqual(token.content) {
                    if token.singleWord {
                        let end = i + token.content.count
                        if let before = scalar(endingAt: i, in: bytes), isWordCharacter(before) { continue }
                        if let after = scalar(startingAt: end, in: bytes), isWordCharacter(after) { continue }
                    }
                    matched = token
                    break
                }
            }
            guard let token = matched else { i += 1; continue }
            var textEnd = i
            if token.lstrip {
                while textEnd > textStart, let s = scalar(endingAt: textEnd, in: bytes), s.properties.isWhitespace {
                    textEnd -= String(s).utf8.count
                }
            }
            if textEnd > textStart { segments.append(.text(textStart..<textEnd)) }
            segments.append(.added(token.id))
            i += token.content.count
            if token.rstrip {
                while let s = scalar(startingAt: i, in: bytes), s.properties.isWhitespace { i += String(s).utf8.count }
            }
            textStart = i
        }
        if textStart < bytes.count { segments.append(.text(textStart..<bytes.count)) }
        return segments
    }

    /// A regex word character (`\w` in Unicode mode: Alphabetic, marks, decimal digits, connector
    /// punctuation, Join_Control), which is how the Rust library draws single_word boundaries.
    func isWordCharacter(_ s: Unicode.Scalar) -> Bool {
        if s.properties.isAlphabetic || s.properties.isJoinControl { return true }
        switch s.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    func scalar(startingAt offset: Int, in bytes: [UInt8]) -> Unicode.Scalar? {
        guard offset < bytes.count else { return nil }
        var iterator = bytes[offset...].makeIterator()
        var decoder = UTF8()
        if case .scalarValue(let s) = decoder.decode(&iterator) { return s }
        return nil
    }

    func scalar(endingAt offset: Int, in bytes: [UInt8]) -> Unicode.Scalar? {
        guard offset > 0 else { return nil }
        var start = offset - 1
        while start > 0, bytes[start] & 0xC0 == 0x80 { start -= 1 }
        return scalar(startingAt: start, in: bytes)
    }

    /// Pre-tokenizes already normalized text and encodes each word.
    func encodeNormalized(_ normalized: String, atStart: Bool) -> [Int] {
        let words = preTokenizer?.split([normalized], atStart: atStart) ?? [normalized]
        var ids: [Int] = []
        for word in words where !word.isEmpty {
            let key = Array(word.utf8)
            if let cached = cache.withLock({ $0[key] }) {
                ids += cached
                continue
            }
            let encoded = bpe(word)
            if key.count <= 256 { cache.withLock { if $0.count < 100_000 { $0[key] = encoded } } }
            ids += encoded
        }
        return ids
    }

    /// Byte-pair encoding of one word: start from characters (or their bytes as `<0xXX>` tokens
    /// with byte fallback), then repeatedly merge the adjacent pair of lowest rank, leftmost first.
    func bpe(_ word: String) -> [Int] {
        if ignoreMerges, let whole = vocabulary[Array(word.utf8)] { return [whole] }
        let scalars = Array(word.unicodeScalars)
        if scalars.count == 1, wordSuffix.isEmpty, let whole = vocabulary[Array(word.utf8)] { return [whole] }
        var symbols: [Int] = []
        var lastWasUnknown = false
        for (i, ch) in scalars.enumerated() {
            let bytes = Array(String(ch).utf8)
            var symbol = bytes
            if i > 0 { symbol = subwordPrefix + symbol }
            if i == scalars.count - 1 { symbol += wordSuffix }
            if let id = vocabulary[symbol] {
                symbols.append(id)
                lastWasUnknown = false
            } else if byteFallback, let byteIDs = byteTokens(bytes) {
                symbols += byteIDs
                lastWasUnknown = false
            } else if let unk = unknownID {
                if !(fuseUnknown && lastWasUnknown) { symbols.append(unk) }
                lastWasUnknown = true
            }
        }
        return mergePairs(symbols)
    }

    /// Applies merges lowest rank first, leftmost first among equal ranks (the Rust library's
    /// order), with a heap of candidate pairs over a linked list of symbols: O(n log n), so a
    /// whole document as one word (SentencePiece with split=false) stays fast.
    func mergePairs(_ initial: [Int]) -> [Int] {
        var ids = initial
        let n = ids.count
        if n < 2 { return ids }
        var next = Array(1...n)          // n marks the end
        var previous = Array(-1..<(n - 1))
        var alive = [Bool](repeating: true, count: n)
        var heap = PairHeap()
        func push(_ left: Int) {
            let right = next[left]
            guard right < n, let m = merges[UInt64(ids[left]) << 32 | UInt64(ids[right])] else { return }
            heap.push(PairHeap.Entry(rank: m.rank, position: left, left: ids[left], right: ids[right], merged: m.id))
        }
        for i in 0..<(n - 1) { push(i) }
        while let e = heap.pop() {
            let l = e.position
            // Stale entries: a side was merged away or changed since this pair was pushed.
            guard alive[l], ids[l] == e.left, next[l] < n, ids[next[l]] == e.right else { continue }
            let r = next[l]
            ids[l] = e.merged
            alive[r] = false
            next[l] = next[r]
            if next[r] < n { previous[next[r]] = l }
            if previous[l] >= 0 { push(previous[l]) }
            push(l)
        }
        var out: [Int] = []
        var i = 0
        while i < n { out.append(ids[i]); i = next[i] }
        return out
    }

    func byteTokens(_ bytes: [UInt8]) -> [Int]? {
        var ids: [Int] = []
        for b in bytes {
            let hex = String(b, radix: 16, uppercase: true)
            guard let id = vocabulary[Array(("<0x" + (hex.count == 1 ? "0" : "") + hex + ">").utf8)] else { return nil }
            ids.append(id)
        }
        return ids
    }

    // MARK: Decoding


    /// The token's text as stored in the vocabulary, or nil for an id outside it.
    public func tokenText(_ id: Int) -> String? {
        guard id >= 0, id < tokens.count else { return nil }
        return String(decoding: tokens[id], as: UTF8.self)
    }

    /// Text of `ids` through the decoder. Ids outside the vocabulary are skipped.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) -> String {
        let pieces = ids.compactMap { id -> String? in
            if skipSpecialTokens && specialIDs.contains(id) { return nil }
            return tokenText(id)
        }
        guard let decoder else { return pieces.joined() }
        return decoder.decode(pieces).joined()
    }
}

func readFile(_ path: String) throws(TokenizerError) -> [UInt8] {
    do { return try readFileBytes(path) } catch { throw TokenizerError(error.description) }
}

/// A binary min-heap of merge candidates ordered by (rank, position).
struct PairHeap {
    struct Entry {
        var rank: Int
        var position: Int
        var left: Int
        var right: Int
        var merged: Int
        func precedes(_ o: Entry) -> Bool { rank != o.rank ? rank < o.rank : position < o.position }
    }

    private var items: [Entry] = []

    mutating func push(_ e: Entry) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].precedes(items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Entry? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count, items[l].precedes(items[best]) { best = l }
                if r < items.count, items[r].precedes(items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return first
    }
}
