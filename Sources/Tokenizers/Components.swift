import SwitchyardJSON

public struct TokenizerError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Text rewrites applied before splitting (tokenizer.json "normalizer").
enum Normalizer {
    case prepend(String)
    case replace(TextPattern, content: String)
    case lowercase
    case strip(left: Bool, right: Bool)
    case unicode(NormalizationForm)
    case sequence([Normalizer])

    init(_ json: JSONValue, path: String) throws(TokenizerError) {
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "Prepend":
            self = .prepend(json["prepend"]?.stringValue ?? "")
        case "Replace":
            self = .replace(try TextPattern(json["pattern"], path: path, component: "Replace normalizer"), content: json["content"]?.stringValue ?? "")
        case "Lowercase":
            self = .lowercase
        case "NFC", "NFD", "NFKC", "NFKD":
            self = .unicode(NormalizationForm(rawValue: type)!)
        case "Strip":
            self = .strip(left: json["strip_left"]?.boolValue ?? true, right: json["strip_right"]?.boolValue ?? true)
        case "Sequence":
            var list: [Normalizer] = []
            for n in json["normalizers"]?.arrayValue ?? [] { list.append(try Normalizer(n, path: path)) }
            self = .sequence(list)
        default:
            throw TokenizerError("\(path): normalizer '\(type)' is not supported (supported: Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip, Sequence)")
        }
    }

    func apply(_ s: String) -> String {
        switch self {
        case .prepend(let p): return s.isEmpty ? s : p + s
        case .replace(let pattern, let content): return replacing(s, pattern, with: content)
        case .lowercase: return s.lowercased()
        case .unicode(let form): return UnicodeNormalization.normalize(s, form)
        case .strip(let left, let right):
            var sub = Substring(s).unicodeScalars
            if left { while sub.first?.properties.isWhitespace == true { sub = sub.dropFirst() } }
            if right { while sub.last?.properties.isWhitespace == true { sub = sub.dropLast() } }
            return String(sub)
        case .sequence(let list): return list.reduce(s) { $1.apply($0) }
        }
    }
}

/// Every match of `pattern` replaced by `content`.
func replacing(_ text: String, _ pattern: TextPattern, with content: String) -> String {
    let scalars = text.unicodeScalars
    var out = String.UnicodeScalarView()
    var position = scalars.startIndex
    for range in pattern.matches(in: text) {
        out.append(contentsOf: scalars[position..<range.lowerBound])
        out.append(contentsOf: content.unicodeScalars)
        position = range.upperBound
    }
    out.append(contentsOf: scalars[position...])
    return String(out)
}

/// How a Split pre-tokenizer treats the pieces its pattern matches (tokenizers'
/// SplitDelimiterBehavior).
enum SplitBehavior: String {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
}

/// A pattern a Split or Replace matches: a literal string or a regular expression, matched on
/// Unicode scalars (as Oniguruma does in the Rust library), never on grapheme clusters.
struct TextPattern: @unchecked Sendable {
    let regex: Regex<AnyRegexOutput>

    init(_ json: JSONValue?, path: String, component: String) throws(TokenizerError) {
        if let literal = json?["String"]?.stringValue {
            regex = Regex(verbatim: literal).matchingSemantics(.unicodeScalar)
        } else if let pattern = json?["Regex"]?.stringValue {
            // A backtracking engine takes exponential time on such a pattern and a crafted text
            // (HF tokenizers' Oniguruma gives up after a retry limit); refuse it at load.
            if Self.repeatsARepetition(pattern) {
                throw TokenizerError("\(path): \(component) regex \(String(reflecting: pattern)) repeats a repetition (as (a+)+ does), which can take exponential time; it is not supported")
            }
            do {
                regex = try Regex(Self.explicitWordClasses(pattern)).matchingSemantics(.unicodeScalar)
            } catch {
                throw TokenizerError("\(path): \(component) regex \(String(reflecting: pattern)) is not supported: \(error)")
            }
        } else {
            throw TokenizerError("\(path): \(component) has no String or Regex pattern")
        }
    }

    init(regex pattern: String) {
        regex = try! Regex(Self.explicitWordClasses(pattern)).matchingSemantics(.unicodeScalar)
    }

    /// The Unicode `\w` set (UTS #18, as Oniguruma and the Rust regex crate define it), spelled out.
    static let wordProperties = #"\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}"#

    /// Swift's Regex mismatches `\w` with Unicode-scalar semantics (on "工1天" it skips the digit),
    /// while the same set written as properties matches correctly; so `\w` (and `\W` outside a
    /// bracket) are rewritten before compiling.
    static func explicitWordClasses(_ pattern: String) -> String {
        var out = ""
        var inClass = false
        var chars = Array(pattern)[...]
        while let c = chars.popFirst() {
            if c == "\\", let next = chars.popFirst() {
                switch next {
                case "w": out += inClass ? wordProperties : "[" + wordProperties + "]"
                case "W" where !inClass: out += "[^" + wordProperties + "]"
                default: out += "\\" + String(next)
                }
                continue
            }
            if c == "[" && !inClass { inClass = true } else if c == "]" && inClass { inClass = false }
            out.append(c)
        }
        return out
    }

