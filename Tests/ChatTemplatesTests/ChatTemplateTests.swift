import Testing
import SwitchyardJSON
@testable import ChatTemplates
import SwitchyardSupport
import SwitchyardTestSupport
let vectors = try! JSONValue.parse(try! readFileBytes(repositoryRoot + "/fixtures/chat-templates/vectors.json"))

struct TemplateCase: Sendable, CustomTestStringConvertible {
    let index: Int
    var testDescription: String {
        let c = vectors["cases"]!.arrayValue![index]
        return "\(c["template"]!.stringValue!) / \(c["conversation"]!.stringValue!) / generation prompt \(c["add_generation_prompt"]!.boolValue!)"
    }
}

@Suite("chat templates render byte-identical to transformers")
struct ChatTemplateTests {
    @Test(arguments: (0..<vectors["cases"]!.arrayValue!.count).map(TemplateCase.init))
    func rendersLikeTransformers(_ c: TemplateCase) throws {
        let v = vectors["cases"]!.arrayValue![c.index]
        let source = vectors["templates"]![v["template"]!.stringValue!]!.stringValue!
        let template = try ChatTemplate(source: source)
        var variables: [String: JSONValue] = [:]
        for e in v["variables"]!.objectValue!.entries { variables[e.key] = e.value }
        let tools = v["tools"].flatMap { $0.isNull ? nil : $0 }
        let render = { () throws(TemplateError) -> String in
            try template.render(messages: v["messages"]!, tools: tools, addGenerationPrompt: v["add_generation_prompt"]!.boolValue!,
                                variables: variables, time: vectors["fixed_time"]!.intValue!)
        }
        if let expected = v["expected"]?.stringValue {
            let rendered = try render()
            #expect(rendered == expected)
            if rendered != expected {
                let a = Array(rendered.unicodeScalars), b = Array(expected.unicodeScalars)
                let at = zip(a, b).prefix { $0 == $1 }.count
                Issue.record("first difference at scalar \(at): ours \(String(reflecting: String(String.UnicodeScalarView(a[at...].prefix(60))))) vs \(String(reflecting: String(String.UnicodeScalarView(b[at...].prefix(60)))))")
            }
        } else {
            #expect(throws: TemplateError.self) { try render() }
        }
    }

    func render(_ source: String, _ variables: [String: JSONValue] = [:]) throws(TemplateError) -> String {
        try ChatTemplate(source: source).render(messages: [], variables: variables)
    }

    @Test func whitespaceControlAndBlocks() throws {
        #expect(try render("  {% if true %}\n  x\n  {% endif %}\ny") == "  x\ny", "trim_blocks and lstrip_blocks")
        #expect(try render("a  {{- 'b' -}}  c") == "abc")
        #expect(try render("{% for i in range(3) %}{{ loop.index }}{% if not loop.last %},{% endif %}{% endfor %}") == "1,2,3")
        #expect(try render("{% for i in [] %}x{% else %}empty{% endfor %}") == "empty")
        #expect(try render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") == "6")
        #expect(try render("{% macro greet(name, p='!') %}hi {{ name }}{{ p }}{% endmacro %}{{ greet('a') }} {{ greet('b', p='?') }}") == "hi a! hi b?")
        #expect(try render("{% raw %}{{ not evaluated }}{% endraw %}") == "{{ not evaluated }}")
        #expect(try render("{% filter upper %}abc{% endfilter %}") == "ABC")
        #expect(try render("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}") == "012")
    }

