import SwitchyardSupport

/// What `MappedFile.holdInHugePages()` achieved.
public struct HugePageResidency: Sendable, Equatable {
    /// The file's size.
    public var bytes: Int
    /// How much of the mapping the kernel maps with 2 MiB pages (the rest is 4 KiB pages).
    public var hugeBytes: Int
    /// Whether the file's page cache was dropped and read again to get 2 MiB pages.
    public var reread: Bool

    public init(bytes: Int, hugeBytes: Int, reread: Bool) {
        self.bytes = bytes
        self.hugeBytes = hugeBytes
        self.reread = reread
    }
}

extension MappedFile {
    static let hugePageBytes = 2 << 20

    /// Brings the whole file into memory now, mapped with 2 MiB pages where the kernel can.
    ///
    /// Decode streams every weight once per token. Through 4 KiB pages that costs a page walk every
    /// 4 KiB and stops the hardware prefetchers at each page boundary; through 2 MiB pages the same
    /// weights read 5-10% faster here (as fast as copying them to anonymous huge pages, which
    /// `--no-mmap` does), and they stay the shared, file-backed page cache.
    ///
    /// Linux maps a file with 2 MiB pages only where its page cache holds 2 MiB folios, which it
    /// creates when a mapping asks for huge pages (`MADV_HUGEPAGE`) and the file system supports
    /// large folios (ext4 from Linux 6.16, xfs; tmpfs mounted with huge=). A file read before
    /// through 4 KiB pages stays cached in them. So when less than 90% of the file comes in 2 MiB
    /// pages, and the file system can give them (some piece already came huge, or one 2 MiB piece
    /// does after dropping it from the cache), the file's cache is dropped and the file read again,
    /// once. Pages other processes map are not dropped; nothing is lost either way, since the file
    /// is read-only.
    public func holdInHugePages() -> HugePageResidency {
        var residency = HugePageResidency(bytes: size, hugeBytes: 0, reread: false)
        #if os(Linux)
        let huge = Self.hugePageBytes
        let mutableBase = UnsafeMutableRawPointer(mutating: base)
        guard size >= 2 * huge, madvise(mutableBase, size, MADV_HUGEPAGE) == 0 else { return residency }
        Self.populate(mutableBase, size)
        residency.hugeBytes = Self.hugeMappedBytes(in: base, size)
        let firstWhole = (Int(bitPattern: base) + huge - 1) / huge * huge, lastWhole = (Int(bitPattern: base) + size) / huge * huge
        guard residency.hugeBytes < (lastWhole - firstWhole) / 10 * 9 else { return residency }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return residency }
        defer { close(fd) }
        guard residency.hugeBytes > 0 || probeHugePage(fd: fd, offset: (size / huge - 1) * huge) else { return residency }
        // The cache lets go only of pages no one maps.
        _ = madvise(mutableBase, size, MADV_DONTNEED)
        _ = posix_fadvise(fd, 0, off_t(size), POSIX_FADV_DONTNEED)
        Self.populate(mutableBase, size)
        residency.hugeBytes = Self.hugeMappedBytes(in: base, size)
        residency.reread = true
        #endif
        return residency
    }

    #if os(Linux)
    /// Whether 2 MiB of the file at `offset` (a multiple of 2 MiB), dropped from the page cache and
    /// mapped again at a 2 MiB boundary, comes back as one huge page.
    private func probeHugePage(fd: Int32, offset: Int) -> Bool {
        let huge = Self.hugePageBytes
        _ = madvise(UnsafeMutableRawPointer(mutating: base + offset), huge, MADV_DONTNEED)
        _ = posix_fadvise(fd, off_t(offset), off_t(huge), POSIX_FADV_DONTNEED)
        // Reserve twice the span so a 2 MiB-aligned address lies inside it.
        guard let reserved = mmap(nil, 2 * huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), reserved != MAP_FAILED else {
            return false
        }
        defer { munmap(reserved, 2 * huge) }
        let aligned = UnsafeMutableRawPointer(bitPattern: (Int(bitPattern: reserved) + huge - 1) / huge * huge)!
        guard let probe = mmap(aligned, huge, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, off_t(offset)), probe != MAP_FAILED,
              madvise(probe, huge, MADV_HUGEPAGE) == 0 else { return false }
        Self.populate(probe, huge)
        return Self.hugeMappedBytes(in: probe, huge) == huge
    }

    /// Faults the range in (MADV_POPULATE_READ, Linux 5.14; touching every page before that).
    private static func populate(_ start: UnsafeMutableRawPointer, _ count: Int) {
        let populateRead: Int32 = 22
        if madvise(start, count, populateRead) == 0 { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var sum: UInt8 = 0
        for offset in stride(from: 0, to: count, by: page) {
            sum &+= start.load(fromByteOffset: offset, as: UInt8.self)
        }
        withExtendedLifetime(sum) {}
    }

    /// The bytes of [start, start + count) that the kernel maps with 2 MiB pages, from
    /// /proc/self/smaps (0 where it cannot be read).
    static func hugeMappedBytes(in start: UnsafeRawPointer, _ count: Int) -> Int {
        guard let text = try? readFileBytes("/proc/self/smaps") else { return 0 }
        return hugeMappedBytes(smaps: String(decoding: text, as: UTF8.self), start: Int(bitPattern: start), end: Int(bitPattern: start) + count)
    }
    #endif

    /// Sums `FilePmdMapped` over the mappings of an smaps text that overlap [start, end) (a mapping
    /// ends at a page boundary, the file need not).
    static func hugeMappedBytes(smaps: String, start: Int, end: Int) -> Int {
        var total = 0
        var inside = false
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
               let low = Int(line[..<dash], radix: 16), let high = Int(line[line.index(after: dash)..<space], radix: 16) {
                inside = low < end && high > start
            } else if inside, line.hasPrefix("FilePmdMapped:") {
                let fields = line.split(separator: " ")
                if fields.count >= 2, let kilobytes = Int(fields[1]) { total += kilobytes << 10 }
            }
        }
        return total
    }
}
