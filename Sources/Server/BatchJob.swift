import Batching
import Synchronization
import SwitchyardJSON
import SwitchyardSupport

/// One request line of a batch input file: OpenAI's batch format (`custom_id`, `method`, `url`,
/// `body`), or a plain prompt (a string, `{"prompt": ...}` or `{"messages": ...}`) named
/// `line-N`.
public struct BatchRequestLine: Sendable, Equatable {
    /// 1-based line number in the input file.
    public var line: Int
    public var customID: String
    /// `/v1/chat/completions` (true) or `/v1/completions`.
    public var chat: Bool
    /// The request body, as the endpoint would receive it.
    public var body: JSONValue
}

/// A line that cannot be run: where, whose, and why.
public struct BatchLineError: Error, Sendable, Equatable {
    public var line: Int
    public var customID: String?
    public var message: String
}

/// An input file that cannot be run at all (a custom_id used twice): nothing starts.
public struct BatchInputError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public enum BatchInput {
    /// The requests and the bad lines of an input file (blank lines are skipped). A custom_id used
    /// twice stops everything, naming both lines. `defaultMaxTokens` goes into bodies without
    /// `max_tokens` (or `max_completion_tokens`).
    public static func parse(_ bytes: [UInt8], defaultMaxTokens: Int? = nil) throws(BatchInputError) -> (requests: [BatchRequestLine], errors: [BatchLineError]) {
        var requests: [BatchRequestLine] = [], errors: [BatchLineError] = []
        var seen: [String: Int] = [:]
        var number = 0
        for raw in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            let text = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw
            if text.allSatisfy({ $0 == 32 || $0 == 9 }) { continue }
            let value: JSONValue
            do { value = try JSONValue.parse(Array(text)) } catch {
                errors.append(BatchLineError(line: number, customID: nil, message: "line \(number): not JSON: \(error)"))
                continue
            }
            var request: BatchRequestLine
            switch line(value, number) {
            case .success(let r): request = r
            case .failure(let e):
                errors.append(e)
                if let id = e.customID {
                    if let first = seen[id] { throw BatchInputError("custom_id '\(id)' is on lines \(first) and \(number); each must be unique") }
                    seen[id] = number
                }
                continue
            }
            if let first = seen[request.customID] {
                throw BatchInputError("custom_id '\(request.customID)' is on lines \(first) and \(number); each must be unique")
            }
            seen[request.customID] = number
            if let defaultMaxTokens, var o = request.body.objectValue, o["max_tokens"] == nil, o["max_completion_tokens"] == nil {
                o["max_tokens"] = .int(defaultMaxTokens)
                request.body = .object(o)
            }
            requests.append(request)
        }
        return (requests, errors)
    }

    private static func line(_ value: JSONValue, _ n: Int) -> Result<BatchRequestLine, BatchLineError> {
        if let prompt = value.stringValue {
            return .success(BatchRequestLine(line: n, customID: "line-\(n)", chat: false, body: ["prompt": .string(prompt)]))
        }
        guard let o = value.objectValue else {
            return .failure(BatchLineError(line: n, customID: nil, message: "line \(n): a line is a JSON object or a prompt string"))
        }
        guard let idValue = o["custom_id"] else {
            // A plain prompt object: its fields are the body.
            if o["messages"] != nil { return .success(BatchRequestLine(line: n, customID: "line-\(n)", chat: true, body: value)) }
            if o["prompt"] != nil { return .success(BatchRequestLine(line: n, customID: "line-\(n)", chat: false, body: value)) }
            return .failure(BatchLineError(line: n, customID: nil, message: "line \(n): no custom_id, and neither prompt nor messages"))
        }
        guard let id = idValue.stringValue, !id.isEmpty, id.utf8.count <= 512 else {
            return .failure(BatchLineError(line: n, customID: nil, message: "line \(n): custom_id must be a non-empty string of at most 512 bytes"))
        }
        guard o["method"]?.stringValue == "POST" else {
            return .failure(BatchLineError(line: n, customID: id, message: "line \(n): method must be \"POST\""))
        }
        let chat: Bool
        switch o["url"]?.stringValue {
        case "/v1/chat/completions": chat = true
        case "/v1/completions": chat = false
        default:
            return .failure(BatchLineError(line: n, customID: id, message: "line \(n): url must be \"/v1/chat/completions\" or \"/v1/completions\""))
        }
        guard let body = o["body"], body.objectValue != nil else {
            return .failure(BatchLineError(line: n, customID: id, message: "line \(n): body must be a JSON object"))
        }
        return .success(BatchRequestLine(line: n, customID: id, chat: chat, body: body))
    }
}

