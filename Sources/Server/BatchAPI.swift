import BatchStore
import Batching
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization
import SwitchyardJSON
import SwitchyardSupport

/// OpenAI's Batch API over the server's scheduler: `/v1/files` and `/v1/batches`. Files and
/// batches live in a `BatchStore`; batches run one after another, at batch priority (interactive
/// requests go first), each result appended and synced as it finishes. A server stopped or killed
/// mid-batch takes the batch up again when it starts: what was written stays, the rest runs.
final class BatchService: Sendable {
    let store: BatchStore
    let server: OpenAIServer
    private let queue: AsyncStream<String>.Continuation
    private let ids: AsyncStream<String>
    /// The batch running now and what stops it.
    private let current = Mutex<(id: String, control: BatchControl)?>(nil)
    private let stopping = Mutex(false)

    init(store: BatchStore, server: OpenAIServer) {
        self.store = store
        self.server = server
        (ids, queue) = AsyncStream<String>.makeStream()
    }

    /// Queues the batches a stopped server left unfinished, oldest first.
    func resumeUnfinished() async throws(BatchStoreError) {
        for batch in try await store.unfinished() { queue.yield(batch.id) }
    }

    /// Runs batches as they are queued; returns when stopped.
    func run() async {
        for await id in ids {
            guard !stopping.withLock({ $0 }) else { return }
            await run(id)
        }
    }

    /// Stops at once, leaving the running batch to be taken up at the next start.
    func stop() {
        stopping.withLock { $0 = true }
        queue.finish()
        current.withLock { $0 }?.control.stop(.shuttingDown)
    }

    // MARK: Running one batch