    /// Whether an unbounded repetition (`*`, `+`, `{n,}`) applies to a group that itself holds one:
    /// star height above one, the shape of catastrophic backtracking. No tokenizer's pattern has it.
    static func repeatsARepetition(_ pattern: String) -> Bool {
        let chars = Array(pattern.unicodeScalars)
        var stack: [Bool] = [false]  // per open group: whether it holds an unbounded repetition
        var i = 0
        /// An unbounded quantifier at `j`, and where it ends (a lazy or possessive mark included).
        func unbounded(at j: Int) -> Int? {
            guard j < chars.count else { return nil }
            var end: Int
            switch chars[j] {
            case "*", "+": end = j + 1
            case "{":
                guard let close = chars[j...].firstIndex(of: "}") else { return nil }
                let body = String(String.UnicodeScalarView(chars[(j + 1)..<close]))
                guard body.hasSuffix(",") || body.isEmpty else { return nil }
                end = close + 1
            default: return nil
            }
            if end < chars.count, chars[end] == "?" || chars[end] == "+" { end += 1 }
            return end
        }
        while i < chars.count {
            let c = chars[i]
            if c == "\\" {
                i += 2
                if let end = unbounded(at: i) { stack[stack.count - 1] = true; i = end }
                continue
            }
            if c == "[" {
                // Skip the class, escapes and a leading ] included.
                i += 1
                if i < chars.count, chars[i] == "^" { i += 1 }
                if i < chars.count, chars[i] == "]" { i += 1 }
                while i < chars.count, chars[i] != "]" { i += chars[i] == "\\" ? 2 : 1 }
                i += 1
                if let end = unbounded(at: i) { stack[stack.count - 1] = true; i = end }
                continue
            }
            if c == "(" { stack.append(false); i += 1; continue }
            if c == ")" {
                let inner = stack.count > 1 ? stack.removeLast() : false
                i += 1
                if let end = unbounded(at: i) {
                    if inner { return true }
                    stack[stack.count - 1] = true
                    i = end
                } else if inner {
                    stack[stack.count - 1] = true
                }
                continue
            }
            i += 1
            if let end = unbounded(at: i) { stack[stack.count - 1] = true; i = end }
        }
        return false
    }

    /// Scalar ranges of the non-overlapping matches, left to right (empty matches skipped).
    func matches(in text: String) -> [Range<String.Index>] {
        text.unicodeScalars.isEmpty ? [] : text.matches(of: regex).map(\.range).filter { !$0.isEmpty }
    }
}

/// Cuts `text` at the matches of `pattern`, keeping or merging the matched pieces as `behavior`
/// says. With `invert`, the matches are the pieces and what lies between them the delimiters.
func split(_ text: String, pattern: TextPattern, behavior: SplitBehavior, invert: Bool) -> [String] {
    let scalars = text.unicodeScalars
    var pieces: [(String, isMatch: Bool)] = []
    var position = scalars.startIndex
    for range in pattern.matches(in: text) {
        if position < range.lowerBound { pieces.append((String(scalars[position..<range.lowerBound]), invert)) }
        pieces.append((String(scalars[range]), !invert))
        position = range.upperBound
    }
    if position < scalars.endIndex { pieces.append((String(scalars[position...]), invert)) }
    var out: [String] = []
    switch behavior {
    case .removed:
        out = pieces.filter { !$0.isMatch }.map(\.0)
    case .isolated:
        out = pieces.map(\.0)
    case .contiguous:
        var previousWasMatch = false
        for (piece, isMatch) in pieces {
            if isMatch && previousWasMatch && !out.isEmpty { out[out.count - 1] += piece } else { out.append(piece) }
            previousWasMatch = isMatch
        }
    case .mergedWithPrevious:
        var previousWasMatch = false
        for (piece, isMatch) in pieces {
            if isMatch && !previousWasMatch && !out.isEmpty { out[out.count - 1] += piece } else { out.append(piece) }
            previousWasMatch = isMatch
        }
    case .mergedWithNext:
        var pending: String?
        for (piece, isMatch) in pieces {
            if isMatch {
                if let p = pending { out.append(p) }
                pending = piece
            } else {
                out.append((pending ?? "") + piece)
                pending = nil
            }
        }
        if let p = pending { out.append(p) }
    }
    return out
}

/// How text is cut into words before the model sees them (tokenizer.json "pre_tokenizer").
enum PreTokenizer {
    /// SentencePiece style: spaces become `replacement`, and a replacement is put in front of the
    /// text (always, never, or only for the piece at the very start of the input).
    case metaspace(replacement: String, prepend: PrependScheme, split: Bool)
    /// GPT-2 style: optionally a leading space, optionally GPT-2's word regex, then every byte
    /// written as a printable character.
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case split(TextPattern, SplitBehavior, invert: Bool)
    case digits(individual: Bool)
    case punctuation(SplitBehavior)
    case whitespace
    case whitespaceSplit
    case sequence([PreTokenizer])