/// A results file (OpenAI's batch output format, one JSON object per line) that survives a kill at
/// any moment: each line is appended and made durable (fsync) as its request finishes; on opening,
/// the lines already there are the requests already done, and a torn last line (a crash mid-write)
/// is cut off, so its request runs again.
public final class BatchResultFile: @unchecked Sendable {
    public let path: String
    /// custom_ids of the complete lines.
    private var done: Set<String> = []
    /// Bytes cut from the end when it was opened (a torn line).
    public private(set) var truncatedBytes = 0
    private let fd: Int32
    private var mutex = pthread_mutex_t()

    public init(path: String) throws(BatchInputError) {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BatchInputError("\(path): cannot open for writing: \(errorText())") }
        pthread_mutex_init(&mutex, nil)
        let bytes: [UInt8]
        do { bytes = try readFileBytes(path) } catch { throw BatchInputError("\(path): \(error)") }
        var good = 0, start = 0, number = 0
        while start < bytes.count {
            guard let end = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) else { break }
            number += 1
            let line = Array(bytes[start..<end])
            guard let json = try? JSONValue.parse(line), let id = json.objectValue?["custom_id"]?.stringValue else {
                // Only the last line can be torn; a bad line before it is not this program's writing.
                if bytes[(end + 1)...].contains(where: { $0 != UInt8(ascii: "\n") }) {
                    throw BatchInputError("\(path) line \(number) is not a result line; not resuming over it")
                }
                break
            }
            done.insert(id)
            good = end + 1
            start = end + 1
        }
        if good < bytes.count {
            truncatedBytes = bytes.count - good
            guard ftruncate(fd, off_t(good)) == 0 else { throw BatchInputError("\(path): cannot cut its torn last line: \(errorText())") }
        }
        lseek(fd, 0, SEEK_END)
    }

    deinit {
        close(fd)
        pthread_mutex_destroy(&mutex)
    }

    /// Lines written (complete ones found on opening included).
    public var count: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return done.count
    }

    /// Whether a line for `customID` is in the file.
    public func contains(_ customID: String) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return done.contains(customID)
    }

    /// Appends one line and waits until it is on the disk.
    public func append(_ value: JSONValue, customID: String) throws(BatchInputError) {
        let bytes = Array((value.serialized() + "\n").utf8)
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if let failure = bytes.withUnsafeBytes({ writeAll(fd, $0) }) { throw BatchInputError("\(path): cannot write: \(errorText(failure))") }
        guard fsync(fd) == 0 else { throw BatchInputError("\(path): cannot sync: \(errorText())") }
        done.insert(customID)
    }
}

/// A batch run's counts and first failure, shared by the tasks that finish requests.
final class BatchTally: Sendable {
    let summary = Mutex(BatchSummary())
    let failure = Mutex<BatchInputError?>(nil)
}

/// Stops a batch run from outside: a cancel (the unfinished requests are answered as cancelled)
/// or a shutdown (they stay unanswered, to run when the batch is taken up again). Either way the
/// requests still running are cancelled, and none of them is written as failed.
public final class BatchControl: Sendable {
    public enum Reason: Sendable { case cancelled, shuttingDown }
    private struct State {
        var reason: Reason?
        var running: Set<Int> = []
        var scheduler: BatchScheduler?
    }
    private let state = Mutex(State())

    public init() {}

    public var reason: Reason? { state.withLock { $0.reason } }

    /// Cancels what is running on the scheduler; later submissions are refused.
    public func stop(_ reason: Reason) {
        let (running, scheduler) = state.withLock { s in
            s.reason = s.reason ?? reason
            defer { s.running.removeAll() }
            return (s.running, s.scheduler)
        }
        for id in running { scheduler?.cancel(id) }
    }

    /// Notes a submitted request; false (and it is cancelled) if the run was stopped meanwhile.
    func started(_ id: Int, on scheduler: BatchScheduler) -> Bool {
        let stopped = state.withLock { s -> Bool in
            s.scheduler = scheduler
            if s.reason == nil { s.running.insert(id) }
            return s.reason != nil
        }
        if stopped { scheduler.cancel(id) }
        return !stopped
    }

    func ended(_ id: Int) { state.withLock { _ = $0.running.remove(id) } }
}

/// What a batch run did.
public struct BatchSummary: Sendable {
    public var requests = 0
    public var succeeded = 0
    public var failed = 0
    public var promptTokens = 0
    public var completionTokens = 0
    public var seconds = 0.0
}

