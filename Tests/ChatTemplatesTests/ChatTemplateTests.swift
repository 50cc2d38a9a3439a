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
