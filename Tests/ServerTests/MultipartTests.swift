import Server
import Testing

@Suite("multipart/form-data uploads")
struct MultipartTests {
    let body = "preamble\r\n--b0undary\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
        + "--b0undary\r\ncontent-disposition: form-data; name=file; filename=\"my \\\"in\\\".jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
        + "{\"prompt\": \"a\"}\r\n{\"prompt\": \"--b0undar\"}\n\r\n--b0undary--\r\nepilogue"

    @Test func boundaries() throws {
        #expect(try MultipartForm.boundary(contentType: "multipart/form-data; boundary=abc") == "abc")
        #expect(try MultipartForm.boundary(contentType: "Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b;c\"") == "a b;c")
        #expect(throws: MultipartError("the multipart content type has no boundary")) { try MultipartForm.boundary(contentType: "multipart/form-data") }
        #expect(throws: MultipartError.self) { try MultipartForm.boundary(contentType: "application/json; boundary=x") }
        #expect(throws: MultipartError("the multipart boundary must be 1 to 70 characters")) {
            try MultipartForm.boundary(contentType: "multipart/form-data; boundary=" + String(repeating: "x", count: 71))
        }
    }

    @Test func fieldsAndFiles() throws {
        let parts = try MultipartForm.parse(Array(body.utf8), boundary: "b0undary")
        #expect(parts.count == 2)
        #expect(parts[0].name == "purpose" && parts[0].filename == nil && String(decoding: parts[0].body, as: UTF8.self) == "batch")
        #expect(parts[1].name == "file" && parts[1].filename == "my \"in\".jsonl" && parts[1].contentType == "application/jsonl")
        #expect(String(decoding: parts[1].body, as: UTF8.self) == "{\"prompt\": \"a\"}\r\n{\"prompt\": \"--b0undar\"}\n")
        let empty = try MultipartForm.parse(Array("--x\r\nContent-Disposition: form-data; name=\"e\"\r\n\r\n\r\n--x--".utf8), boundary: "x")
        #expect(empty.count == 1 && empty[0].body.isEmpty)
    }

    @Test func malformedBodiesAreNamed() {
        let cut = String(body.prefix(body.count - 30))
        #expect(throws: MultipartError("part 2 ('file'): no closing delimiter (the body is cut short?)")) {
            try MultipartForm.parse(Array(cut.utf8), boundary: "b0undary")
        }
        #expect(throws: MultipartError("the body has no multipart delimiter")) { try MultipartForm.parse(Array(body.utf8), boundary: "other") }
        #expect(throws: MultipartError("part 1: no Content-Disposition header")) {
            try MultipartForm.parse(Array("--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--".utf8), boundary: "x")
        }
        #expect(throws: MultipartError("part 1: its Content-Disposition has no name")) {
            try MultipartForm.parse(Array("--x\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--x--".utf8), boundary: "x")
        }
        #expect(throws: MultipartError("part 1: its headers do not end")) {
            try MultipartForm.parse(Array("--x\r\nContent-Disposition: form-data; name=a\r\n".utf8), boundary: "x")
        }
        #expect(throws: MultipartError("part 1: the delimiter is not followed by a line break")) {
            try MultipartForm.parse(Array("--xy".utf8), boundary: "x")
        }
    }
}
