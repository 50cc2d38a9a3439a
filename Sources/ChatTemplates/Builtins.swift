import SwitchyardSupport

extension Renderer {
    func keyword(_ keywords: [(String, Value)], _ name: String) -> Value? { keywords.first { $0.0 == name }?.1 }

    func argument(_ arguments: [Value], _ keywords: [(String, Value)], _ index: Int, _ name: String) -> Value? {
        index < arguments.count ? arguments[index] : keyword(keywords, name)
    }

    // MARK: Filters

    func applyFilter(_ name: String, _ value: Value, _ arguments: [Value], _ keywords: [(String, Value)]) throws(TemplateError) -> Value {
        func strictly(_ v: Value) throws(TemplateError) -> Value {
            if case .undefined(let n) = v { throw TemplateError("'\(n)' is undefined", line: line) }
            return v
        }
        switch name {
        case "tojson":
            let indent: Int?
            if case .int(let i)? = argument(arguments, keywords, 0, "indent") { indent = i } else { indent = nil }
            let sortKeys = keyword(keywords, "sort_keys")?.truthy ?? false
            do { return .string(try pythonJSON(value, indent: indent, sortKeys: sortKeys)) } catch {
                throw TemplateError(error.message, line: line)
            }
        case "trim":
            if let chars = arguments.first?.text { return .string(value.text.stripping(Set(chars.unicodeScalars), left: true, right: true)) }
            return .string(value.text.strippingWhitespace(left: true, right: true))
        case "length", "count":
            switch value {
            case .string(let s): return .int(s.count)
            case .list(let l): return .int(l.count)
            case .dict(let d): return .int(d.entries.count)
            case .undefined: return .int(0)
            default: throw TemplateError("object of type '\(value.typeName)' has no len()", line: line)
            }
        case "join":
            let separator = argument(arguments, keywords, 0, "d")?.text ?? ""
            var items = try strictly(value).iterated()
            if let attribute = keyword(keywords, "attribute")?.text {
                var mapped: [Value] = []
                for i in items { mapped.append(try self.attribute(i, attribute)) }
                items = mapped
            }
            return .string(items.map(\.text).joined(separator: separator))
        case "map":
            let items = try strictly(value).iterated()
            var out: [Value] = []
            if let attribute = keyword(keywords, "attribute")?.text {
                let fallback = keyword(keywords, "default")
                for i in items {
                    let v = try self.attribute(i, attribute)
                    out.append(v.isUndefined ? (fallback ?? v) : v)
                }
            } else if let filterName = arguments.first?.text {
                for i in items { out.append(try applyFilter(filterName, i, Array(arguments.dropFirst()), [])) }
            }
            return .list(out)
        case "select", "reject":
            var out: [Value] = []
            for i in try strictly(value).iterated() {
                let passes = arguments.isEmpty ? i.truthy : try applyTest(arguments[0].text, i, Array(arguments.dropFirst()))
                if passes == (name == "select") { out.append(i) }
            }
            return .list(out)
        case "selectattr", "rejectattr":
            guard let attribute = arguments.first?.text else { throw TemplateError("\(name) needs an attribute name", line: line) }
            var out: [Value] = []
            for i in try strictly(value).iterated() {
                let a = try self.attribute(i, attribute)
                let passes = arguments.count < 2 ? a.truthy : try applyTest(arguments[1].text, a, Array(arguments.dropFirst(2)))
                if passes == (name == "selectattr") { out.append(i) }
            }
            return .list(out)
        case "default", "d":
            let fallback = argument(arguments, keywords, 0, "default_value") ?? .string("")
            let boolean = argument(arguments, keywords, 1, "boolean")?.truthy ?? false
            if value.isUndefined || (boolean && !value.truthy) { return fallback }
            return value
        case "first":
            return try strictly(value).iterated().first ?? .undefined("first")
        case "last":
            return try strictly(value).iterated().last ?? .undefined("last")
        case "unique":
            var out: [Value] = []
            for i in try strictly(value).iterated() where !out.contains(where: { equal($0, i) }) { out.append(i) }
            return .list(out)
        case "list":
            return .list(try strictly(value).iterated())
        case "string":
            return .string(value.text)
        case "int":
            switch value {
            case .int: return value
            case .double(let d): return .int(Int(d))
            case .bool(let b): return .int(b ? 1 : 0)
            case .string(let s): return .int(Int(s.strippingWhitespace(left: true, right: true)) ?? Int(Double(s) ?? 0))
            default: return argument(arguments, keywords, 0, "default") ?? .int(0)
            }
        case "float":
            if let n = value.number { return .double(n) }
            if case .string(let s) = value, let d = Double(s.strippingWhitespace(left: true, right: true)) { return .double(d) }
            return argument(arguments, keywords, 0, "default") ?? .double(0)
        case "abs":
            switch value {
            case .int(let i): return .int(abs(i))
            case .double(let d): return .double(abs(d))
            default: throw TemplateError("bad operand type for abs(): '\(value.typeName)'", line: line)
            }
        case "round":
            guard let n = value.number else { throw TemplateError("round needs a number", line: line) }
            var precision = 0
            if case .int(let p)? = argument(arguments, keywords, 0, "precision") { precision = p }
            var scale = 1.0
            for _ in 0..<precision { scale *= 10 }
            return .double((n * scale).rounded(.toNearestOrEven) / scale)
        case "indent":
            var width = 4
            if case .int(let w)? = argument(arguments, keywords, 0, "width") { width = w }
            if case .string(let w)? = argument(arguments, keywords, 0, "width") { width = w.count }
            let prefix = String(repeating: " ", count: width)
            let first = argument(arguments, keywords, 1, "first")?.truthy ?? false
            let blank = argument(arguments, keywords, 2, "blank")?.truthy ?? false
            let lines = value.text.split(separator: "\n", omittingEmptySubsequences: false)
            var out: [String] = []
            for (i, l) in lines.enumerated() {
                if (i == 0 && !first) || (!blank && l.isEmpty) { out.append(String(l)) } else { out.append(prefix + l) }
            }
            return .string(out.joined(separator: "\n"))
        case "capitalize":
            let s = value.text
            return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case "lower": return .string(value.text.lowercased())
        case "upper": return .string(value.text.uppercased())
        case "title": return .string(titleCased(value.text))
        case "replace":
            guard arguments.count >= 2 else { throw TemplateError("replace needs old and new strings", line: line) }
            return .string(value.text.replacingOccurrences(arguments[0].text, arguments[1].text))
        case "items":
            guard case .dict(let d) = value else { return .list([]) }
            return .list(d.entries.map { .list([.string($0.key), $0.value]) })
        case "dictsort":
            guard case .dict(let d) = value else { throw TemplateError("dictsort needs a mapping", line: line) }
            return .list(d.entries.sorted { $0.key.lowercased() < $1.key.lowercased() }.map { .list([.string($0.key), $0.value]) })
        case "safe", "escape", "e", "forceescape":
            return name == "safe" ? value : .string(htmlEscape(value.text))
        case "reverse":
            if case .string(let s) = value { return .string(String(s.reversed())) }
            return .list(try strictly(value).iterated().reversed())
        case "sort":
            let reverse = argument(arguments, keywords, 0, "reverse")?.truthy ?? false
            let attributeName = keyword(keywords, "attribute")?.text
            var items = try strictly(value).iterated()
            var failure: TemplateError?
            items.sort { a, b in
                do {
                    let x = try attributeName.map { n throws(TemplateError) in try self.attribute(a, n) } ?? a
                    let y = try attributeName.map { n throws(TemplateError) in try self.attribute(b, n) } ?? b
                    let c = try compare(x, y)
                    return reverse ? c > 0 : c < 0
                } catch {
                    failure = error as? TemplateError ?? TemplateError("\(error)", line: self.line)
                    return false
                }
            }
            if let failure { throw failure }
            return .list(items)
        case "min", "max", "sum":
            let items = try strictly(value).iterated()
            if name == "sum" {
                var total = Value.int(0)
                for i in items { total = try binary("+", total, i) }
                return total
            }
            guard var best = items.first else { return .undefined(name) }
            for i in items.dropFirst() where try compare(i, best) * (name == "min" ? 1 : -1) < 0 { best = i }
            return best
        case "wordcount":
            return .int(value.text.split(whereSeparator: { $0.isWhitespace }).count)
        case "batch":
            guard case .int(let n)? = arguments.first, n > 0 else { throw TemplateError("batch needs a positive size", line: line) }
            let items = try strictly(value).iterated()
            return .list(stride(from: 0, to: items.count, by: n).map { .list(Array(items[$0..<min($0 + n, items.count)])) })
        default:
            throw TemplateError("unsupported filter '\(name)'", line: line)
        }
    }

