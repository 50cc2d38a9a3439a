/// A problem in a template, with the line it is on.
public struct TemplateError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var line: Int
    public var description: String { "chat template line \(line): \(message)" }
    public init(_ message: String, line: Int) {
        self.message = message
        self.line = line
    }
}

/// Pieces of a template source: literal text, `{{ expression }}` and `{% statement %}` tags.
enum Segment {
    case text(String, line: Int)
    case output([Token], line: Int)
    case statement([Token], line: Int)
}

/// Splits a template into segments, applying Jinja's whitespace control: `{%-`/`-%}` (and the
/// same on `{{ }}`, `{# #}`) strip all whitespace on that side; with `trim_blocks` the first newline
/// after a block tag goes; with `lstrip_blocks` spaces and tabs from the start of a line up to a
/// block tag go (transformers turns both on). `{% raw %}` bodies are kept verbatim.
func lex(_ source: String, trimBlocks: Bool = true, lstripBlocks: Bool = true) throws(TemplateError) -> [Segment] {
    let chars = Array(source.unicodeScalars)
    var segments: [Segment] = []
    var text = String.UnicodeScalarView()
    var line = 1
    var i = 0
    var trimNextLeading = false      // `-%}`: strip all whitespace that follows
    var dropNextNewline = false      // trim_blocks: drop one newline that follows

    func starts(_ s: String, at k: Int) -> Bool {
        let u = Array(s.unicodeScalars)
        guard k + u.count <= chars.count else { return false }
        for j in 0..<u.count where chars[k + j] != u[j] { return false }
        return true
    }
    func flushText(stripTrailing: Bool, lstrip: Bool) {
        var t = text
        if stripTrailing {
            while let last = t.last, last.properties.isWhitespace { t.removeLast() }
        } else if lstrip {
            // Only whitespace between the previous newline (or the start) and the tag.
            var k = t.endIndex
            while k > t.startIndex, t[t.index(before: k)] == " " || t[t.index(before: k)] == "\t" { k = t.index(before: k) }
            if k == t.startIndex || t[t.index(before: k)] == "\n" { t.removeSubrange(k...) }
        }
        if !t.isEmpty { segments.append(.text(String(t), line: line)) }
        text = .init()
    }

    while i < chars.count {
        let c = chars[i]
        if c == "{", i + 1 < chars.count, chars[i + 1] == "{" || chars[i + 1] == "%" || chars[i + 1] == "#" {
            let kind = chars[i + 1]
            let close: String = kind == "{" ? "}}" : kind == "%" ? "%}" : "#}"
            let tagLine = line
            var j = i + 2
            var leftModifier: Unicode.Scalar?
            if j < chars.count, chars[j] == "-" || chars[j] == "+" { leftModifier = chars[j]; j += 1 }
            // Find the closing delimiter, skipping string literals inside expressions.
            var k = j
            var quote: Unicode.Scalar?
            while k < chars.count {
                if let q = quote {
                    if chars[k] == "\\" { k += 2; continue }
                    if chars[k] == q { quote = nil }
                } else if kind != "#" && (chars[k] == "'" || chars[k] == "\"") {
                    quote = chars[k]
                } else if starts(close, at: k) {
                    break
                }
                k += 1
            }
            guard k < chars.count else { throw TemplateError("unclosed '{\(Character(kind))' tag", line: tagLine) }
            var end = k
            var rightModifier: Unicode.Scalar?
            if end > j, chars[end - 1] == "-" || chars[end - 1] == "+" { rightModifier = chars[end - 1]; end -= 1 }
            let inner = String(String.UnicodeScalarView(chars[j..<end]))
            let isBlock = kind != "{"
            flushText(stripTrailing: leftModifier == "-", lstrip: isBlock && lstripBlocks && leftModifier != "+")
            for s in chars[i..<(k + 2)] where s == "\n" { line += 1 }
            i = k + 2
            trimNextLeading = rightModifier == "-"
            dropNextNewline = isBlock && trimBlocks && rightModifier != "+"
            switch kind {
            case "#":
                break
            case "{":
                segments.append(.output(try tokenize(inner, line: tagLine), line: tagLine))
            default:
                let tokens = try tokenize(inner, line: tagLine)
                if case .name("raw") = tokens.first?.kind, tokens.count == 1 {
                    // Everything up to {% endraw %} is text.
                    var m = i
                    var found: (start: Int, after: Int)?
                    while m < chars.count {
                        if starts("{%", at: m) {
                            var n = m + 2
                            if n < chars.count, chars[n] == "-" || chars[n] == "+" { n += 1 }
                            while n < chars.count, chars[n] == " " || chars[n] == "\t" || chars[n] == "\n" { n += 1 }
                            if starts("endraw", at: n) {
                                var e = n + 6
                                while e < chars.count, !starts("%}", at: e) { e += 1 }
                                found = (m, e + 2)
                                break
                            }
                        }
                        m += 1
                    }
                    guard let found else { throw TemplateError("'raw' without 'endraw'", line: tagLine) }
                    var body = String.UnicodeScalarView(chars[i..<found.start])
                    if trimNextLeading { while let f = body.first, f.properties.isWhitespace { body.removeFirst() } }
                    if chars[found.start + 2] == "-" { while let l = body.last, l.properties.isWhitespace { body.removeLast() } }
                    if !body.isEmpty { segments.append(.text(String(body), line: line)) }
                    for s in chars[i..<found.after] where s == "\n" { line += 1 }
                    i = found.after
                    trimNextLeading = chars[found.after - 3] == "-"
                    dropNextNewline = trimBlocks
                    continue
                }
                segments.append(.statement(tokens, line: tagLine))
            }
            continue
        }
        if trimNextLeading {
            if c.properties.isWhitespace {
                if c == "\n" { line += 1 }
                i += 1
                continue
            }
            trimNextLeading = false
        }
        if dropNextNewline {
            dropNextNewline = false
            if c == "\n" { line += 1; i += 1; continue }
            if c == "\r", i + 1 < chars.count, chars[i + 1] == "\n" { line += 1; i += 2; continue }
        }
        if c == "\n" { line += 1 }
        text.append(c)
        i += 1
    }
    flushText(stripTrailing: false, lstrip: false)
    return segments
}

