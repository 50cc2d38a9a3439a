indirect enum Expression {
    case literal(Value)
    case variable(String)
    case list([Expression])
    case tuple([Expression])
    case dict([(Expression, Expression)])
    case attribute(Expression, String)
    case subscriptAccess(Expression, Expression)
    case slice(Expression, start: Expression?, stop: Expression?, step: Expression?)
    case call(Expression, arguments: [Expression], keywords: [(String, Expression)])
    case filter(Expression, name: String, arguments: [Expression], keywords: [(String, Expression)])
    case test(Expression, name: String, arguments: [Expression], negated: Bool)
    case unary(String, Expression)
    case binary(String, Expression, Expression)
    case conditional(condition: Expression, then: Expression, otherwise: Expression?)
}

indirect enum Node {
    case text(String)
    case output(Expression, line: Int)
    case ifChain([(condition: Expression, body: [Node])], otherwise: [Node], line: Int)
    case forLoop(targets: [String], iterable: Expression, filter: Expression?, body: [Node], otherwise: [Node], line: Int)
    case set(target: SetTarget, value: Expression, line: Int)
    case setBlock(name: String, body: [Node])
    case macro(name: String, parameters: [(String, Expression?)], body: [Node])
    case callBlock(call: Expression, parameters: [(String, Expression?)], body: [Node], line: Int)
    case filterBlock(name: String, arguments: [Expression], body: [Node], line: Int)
    case breakLoop, continueLoop
}

enum SetTarget {
    case names([String])
    case attribute(String, String)
}

/// Recursive-descent parser over the lexer's segments.
struct Parser {
    var segments: [Segment]
    var position = 0

    init(_ segments: [Segment]) { self.segments = segments }

    /// Parses statements until one of `terminators` (returned, not consumed) or the end.
    mutating func parseBody(until terminators: Set<String>) throws(TemplateError) -> (nodes: [Node], terminator: String?, line: Int) {
        var nodes: [Node] = []
        while position < segments.count {
            let segment = segments[position]
            switch segment {
            case .text(let t, _):
                nodes.append(.text(t))
                position += 1
            case .output(let tokens, let line):
                var p = ExpressionParser(tokens: tokens, line: line)
                let e = try p.parseExpression()
                try p.expectEnd()
                nodes.append(.output(e, line: line))
                position += 1
            case .statement(let tokens, let line):
                guard case .name(let keyword) = tokens.first?.kind else { throw TemplateError("expected a statement", line: line) }
                if terminators.contains(keyword) { return (nodes, keyword, line) }
                position += 1
                nodes.append(try parseStatement(keyword, Array(tokens.dropFirst()), line: line))
            }
        }
        if !terminators.isEmpty {
            throw TemplateError("missing \(terminators.sorted().joined(separator: " or ")) at the end of the template", line: segments.last.map(lineOf) ?? 1)
        }
        return (nodes, nil, 0)
    }

    func lineOf(_ s: Segment) -> Int {
        switch s {
        case .text(_, let l), .output(_, let l), .statement(_, let l): return l
        }
    }

    /// The tokens of the terminator statement just returned by parseBody.
    mutating func consumeTerminator() -> [Token] {
        guard case .statement(let tokens, _) = segments[position] else { return [] }
        position += 1
        return Array(tokens.dropFirst())
    }

