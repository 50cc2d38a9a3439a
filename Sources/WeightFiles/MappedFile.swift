import SwitchyardSupport

/// A problem opening, mapping or reading a weight file; the message names the file.
public struct WeightFileError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A read-only memory mapping of a whole file. Weights are used in place from the mapping: the
/// kernels read bf16/f16/f32 directly, so nothing is copied.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let base: UnsafeRawPointer
    public let size: Int

    public init(path: String) throws(WeightFileError) {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw WeightFileError("cannot open \(path): \(errorText())") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw WeightFileError("cannot stat \(path): \(errorText())") }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw WeightFileError("\(path) is not a regular file") }
        size = Int(info.st_size)
        if size == 0 {
            // mmap refuses empty files; a one-byte private buffer keeps `base` valid and validation
            // reports the file as truncated.
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 16))
            return
        }
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
            throw WeightFileError("cannot map \(path): \(errorText())")
        }
        base = UnsafeRawPointer(mapped)
    }

    deinit {
        if size == 0 {
            UnsafeMutableRawPointer(mutating: base).deallocate()
        } else {
            munmap(UnsafeMutableRawPointer(mutating: base), size)
        }
    }
}
