import SwitchyardSupport

/// Drops the pages of a file-mapped range from this process (they are re-read if touched again),
/// so weights that were copied elsewhere (another tier, a regrouped layout) stop counting against
/// host RAM.
public func dropPages(_ pointer: UnsafeRawPointer, _ bytes: Int) {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let start = (Int(bitPattern: pointer) + page - 1) / page * page
    let end = (Int(bitPattern: pointer) + bytes) / page * page
    guard end > start else { return }
    _ = madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, Int32(MADV_DONTNEED))
}