    mutating func parseStatement(_ keyword: String, _ tokens: [Token], line: Int) throws(TemplateError) -> Node {
        var p = ExpressionParser(tokens: tokens, line: line)
        switch keyword {
        case "if":
            var branches: [(Expression, [Node])] = []
            var condition = try p.parseExpression()
            try p.expectEnd()
            var otherwise: [Node] = []
            while true {
                let (body, terminator, tline) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                let rest = consumeTerminator()
                if terminator == "elif" {
                    var q = ExpressionParser(tokens: rest, line: tline)
                    condition = try q.parseExpression()
                    try q.expectEnd()
                    continue
                }
                if terminator == "else" {
                    let (elseBody, _, _) = try parseBody(until: ["endif"])
                    _ = consumeTerminator()
                    otherwise = elseBody
                }
                break
            }
            return .ifChain(branches, otherwise: otherwise, line: line)
        case "for":
            var targets = [try p.expectName()]
            while p.accept(.op(",")) { targets.append(try p.expectName()) }
            try p.expectKeyword("in")
            let iterable = try p.parseExpression(allowConditional: false)
            var filter: Expression?
            if p.acceptKeyword("if") { filter = try p.parseExpression() }
            _ = p.acceptKeyword("recursive")
            try p.expectEnd()
            let (body, terminator, _) = try parseBody(until: ["else", "endfor"])
            _ = consumeTerminator()
            var otherwise: [Node] = []
            if terminator == "else" {
                otherwise = try parseBody(until: ["endfor"]).nodes
                _ = consumeTerminator()
            }
            return .forLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, line: line)
        case "set":
            let first = try p.expectName()
            if p.accept(.op(".")) {
                let attribute = try p.expectName()
                try p.expect(.op("="))
                let value = try p.parseExpression()
                try p.expectEnd()
                return .set(target: .attribute(first, attribute), value: value, line: line)
            }
            var names = [first]
            while p.accept(.op(",")) { names.append(try p.expectName()) }
            if p.atEnd {
                let (body, _, _) = try parseBody(until: ["endset"])
                _ = consumeTerminator()
                return .setBlock(name: first, body: body)
            }
            try p.expect(.op("="))
            var value = try p.parseExpression()
            if p.accept(.op(",")) {
                var items = [value]
                repeat { items.append(try p.parseExpression()) } while p.accept(.op(","))
                value = .tuple(items)
            }
            try p.expectEnd()
            return .set(target: .names(names), value: value, line: line)
        case "macro":
            let name = try p.expectName()
            let parameters = try p.parseParameters()
            try p.expectEnd()
            let (body, _, _) = try parseBody(until: ["endmacro"])
            _ = consumeTerminator()
            return .macro(name: name, parameters: parameters, body: body)
        case "call":
            var parameters: [(String, Expression?)] = []
            if p.peek == .op("(") { parameters = try p.parseParameters() }
            let call = try p.parseExpression()
            try p.expectEnd()
            let (body, _, _) = try parseBody(until: ["endcall"])
            _ = consumeTerminator()
            return .callBlock(call: call, parameters: parameters, body: body, line: line)
        case "filter":
            let name = try p.expectName()
            var arguments: [Expression] = []
            if p.accept(.op("(")) && !p.accept(.op(")")) {
                repeat { arguments.append(try p.parseExpression()) } while p.accept(.op(","))
                try p.expect(.op(")"))
            }
            try p.expectEnd()
            let (body, _, _) = try parseBody(until: ["endfilter"])
            _ = consumeTerminator()
            return .filterBlock(name: name, arguments: arguments, body: body, line: line)
        case "generation":
            // transformers' marker for assistant-token masks: renders its body unchanged.
            let (body, _, _) = try parseBody(until: ["endgeneration"])
            _ = consumeTerminator()
            return .ifChain([(.literal(.bool(true)), body)], otherwise: [], line: line)
        case "break": return .breakLoop
        case "continue": return .continueLoop
        default:
            throw TemplateError("unsupported statement '\(keyword)'", line: line)
        }
    }
}

/// Expressions, with Jinja's precedence: conditional, or, and, not, comparisons and `in`/`is`,
/// `~`, + -, * / // %, unary -, **, then filters, attribute, subscript and call postfixes.
struct ExpressionParser {
    let tokens: [Token]
    var index = 0
    let line: Int

    init(tokens: [Token], line: Int) {
        self.tokens = tokens
        self.line = line
    }

    var atEnd: Bool { index >= tokens.count }
    var peek: Token.Kind? { index < tokens.count ? tokens[index].kind : nil }
    var currentLine: Int { index < tokens.count ? tokens[index].line : line }

    mutating func accept(_ kind: Token.Kind) -> Bool {
        if peek == kind { index += 1; return true }
        return false
    }

    mutating func acceptKeyword(_ word: String) -> Bool { accept(.name(word)) }

