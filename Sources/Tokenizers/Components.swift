import SwitchyardJSON

public struct TokenizerError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Text rewrites applied before splitting (tokenizer.json "normalizer").
enum Normalizer {
    case prepend(String)
    case replace(pattern: String, content: String)
    case lowercase
    case strip(left: Bool, right: Bool)
    case sequence([Normalizer])

    init(_ json: JSONValue, path: String) throws(TokenizerError) {
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "Prepend":
            self = .prepend(json["prepend"]?.stringValue ?? "")
        case "Replace":
            self = .replace(pattern: try stringPattern(json, path: path), content: json["content"]?.stringValue ?? "")
        case "Lowercase":
            self = .lowercase
        case "Strip":
            self = .strip(left: json["strip_left"]?.boolValue ?? true, right: json["strip_right"]?.boolValue ?? true)
        case "Sequence":
            var list: [Normalizer] = []
            for n in json["normalizers"]?.arrayValue ?? [] { list.append(try Normalizer(n, path: path)) }
            self = .sequence(list)
        default:
            throw TokenizerError("\(path): normalizer '\(type)' is not supported yet (supported: Prepend, Replace, Lowercase, Strip, Sequence)")
        }
    }

    func apply(_ s: String) -> String {
        switch self {
        case .prepend(let p): return s.isEmpty ? s : p + s
        case .replace(let pattern, let content): return s.replacingAll(pattern, with: content)
        case .lowercase: return s.lowercased()
        case .strip(let left, let right):
            var sub = Substring(s).unicodeScalars
            if left { while sub.first?.properties.isWhitespace == true { sub = sub.dropFirst() } }
            if right { while sub.last?.properties.isWhitespace == true { sub = sub.dropLast() } }
            return String(sub)
        case .sequence(let list): return list.reduce(s) { $1.apply($0) }
        }
    }
}

func stringPattern(_ json: JSONValue, path: String) throws(TokenizerError) -> String {
    if let s = json["pattern"]?["String"]?.stringValue { return s }
    throw TokenizerError("\(path): Replace with a Regex pattern is not supported yet")
}

/// How text is cut into words before the model sees them (tokenizer.json "pre_tokenizer").
enum PreTokenizer {
    /// SentencePiece style: spaces become `replacement`, and a replacement is put in front of the
    /// text (always, never, or only for the piece at the very start of the input).
    case metaspace(replacement: String, prepend: PrependScheme, split: Bool)
    case sequence([PreTokenizer])

    enum PrependScheme: String { case first, always, never }

    init(_ json: JSONValue, path: String) throws(TokenizerError) {
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "Metaspace":
            let replacement = json["replacement"]?.stringValue ?? "\u{2581}"
            var scheme = PrependScheme(rawValue: json["prepend_scheme"]?.stringValue ?? "always") ?? .always
            if let add = json["add_prefix_space"]?.boolValue, json["prepend_scheme"] == nil { scheme = add ? .always : .never }
            self = .metaspace(replacement: replacement, prepend: scheme, split: json["split"]?.boolValue ?? true)
        case "Sequence":
            var list: [PreTokenizer] = []
            for p in json["pretokenizers"]?.arrayValue ?? [] { list.append(try PreTokenizer(p, path: path)) }
            self = .sequence(list)
        default:
            throw TokenizerError("\(path): pre-tokenizer '\(type)' is not supported yet (supported: Metaspace, Sequence)")
        }
    }

    /// - Parameter atStart: whether this piece begins at offset 0 of the original input.
    func split(_ words: [String], atStart: Bool) -> [String] {
        switch self {
        case .metaspace(let replacement, let prepend, let split):
            return words.flatMap { word -> [String] in
                var s = word.replacingAll(" ", with: replacement)
                let shouldPrepend = prepend == .always || (prepend == .first && atStart)
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
        case .sequence(let list):
            return list.reduce(words) { $1.split($0, atStart: atStart) }
        }
    }
}

/// Turns token strings back into text (tokenizer.json "decoder").
enum Decoder {
    case replace(pattern: String, content: String)
    case byteFallback
    case fuse
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case metaspace(replacement: String, prependScheme: PreTokenizer.PrependScheme)
    case byteLevel
    case sequence([Decoder])