extension OpenAIServer {
    /// Runs the requests not yet in `output` or `errors` through the scheduler, shortest prompts
    /// first (short ones finish and free their room for the next, keeping batches full), each
    /// result written and synced as it finishes. `progress` hears of every finished request.
    public func runBatch(
        _ requests: [BatchRequestLine], output: BatchResultFile, errors: BatchResultFile, control: BatchControl = BatchControl(),
        progress: @escaping @Sendable (BatchSummary) -> Void = { _ in }
    ) async throws(BatchInputError) -> BatchSummary {
        let started = ContinuousClock.now
        let pending = requests.filter { !output.contains($0.customID) && !errors.contains($0.customID) }
        let tally = BatchTally()
        tally.summary.withLock { $0.requests = pending.count }
        var parsed: [(BatchRequestLine, Parsed)] = []
        for r in pending {
            // A batch runs on one model: a line need not name it.
            var body = r.body
            if var o = body.objectValue, o["model"] == nil {
                o["model"] = .string(configuration.modelName)
                body = .object(o)
            }
            do throws(APIError) { parsed.append((r, try parse(body: Array(body.serialized().utf8), chat: r.chat))) } catch {
                try errors.append(Self.batchLine(r.customID, status: Int(error.status.code), body: error.body), customID: r.customID)
                tally.summary.withLock { $0.failed += 1 }
            }
        }
        parsed.sort { ($0.1.request.promptTokens.count, $0.0.line) < ($1.1.request.promptTokens.count, $1.0.line) }
        // Interactive requests to the same scheduler go first.
        for i in parsed.indices { parsed[i].1.request.priority = .batch }
        await withTaskGroup(of: Void.self) { group in
            for (r, p) in parsed {
                guard control.reason == nil else { break }
                let submitted: (id: Int, events: AsyncStream<CompletionEvent>)
                do throws(SchedulerError) { submitted = try scheduler.submit(p.request) } catch {
                    let e = APIError(status: .badRequest, message: error.description, code: error.kind == .tooLong ? "context_length_exceeded" : nil)
                    do throws(BatchInputError) { try errors.append(Self.batchLine(r.customID, status: 400, body: e.body), customID: r.customID) } catch {
                        tally.failure.withLock { $0 = $0 ?? error }
                    }
                    tally.summary.withLock { $0.failed += 1 }
                    continue
                }
                guard control.started(submitted.id, on: scheduler) else { break }
                group.addTask {
                    do throws(BatchInputError) {
                        let body: JSONValue
                        defer { control.ended(submitted.id) }
                        do throws(APIError) { body = try await self.completionBody(submitted.events, p, chat: r.chat) } catch {
                            // A request stopped from outside has no result yet: it is redone, or answered as cancelled.
                            guard control.reason == nil else { return }
                            try errors.append(Self.batchLine(r.customID, status: Int(error.status.code), body: error.body), customID: r.customID)
                            tally.summary.withLock { $0.failed += 1 }
                            return
                        }
                        try output.append(Self.batchLine(r.customID, status: 200, body: body), customID: r.customID)
                        let usage = body.objectValue?["usage"]?.objectValue
                        let s = tally.summary.withLock { s -> BatchSummary in
                            s.succeeded += 1
                            s.promptTokens += usage?["prompt_tokens"]?.intValue ?? 0
                            s.completionTokens += usage?["completion_tokens"]?.intValue ?? 0
                            s.seconds = (ContinuousClock.now - started).seconds
                            return s
                        }
                        progress(s)
                    } catch {
                        tally.failure.withLock { $0 = $0 ?? error }
                    }
                }
            }
        }
        if let error = tally.failure.withLock({ $0 }) { throw error }
        return tally.summary.withLock { s in
            s.seconds = (ContinuousClock.now - started).seconds
            return s
        }
    }

    /// A line of OpenAI's batch output format.
    static func batchLine(_ customID: String, status: Int, body: JSONValue) -> JSONValue {
        func id(_ prefix: String) -> JSONValue { .string(prefix + String(UInt64.random(in: 0...UInt64.max), radix: 16)) }
        return ["id": id("batch_req_"), "custom_id": .string(customID),
                "response": ["status_code": .int(status), "request_id": id("req_"), "body": body], "error": .null]
    }

}

extension BatchResultFile {
    /// Lines for the input lines that could not become requests (those not written already).
    public func record(_ bad: [BatchLineError]) throws(BatchInputError) {
        for e in bad {
            let id = e.customID ?? "line-\(e.line)"
            guard !contains(id) else { continue }
            try append(["id": .string("batch_req_line_\(e.line)"), "custom_id": .string(id), "response": .null,
                        "error": ["code": "invalid_request", "message": .string(e.message)]], customID: id)
        }
    }
}
