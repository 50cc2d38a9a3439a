import BatchStore
import SwitchyardJSON
import SwitchyardSupport
import Testing

@Suite struct BatchStoreTests {
    func temporaryFolder() -> String {
        var template = Array("/tmp/switchyard-store-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    @Test func filesAndBatchesSurviveReopening() async throws {
        let folder = temporaryFolder()
        defer { _ = system("rm -rf '\(folder)'") }
        let store = try await BatchStore.open(directory: folder)
        let file = try await store.addFile(Array("{\"prompt\": \"hi\"}\n".utf8)[...], filename: "in.jsonl", purpose: "batch")
        #expect(file.id.hasPrefix("file-") && file.id.count == 29)
        #expect(try readFileBytes(file.path) == Array("{\"prompt\": \"hi\"}\n".utf8))
        var batch = StoredBatch(id: BatchStore.newID("batch_"), endpoint: "/v1/completions", inputFileID: file.id, completionWindow: "24h",
                                createdAt: 100, expiresAt: 100 + 86_400, metadata: ["owner": "tests"])
        try await store.insert(batch)
        batch.status = .inProgress
        batch.inProgressAt = 101
        batch.total = 7
        batch.completed = 3
        try await store.update(batch.id) { b in
            b.status = .inProgress
            b.inProgressAt = 101
            b.total = 7
            b.completed = 3
        }
        let second = StoredBatch(id: "batch_second", endpoint: "/v1/chat/completions", inputFileID: file.id, completionWindow: "24h",
                                 createdAt: 102, expiresAt: 102 + 86_400, metadata: nil)
        try await store.insert(second)
        try await store.update(second.id) { $0.status = .completed; $0.completedAt = 103; $0.outputFileID = "file-out" }
        do {
            _ = try await BatchStore.open(directory: folder)
            Issue.record("a second store opened on a folder in use")
        } catch {
            #expect(error.description.contains("in use by another process"))
        }
        await store.close()

        let reopened = try await BatchStore.open(directory: folder)
        #expect(try await reopened.file(file.id) == file)
        #expect(try await reopened.batch(batch.id) == batch)
        #expect(try await reopened.unfinished().map(\.id) == [batch.id])
        #expect(try await reopened.batches(limit: 10, after: nil).map(\.id) == ["batch_second", batch.id])
        #expect(try await reopened.batches(limit: 10, after: "batch_second").map(\.id) == [batch.id])
        #expect(try await reopened.batches(limit: 1, after: nil).map(\.id) == ["batch_second"])
        #expect(try await reopened.batch("batch_second")?.outputFileID == "file-out")
        #expect(try await reopened.batch("batch_none") == nil)
        #expect(try await reopened.deleteFile(file.id))
        #expect(try await reopened.file(file.id) == nil)
        #expect(!fileExists(file.path))
        #expect(try await !reopened.deleteFile(file.id))
        await reopened.close()
    }

    @Test func aFolderThatCannotBeMadeIsNamed() async throws {
        do {
            _ = try await BatchStore.open(directory: "/proc/switchyard-no")
            Issue.record("opened a store under /proc")
        } catch {
            #expect(error.description.contains("/proc/switchyard-no"))
        }
    }
}
