import Batching
@testable import Server
import SwitchyardJSON
import SwitchyardSupport
import Testing

@Suite("batch input and results")
struct BatchJobTests {
    func parse(_ lines: [String], defaultMaxTokens: Int? = nil) throws -> (requests: [BatchRequestLine], errors: [BatchLineError]) {
        try BatchInput.parse(Array(lines.joined(separator: "\n").utf8), defaultMaxTokens: defaultMaxTokens)
    }

    @Test func openAIBatchLinesAndPlainPrompts() throws {
        let (requests, errors) = try parse([
            #"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}"#,
            #"{"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}"#,
            "",
            #""In the beginning""#,
            #"{"prompt": "And God said", "temperature": 0}"#,
            #"{"messages": [{"role": "user", "content": "yo"}]}"#,
        ], defaultMaxTokens: 7)
        #expect(errors.isEmpty)
        #expect(requests.map(\.customID) == ["a", "b", "line-4", "line-5", "line-6"])
        #expect(requests.map(\.chat) == [true, false, false, false, true])
        #expect(requests.map(\.line) == [1, 2, 4, 5, 6])
        #expect(requests[0].body.objectValue?["max_tokens"]?.intValue == 5, "a body's own max_tokens stays")
        #expect(requests[1].body.objectValue?["max_tokens"]?.intValue == 7, "the default fills the others")
        #expect(requests[2].body.objectValue?["prompt"]?.stringValue == "In the beginning")
        #expect(requests[3].body.objectValue?["temperature"]?.doubleValue == 0)
    }

    @Test func badLinesNameTheLineAndTheField() throws {
        let (requests, errors) = try parse([
            "{not json",
            "42",
            #"{"custom_id": "", "method": "POST", "url": "/v1/completions", "body": {}}"#,
            #"{"custom_id": "g", "method": "GET", "url": "/v1/completions", "body": {}}"#,
            #"{"custom_id": "u", "method": "POST", "url": "/v1/embeddings", "body": {}}"#,
            #"{"custom_id": "n", "method": "POST", "url": "/v1/completions", "body": "text"}"#,
            #"{"temperature": 1}"#,
            #"{"custom_id": "ok", "method": "POST", "url": "/v1/completions", "body": {"prompt": "p"}}"#,
        ])
        #expect(requests.map(\.customID) == ["ok"])
        #expect(errors.map(\.line) == [1, 2, 3, 4, 5, 6, 7])
        let expected = ["not JSON", "a JSON object or a prompt", "custom_id must be", "method must be", "url must be", "body must be", "neither prompt nor messages"]
        for (e, text) in zip(errors, expected) { #expect(e.message.hasPrefix("line \(e.line): ") && e.message.contains(text), "\(e.message)") }
        #expect(errors[3].customID == "g")
    }

    @Test func aDuplicateCustomIDStopsEverything() {
        #expect(throws: BatchInputError.self) {
            try parse([
                #"{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}"#,
                #"{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "y"}}"#,
            ])
        }
        do {
            _ = try parse([#"{"custom_id": "z", "method": "GET"}"#, #"{"custom_id": "z", "method": "POST", "url": "/v1/completions", "body": {}}"#])
            Issue.record("a duplicate of a bad line was accepted")
        } catch {
            #expect("\(error)".contains("lines 1 and 2"))
        }
    }

    @Test func resultsSurviveATornLastLine() throws {
        let path = "/tmp/switchyard-batch-test-\(getpid()).jsonl"
        defer { unlink(path) }
        unlink(path)
        do {
            let file = try BatchResultFile(path: path)
            #expect(file.count == 0)
            try file.append(["custom_id": "a", "response": .null], customID: "a")
            try file.append(["custom_id": "b", "response": .null], customID: "b")
        }
        // A crash mid-write leaves part of a line.
        let f = fopen(path, "ab")!
        fputs(#"{"custom_id": "c", "resp"#, f)
        fclose(f)
        let reopened = try BatchResultFile(path: path)
        #expect(reopened.count == 2 && reopened.contains("a") && reopened.contains("b") && !reopened.contains("c"))
        #expect(reopened.truncatedBytes == 24)
        try reopened.append(["custom_id": "c"], customID: "c")
        let text = String(decoding: try readFileBytes(path), as: UTF8.self)
        #expect(text.split(separator: "\n").count == 3 && text.hasSuffix("\"c\"}\n"))
        // A bad line that is not the last is not ours: refuse to resume over it.
        let g = fopen(path, "wb")!
        fputs("garbage\n" + #"{"custom_id": "a"}"# + "\n", g)
        fclose(g)
        #expect(throws: BatchInputError.self) { try BatchResultFile(path: path) }
    }

    /// A run stopped from outside (a server shutting down) writes nothing for the requests it
    /// stopped, neither a result nor an error; running again does exactly those, and the results
    /// equal an uninterrupted run's.
    @Test func aStoppedRunLeavesItsRequestsForTheNext() async throws {
        // One sequence at a time: r0 (1 token) first, then r1..r5 (40 tokens each) one by one.
        let lines = (0..<6).map { i in
            #"{"custom_id": "r\#(i)", "method": "POST", "url": "/v1/completions", "body": {"model": "demo", "prompt": "And God said \#(i)", "max_tokens": \#(i == 0 ? 1 : 40), "temperature": 0}}"#
        }
        let requests = try parse(lines).requests
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 1, contextLength: 64)
        defer { scheduler.shutdown() }
        let server = OpenAIServer(configuration: ServerConfiguration(modelName: "demo"), scheduler: scheduler, tokenizer: tokenizer, chat: nil)
        let folder = "/tmp/switchyard-batch-stop-\(getpid())"
        mkdir(folder, 0o755)
        defer { _ = system("rm -rf '\(folder)'") }
        let reference = try BatchResultFile(path: folder + "/reference.jsonl")
        _ = try await server.runBatch(requests, output: reference, errors: try BatchResultFile(path: folder + "/reference.errors.jsonl"))
        #expect(reference.count == 6)

        let output = try BatchResultFile(path: folder + "/out.jsonl"), errors = try BatchResultFile(path: folder + "/errors.jsonl")
        let control = BatchControl()
        // Stopped from a thread of its own once r0 is done and r1 has begun (watching the
        // scheduler, not the tasks that write results, which a busy machine may hold back).
        let base = scheduler.stats.completionTokens
        let watcher = startThread("the stop") {
            while scheduler.stats.completionTokens < base + 2 { usleep(200) }
            control.stop(.shuttingDown)
        }
        let summary = try await server.runBatch(requests, output: output, errors: errors, control: control)
        pthread_join(watcher, nil)
        #expect(output.contains("r0") && output.count == summary.succeeded && output.count < 6 && errors.count == 0,
                "\(output.count) results, \(errors.count) errors")
        let again = try await server.runBatch(requests, output: output, errors: errors)
        #expect(again.requests == 6 - summary.succeeded && again.succeeded == again.requests && output.count == 6 && errors.count == 0)
        func outcomes(_ path: String) throws -> [String: String] {
            var result: [String: String] = [:]
            for line in try readFileBytes(path).split(separator: 10) {
                let o = try JSONValue.parse(Array(line))
                result[o["custom_id"]!.stringValue!] = o["response"]?["body"]?["choices"]?.arrayValue?.first?["text"]?.stringValue
            }
            return result
        }
        #expect(try outcomes(folder + "/out.jsonl") == outcomes(folder + "/reference.jsonl"))
    }
}
