import SwitchyardSupport

/// Control flow out of a loop body.
private enum LoopSignal { case none, breakLoop, continueLoop }

/// Walks the parsed template with a stack of scopes, as jinja2 renders: `for` bodies and macros
/// get their own scope for each iteration or call; `if` does not.
final class Renderer {
    var scopes: [[String: Value]]
    var line = 1
    typealias Limits = ChatTemplate.Limits
    let limits: Limits
    private var steps = 0, depth = 0

    init(globals: [String: Value], limits: Limits = Limits()) {
        scopes = [globals]
        self.limits = limits
    }

    /// Counts a step and a level of nesting; `leave()` ends the level.
    private func enter() throws(TemplateError) {
        steps += 1
        depth += 1
        guard steps <= limits.steps else { throw TemplateError("the template takes too long (more than \(limits.steps) steps)", line: line) }
        guard depth <= limits.depth else { throw TemplateError("the template nests or recurses more than \(limits.depth) levels deep", line: line) }
    }

    private func leave() { depth -= 1 }

    /// Fails when `bytes` would pass the output limit.
    func checkSize(_ bytes: Int) throws(TemplateError) {
        guard bytes <= limits.outputBytes else {
            throw TemplateError("the template's output passes \(formatBytes(limits.outputBytes))", line: line)
        }
    }

    func lookup(_ name: String) -> Value {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined(name)
    }

    func assign(_ name: String, _ value: Value) { scopes[scopes.count - 1][name] = value }

    func render(_ nodes: [Node]) throws(TemplateError) -> String {
        var out = ""
        _ = try run(nodes, into: &out)
        return out
    }

    private func run(_ nodes: [Node], into out: inout String) throws(TemplateError) -> LoopSignal {
        for node in nodes {
            let signal = try execute(node, into: &out)
            if signal != .none { return signal }
        }
        return .none
    }

    private func execute(_ node: Node, into out: inout String) throws(TemplateError) -> LoopSignal {
        try enter()
        defer { leave() }
        let signal = try executeNode(node, into: &out)
        try checkSize(out.utf8.count)
        return signal
    }

    private func executeNode(_ node: Node, into out: inout String) throws(TemplateError) -> LoopSignal {
        switch node {
        case .text(let t):
            out += t
        case .output(let e, let l):
            line = l
            out += try evaluate(e).text
        case .ifChain(let branches, let otherwise, let l):
            line = l
            for (condition, body) in branches where try evaluate(condition).truthy {
                return try run(body, into: &out)
            }
            return try run(otherwise, into: &out)
        case .forLoop(let targets, let iterable, let filter, let body, let otherwise, let l):
            line = l
            var items = try at(l) { () throws(TemplateError) in try evaluate(iterable).iterated() }
            if let filter {
                var kept: [Value] = []
                for item in items {
                    scopes.append([:])
                    bind(targets, item)
                    let keep = try evaluate(filter).truthy
                    scopes.removeLast()
                    if keep { kept.append(item) }
                }
                items = kept
            }
            if items.isEmpty { return try run(otherwise, into: &out) }
            for (i, item) in items.enumerated() {
                // An iteration is a step even when its body is empty.
                steps += 1
                guard steps <= limits.steps else { throw TemplateError("the template takes too long (more than \(limits.steps) steps)", line: l) }
                var loop = Value.Dictionary()
                loop["index"] = .int(i + 1)
                loop["index0"] = .int(i)
                loop["revindex"] = .int(items.count - i)
                loop["revindex0"] = .int(items.count - i - 1)
                loop["first"] = .bool(i == 0)
                loop["last"] = .bool(i == items.count - 1)
                loop["length"] = .int(items.count)
                loop["depth"] = .int(1)
                loop["depth0"] = .int(0)
                loop["previtem"] = i > 0 ? items[i - 1] : .undefined("previtem")
                loop["nextitem"] = i + 1 < items.count ? items[i + 1] : .undefined("nextitem")
                loop["cycle"] = .callable(Value.Callable("cycle") { arguments, _ in
                    arguments.isEmpty ? .none : arguments[i % arguments.count]
                })
                scopes.append(["loop": .dict(loop)])
                bind(targets, item)
                let signal = try run(body, into: &out)
                scopes.removeLast()
                if signal == .breakLoop { break }
            }
        case .set(let target, let valueExpression, let l):
            line = l
            let value = try evaluate(valueExpression)
            switch target {
            case .names(let names):
                if names.count == 1 { assign(names[0], value) } else {
                    let items = try value.iterated()
                    guard items.count == names.count else {
                        throw TemplateError("cannot unpack \(items.count) values into \(names.count) names", line: l)
                    }
                    for (n, v) in zip(names, items) { assign(n, v) }
                }
            case .attribute(let object, let attribute):
                guard case .namespace(let ns) = lookup(object) else {
                    throw TemplateError("cannot assign attribute '\(attribute)' on '\(object)': only namespace() objects can be changed", line: l)
                }
                ns.values[attribute] = value
            }
        case .setBlock(let name, let body):
            assign(name, .string(try render(body)))
        case .macro(let name, let parameters, let body):
            assign(name, .callable(makeMacro(name, parameters, body)))
        case .callBlock(let call, let parameters, let body, let l):
            line = l
            let caller = makeMacro("caller", parameters, body)
            scopes.append(["caller": .callable(caller)])
            defer { scopes.removeLast() }
            out += try evaluate(call).text
        case .filterBlock(let name, let arguments, let body, let l):
            line = l
            let text = try render(body)
            var values: [Value] = []
            for a in arguments { values.append(try evaluate(a)) }
            out += try applyFilter(name, .string(text), values, []).text
        case .breakLoop:
            return .breakLoop
        case .continueLoop:
            return .continueLoop
        }
        return .none
    }

