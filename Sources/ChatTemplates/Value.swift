import SwitchyardJSON

/// A template value, with Python's semantics (what jinja2 gives templates).
enum Value {
    /// A missing variable or key, remembering its name for error messages.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([Value])
    case dict(Dictionary)
    /// `namespace(...)`: the one mutable object templates have, shared by reference.
    case namespace(Namespace)
    case callable(Callable)

    struct Dictionary {
        var entries: [(key: String, value: Value)] = []
        subscript(key: String) -> Value? {
            get { entries.last(where: { $0.key == key })?.value }
            set {
                if let i = entries.lastIndex(where: { $0.key == key }) {
                    if let newValue { entries[i].value = newValue } else { entries.remove(at: i) }
                } else if let newValue {
                    entries.append((key, newValue))
                }
            }
        }
    }

    final class Namespace {
        var values = Dictionary()
    }

    final class Callable {
        let name: String
        let body: (_ arguments: [Value], _ keywords: [(String, Value)]) throws(TemplateError) -> Value
        init(_ name: String, _ body: @escaping (_ arguments: [Value], _ keywords: [(String, Value)]) throws(TemplateError) -> Value) {
            self.name = name
            self.body = body
        }
    }

    init(json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(Value.init(json:)))
        case .object(let o): self = .dict(Dictionary(entries: o.entries.map { ($0.key, Value(json: $0.value)) }))
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let l): return !l.isEmpty
        case .dict(let d): return !d.entries.isEmpty
        case .namespace, .callable: return true
        }
    }

    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .list: return "list"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .callable: return "function"
        }
    }

    var number: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Python's str().
    var text: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python's repr().
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pythonFloat(d)
        case .string(let s): return pythonStringRepr(s)
        case .list(let l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d): return "{" + d.entries.map { pythonStringRepr($0.key) + ": " + $0.value.repr }.joined(separator: ", ") + "}"
        case .namespace(let n): return "<Namespace " + Value.dict(n.values).repr + ">"
        case .callable(let c): return "<function \(c.name)>"
        }
    }

    /// The elements iteration visits: list items, dict keys, string characters.
    func iterated() throws(TemplateError) -> [Value] {
        switch self {
        case .undefined, .none: return []
        case .list(let l): return l
        case .dict(let d): return d.entries.map { .string($0.key) }
        case .string(let s): return s.map { .string(String($0)) }
        default: throw TemplateError("'\(typeName)' object is not iterable", line: 0)
        }
    }
}

func pythonFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d > 0 ? "inf" : "-inf" }
    if d == d.rounded(), abs(d) < 1e16 {
        return String(Int(d)) + ".0"
    }
    var s = "\(d)"
    // Swift writes 1e-05 and 1e+16 as Python does; only the mantissa form differs ("5e-05" vs "5e-05").
    if s.contains("e"), !s.contains("e-"), !s.contains("e+") { s = s.replacingOccurrences("e", "e+") }
    return s
}

func pythonStringRepr(_ s: String) -> String {
    let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
    var out = String(quote)
    for u in s.unicodeScalars {
        switch u {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if Character(u) == quote {
                out += "\\" + String(quote)
            } else if u.value < 0x20 || u.value == 0x7F {
                out += "\\x" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16)
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + String(quote)
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.range(of: target) {
            out += rest[..<r.lowerBound] + replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

extension Substring {
    /// The first occurrence of `target`, compared by Unicode scalars.
    func range(of target: String) -> Range<Index>? {
        let t = Array(target.unicodeScalars)
        guard !t.isEmpty else { return nil }
        let scalars = unicodeScalars
        var i = scalars.startIndex
        while i < scalars.endIndex {
            var j = i
            var k = 0
            while k < t.count, j < scalars.endIndex, scalars[j] == t[k] {
                j = scalars.index(after: j)
                k += 1
            }
            if k == t.count { return i..<j }
            i = scalars.index(after: i)
        }
        return nil
    }
}

/// `json.dumps(value, ensure_ascii=False, indent=indent, separators=..., sort_keys=...)`, as
/// transformers' `tojson` filter calls it.
func pythonJSON(_ v: Value, indent: Int?, sortKeys: Bool, level: Int = 0) throws(TemplateError) -> String {
    let itemSeparator = indent == nil ? ", " : ","
    func newline(_ depth: Int) -> String { indent.map { "\n" + String(repeating: " ", count: $0 * depth) } ?? "" }
    switch v {
    case .none, .undefined: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let i): return String(i)
    case .double(let d):
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
        return pythonFloat(d)
    case .string(let s): return jsonString(s)
    case .list(let l):
        if l.isEmpty { return "[]" }
        var parts: [String] = []
        for e in l { parts.append(newline(level + 1) + (try pythonJSON(e, indent: indent, sortKeys: sortKeys, level: level + 1))) }
        return "[" + parts.joined(separator: itemSeparator) + newline(level) + "]"
    case .dict(let d):
        if d.entries.isEmpty { return "{}" }
        let entries = sortKeys ? d.entries.sorted { $0.key.unicodeScalars.lexicographicallyPrecedes($1.key.unicodeScalars) } : d.entries
        var parts: [String] = []
        for e in entries {
            parts.append(newline(level + 1) + jsonString(e.key) + ": " + (try pythonJSON(e.value, indent: indent, sortKeys: sortKeys, level: level + 1)))
        }
        return "{" + parts.joined(separator: itemSeparator) + newline(level) + "}"
    case .namespace(let n): return try pythonJSON(.dict(n.values), indent: indent, sortKeys: sortKeys, level: level)
    case .callable: throw TemplateError("Object of type function is not JSON serializable", line: 0)
    }
}

/// A JSON string literal, escaped as Python's json.dumps(ensure_ascii=False) escapes it.
func jsonString(_ s: String) -> String {
    var out = ""
    JSONValue.writeString(s, to: &out)
    return out
}
