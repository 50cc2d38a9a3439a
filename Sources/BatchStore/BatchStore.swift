import SQLiteNIO
import SwitchyardJSON
import SwitchyardSupport

/// A file the Batch API holds: an uploaded input, or a batch's output or errors.
public struct StoredFile: Sendable, Equatable {
    public var id: String
    public var purpose: String
    public var filename: String
    public var bytes: Int
    public var createdAt: Int
    /// Where its contents are.
    public var path: String

    public init(id: String, purpose: String, filename: String, bytes: Int, createdAt: Int, path: String) {
        self.id = id
        self.purpose = purpose
        self.filename = filename
        self.bytes = bytes
        self.createdAt = createdAt
        self.path = path
    }
}

/// OpenAI's batch states. `validating`, `inProgress`, `finalizing` and `cancelling` are unfinished:
/// a server that stops in one of them takes the batch up again when it starts.
public enum BatchStatus: String, Sendable, CaseIterable {
    case validating, failed, inProgress = "in_progress", finalizing, completed, expired, cancelling, cancelled

    public var isFinished: Bool { [.failed, .completed, .expired, .cancelled].contains(self) }
}

/// A batch as the database keeps it: OpenAI's batch object, field for field.
public struct StoredBatch: Sendable, Equatable {
    public var id: String
    public var endpoint: String
    public var inputFileID: String
    public var completionWindow: String
    public var status: BatchStatus
    /// `{"object": "list", "data": [{"code", "message", "line", "param"}]}` when validation failed.
    public var errors: JSONValue?
    public var metadata: JSONValue?
    public var outputFileID: String?
    public var errorFileID: String?
    public var createdAt: Int
    public var inProgressAt: Int?
    public var finalizingAt: Int?
    public var completedAt: Int?
    public var failedAt: Int?
    public var cancellingAt: Int?
    public var cancelledAt: Int?
    public var expiresAt: Int
    public var total = 0
    public var completed = 0
    public var failed = 0

    public init(id: String, endpoint: String, inputFileID: String, completionWindow: String, createdAt: Int, expiresAt: Int, metadata: JSONValue?) {
        self.id = id
        self.endpoint = endpoint
        self.inputFileID = inputFileID
        self.completionWindow = completionWindow
        self.status = .validating
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.metadata = metadata
    }
}

