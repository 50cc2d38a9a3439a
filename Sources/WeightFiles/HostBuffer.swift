import SwitchyardSupport

/// Anonymous host memory that holds weights (converted, regrouped, or copied out of their files so
/// that a file that changes cannot take them away): 2 MiB-aligned and in 2 MiB pages where the
/// kernel grants them, since weights stream through the TLB once per token and huge pages take one
/// page walk where 4 KiB pages take 512.
public final class HostBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int

    public init(_ count: Int) {
        self.count = count
        var raw: UnsafeMutableRawPointer?
        if count >= 2 << 20, posix_memalign(&raw, 2 << 20, count) == 0, let raw {
            _ = madvise(raw, count, Int32(MADV_HUGEPAGE))
            pointer = raw
        } else {
            pointer = malloc(max(count, 1))!
        }
    }

    deinit { free(pointer) }

    public func contains(_ p: UnsafeRawPointer) -> Bool { p >= UnsafeRawPointer(pointer) && p < UnsafeRawPointer(pointer) + count }
}
