import SwitchyardSupport

extension Renderer {
    func method(_ name: String, _ body: @escaping ([Value], [(String, Value)]) throws(TemplateError) -> Value) -> Value {
        .callable(Value.Callable(name, body))
    }

    func stringMethod(_ s: String, _ name: String) -> Value? {
        let line = self.line
        func chars(_ a: [Value]) -> Set<Unicode.Scalar>? {
            if case .string(let c)? = a.first { return Set(c.unicodeScalars) }
            return nil
        }
        switch name {
        case "strip", "lstrip", "rstrip":
            return method(name) { a, _ in
                let left = name != "rstrip", right = name != "lstrip"
                if let set = chars(a) { return .string(s.stripping(set, left: left, right: right)) }
                return .string(s.strippingWhitespace(left: left, right: right))
            }
        case "startswith", "endswith":
            return method(name) { a, _ throws(TemplateError) in
                let candidates: [Value]
                if case .list(let l)? = a.first { candidates = l } else if let f = a.first { candidates = [f] } else {
                    throw TemplateError("\(name) needs an argument", line: line)
                }
                return .bool(candidates.contains { c in
                    let p = Array(c.text.unicodeScalars), u = Array(s.unicodeScalars)
                    return name == "startswith" ? u.starts(with: p) : u.reversed().starts(with: p.reversed())
                })
            }
        case "split", "rsplit":
            return method(name) { a, k in
                var maxSplit = -1
                if case .int(let m)? = (a.count > 1 ? a[1] : k.first { $0.0 == "maxsplit" }?.1) { maxSplit = m }
                let separator: String?
                if case .string(let sep)? = a.first { separator = sep } else { separator = nil }
                return .list(pythonSplit(s, separator, maxSplit: maxSplit, fromRight: name == "rsplit").map { .string($0) })
            }
        case "splitlines":
            return method(name) { _, _ in s.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).map { .string(String($0)) }.dropLastIfEmpty() }
        case "replace":
            return method(name) { a, _ throws(TemplateError) in
                guard a.count >= 2 else { throw TemplateError("replace needs two arguments", line: line) }
                return .string(s.replacingOccurrences(a[0].text, a[1].text))
            }
        case "upper": return method(name) { _, _ in .string(s.uppercased()) }
        case "lower": return method(name) { _, _ in .string(s.lowercased()) }
        case "title": return method(name) { _, _ in .string(titleCased(s)) }
        case "capitalize": return method(name) { _, _ in .string(s.prefix(1).uppercased() + s.dropFirst().lowercased()) }
        case "find", "index", "count":
            return method(name) { a, _ throws(TemplateError) in
                let needle = a.first?.text ?? ""
                if name == "count" {
                    var n = 0
                    var rest = Substring(s)
                    while let r = rest.range(of: needle) { n += 1; rest = rest[r.upperBound...] }
                    return .int(n)
                }
                if let r = Substring(s).range(of: needle) { return .int(s.distance(from: s.startIndex, to: r.lowerBound)) }
                if name == "index" { throw TemplateError("substring not found", line: line) }
                return .int(-1)
            }
        case "join":
            return method(name) { a, _ throws(TemplateError) in
                .string(try (a.first ?? .list([])).iterated().map(\.text).joined(separator: s))
            }
        case "isdigit": return method(name) { _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType == .decimal }) }
        case "isspace": return method(name) { _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(\.properties.isWhitespace)) }
        case "format":
            return method(name) { a, _ in
                var out = ""
                var rest = Substring(s)
                var i = 0
                while let r = rest.range(of: "{}") {
                    out += rest[..<r.lowerBound] + (i < a.count ? a[i].text : "")
                    i += 1
                    rest = rest[r.upperBound...]
                }
                return .string(out + rest)
            }
        default: return nil
        }
    }

    func dictMethod(_ d: Value.Dictionary, _ name: String) -> Value? {
        switch name {
        case "items": return method(name) { _, _ in .list(d.entries.map { .list([.string($0.key), $0.value]) }) }
        case "keys": return method(name) { _, _ in .list(d.entries.map { .string($0.key) }) }
        case "values": return method(name) { _, _ in .list(d.entries.map(\.value)) }
        case "get": return method(name) { a, _ in d[a.first?.text ?? ""] ?? (a.count > 1 ? a[1] : .none) }
        default: return nil
        }
    }

    func listMethod(_ l: [Value], _ name: String) -> Value? {
        let line = self.line
        switch name {
        case "index":
            return method(name) { a, _ throws(TemplateError) in
                guard let i = l.firstIndex(where: { self.equal($0, a.first ?? .none) }) else { throw TemplateError("value is not in list", line: line) }
                return .int(i)
            }
        case "count": return method(name) { a, _ in .int(l.filter { self.equal($0, a.first ?? .none) }.count) }
        case "append", "extend", "pop", "insert", "remove", "clear", "sort", "reverse":
            // transformers renders in jinja2's immutable sandbox.
            return method(name) { _, _ throws(TemplateError) in throw TemplateError("access to list.\(name) is unsafe (templates cannot modify lists)", line: line) }
        default: return nil
        }
    }
}

