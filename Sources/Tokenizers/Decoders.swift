import SwitchyardJSON

/// Turns token strings back into text (tokenizer.json "decoder").
enum Decoder {
    case replace(TextPattern, content: String)
    case byteFallback
    case fuse
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case metaspace(replacement: String, prependScheme: PreTokenizer.PrependScheme)
    case byteLevel
    /// End-of-word suffix ("</w>") back to spaces.
    case bpe(suffix: String)
    /// Continuing-subword prefix ("##") joined to the previous token, other tokens spaced.
    case wordPiece(prefix: String, cleanup: Bool)
    case sequence([Decoder])

    init(_ json: JSONValue, path: String) throws(TokenizerError) {
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "BPEDecoder":
            self = .bpe(suffix: json["suffix"]?.stringValue ?? "</w>")
        case "WordPiece":
            self = .wordPiece(prefix: json["prefix"]?.stringValue ?? "##", cleanup: json["cleanup"]?.boolValue ?? true)
        case "Replace":
            self = .replace(try TextPattern(json["pattern"], path: path, component: "Replace decoder"), content: json["content"]?.stringValue ?? "")
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
            throw TokenizerError("\(path): decoder '\(type)' is not supported (supported: Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel, BPEDecoder, WordPiece, Sequence)")
        }
    }

    func decode(_ tokens: [String]) -> [String] {
        switch self {
        case .replace(let pattern, let content):
            return tokens.map { replacing($0, pattern, with: content) }
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
        case .bpe(let suffix):
            return tokens.enumerated().map { (i, t) in t.replacingAll(suffix, with: i == tokens.count - 1 ? "" : " ") }
        case .wordPiece(let prefix, let cleanup):
            return tokens.enumerated().map { (i, t) in
                var s = t
                if i != 0 { s = s.hasScalarPrefix(prefix) ? String(s.unicodeScalars.dropFirst(prefix.unicodeScalars.count)) : " " + s }
                if cleanup {
                    for (a, b) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                                   (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")] {
                        s = s.replacingAll(a, with: b)
                    }
                }
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

    /// The printable form of a piece's UTF-8 bytes, one character per byte.
    static func encode(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for b in text.utf8 { out.append(byteToUnicode[Int(b)]) }
        return String(out)
    }

    static let unicodeToByte: [Unicode.Scalar: UInt8] = {
        var map: [Unicode.Scalar: UInt8] = [:]
        for (b, s) in byteToUnicode.enumerated() { map[s] = UInt8(b) }
        return map
    }()
}

extension String {
    /// Prefix test on Unicode scalars (`hasPrefix` compares grapheme clusters canonically).
    func hasScalarPrefix(_ prefix: String) -> Bool { unicodeScalars.starts(with: prefix.unicodeScalars) }

    /// Replaces every occurrence of `pattern`. Matching whole UTF-8 sequences is matching by
    /// Unicode scalars (never by grapheme clusters, which would let a combining mark hide a match).
    func replacingAll(_ pattern: String, with replacement: String) -> String {
        let target = Array(pattern.utf8)
        guard !target.isEmpty else { return self }
        let source = Array(utf8)
        let substitute = Array(replacement.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(source.count + source.count / 4)
        var i = 0
        while i < source.count {
            if source[i] == target[0], i + target.count <= source.count, source[i..<i + target.count].elementsEqual(target) {
                out += substitute
                i += target.count
            } else {
                out.append(source[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