struct Token: Equatable {
    enum Kind: Equatable {
        case name(String)
        case string(String)
        case integer(Int)
        case float(Double)
        case op(String)
    }
    var kind: Kind
    var line: Int
}

private let operators = ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ".", ",", ":", "|"]

/// The tokens inside one tag.
func tokenize(_ source: String, line: Int) throws(TemplateError) -> [Token] {
    let s = Array(source.unicodeScalars)
    var tokens: [Token] = []
    var i = 0
    var currentLine = line
    while i < s.count {
        let c = s[i]
        if c.properties.isWhitespace {
            if c == "\n" { currentLine += 1 }
            i += 1
            continue
        }
        if c == "_" || c.properties.isAlphabetic {
            var j = i
            while j < s.count, s[j] == "_" || s[j].properties.isAlphabetic || ("0"..."9").contains(s[j]) { j += 1 }
            tokens.append(Token(kind: .name(String(String.UnicodeScalarView(s[i..<j]))), line: currentLine))
            i = j
            continue
        }
        if ("0"..."9").contains(c) {
            var j = i
            var isFloat = false
            while j < s.count, ("0"..."9").contains(s[j]) || s[j] == "_" || (s[j] == "." && !isFloat && j + 1 < s.count && ("0"..."9").contains(s[j + 1])) || s[j] == "e" {
                if s[j] == "." || s[j] == "e" { isFloat = true }
                j += 1
            }
            let text = String(String.UnicodeScalarView(s[i..<j])).replacingUnderscores()
            if isFloat, let d = Double(text) {
                tokens.append(Token(kind: .float(d), line: currentLine))
            } else if let n = Int(text) {
                tokens.append(Token(kind: .integer(n), line: currentLine))
            } else {
                throw TemplateError("invalid number '\(text)'", line: currentLine)
            }
            i = j
            continue
        }
        if c == "'" || c == "\"" {
            var j = i + 1
            var out = String.UnicodeScalarView()
            while j < s.count, s[j] != c {
                if s[j] == "\\", j + 1 < s.count {
                    j += 1
                    switch s[j] {
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    case "r": out.append("\r")
                    case "\\": out.append("\\")
                    case "'": out.append("'")
                    case "\"": out.append("\"")
                    case "u" where j + 4 < s.count:
                        let hex = String(String.UnicodeScalarView(s[(j + 1)...(j + 4)]))
                        if let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) { out.append(u); j += 4 } else { out.append("\\"); out.append("u") }
                    default: out.append("\\"); out.append(s[j])
                    }
                } else {
                    if s[j] == "\n" { currentLine += 1 }
                    out.append(s[j])
                }
                j += 1
            }
            guard j < s.count else { throw TemplateError("unterminated string", line: currentLine) }
            tokens.append(Token(kind: .string(String(out)), line: currentLine))
            i = j + 1
            continue
        }
        var matched = false
        for op in operators {
            let u = Array(op.unicodeScalars)
            if i + u.count <= s.count, Array(s[i..<i + u.count]) == u {
                tokens.append(Token(kind: .op(op), line: currentLine))
                i += u.count
                matched = true
                break
            }
        }
        if !matched { throw TemplateError("unexpected character '\(Character(c))'", line: currentLine) }
    }
    return tokens
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(unicodeScalars.filter { $0 != "_" }) }
}
