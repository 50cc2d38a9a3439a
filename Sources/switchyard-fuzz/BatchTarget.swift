import Server
import SwitchyardJSON
import SwitchyardSupport

/// `switchyard batch`'s inputs: the request file (OpenAI batch lines and plain prompts) and a
/// results file it resumes from (complete lines, a torn last line, lines that are not its own).
final class BatchTarget: Target {
    let seeds: [[UInt8]]
    let path = "/tmp/switchyard-fuzz-batch-\(getpid()).jsonl"

    init() {
        let lines = [
            #"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}"#,
            #"{"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "temperature": 0}}"#,
            #""In the beginning""#, #"{"prompt": "And God said"}"#, #"{"messages": [{"role": "user", "content": "yo"}]}"#,
            #"{"id": "batch_req_1", "custom_id": "a", "response": {"status_code": 200, "body": {}}, "error": null}"#,
        ]
        seeds = [Array(lines.joined(separator: "\n").utf8), Array((lines[5] + "\n" + lines[5].prefix(20)).utf8)]
    }

    deinit { unlink(path) }

    func exercise(_ input: [UInt8]) -> Bool {
        let parsed = try? BatchInput.parse(input, defaultMaxTokens: 16)
        if let parsed {
            for r in parsed.requests { precondition(!r.customID.isEmpty && r.body.objectValue != nil) }
        }
        guard writeInput(input, to: path) else { return false }
        if let results = try? BatchResultFile(path: path) {
            // What is left after the cut must reopen with the same lines, nothing cut.
            let again = try? BatchResultFile(path: path)
            precondition(again?.count == results.count && again?.truncatedBytes == 0, "a results file must be stable once cut")
        }
        return parsed != nil
    }
}

/// The Batch API's file uploads: a `multipart/form-data` content type (the first line) and body
/// (the rest). What parses must serialize back to a body that parses to the same parts.
final class UploadTarget: Target {
    let seeds: [[UInt8]]

    init() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            + "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in \\\"1\\\".jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            + "{\"prompt\": \"hi\"}\n\r\n--XyZ--\r\n"
        seeds = [Array(("multipart/form-data; boundary=XyZ\n" + body).utf8),
                 Array(("multipart/form-data; boundary=\"XyZ\"\npreamble\r\n" + body + "epilogue").utf8)]
    }

    func exercise(_ input: [UInt8]) -> Bool {
        let newline = input.firstIndex(of: 10) ?? input.count
        let contentType = String(decoding: input[..<newline], as: UTF8.self)
        let body = Array(input[min(input.count, newline + 1)...])
        guard let boundary = try? MultipartForm.boundary(contentType: contentType),
              let parts = try? MultipartForm.parse(body, boundary: boundary) else { return false }
        let plain = parts.allSatisfy { p in ([p.name, p.filename ?? "", p.contentType ?? ""]).allSatisfy { !$0.contains("\r") && !$0.contains("\n") } }
        guard plain else { return true }
        func quoted(_ s: String) -> String { "\"" + s.map { $0 == "\\" || $0 == "\"" ? "\\\($0)" : String($0) }.joined() + "\"" }
        var again: [UInt8] = []
        for p in parts {
            var head = "--\(boundary)\r\nContent-Disposition: form-data; name=\(quoted(p.name))"
            if let f = p.filename { head += "; filename=\(quoted(f))" }
            if let t = p.contentType { head += "\r\nContent-Type: \(t)" }
            again += Array((head + "\r\n\r\n").utf8) + p.body + Array("\r\n".utf8)
        }
        again += Array("--\(boundary)--\r\n".utf8)
        let reparsed = try? MultipartForm.parse(again, boundary: boundary)
        precondition(reparsed?.map { [$0.name, $0.filename, $0.contentType?.trimmed()] } == parts.map { [$0.name, $0.filename, $0.contentType?.trimmed()] }
                     && reparsed?.map { Array($0.body) } == parts.map { Array($0.body) }, "a parsed form must serialize back to itself")
        return true
    }
}
