import Testing
@testable import WeightFiles
import SwitchyardSupport
import SwitchyardTestSupport

@Suite("weight files in huge pages")
struct HugePageMappingTests {
    @Test func countsHugePagesOfOverlappingMappingsOnly() {
        let smaps = """
        7f0000000000-7f0000600000 r--p 00000000 fd:00 12 /models/a.safetensors
        Size:               6144 kB
        FilePmdMapped:      4096 kB
        Locked:                0 kB
        7f0000600000-7f0000800000 r--p 00000000 fd:00 13 /models/b.safetensors
        FilePmdMapped:      2048 kB
        7f0000800000-7f0000a00000 rw-p 00000000 00:00 0
        AnonHugePages:      2048 kB
        FilePmdMapped:         0 kB
        """
        let a = 0x7f00_0000_0000
        // The file's 6 MiB minus 100 bytes: its mapping ends at the next page boundary.
        #expect(MappedFile.hugeMappedBytes(smaps: smaps, start: a, end: a + (6 << 20) - 100) == 4 << 20)
        #expect(MappedFile.hugeMappedBytes(smaps: smaps, start: a, end: a + (8 << 20)) == 6 << 20)
        #expect(MappedFile.hugeMappedBytes(smaps: smaps, start: a + (10 << 20), end: a + (12 << 20)) == 0)
    }

    /// The bytes read through the mapping are the file's, whatever pages the kernel gives; where
    /// transparent huge pages are off there are none.
    @Test func holdsTheFileAndKeepsItsBytes() throws {
        let count = (6 << 20) + 12_345
        var state: UInt32 = 12345
        let bytes = (0..<count).map { _ in
            state = state &* 1_664_525 &+ 1_013_904_223
            return UInt8(truncatingIfNeeded: state >> 24)
        }
        let path = "/tmp/switchyard-test-\(getpid())-huge.bin"
        let f = try #require(fopen(path, "wb"))
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
        defer { unlink(path) }

        let mapping = try MappedFile(path: path)
        let residency = mapping.holdInHugePages()
        #expect(residency.bytes == count)
        #expect(residency.hugeBytes % (2 << 20) == 0 && residency.hugeBytes <= count)
        #expect(bytes.withUnsafeBytes { memcmp($0.baseAddress!, mapping.base, count) } == 0)
        if let modes = try? readFileBytes("/sys/kernel/mm/transparent_hugepage/enabled"),
           String(decoding: modes, as: UTF8.self).contains("[never]") {
            #expect(residency.hugeBytes == 0)
        }
    }
}