    private func run(_ id: String) async {
        let store = self.store
        do {
            guard let batch = try await store.batch(id), !batch.status.isFinished else { return }
            guard let input = try await store.file(batch.inputFileID) else {
                try await fail(id, code: "missing_file", message: "the input file \(batch.inputFileID) was deleted")
                return
            }
            let lines: (requests: [BatchRequestLine], errors: [BatchLineError])
            do {
                let bytes = try readFileBytes(input.path)
                lines = try await server.offload.run { () throws(BatchInputError) in try Self.parse(bytes, endpoint: batch.endpoint) }
            } catch {
                try await fail(id, code: "invalid_file", message: "\(error)")
                return
            }
            let output = try BatchResultFile(path: "\(store.directory)/files/\(id).output.jsonl")
            let errors = try BatchResultFile(path: "\(store.directory)/files/\(id).errors.jsonl")
            try errors.record(lines.errors)
            let total = lines.requests.count + lines.errors.count
            let control = BatchControl()
            // Known as running before its status is read again, so that a cancel either finds it
            // running or has already left its mark in the database.
            current.withLock { $0 = (id, control) }
            defer { current.withLock { $0 = nil } }
            let started = try await store.update(id) { b in
                if b.status == .validating { b.status = .inProgress }
                b.inProgressAt = b.inProgressAt ?? BatchStore.now()
                b.total = total
                b.completed = output.count
                b.failed = errors.count
            }
            if started?.status == .cancelling { control.stop(.cancelled) }
            // Counts reach the database once a second while it runs, not once per request.
            let counting = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    _ = try? await store.update(id) { b in
                        b.completed = output.count
                        b.failed = errors.count
                    }
                }
            }
            defer { counting.cancel() }
            if stopping.withLock({ $0 }) { control.stop(.shuttingDown) }
            _ = try await server.runBatch(lines.requests, output: output, errors: errors, control: control)
            counting.cancel()
            switch control.reason {
            case .shuttingDown:
                return
            case .cancelled:
                // Every request gets its line: those that did not run say so.
                for r in lines.requests where !output.contains(r.customID) && !errors.contains(r.customID) {
                    let e = APIError(status: .serviceUnavailable, message: "the batch was cancelled before this request ran", code: "batch_cancelled")
                    try errors.append(OpenAIServer.batchLine(r.customID, status: Int(e.status.code), body: e.body), customID: r.customID)
                }
                try await finalize(id, output: output, errors: errors, as: .cancelled)
            case nil:
                try await finalize(id, output: output, errors: errors, as: .completed)
            }
        } catch {
            try? await fail(id, code: "server_error", message: "\(error)")
        }
    }

    /// The requests of an input file: its lines for another endpoint than the batch's are bad lines.
    static func parse(_ bytes: [UInt8], endpoint: String) throws(BatchInputError) -> (requests: [BatchRequestLine], errors: [BatchLineError]) {
        var (requests, errors) = try BatchInput.parse(bytes)
        let chat = endpoint == "/v1/chat/completions"
        for r in requests where r.chat != chat {
            errors.append(BatchLineError(line: r.line, customID: r.customID, message: "line \(r.line): its url is not the batch's endpoint \(endpoint)"))
        }
        requests.removeAll { $0.chat != chat }
        return (requests, errors)
    }

    /// The result files become files of the API, and the batch ends.
    private func finalize(_ id: String, output: BatchResultFile, errors: BatchResultFile, as status: BatchStatus) async throws {
        try await store.update(id) { b in
            b.status = .finalizing
            b.finalizingAt = BatchStore.now()
        }
        let suffix = id.hasPrefix("batch_") ? String(id.dropFirst(6)) : id
        var outputID: String?, errorID: String?
        for (file, kind) in [(output, "output"), (errors, "errors")] where file.count > 0 {
            let stored = StoredFile(id: "file-\(kind)-\(suffix)", purpose: "batch_output", filename: "\(id)_\(kind).jsonl",
                                    bytes: fileSize(file.path), createdAt: BatchStore.now(), path: file.path)
            try await store.register(stored)
            if kind == "output" { outputID = stored.id } else { errorID = stored.id }
        }
        try await store.update(id) { [outputID, errorID] b in
            b.status = status
            b.outputFileID = outputID
            b.errorFileID = errorID
            b.completed = output.count
            b.failed = errors.count
            if status == .completed { b.completedAt = BatchStore.now() } else { b.cancelledAt = BatchStore.now() }
        }
    }

    private func fail(_ id: String, code: String, message: String) async throws {
        try await store.update(id) { b in
            b.status = .failed
            b.failedAt = BatchStore.now()
            b.errors = ["object": "list", "data": [["code": .string(code), "message": .string(message), "line": .null, "param": .null]]]
        }
    }

    // MARK: Routes

    func routes(_ router: Router<ServerContext>) {
        router.post("/v1/files") { request, _ in try await self.upload(request) }
        router.get("/v1/files") { request, _ in
            try self.server.authorize(request)
            let files = try await self.storeCall { try await self.store.files() }
            return self.server.json(.ok, ["object": "list", "data": .array(files.map(Self.json)), "has_more": false])
        }
        router.get("/v1/files/:id") { request, context in
            try self.server.authorize(request)
            return self.server.json(.ok, Self.json(try await self.file(context)))
        }
        router.delete("/v1/files/:id") { request, context in
            try self.server.authorize(request)
            let file = try await self.file(context)
            // A running batch's input stays.
            let unfinished = try await self.storeCall { try await self.store.unfinished() }
            if let user = unfinished.first(where: { $0.inputFileID == file.id }) {
                throw APIError(status: .conflict, message: "file \(file.id) is the input of \(user.id), which has not finished", param: "file_id")
            }
            _ = try await self.storeCall { try await self.store.deleteFile(file.id) }
            return self.server.json(.ok, ["id": .string(file.id), "object": "file", "deleted": true])
        }
        router.get("/v1/files/:id/content") { request, context in
            try self.server.authorize(request)
            return try self.content(try await self.file(context))
        }
        router.post("/v1/batches") { request, _ in try await self.create(request) }
        router.get("/v1/batches") { request, _ in
            try self.server.authorize(request)
            let limit = request.uri.queryParameters.get("limit").map { Int(String($0)) } ?? 20
            guard let limit, (1...100).contains(limit) else {
                throw APIError(status: .badRequest, message: "limit must be an integer from 1 to 100", param: "limit")
            }
            let after = request.uri.queryParameters.get("after").map { String($0) }
            let page = try await self.storeCall { try await self.store.batches(limit: limit + 1, after: after) }
            let data = page.prefix(limit)
            return self.server.json(.ok, [
                "object": "list", "data": .array(data.map(Self.json)), "has_more": .bool(page.count > limit),
                "first_id": data.first.map { .string($0.id) } ?? .null, "last_id": data.last.map { .string($0.id) } ?? .null,
            ])
        }
        router.get("/v1/batches/:id") { request, context in
            try self.server.authorize(request)
            return self.server.json(.ok, Self.json(try await self.batch(context)))
        }
        router.post("/v1/batches/:id/cancel") { request, context in
            try self.server.authorize(request)
            let batch = try await self.batch(context)
            guard batch.status == .validating || batch.status == .inProgress || batch.status == .cancelling else {
                throw APIError(status: .conflict, message: "batch \(batch.id) is \(batch.status.rawValue); only an unfinished batch can be cancelled")
            }
            let updated = try await self.storeCall {
                try await self.store.update(batch.id) { b in
                    guard !b.status.isFinished, b.status != .finalizing else { return }
                    b.status = .cancelling
                    b.cancellingAt = b.cancellingAt ?? BatchStore.now()
                }
            }
            // The running batch stops now; a waiting one is finished as cancelled when its turn comes.
            if let running = self.current.withLock({ $0 }), running.id == batch.id { running.control.stop(.cancelled) }
            return self.server.json(.ok, Self.json(updated ?? batch))
        }
    }

    private func upload(_ request: Request) async throws -> Response {
        try server.authorize(request)
        let boundary: String
        do { boundary = try MultipartForm.boundary(contentType: request.headers[.contentType] ?? "") } catch {
            throw APIError(status: .badRequest, message: error.description)
        }
        let body = try await server.body(of: request, limit: server.configuration.maxFileBytes, flag: "--max-file-bytes")
        let parts: [FormPart]
        do { parts = try await server.offload.run { () throws(MultipartError) in try MultipartForm.parse(body, boundary: boundary) } } catch {
            throw APIError(status: .badRequest, message: "malformed multipart body: \(error.description)")
        }
        guard let purpose = parts.first(where: { $0.name == "purpose" }) else {
            throw APIError(status: .badRequest, message: "the form has no 'purpose' field", param: "purpose")
        }
        guard String(decoding: purpose.body, as: UTF8.self) == "batch" else {
            throw APIError(status: .badRequest, message: "purpose must be 'batch' (the only files this server keeps)", param: "purpose")
        }
        guard let file = parts.first(where: { $0.name == "file" }) else {
            throw APIError(status: .badRequest, message: "the form has no 'file' field", param: "file")
        }
        let name = String((file.filename ?? "upload.jsonl").prefix(255))
        let stored = try await storeCall { try await self.store.addFile(file.body, filename: name, purpose: "batch") }
        return server.json(.ok, Self.json(stored))
    }

    private func create(_ request: Request) async throws -> Response {
        try server.authorize(request)
        let bytes = try await server.body(of: request, limit: server.configuration.maxRequestBytes, flag: "--max-request-bytes")
        guard let json = try? JSONValue.parse(bytes), let o = json.objectValue else {
            throw APIError(status: .badRequest, message: "the body must be a JSON object")
        }
        guard let inputID = o["input_file_id"]?.stringValue else {
            throw APIError(status: .badRequest, message: "input_file_id must be a string", param: "input_file_id")
        }
        guard let endpoint = o["endpoint"]?.stringValue, ["/v1/chat/completions", "/v1/completions"].contains(endpoint) else {
            throw APIError(status: .badRequest, message: "endpoint must be '/v1/chat/completions' or '/v1/completions'", param: "endpoint")
        }
        guard o["completion_window"]?.stringValue == "24h" else {
            throw APIError(status: .badRequest, message: "completion_window must be '24h'", param: "completion_window")
        }
        var metadata: JSONValue?
        if let m = o["metadata"], m != .null {
            // OpenAI's limits: 16 pairs, keys of 64 characters, values of 512.
            guard let pairs = m.objectValue, pairs.count <= 16,
                  pairs.entries.allSatisfy({ $0.key.count <= 64 && ($0.value.stringValue?.count ?? 513) <= 512 }) else {
                throw APIError(status: .badRequest, message: "metadata must be at most 16 string pairs (keys up to 64 characters, values up to 512)", param: "metadata")
            }
            metadata = m
        }
        guard let input = try await storeCall({ try await self.store.file(inputID) }), input.purpose == "batch" else {
            throw APIError(status: .notFound, message: "no batch input file \(inputID)", param: "input_file_id", code: "file_not_found")
        }
        let now = BatchStore.now()
        var batch = StoredBatch(id: BatchStore.newID("batch_"), endpoint: endpoint, inputFileID: inputID, completionWindow: "24h",
                                createdAt: now, expiresAt: now + 86_400, metadata: metadata)
        // Validated now, so that a file that cannot run at all fails at once.
        do {
            let fileBytes = try readFileBytes(input.path)
            let lines = try await server.offload.run { () throws(BatchInputError) in try Self.parse(fileBytes, endpoint: endpoint) }
            batch.total = lines.requests.count + lines.errors.count
            if batch.total == 0 { throw BatchInputError("the input file has no requests") }
        } catch {
            batch.status = .failed
            batch.failedAt = now
            batch.errors = ["object": "list", "data": [["code": "invalid_file", "message": .string("\(error)"), "line": .null, "param": .null]]]
        }
        let created = batch
        try await storeCall { try await self.store.insert(created) }
        if batch.status == .validating { queue.yield(batch.id) }
        return server.json(.ok, Self.json(batch))
    }

    /// A file's contents, read in pieces as they are sent.
    private func content(_ file: StoredFile) throws -> Response {
        let path = file.path
        let size = fileSize(path)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw APIError(status: .internalServerError, message: "the contents of \(file.id) cannot be read: \(errorText())", type: "server_error")
        }
        let stream = ResponseBody { (writer: inout any ResponseBodyWriter) async throws in
            defer { close(fd) }
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            var sent = 0
            while sent < size {
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, size - sent)) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw APIError(status: .internalServerError, message: "\(path): cannot read: \(errorText())", type: "server_error") }
                try await writer.write(ByteBuffer(bytes: chunk[0..<n]))
                sent += n
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/jsonl", .contentLength: String(size)], body: stream)
    }

    private func file(_ context: ServerContext) async throws -> StoredFile {
        let id = try Self.id(context)
        guard let file = try await storeCall({ try await self.store.file(id) }) else {
            throw APIError(status: .notFound, message: "no file \(id)", code: "file_not_found")
        }
        return file
    }

    private func batch(_ context: ServerContext) async throws -> StoredBatch {
        let id = try Self.id(context)
        guard let batch = try await storeCall({ try await self.store.batch(id) }) else {
            throw APIError(status: .notFound, message: "no batch \(id)", code: "batch_not_found")
        }
        return batch
    }

    private static func id(_ context: ServerContext) throws -> String {
        let id = context.parameters.get("id") ?? ""
        guard (1...128).contains(id.utf8.count), id.utf8.allSatisfy({ $0 == 45 || $0 == 95 || (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) }) else {
            throw APIError(status: .notFound, message: "no such id '\(id.prefix(128))'")
        }
        return id
    }

    /// A store call whose failure (the disk, the database) is a 500 that says why.
    private func storeCall<T>(_ work: () async throws -> T) async throws(APIError) -> T {
        do { return try await work() } catch {
            throw APIError(status: .internalServerError, message: "\(error)", type: "server_error")
        }
    }

    // MARK: OpenAI's objects

    static func json(_ f: StoredFile) -> JSONValue {
        ["id": .string(f.id), "object": "file", "bytes": .int(f.bytes), "created_at": .int(f.createdAt), "filename": .string(f.filename),
         "purpose": .string(f.purpose), "status": "processed", "status_details": .null, "expires_at": .null]
    }

    static func json(_ b: StoredBatch) -> JSONValue {
        func time(_ t: Int?) -> JSONValue { t.map { .int($0) } ?? .null }
        func text(_ t: String?) -> JSONValue { t.map { .string($0) } ?? .null }
        return [
            "id": .string(b.id), "object": "batch", "endpoint": .string(b.endpoint), "errors": b.errors ?? .null,
            "input_file_id": .string(b.inputFileID), "completion_window": .string(b.completionWindow), "status": .string(b.status.rawValue),
            "output_file_id": text(b.outputFileID), "error_file_id": text(b.errorFileID), "created_at": .int(b.createdAt),
            "in_progress_at": time(b.inProgressAt), "expires_at": .int(b.expiresAt), "finalizing_at": time(b.finalizingAt),
            "completed_at": time(b.completedAt), "failed_at": time(b.failedAt), "expired_at": .null,
            "cancelling_at": time(b.cancellingAt), "cancelled_at": time(b.cancelledAt),
            "request_counts": ["total": .int(b.total), "completed": .int(b.completed), "failed": .int(b.failed)],
            "metadata": b.metadata ?? .null,
        ]
    }
}