    private func at<T>(_ l: Int, _ body: () throws(TemplateError) -> T) throws(TemplateError) -> T {
        do { return try body() } catch { throw TemplateError(error.message, line: error.line == 0 ? l : error.line) }
    }

    private func bind(_ targets: [String], _ item: Value) {
        if targets.count == 1 {
            assign(targets[0], item)
        } else {
            let parts = (try? item.iterated()) ?? []
            for (i, t) in targets.enumerated() { assign(t, i < parts.count ? parts[i] : .undefined(t)) }
        }
    }

    private func makeMacro(_ name: String, _ parameters: [(String, Expression?)], _ body: [Node]) -> Value.Callable {
        // Macros see the scopes where they are called (jinja2 resolves globals at call time).
        Value.Callable(name) { [unowned self] arguments, keywords throws(TemplateError) in
            var scope: [String: Value] = [:]
            for (i, (parameter, defaultValue)) in parameters.enumerated() {
                if i < arguments.count {
                    scope[parameter] = arguments[i]
                } else if let k = keywords.first(where: { $0.0 == parameter }) {
                    scope[parameter] = k.1
                } else if let defaultValue {
                    scope[parameter] = try self.evaluate(defaultValue)
                } else {
                    scope[parameter] = .undefined(parameter)
                }
            }
            scope["varargs"] = .list(Array(arguments.dropFirst(parameters.count)))
            self.scopes.append(scope)
            defer { self.scopes.removeLast() }
            return .string(try self.render(body))
        }
    }

    // MARK: Expressions

    func evaluate(_ e: Expression) throws(TemplateError) -> Value {
        try enter()
        defer { leave() }
        return try evaluateExpression(e)
    }

    private func evaluateExpression(_ e: Expression) throws(TemplateError) -> Value {
        switch e {
        case .literal(let v): return v
        case .variable(let name): return lookup(name)
        case .list(let items):
            var values: [Value] = []
            for i in items { values.append(try evaluate(i)) }
            return .list(values)
        case .tuple(let items):
            var values: [Value] = []
            for i in items { values.append(try evaluate(i)) }
            return .list(values)
        case .dict(let pairs):
            var d = Value.Dictionary()
            for (k, v) in pairs { d[try evaluate(k).text] = try evaluate(v) }
            return .dict(d)
        case .attribute(let object, let name):
            return try attribute(try evaluate(object), name)
        case .subscriptAccess(let object, let key):
            return try item(try evaluate(object), try evaluate(key))
        case .slice(let object, let start, let stop, let step):
            return try slice(try evaluate(object), start.map(evaluate), stop.map(evaluate), step.map(evaluate))
        case .call(let function, let arguments, let keywords):
            let f = try evaluate(function)
            var values: [Value] = []
            for a in arguments { values.append(try evaluate(a)) }
            var named: [(String, Value)] = []
            for (k, v) in keywords { named.append((k, try evaluate(v))) }
            guard case .callable(let c) = f else {
                if case .undefined(let name) = f { throw TemplateError("'\(name)' is undefined", line: line) }
                throw TemplateError("'\(f.typeName)' object is not callable", line: line)
            }
            return try at(line) { () throws(TemplateError) in try c.body(values, named) }
        case .filter(let value, let name, let arguments, let keywords):
            let v = try evaluate(value)
            var values: [Value] = []
            for a in arguments { values.append(try evaluate(a)) }
            var named: [(String, Value)] = []
            for (k, x) in keywords { named.append((k, try evaluate(x))) }
            return try applyFilter(name, v, values, named)
        case .test(let value, let name, let arguments, let negated):
            let v = try evaluate(value)
            var values: [Value] = []
            for a in arguments { values.append(try evaluate(a)) }
            return .bool(try applyTest(name, v, values) != negated)
        case .unary(let op, let operand):
            let v = try evaluate(operand)
            if op == "not" { return .bool(!v.truthy) }
            switch v {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            default: throw TemplateError("bad operand type for unary -: '\(v.typeName)'", line: line)
            }
        case .binary(let op, let left, let right):
            if op == "and" {
                let l = try evaluate(left)
                return l.truthy ? try evaluate(right) : l
            }
            if op == "or" {
                let l = try evaluate(left)
                return l.truthy ? l : try evaluate(right)
            }
            return try binary(op, try evaluate(left), try evaluate(right))
        case .conditional(let condition, let then, let otherwise):
            if try evaluate(condition).truthy { return try evaluate(then) }
            return try otherwise.map(evaluate) ?? .undefined("conditional")
        }
    }