    enum PrependScheme: String { case first, always, never }

    static let gpt2Pattern = TextPattern(regex: #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#)
    static let wordsPattern = TextPattern(regex: #"\w+|[^\w\s]+"#)
    static let whitespacePattern = TextPattern(regex: #"\s+"#)
    static let digitPattern = TextPattern(regex: #"\p{N}"#)
    static let digitRunPattern = TextPattern(regex: #"\p{N}+"#)
    static let punctuationPattern = TextPattern(regex: #"\p{P}|[!-/:-@\[-`{-~]"#)

    init(_ json: JSONValue, path: String) throws(TokenizerError) {
        let type = json["type"]?.stringValue ?? "?"
        func behavior(_ fallback: SplitBehavior) throws(TokenizerError) -> SplitBehavior {
            guard let name = json["behavior"]?.stringValue else { return fallback }
            guard let b = SplitBehavior(rawValue: name) else { throw TokenizerError("\(path): \(type) behavior '\(name)' is unknown") }
            return b
        }
        switch type {
        case "Metaspace":
            let replacement = json["replacement"]?.stringValue ?? "\u{2581}"
            var scheme = PrependScheme(rawValue: json["prepend_scheme"]?.stringValue ?? "always") ?? .always
            if let add = json["add_prefix_space"]?.boolValue, json["prepend_scheme"] == nil { scheme = add ? .always : .never }
            self = .metaspace(replacement: replacement, prepend: scheme, split: json["split"]?.boolValue ?? true)
        case "ByteLevel":
            self = .byteLevel(addPrefixSpace: json["add_prefix_space"]?.boolValue ?? true, useRegex: json["use_regex"]?.boolValue ?? true)
        case "Split":
            self = .split(try TextPattern(json["pattern"], path: path, component: "Split"), try behavior(.isolated), invert: json["invert"]?.boolValue ?? false)
        case "Digits":
            self = .digits(individual: json["individual_digits"]?.boolValue ?? false)
        case "Punctuation":
            self = .punctuation(try behavior(.isolated))
        case "Whitespace":
            self = .whitespace
        case "WhitespaceSplit":
            self = .whitespaceSplit
        case "Sequence":
            var list: [PreTokenizer] = []
            for p in json["pretokenizers"]?.arrayValue ?? [] { list.append(try PreTokenizer(p, path: path)) }
            self = .sequence(list)
        default:
            throw TokenizerError("\(path): pre-tokenizer '\(type)' is not supported (supported: Metaspace, ByteLevel, Split, Digits, Punctuation, Whitespace, WhitespaceSplit, Sequence)")
        }
    }

    /// - Parameter atStart: whether this piece begins at offset 0 of the original input.
    func split(_ words: [String], atStart: Bool) -> [String] {
        switch self {
        case .metaspace(let replacement, let prepend, let split):
            return words.enumerated().flatMap { (index, word) -> [String] in
                var s = word.replacingAll(" ", with: replacement)
                let shouldPrepend = prepend == .always || (prepend == .first && atStart && index == 0)
                if shouldPrepend, !s.hasScalarPrefix(replacement) { s = replacement + s }
                guard split else { return [s] }
                // Split before each replacement character, keeping it with the word that follows.
                var pieces: [String] = []
                var current = String.UnicodeScalarView()
                let marker = replacement.unicodeScalars.first
                for scalar in s.unicodeScalars {
                    if scalar == marker, !current.isEmpty { pieces.append(String(current)); current = .init() }
                    current.append(scalar)
                }
                if !current.isEmpty { pieces.append(String(current)) }
                return pieces
            }
        case .byteLevel(let addPrefixSpace, let useRegex):
            return words.flatMap { word -> [String] in
                var w = word
                if addPrefixSpace, w.unicodeScalars.first != " " { w = " " + w }
                let pieces = useRegex ? Tokenizers.split(w, pattern: Self.gpt2Pattern, behavior: .isolated, invert: false) : [w]
                return pieces.map(ByteLevel.encode)
            }
        case .split(let pattern, let behavior, let invert):
            return words.flatMap { Tokenizers.split($0, pattern: pattern, behavior: behavior, invert: invert) }
        case .digits(let individual):
            return words.flatMap { Tokenizers.split($0, pattern: individual ? Self.digitPattern : Self.digitRunPattern, behavior: .isolated, invert: false) }
        case .punctuation(let behavior):
            return words.flatMap { Tokenizers.split($0, pattern: Self.punctuationPattern, behavior: behavior, invert: false) }
        case .whitespace:
            return words.flatMap { Tokenizers.split($0, pattern: Self.wordsPattern, behavior: .isolated, invert: true).filter { !$0.unicodeScalars.allSatisfy(\.properties.isWhitespace) } }
        case .whitespaceSplit:
            return words.flatMap { Tokenizers.split($0, pattern: Self.whitespacePattern, behavior: .removed, invert: false) }
        case .sequence(let list):
            return list.reduce(words) { $1.split($0, atStart: atStart) }
        }
    }
}
