import Testing
@testable import SwitchyardJSON
import SwitchyardSupport
import SwitchyardTestSupport

@Suite struct JSONTests {
    @Test func parsesNestedValuesExactly() throws {
        let v = try JSONValue.parse(#"{"a": [1, 2.5, -3e2, true, null], "b": {"c": "x\"y\u00e9\ud83e\udd99"}, "big": 9007199254740993}"#)
        #expect(v["a"]?.arrayValue?.count == 5)
        #expect(v["a"]?.arrayValue?[0] == .int(1))
        #expect(v["a"]?.arrayValue?[2].doubleValue == -300)
        #expect(v["b"]?["c"]?.stringValue == "x\"yé🦙")
        #expect(v["big"]?.intValue == 9007199254740993, "integers stay exact beyond 2^53")
        #expect(v.objectValue?.keys == ["a", "b", "big"], "key order is kept")
    }

    @Test func errorsGiveLineAndColumn() {
        do {
            _ = try JSONValue.parse("{\n  \"a\": 1,\n  \"b\": }")
            Issue.record("expected an error")
        } catch {
            #expect(error.line == 3)
            #expect(error.description.contains("line 3"))
        }
    }

    @Test func rejectsTrailingGarbageAndDeepNesting() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse("{} x") }
        #expect(throws: JSONParseError.self) { try JSONValue.parse(String(repeating: "[", count: 1000)) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse("\"unterminated") }
    }

    @Test func roundTrips() throws {
        let text = #"{"s":"a\nb\u0001","n":[1,2.5,true,null]}"#
        let v = try JSONValue.parse(text)
        #expect(try JSONValue.parse(v.serialized()) == v)
        #expect(v.serialized() == text)
    }
}
