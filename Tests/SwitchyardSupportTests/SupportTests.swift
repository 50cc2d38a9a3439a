import Testing
import SwitchyardSupport

@Suite("Support")
struct SupportTests {
    @Test func sizes() throws {
        #expect(try parseByteSize("512MiB") == 512 << 20)
        #expect(try parseByteSize("20GB") == 20_000_000_000)
        #expect(try parseByteSize("1.5 GiB") == 3 << 29)
        #expect(try parseByteSize("4096") == 4096)
        #expect(try parseByteSize("2G") == 2 << 30)
        #expect(throws: ByteSizeError.self) { try parseByteSize("lots") }
        #expect(throws: ByteSizeError.self) { try parseByteSize("12 parsecs") }
        #expect(throws: ByteSizeError.self) { try parseByteSize("-1GB") }
        #expect(throws: ByteSizeError.self) { try parseByteSize("99999999999TB") }
    }

    @Test func formatting() {
        #expect(formatBytes(1536) == "1.5 KiB")
        #expect(formatBytes(512) == "512 B")
        #expect(formatBytes(3 << 29, digits: 2) == "1.50 GiB")
        #expect(formatCount(1_234_567) == "1.23 M")
        #expect(fixed(-0.004, 2) == "0.00")
        #expect(fixed(-2.5, 1) == "-2.5")
        #expect(" \tword \t".trimmed() == "word")
    }

    @Test func completionsCarryFailures() {
        let queue = SerialQueue()
        defer { queue.stop() }
        let failed = queue.submit { () throws(WorkFailure) in throw WorkFailure("the drive went away") }
        var ran = false
        let after = queue.submit(after: [failed]) { ran = true }
        #expect(after.wait()?.description == "the drive went away")
        #expect(!ran)
        let fine = queue.submit {}
        #expect(fine.wait() == nil)
        #expect([failed, fine].waitAll()?.description == "the drive went away")
    }
}