    mutating func expect(_ kind: Token.Kind) throws(TemplateError) {
        guard accept(kind) else { throw TemplateError("expected \(describe(kind)), found \(peek.map(describe) ?? "the end of the tag")", line: currentLine) }
    }

    mutating func expectKeyword(_ word: String) throws(TemplateError) { try expect(.name(word)) }

    mutating func expectName() throws(TemplateError) -> String {
        guard case .name(let n) = peek else { throw TemplateError("expected a name, found \(peek.map(describe) ?? "the end of the tag")", line: currentLine) }
        index += 1
        return n
    }

    func expectEnd() throws(TemplateError) {
        if let p = peek { throw TemplateError("unexpected \(describe(p))", line: currentLine) }
    }

    func describe(_ k: Token.Kind) -> String {
        switch k {
        case .name(let n): return "'\(n)'"
        case .string(let s): return "string \(String(reflecting: s))"
        case .integer(let i): return "\(i)"
        case .float(let d): return "\(d)"
        case .op(let o): return "'\(o)'"
        }
    }

    mutating func parseParameters() throws(TemplateError) -> [(String, Expression?)] {
        try expect(.op("("))
        var parameters: [(String, Expression?)] = []
        if accept(.op(")")) { return parameters }
        repeat {
            let name = try expectName()
            parameters.append((name, accept(.op("=")) ? try parseExpression() : nil))
        } while accept(.op(","))
        try expect(.op(")"))
        return parameters
    }

    mutating func parseExpression(allowConditional: Bool = true) throws(TemplateError) -> Expression {
        let value = try parseOr()
        guard allowConditional, acceptKeyword("if") else { return value }
        let condition = try parseOr()
        let otherwise: Expression? = acceptKeyword("else") ? try parseExpression() : nil
        return .conditional(condition: condition, then: value, otherwise: otherwise)
    }

    mutating func parseOr() throws(TemplateError) -> Expression {
        var left = try parseAnd()
        while acceptKeyword("or") { left = .binary("or", left, try parseAnd()) }
        return left
    }

    mutating func parseAnd() throws(TemplateError) -> Expression {
        var left = try parseNot()
        while acceptKeyword("and") { left = .binary("and", left, try parseNot()) }
        return left
    }

    mutating func parseNot() throws(TemplateError) -> Expression {
        if acceptKeyword("not") { return .unary("not", try parseNot()) }
        return try parseComparison()
    }