    @Test func expressionsAsPython() throws {
        #expect(try render("{{ [1, 2.0, \"a'b\", none, true] }}") == "[1, 2.0, \"a'b\", None, True]")
        #expect(try render("{{ 7 // 2 }} {{ -7 % 3 }} {{ 3 / 2 }} {{ 'ab' * 2 }} {{ 2 ** 10 }}") == "3 2 1.5 abab 1024")
        #expect(try render("{{ 'abc'[::-1] }} {{ [1,2,3][-1] }} {{ [1,2,3,4][1:3] }}") == "cba 3 [2, 3]")
        #expect(try render("{{ ' x '.strip() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b'.split() }}") == "x|['a', 'b', '', 'c']|['a', 'b']")
        #expect(try render("{{ {'b': 1, 'a': [1.5, 'é']} | tojson }}") == "{\"b\": 1, \"a\": [1.5, \"é\"]}")
        #expect(try render("{{ {'a': 1} | tojson(indent=2) }}") == "{\n  \"a\": 1\n}")
        #expect(try render("{{ x is defined }} {{ x | default('d') }} {{ none is none }} {{ 'a' in 'cat' }} {{ 1 if false else 2 }}") == "False d True True 2")
        #expect(try render("{{ [{'r': 'a'}, {'r': 'b'}] | selectattr('r', 'equalto', 'b') | list | length }}") == "1")
        #expect(try render("{{ ['a', 'b'] | map('upper') | join('-') }}") == "A-B")
    }

    @Test func errorsNameTheLine() {
        do {
            _ = try render("line one\n{% if x %}\n{{ y.z }}\n{% endif %}", ["x": true])
            Issue.record("expected an error")
        } catch {
            #expect(error.line == 3 && error.message.contains("'y' is undefined"))
        }
        do {
            _ = try render("a\n{% unknownthing %}")
            Issue.record("expected an error")
        } catch {
            #expect(error.line == 2 && error.message.contains("unknownthing"))
        }
        do {
            _ = try render("{{ x | frobnicate }}")
            Issue.record("expected an error")
        } catch { #expect(error.message.contains("frobnicate")) }
        do {
            _ = try render("{{ raise_exception('bad roles') }}")
            Issue.record("expected an error")
        } catch { #expect(error.message.contains("bad roles")) }
    }
}

/// A template is code from a downloaded file and a conversation is input from a client: neither
/// may take unbounded time, memory or stack. Each of these is an error, never a crash or a stall.
@Suite("templates that cannot be trusted")
struct HostileTemplateTests {
    func render(_ source: String) throws -> String {
        // Fewer steps than the default, so the endless loop is refused quickly in a debug build.
        try ChatTemplate(source: source).render(messages: .array([]), addGenerationPrompt: false, limits: .init(steps: 100_000))
    }

    static let cases: [String: (source: String, mention: String)] = [
        "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "levels deep"),
        "addition overflow": ("{{ 9223372036854775807 + 1 }}", "overflow"),
        "multiplication overflow": ("{{ 3037000500 * 3037000500 }}", "overflow"),
        "power overflow": ("{{ 2 ** 64 }}", "overflow"),
        "huge string": ("{{ 'a' * 10000000000 }}", "output"),
        "huge list": ("{{ [1] * 10000000000 }}", "output"),
        "huge range": ("{% for i in range(1000000000) %}{% endfor %}", "range"),
        "endless loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "too long"),
        "deep parentheses": ("{{ " + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000) + " }}", "nested"),
        "deep not": ("{{ " + String(repeating: "not ", count: 5000) + "1 }}", "nested"),
        "deep minus": ("{{ " + String(repeating: "-", count: 5000) + "1 }}", "nested"),
        "deep blocks": (String(repeating: "{% if 1 %}", count: 5000) + String(repeating: "{% endif %}", count: 5000), "nested"),
    ]

    @Test(arguments: cases.keys.sorted())
    func refused(_ name: String) {
        let (source, mention) = Self.cases[name]!
        refusedWithAnError(source: source, mention: mention)
    }

    func refusedWithAnError(source: String, mention: String) {
        do {
            _ = try render(source)
            Issue.record("rendered: \(source.prefix(60))")
        } catch {
            #expect("\(error)".contains(mention), "\(error)")
        }
    }

    @Test func arithmeticIsPythons() throws {
        #expect(try render("{{ -7 // 2 }} {{ -7 % 2 }} {{ 7 % -2 }} {{ 2 ** 10 }} {{ 2 ** -1 }}") == "-4 1 -1 1024 0.5")
    }
}