    func attribute(_ object: Value, _ name: String) throws(TemplateError) -> Value {
        switch object {
        case .undefined(let n):
            throw TemplateError("'\(n)' is undefined", line: line)
        case .dict(let d):
            if let v = d[name] { return v }
            if let method = dictMethod(d, name) { return method }
            return .undefined(name)
        case .namespace(let ns):
            return ns.values[name] ?? .undefined(name)
        case .string(let s):
            return stringMethod(s, name) ?? .undefined(name)
        case .list(let l):
            return listMethod(l, name) ?? .undefined(name)
        default:
            return .undefined(name)
        }
    }

    func item(_ object: Value, _ key: Value) throws(TemplateError) -> Value {
        switch (object, key) {
        case (.undefined(let n), _):
            throw TemplateError("'\(n)' is undefined", line: line)
        case (.list(let l), .int(let i)):
            let index = i < 0 ? l.count + i : i
            return index >= 0 && index < l.count ? l[index] : .undefined("[\(i)]")
        case (.string(let s), .int(let i)):
            let chars = Array(s)
            let index = i < 0 ? chars.count + i : i
            return index >= 0 && index < chars.count ? .string(String(chars[index])) : .undefined("[\(i)]")
        case (.dict(let d), _):
            return d[key.text] ?? .undefined(key.text)
        case (.namespace(let ns), _):
            return ns.values[key.text] ?? .undefined(key.text)
        default:
            return try attribute(object, key.text)
        }
    }

    func slice(_ object: Value, _ start: Value?, _ stop: Value?, _ step: Value?) throws(TemplateError) -> Value {
        func int(_ v: Value?) throws(TemplateError) -> Int? {
            switch v {
            case nil, .some(.none): return nil
            case .some(.int(let i)): return i
            default: throw TemplateError("slice indices must be integers", line: line)
            }
        }
        let stepValue = try int(step) ?? 1
        guard stepValue != 0 else { throw TemplateError("slice step cannot be zero", line: line) }
        func indices(_ count: Int) throws(TemplateError) -> [Int] {
            func clamp(_ v: Int?, _ fallback: Int, low: Int, high: Int) -> Int {
                guard var x = v else { return fallback }
                if x < 0 { x += count }
                return min(max(x, low), high)
            }
            var out: [Int] = []
            if stepValue > 0 {
                var i = clamp(try int(start), 0, low: 0, high: count)
                let end = clamp(try int(stop), count, low: 0, high: count)
                while i < end { out.append(i); i += stepValue }
            } else {
                var i = clamp(try int(start), count - 1, low: -1, high: count - 1)
                let end = clamp(try int(stop), -1, low: -1, high: count - 1)
                while i > end { out.append(i); i += stepValue }
            }
            return out
        }
        switch object {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .string(let s):
            let chars = Array(s)
            return .string(String(try indices(chars.count).map { chars[$0] }))
        case .undefined(let n): throw TemplateError("'\(n)' is undefined", line: line)
        default: throw TemplateError("'\(object.typeName)' object is not subscriptable", line: line)
        }
    }