    mutating func parseComparison() throws(TemplateError) -> Expression {
        var left = try parseConcatenation()
        while true {
            if case .op(let o) = peek, ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                index += 1
                left = .binary(o, left, try parseConcatenation())
            } else if acceptKeyword("in") {
                left = .binary("in", left, try parseConcatenation())
            } else if peek == .name("not"), index + 1 < tokens.count, tokens[index + 1].kind == .name("in") {
                index += 2
                left = .unary("not", .binary("in", left, try parseConcatenation()))
            } else if acceptKeyword("is") {
                let negated = acceptKeyword("not")
                let name = try expectName()
                var arguments: [Expression] = []
                if accept(.op("(")) {
                    if !accept(.op(")")) {
                        repeat { arguments.append(try parseExpression()) } while accept(.op(","))
                        try expect(.op(")"))
                    }
                } else if let p = peek, startsPrimary(p) {
                    arguments.append(try parseConcatenation())
                }
                left = .test(left, name: name, arguments: arguments, negated: negated)
            } else {
                return left
            }
        }
    }

    func startsPrimary(_ k: Token.Kind) -> Bool {
        switch k {
        case .string, .integer, .float: return true
        case .name(let n): return !["and", "or", "if", "else", "not", "in", "is"].contains(n)
        case .op(let o): return o == "(" || o == "[" || o == "{"
        }
    }

    mutating func parseConcatenation() throws(TemplateError) -> Expression {
        var left = try parseAdditive()
        while accept(.op("~")) { left = .binary("~", left, try parseAdditive()) }
        return left
    }

    mutating func parseAdditive() throws(TemplateError) -> Expression {
        var left = try parseMultiplicative()
        while case .op(let o) = peek, o == "+" || o == "-" {
            index += 1
            left = .binary(o, left, try parseMultiplicative())
        }
        return left
    }

    mutating func parseMultiplicative() throws(TemplateError) -> Expression {
        var left = try parseUnary()
        while case .op(let o) = peek, ["*", "/", "//", "%"].contains(o) {
            index += 1
            left = .binary(o, left, try parseUnary())
        }
        return left
    }

    mutating func parseUnary() throws(TemplateError) -> Expression {
        if accept(.op("-")) { return .unary("-", try parseUnary()) }
        if accept(.op("+")) { return try parseUnary() }
        return try parsePower()
    }

    mutating func parsePower() throws(TemplateError) -> Expression {
        let base = try parsePostfix()
        if accept(.op("**")) { return .binary("**", base, try parseUnary()) }
        return base
    }

    mutating func parseArguments() throws(TemplateError) -> ([Expression], [(String, Expression)]) {
        var arguments: [Expression] = []
        var keywords: [(String, Expression)] = []
        if accept(.op(")")) { return (arguments, keywords) }
        repeat {
            if case .name(let n) = peek, index + 1 < tokens.count, tokens[index + 1].kind == .op("=") {
                index += 2
                keywords.append((n, try parseExpression()))
            } else {
                arguments.append(try parseExpression())
            }
        } while accept(.op(","))
        try expect(.op(")"))
        return (arguments, keywords)
    }

    mutating func parsePostfix() throws(TemplateError) -> Expression {
        var e = try parsePrimary()
        while true {
            if accept(.op(".")) {
                e = .attribute(e, try expectName())
            } else if accept(.op("[")) {
                var start: Expression?, stop: Expression?, step: Expression?
                var isSlice = false
                if peek != .op(":") { start = try parseExpression() }
                if accept(.op(":")) {
                    isSlice = true
                    if peek != .op(":") && peek != .op("]") { stop = try parseExpression() }
                    if accept(.op(":")) && peek != .op("]") { step = try parseExpression() }
                }
                try expect(.op("]"))
                e = isSlice ? .slice(e, start: start, stop: stop, step: step) : .subscriptAccess(e, start!)
            } else if accept(.op("(")) {
                let (arguments, keywords) = try parseArguments()
                e = .call(e, arguments: arguments, keywords: keywords)
            } else if accept(.op("|")) {
                let name = try expectName()
                var arguments: [Expression] = [], keywords: [(String, Expression)] = []
                if accept(.op("(")) { (arguments, keywords) = try parseArguments() }
                e = .filter(e, name: name, arguments: arguments, keywords: keywords)
            } else {
                return e
            }
        }
    }

    mutating func parsePrimary() throws(TemplateError) -> Expression {
        guard let token = peek else { throw TemplateError("unexpected end of expression", line: currentLine) }
        index += 1
        switch token {
        case .string(var s):
            // Adjacent string literals concatenate, as in Python.
            while case .string(let next) = peek { s += next; index += 1 }
            return .literal(.string(s))
        case .integer(let i): return .literal(.int(i))
        case .float(let d): return .literal(.double(d))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .variable(n)
            }
        case .op("("):
            if accept(.op(")")) { return .tuple([]) }
            let first = try parseExpression()
            if accept(.op(",")) {
                var items = [first]
                while peek != .op(")") {
                    items.append(try parseExpression())
                    if !accept(.op(",")) { break }
                }
                try expect(.op(")"))
                return .tuple(items)
            }
            try expect(.op(")"))
            return first
        case .op("["):
            var items: [Expression] = []
            while peek != .op("]") {
                items.append(try parseExpression())
                if !accept(.op(",")) { break }
            }
            try expect(.op("]"))
            return .list(items)
        case .op("{"):
            var pairs: [(Expression, Expression)] = []
            while peek != .op("}") {
                let key = try parseExpression()
                try expect(.op(":"))
                pairs.append((key, try parseExpression()))
                if !accept(.op(",")) { break }
            }
            try expect(.op("}"))
            return .dict(pairs)
        default:
            throw TemplateError("unexpected \(describe(token))", line: currentLine)
        }
    }
}