    // MARK: Tests

    func applyTest(_ name: String, _ v: Value, _ arguments: [Value]) throws(TemplateError) -> Bool {
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true } else { return false }
        case "string": return v.isStringLike
        case "number": switch v { case .int, .double: return true; default: return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "mapping": switch v { case .dict, .namespace: return true; default: return false }
        case "iterable": switch v { case .list, .dict, .string: return true; default: return false }
        case "sequence": switch v { case .list, .dict, .string: return true; default: return false }
        case "callable": if case .callable = v { return true } else { return false }
        case "even", "odd":
            guard case .int(let i) = v else { throw TemplateError("\(name) needs an integer", line: line) }
            return (i % 2 == 0) == (name == "even")
        case "divisibleby":
            guard case .int(let i) = v, case .int(let d)? = arguments.first, d != 0 else { throw TemplateError("divisibleby needs integers", line: line) }
            return i % d == 0
        case "eq", "equalto", "==": return equal(v, arguments.first ?? .none)
        case "ne", "!=": return !equal(v, arguments.first ?? .none)
        case "lt", "lessthan", "<": return try compare(v, arguments.first ?? .none) < 0
        case "le", "<=": return try compare(v, arguments.first ?? .none) <= 0
        case "gt", "greaterthan", ">": return try compare(v, arguments.first ?? .none) > 0
        case "ge", ">=": return try compare(v, arguments.first ?? .none) >= 0
        case "in": return try contains(arguments.first ?? .none, v)
        case "sameas":
            switch (v, arguments.first) {
            case (.none, .some(.none)): return true
            case (.bool(let a), .some(.bool(let b))): return a == b
            case (.namespace(let a), .some(.namespace(let b))): return a === b
            default: return false
            }
        case "lower": return v.isStringLike && v.text == v.text.lowercased()
        case "upper": return v.isStringLike && v.text == v.text.uppercased()
        default: throw TemplateError("unsupported test '\(name)'", line: line)
        }
    }
}