    func binary(_ op: String, _ l: Value, _ r: Value) throws(TemplateError) -> Value {
        switch op {
        case "==": return .bool(equal(l, r))
        case "!=": return .bool(!equal(l, r))
        case "in": return .bool(try contains(r, l))
        case "~": return .string(l.text + r.text)
        case "<", "<=", ">", ">=":
            let c = try compare(l, r)
            switch op {
            case "<": return .bool(c < 0)
            case "<=": return .bool(c <= 0)
            case ">": return .bool(c > 0)
            default: return .bool(c >= 0)
            }
        default: break
        }
        if case .undefined(let n) = l { throw TemplateError("'\(n)' is undefined", line: line) }
        if case .undefined(let n) = r { throw TemplateError("'\(n)' is undefined", line: line) }
        switch (op, l, r) {
        case ("+", .string(let a), .string(let b)): return .string(a + b)
        case ("+", .list(let a), .list(let b)): return .list(a + b)
        case ("*", .string(let a), .int(let n)):
            let (bytes, overflow) = a.utf8.count.multipliedReportingOverflow(by: max(0, n))
            try checkSize(overflow ? Int.max : bytes)
            return .string(String(repeating: a, count: max(0, n)))
        case ("*", .list(let a), .int(let n)):
            let (items, overflow) = a.count.multipliedReportingOverflow(by: max(0, n))
            try checkSize(overflow ? Int.max : items)
            return .list(Array(repeating: a, count: max(0, n)).flatMap { $0 })
        case (_, .int(let a), .int(let b)) where op != "/":
            func checked(_ result: (partialValue: Int, overflow: Bool)) throws(TemplateError) -> Value {
                guard !result.overflow else { throw TemplateError("integer overflow in \(a) \(op) \(b)", line: line) }
                return .int(result.partialValue)
            }
            switch op {
            case "+": return try checked(a.addingReportingOverflow(b))
            case "-": return try checked(a.subtractingReportingOverflow(b))
            case "*": return try checked(a.multipliedReportingOverflow(by: b))
            case "//", "%":
                guard b != 0 else { throw TemplateError("integer division or modulo by zero", line: line) }
                guard !(a == Int.min && b == -1) else { throw TemplateError("integer overflow in \(a) \(op) \(b)", line: line) }
                // Python's floor division and modulo: the remainder takes the divisor's sign.
                var q = a / b
                if (a % b != 0) && ((a < 0) != (b < 0)) { q -= 1 }
                return op == "//" ? .int(q) : .int(a - q * b)
            case "**" where b >= 0:
                func times(_ x: Int, _ y: Int) throws(TemplateError) -> Int {
                    let (product, overflow) = x.multipliedReportingOverflow(by: y)
                    guard !overflow else { throw TemplateError("integer overflow in \(a) ** \(b)", line: line) }
                    return product
                }
                var result = 1, base = a, e = b
                while e > 0 {
                    if e & 1 == 1 { result = try times(result, base) }
                    e >>= 1
                    if e > 0 { base = try times(base, base) }
                }
                return .int(result)
            default: break
            }
        default: break
        }
        guard let a = l.number, let b = r.number else {
            throw TemplateError("unsupported operand types for \(op): '\(l.typeName)' and '\(r.typeName)'", line: line)
        }
        switch op {
        case "+": return .double(a + b)
        case "-": return .double(a - b)
        case "*": return .double(a * b)
        case "/":
            guard b != 0 else { throw TemplateError("division by zero", line: line) }
            return .double(a / b)
        case "//": return .double((a / b).rounded(.down))
        case "%": return .double(a - (a / b).rounded(.down) * b)
        case "**":
            return .double(pow(a, b))
        default: throw TemplateError("unknown operator \(op)", line: line)
        }
    }

    func equal(_ l: Value, _ r: Value) -> Bool {
        switch (l, r) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let a), .string(let b)): return a.unicodeScalars.elementsEqual(b.unicodeScalars)
        case (.list(let a), .list(let b)): return a.count == b.count && zip(a, b).allSatisfy { equal($0, $1) }
        case (.dict(let a), .dict(let b)):
            return a.entries.count == b.entries.count && a.entries.allSatisfy { e in b[e.key].map { equal(e.value, $0) } ?? false }
        case (.namespace(let a), .namespace(let b)): return a === b
        default:
            if let a = l.number, let b = r.number, !(l.isStringLike || r.isStringLike) { return a == b }
            return false
        }
    }

    func compare(_ l: Value, _ r: Value) throws(TemplateError) -> Int {
        switch (l, r) {
        case (.string(let a), .string(let b)):
            return a.unicodeScalars.lexicographicallyPrecedes(b.unicodeScalars) ? -1 : (a.unicodeScalars.elementsEqual(b.unicodeScalars) ? 0 : 1)
        default:
            guard let a = l.number, let b = r.number else {
                throw TemplateError("'<' not supported between '\(l.typeName)' and '\(r.typeName)'", line: line)
            }
            return a < b ? -1 : (a == b ? 0 : 1)
        }
    }

    func contains(_ container: Value, _ element: Value) throws(TemplateError) -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let needle) = element else { throw TemplateError("'in <string>' requires string as left operand", line: line) }
            return needle.isEmpty || Substring(s).range(of: needle) != nil
        case .list(let l): return l.contains { equal($0, element) }
        case .dict(let d): return d[element.text] != nil
        case .namespace(let ns): return ns.values[element.text] != nil
        case .undefined(let n): throw TemplateError("'\(n)' is undefined", line: line)
        default: throw TemplateError("argument of type '\(container.typeName)' is not iterable", line: line)
        }
    }
}

extension Value {
    var isStringLike: Bool { if case .string = self { return true } else { return false } }
}
