import SwitchyardSupport
import Synchronization

#if os(Linux) && arch(x86_64)
private let O_DIRECT: Int32 = 0o40000
#elseif os(Linux)
private let O_DIRECT: Int32 = 0o200000  // arm64 and most others
#endif

/// Reads byte ranges of mapped weight files into memory the caller owns, bypassing the page cache
/// (O_DIRECT) so that weights kept on the disk tier never become resident behind the RAM budget's
/// back. Where O_DIRECT is refused (tmpfs, some network file systems) it reads normally and then
/// tells the kernel to drop those pages. It reads any format's files: it needs only each file's
/// path and mapping.
public final class DirectReader: @unchecked Sendable {
    public static let alignment = 4096

    private struct File {
        let path: String
        let mapped: UnsafeRawPointer
        let size: Int
        let descriptor: Int32
        let direct: Bool
    }

    private let files: [File]
    private let read = Atomic<Int>(0)

    public init(files mappings: [MappedFile]) throws(WeightFileError) {
        var files: [File] = []
        for file in mappings {
            let path = file.path
            var direct = true
            #if os(Linux)
            var fd = open(path, O_RDONLY | O_DIRECT)
            if fd < 0 {
                direct = false
                fd = open(path, O_RDONLY)
            }
            #else
            direct = false
            let fd = open(path, O_RDONLY)
            #endif
            guard fd >= 0 else {
                for f in files { close(f.descriptor) }
                throw WeightFileError("\(path): cannot open for reading weights from disk: \(errorText())")
            }
            files.append(File(path: path, mapped: file.base, size: file.size, descriptor: fd, direct: direct))
        }
        self.files = files
    }

    deinit { for f in files { close(f.descriptor) } }

    /// Bytes read from disk so far.
    public var bytesRead: Int { read.load(ordering: .relaxed) }

    /// The file and offset behind `bytes` bytes at `pointer` in one of the mappings, if they are
    /// one file's.
    public func location(of pointer: UnsafeRawPointer, bytes: Int) -> (file: Int, offset: Int)? {
        for (i, f) in files.enumerated() where pointer >= f.mapped && pointer + bytes <= f.mapped + f.size {
            return (i, pointer - f.mapped)
        }
        return nil
    }

    /// Space to give `read` for `bytes` bytes at any offset: the aligned span around them.
    public static func span(_ bytes: Int) -> Int { (bytes + 2 * alignment - 1) / alignment * alignment + alignment }

    /// Reads `bytes` bytes at `offset` of file `file` into `buffer` (aligned to 4096, at least
    /// `span(bytes)` long) and returns where in `buffer` they start.
    public func read(file: Int, offset: Int, bytes: Int, into buffer: UnsafeMutableRawPointer) throws(WeightFileError) -> Int {
        let f = files[file]
        let a = DirectReader.alignment
        let start = offset / a * a
        let end = min((offset + bytes + a - 1) / a * a, (f.size + a - 1) / a * a)
        var done = 0
        while start + done < end {
            let n = pread(f.descriptor, buffer + done, end - start - done, off_t(start + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let reason = n == 0 ? "the file ended" : errorText()
                throw WeightFileError("\(f.path): reading \(bytes) bytes at offset \(offset) failed: \(reason)")
            }
            done += n
            if start + done >= f.size { break }
        }
        guard start + done >= offset + bytes else {
            throw WeightFileError("\(f.path): reading \(bytes) bytes at offset \(offset) failed: the file ended")
        }
        #if os(Linux)
        if !f.direct { _ = posix_fadvise(f.descriptor, off_t(start), off_t(end - start), POSIX_FADV_DONTNEED) }
        #endif
        read.add(bytes, ordering: .relaxed)
        return offset - start
    }
}
