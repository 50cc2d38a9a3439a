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
    var depth = 0

    init(_ segments: [Segment]) { self.segments = segments }

    /// Parses statements until one of `terminators` (returned, not consumed) or the end.
    mutating func parseBody(until terminators: Set<String>) throws(TemplateError) -> (nodes: [Node], terminator: String?, line: Int) {
        // Blocks nest through this recursion: bounded, so a crafted template cannot overflow the stack.
        depth += 1
        defer { depth -= 1 }
        guard depth <= 100 else { throw TemplateError("blocks nested more than 100 levels deep", line: 0) }
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