    init(_ json: JSONValue, path: String) throws(TokenizerError) {
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "Replace":
            self = .replace(pattern: try stringPattern(json, path: path), content: json["content"]?.stringValue ?? "")
        case "ByteFallback": self = .byteFallback
        case "Fuse": self = .fuse
        case "Strip":
            self = .strip(content: json["content"]?.stringValue?.unicodeScalars.first ?? " ", start: json["start"]?.intValue ?? 0, stop: json["stop"]?.intValue ?? 0)
        case "Metaspace":
            self = .metaspace(
                replacement: json["replacement"]?.stringValue ?? "\u{2581}",
                prependScheme: PreTokenizer.PrependScheme(rawValue: json["prepend_scheme"]?.stringValue ?? "always") ?? .always)
        case "ByteLevel": self = .byteLevel
        case "Sequence":
            var list: [Decoder] = []
            for d in json["decoders"]?.arrayValue ?? [] { list.append(try Decoder(d, path: path)) }
            self = .sequence(list)
        default:
            throw TokenizerError("\(path): decoder '\(type)' is not supported yet (supported: Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel, Sequence)")
        }
    }

    func decode(_ tokens: [String]) -> [String] {
        switch self {
        case .replace(let pattern, let content):
            return tokens.map { $0.replacingAll(pattern, with: content) }
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let s = String(validating: pending, as: UTF8.self) {
                    out.append(s)
                } else {
                    out.append(contentsOf: Array(repeating: "\u{FFFD}", count: pending.count))
                }
                pending.removeAll()
            }
            for t in tokens {
                if let byte = byteFallbackValue(t) { pending.append(byte) } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            return tokens.map { token in
                // Unicode scalars, as the Rust library's chars(): a space followed by a combining
                // mark is one Swift Character but two scalars.
                var chars = Array(token.unicodeScalars)
                var cut = 0
                while cut < start, cut < chars.count, chars[cut] == content { cut += 1 }
                chars.removeFirst(cut)
                var tail = 0
                while tail < stop, !chars.isEmpty, chars.last == content { chars.removeLast(); tail += 1 }
                return String(String.UnicodeScalarView(chars))
            }
        case .metaspace(let replacement, let scheme):
            return tokens.enumerated().map { (i, token) in
                var s = token.replacingAll(replacement, with: " ")
                if i == 0, scheme != .never, s.unicodeScalars.first == " " { s.unicodeScalars.removeFirst() }
                return s
            }
        case .byteLevel:
            let bytes = tokens.joined().unicodeScalars.flatMap { scalar -> [UInt8] in
                if let b = ByteLevel.unicodeToByte[scalar] { return [b] }
                return Array(String(scalar).utf8)
            }
            return [String(decoding: bytes, as: UTF8.self)]
        case .sequence(let list):
            return list.reduce(tokens) { $1.decode($0) }
        }
    }
}

/// `<0x41>` → 0x41.
func byteFallbackValue(_ token: String) -> UInt8? {
    let u = Array(token.utf8)
    guard u.count == 6, u[0] == UInt8(ascii: "<"), u[1] == UInt8(ascii: "0"), u[2] == UInt8(ascii: "x"), u[5] == UInt8(ascii: ">") else { return nil }
    return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
}

/// GPT-2's reversible map between bytes and printable characters.
enum ByteLevel {
    static let byteToUnicode: [Unicode.Scalar] = {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var scalars = printable
        var extra = 0
        for b in 0..<256 where !printable.contains(b) {
            printable.append(b)
            scalars.append(256 + extra)
            extra += 1
        }
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        for (b, s) in zip(printable, scalars) { table[b] = Unicode.Scalar(UInt32(s))! }
        return table
    }()

    static let unicodeToByte: [Unicode.Scalar: UInt8] = {
        var map: [Unicode.Scalar: UInt8] = [:]
        for (b, s) in byteToUnicode.enumerated() { map[s] = UInt8(b) }
        return map
    }()
}

extension String {
    /// Prefix test on Unicode scalars (`hasPrefix` compares grapheme clusters canonically).
    func hasScalarPrefix(_ prefix: String) -> Bool { unicodeScalars.starts(with: prefix.unicodeScalars) }

    /// Replaces every occurrence of `pattern`, matching by Unicode scalars (not by grapheme
    /// clusters, which would let a combining mark hide a match).
    func replacingAll(_ pattern: String, with replacement: String) -> String {
        guard !pattern.isEmpty else { return self }
        let source = Array(unicodeScalars), target = Array(pattern.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        while i < source.count {
            if i + target.count <= source.count, Array(source[i..<i + target.count]) == target {
                out.append(contentsOf: replacement.unicodeScalars)
                i += target.count
            } else {
                out.append(source[i])
                i += 1
            }
        }
        return String(out)
    }
}
