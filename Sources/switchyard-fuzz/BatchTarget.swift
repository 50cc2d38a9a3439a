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
        guard let file = fopen(path, "wb") else { return false }
        _ = input.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
        if let results = try? BatchResultFile(path: path) {
            // What is left after the cut must reopen with the same lines, nothing cut.
            let again = try? BatchResultFile(path: path)
            precondition(again?.done == results.done && again?.truncatedBytes == 0, "a results file must be stable once cut")
        }
        return parsed != nil
    }
}