extension [Value] {
    fileprivate func dropLastIfEmpty() -> Value {
        if case .string("")? = last { return .list(Array(dropLast())) }
        return .list(self)
    }
}

func titleCased(_ s: String) -> String {
    var out = ""
    var previousIsLetter = false
    for c in s {
        out += previousIsLetter ? c.lowercased() : c.uppercased()
        previousIsLetter = c.isLetter
    }
    return out
}

func htmlEscape(_ s: String) -> String {
    var out = ""
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&#34;"
        case "'": out += "&#39;"
        default: out.append(c)
        }
    }
    return out
}

/// Python's str.split / str.rsplit.
func pythonSplit(_ s: String, _ separator: String?, maxSplit: Int, fromRight: Bool) -> [String] {
    let scalars = Array(s.unicodeScalars)
    func string(_ r: ArraySlice<Unicode.Scalar>) -> String { String(String.UnicodeScalarView(r)) }
    guard let separator, !separator.isEmpty else {
        // Runs of whitespace separate; leading and trailing whitespace is dropped.
        var parts: [String] = []
        var i = 0
        var splits = 0
        let ws: (Unicode.Scalar) -> Bool = { $0.properties.isWhitespace }
        if fromRight {
            var end = scalars.count
            while end > 0 {
                while end > 0, ws(scalars[end - 1]) { end -= 1 }
                if end == 0 { break }
                if maxSplit >= 0 && splits == maxSplit {
                    var start = 0
                    while start < end, ws(scalars[start]) { start += 1 }
                    parts.append(string(scalars[start..<end]))
                    break
                }
                var start = end
                while start > 0, !ws(scalars[start - 1]) { start -= 1 }
                parts.append(string(scalars[start..<end]))
                splits += 1
                end = start
            }
            return parts.reversed()
        }
        while i < scalars.count {
            while i < scalars.count, ws(scalars[i]) { i += 1 }
            if i == scalars.count { break }
            if maxSplit >= 0 && splits == maxSplit {
                var end = scalars.count
                while end > i, ws(scalars[end - 1]) { end -= 1 }
                parts.append(string(scalars[i..<end]))
                break
            }
            var j = i
            while j < scalars.count, !ws(scalars[j]) { j += 1 }
            parts.append(string(scalars[i..<j]))
            splits += 1
            i = j
        }
        return parts
    }
    let sep = Array(separator.unicodeScalars)
    var positions: [Int] = []
    var i = 0
    while i + sep.count <= scalars.count {
        if Array(scalars[i..<i + sep.count]) == sep { positions.append(i); i += sep.count } else { i += 1 }
    }
    if maxSplit >= 0 && positions.count > maxSplit {
        positions = fromRight ? Array(positions.suffix(maxSplit)) : Array(positions.prefix(maxSplit))
    }
    var parts: [String] = []
    var start = 0
    for p in positions {
        parts.append(string(scalars[start..<p]))
        start = p + sep.count
    }
    parts.append(string(scalars[start...]))
    return parts
}

extension String {
    func stripping(_ set: Set<Unicode.Scalar>, left: Bool, right: Bool) -> String {
        var u = Substring(self).unicodeScalars
        if left { while let f = u.first, set.contains(f) { u = u.dropFirst() } }
        if right { while let l = u.last, set.contains(l) { u = u.dropLast() } }
        return String(u)
    }

    func strippingWhitespace(left: Bool, right: Bool) -> String {
        var u = Substring(self).unicodeScalars
        if left { while let f = u.first, f.properties.isWhitespace { u = u.dropFirst() } }
        if right { while let l = u.last, l.properties.isWhitespace { u = u.dropLast() } }
        return String(u)
    }
}