public struct BatchStoreError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Files and batches that survive the server: rows in an SQLite database (`batches.sqlite`) and
/// file contents under `files/`, both in one folder. A file's contents are on the disk (synced)
/// before its row exists, so a row never names a missing file. One actor, so that a read-modify-
/// write of a batch (progress counts, a cancel) is never interleaved with another.
public actor BatchStore {
    public nonisolated let directory: String
    private let database: SQLiteConnection
    /// Held (flock) while the store is open: two servers on one folder would run its batches twice.
    private let lock: Int32

    private init(directory: String, database: SQLiteConnection, lock: Int32) {
        self.directory = directory
        self.database = database
        self.lock = lock
    }

    deinit { closeDescriptor(lock) }

    /// Opens (or creates) the store in `directory`; refused while another process has it open.
    public static func open(directory: String) async throws(BatchStoreError) -> BatchStore {
        do throws(FileReadError) { try makeFolders(directory + "/files") } catch { throw BatchStoreError(error.description) }
        let lock = openDescriptor(directory + "/lock")
        guard lock >= 0 else { throw BatchStoreError("\(directory)/lock: cannot open: \(errorText())") }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            closeDescriptor(lock)
            throw BatchStoreError("\(directory) is in use by another process (a server started with the same --batch-dir)")
        }
        let path = directory + "/batches.sqlite"
        let database: SQLiteConnection
        do {
            database = try await SQLiteConnection.open(storage: .file(path: path))
            // Durable on commit: a batch said created or finished stays so after a power cut.
            _ = try await database.query("PRAGMA journal_mode=WAL")
            _ = try await database.query("PRAGMA synchronous=FULL")
            _ = try await database.query("""
                CREATE TABLE IF NOT EXISTS files (
                    id TEXT PRIMARY KEY, purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
                    created_at INTEGER NOT NULL, path TEXT NOT NULL)
                """)
            _ = try await database.query("""
                CREATE TABLE IF NOT EXISTS batches (
                    id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL,
                    status TEXT NOT NULL, errors TEXT, metadata TEXT, output_file_id TEXT, error_file_id TEXT,
                    created_at INTEGER NOT NULL, in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER,
                    failed_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER, expires_at INTEGER NOT NULL,
                    total INTEGER NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL)
                """)
        } catch {
            closeDescriptor(lock)
            throw BatchStoreError("\(path): \(error)")
        }
        return BatchStore(directory: directory, database: database, lock: lock)
    }

    /// Closes the database and lets another process open the folder.
    public func close() async {
        try? await database.close()
        flock(lock, LOCK_UN)
    }

    private func query(_ sql: String, _ binds: [SQLiteData] = []) async throws(BatchStoreError) -> [SQLiteRow] {
        do { return try await database.query(sql, binds) } catch {
            throw BatchStoreError("\(directory)/batches.sqlite: \(error)")
        }
    }

    // MARK: Files

    /// Keeps `bytes` as a new file: on the disk and synced first, then its row.
    public func addFile(_ bytes: ArraySlice<UInt8>, filename: String, purpose: String) async throws(BatchStoreError) -> StoredFile {
        let id = Self.newID("file-")
        let file = StoredFile(id: id, purpose: purpose, filename: filename, bytes: bytes.count, createdAt: Self.now(), path: "\(directory)/files/\(id)")
        do throws(FileReadError) { try writeFileDurably(file.path, bytes) } catch { throw BatchStoreError(error.description) }
        try await register(file)
        return file
    }

    /// Records a file already on the disk (a batch's results); the same id again replaces it.
    public func register(_ file: StoredFile) async throws(BatchStoreError) {
        _ = try await query("INSERT OR REPLACE INTO files (id, purpose, filename, bytes, created_at, path) VALUES (?, ?, ?, ?, ?, ?)",
                            [.text(file.id), .text(file.purpose), .text(file.filename), .integer(file.bytes), .integer(file.createdAt), .text(file.path)])
    }

    public func file(_ id: String) async throws(BatchStoreError) -> StoredFile? {
        try await query("SELECT * FROM files WHERE id = ?", [.text(id)]).first.map(Self.file)
    }

    /// Every file, newest first.
    public func files() async throws(BatchStoreError) -> [StoredFile] {
        try await query("SELECT * FROM files ORDER BY created_at DESC, rowid DESC").map(Self.file)
    }

    /// Forgets a file and removes its contents; false if there was none.
    public func deleteFile(_ id: String) async throws(BatchStoreError) -> Bool {
        guard let file = try await file(id) else { return false }
        _ = try await query("DELETE FROM files WHERE id = ?", [.text(id)])
        unlink(file.path)
        return true
    }

    private static func file(_ row: SQLiteRow) -> StoredFile {
        StoredFile(id: row.column("id")?.string ?? "", purpose: row.column("purpose")?.string ?? "",
                   filename: row.column("filename")?.string ?? "", bytes: row.column("bytes")?.integer ?? 0,
                   createdAt: row.column("created_at")?.integer ?? 0, path: row.column("path")?.string ?? "")
    }

    // MARK: Batches

    /// A new batch's row (its id and times are the caller's).
    public func insert(_ batch: StoredBatch) async throws(BatchStoreError) {
        _ = try await query("INSERT INTO batches (id, endpoint, input_file_id, completion_window, status, created_at, expires_at, total, completed, failed) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, 0)",
                            [.text(batch.id), .text(batch.endpoint), .text(batch.inputFileID), .text(batch.completionWindow),
                             .text(batch.status.rawValue), .integer(batch.createdAt), .integer(batch.expiresAt)])
        try await write(batch)
    }

    public func batch(_ id: String) async throws(BatchStoreError) -> StoredBatch? {
        try await query("SELECT * FROM batches WHERE id = ?", [.text(id)]).first.map(Self.batch)
    }

    /// Batches newest first: `limit` of them after the one named `after` (OpenAI's paging).
    public func batches(limit: Int, after: String?) async throws(BatchStoreError) -> [StoredBatch] {
        if let after {
            return try await query("""
                SELECT * FROM batches WHERE rowid < (SELECT rowid FROM batches WHERE id = ?) ORDER BY rowid DESC LIMIT ?
                """, [.text(after), .integer(limit)]).map(Self.batch)
        }
        return try await query("SELECT * FROM batches ORDER BY rowid DESC LIMIT ?", [.integer(limit)]).map(Self.batch)
    }

    /// Batches a stopped server left unfinished, oldest first: the ones to take up again.
    public func unfinished() async throws(BatchStoreError) -> [StoredBatch] {
        let states = BatchStatus.allCases.filter { !$0.isFinished }.map { "'\($0.rawValue)'" }.joined(separator: ", ")
        return try await query("SELECT * FROM batches WHERE status IN (\(states)) ORDER BY rowid").map(Self.batch)
    }

    /// Changes a batch and writes it back in one step; nil if there is no such batch.
    @discardableResult
    public func update(_ id: String, _ change: @Sendable (inout StoredBatch) -> Void) async throws(BatchStoreError) -> StoredBatch? {
        guard var batch = try await batch(id) else { return nil }
        change(&batch)
        try await write(batch)
        return batch
    }

    private func write(_ b: StoredBatch) async throws(BatchStoreError) {
        func int(_ v: Int?) -> SQLiteData { v.map { .integer($0) } ?? .null }
        func text(_ v: String?) -> SQLiteData { v.map { .text($0) } ?? .null }
        _ = try await query("""
            UPDATE batches SET status = ?, errors = ?, metadata = ?, output_file_id = ?, error_file_id = ?, in_progress_at = ?,
                finalizing_at = ?, completed_at = ?, failed_at = ?, cancelling_at = ?, cancelled_at = ?, total = ?, completed = ?,
                failed = ? WHERE id = ?
            """, [.text(b.status.rawValue), text(b.errors?.serialized()), text(b.metadata?.serialized()), text(b.outputFileID),
                  text(b.errorFileID), int(b.inProgressAt), int(b.finalizingAt), int(b.completedAt), int(b.failedAt),
                  int(b.cancellingAt), int(b.cancelledAt), .integer(b.total), .integer(b.completed), .integer(b.failed), .text(b.id)])
    }

    private static func batch(_ row: SQLiteRow) -> StoredBatch {
        func int(_ name: String) -> Int? { row.column(name)?.integer }
        func json(_ name: String) -> JSONValue? { row.column(name)?.string.flatMap { try? JSONValue.parse(Array($0.utf8)) } }
        var b = StoredBatch(id: row.column("id")?.string ?? "", endpoint: row.column("endpoint")?.string ?? "",
                            inputFileID: row.column("input_file_id")?.string ?? "", completionWindow: row.column("completion_window")?.string ?? "",
                            createdAt: int("created_at") ?? 0, expiresAt: int("expires_at") ?? 0, metadata: json("metadata"))
        b.status = row.column("status")?.string.flatMap(BatchStatus.init(rawValue:)) ?? .failed
        b.errors = json("errors")
        b.outputFileID = row.column("output_file_id")?.string
        b.errorFileID = row.column("error_file_id")?.string
        b.inProgressAt = int("in_progress_at")
        b.finalizingAt = int("finalizing_at")
        b.completedAt = int("completed_at")
        b.failedAt = int("failed_at")
        b.cancellingAt = int("cancelling_at")
        b.cancelledAt = int("cancelled_at")
        b.total = int("total") ?? 0
        b.completed = int("completed") ?? 0
        b.failed = int("failed") ?? 0
        return b
    }

    // MARK: Ids and times

    /// `prefix` and 24 random hex digits, as OpenAI's ids look.
    public static func newID(_ prefix: String) -> String {
        prefix + (0..<3).map { _ in
            let s = String(UInt32.random(in: 0...UInt32.max), radix: 16)
            return String(repeating: "0", count: 8 - s.count) + s
        }.joined()
    }

    /// Unix seconds.
    public static func now() -> Int { Int(time(nil)) }
}

// The C library's open and close, by names the actor's own `open` and `close` do not hide.
private func openDescriptor(_ path: String) -> Int32 { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644) }
private func closeDescriptor(_ fd: Int32) { close(fd) }
