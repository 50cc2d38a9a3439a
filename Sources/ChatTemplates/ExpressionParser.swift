/// Expressions, with Jinja's precedence: conditional, or, and, not, comparisons and `in`/`is`,
/// `~`, + -, * / // %, unary -, **, then filters, attribute, subscript and call postfixes.
struct ExpressionParser {
    let tokens: [Token]
    var index = 0
    let line: Int
    /// Nesting so far: parentheses, unary operators, `not`s. Bounded so that a crafted template
    /// cannot overflow the stack of this recursive descent.
    var depth = 0
    static let depthLimit = 100

    mutating func nest() throws(TemplateError) {
        depth += 1
        guard depth <= Self.depthLimit else { throw TemplateError("an expression nested more than \(Self.depthLimit) levels deep", line: currentLine) }
    }

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
        try nest()
        defer { depth -= 1 }
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
        if acceptKeyword("not") {
            try nest()
            defer { depth -= 1 }
            return .unary("not", try parseNot())
        }
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
        if peek == .op("-") || peek == .op("+") {
            try nest()
            defer { depth -= 1 }
            if accept(.op("-")) { return .unary("-", try parseUnary()) }
            if accept(.op("+")) { return try parseUnary() }
        }
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
