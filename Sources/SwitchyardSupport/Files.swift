/// A file that could not be read: the message names it and says why.
public struct FileReadError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The whole contents of a (small) file: configs, indexes, tokenizers, request lists.
public func readFileBytes(_ path: String) throws(FileReadError) -> [UInt8] {
    guard let file = fopen(path, "rb") else {
        throw FileReadError("cannot open \(path): \(errorText())")
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
        if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
        if n < chunk.count {
            if ferror(file) != 0 { throw FileReadError("cannot read \(path): \(errorText())") }
            return bytes
        }
    }
}

/// A file's size in bytes (0 if it cannot be read).
public func fileSize(_ path: String) -> Int {
    var info = stat()
    return stat(path, &info) == 0 ? Int(info.st_size) : 0
}

/// Writes all of `bytes` to `fd`, again after an interrupted or short write; the errno of a failed
/// write, or nil.
@discardableResult
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
    var written = 0
    while written < bytes.count {
        let n = write(fd, bytes.baseAddress! + written, bytes.count - written)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return n < 0 ? errno : EIO }
        written += n
    }
    return nil
}

/// Whether `path` names a regular file (not a folder, not missing).
public func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
}

/// This machine's RAM in bytes (MemTotal of /proc/meminfo; the pages the C library counts elsewhere).
public func physicalMemory() -> Int {
    if let bytes = try? readFileBytes("/proc/meminfo") {
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("MemTotal:") {
            if let kb = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) { return kb * 1024 }
        }
    }
    return Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Writes a whole file so that a crash at any moment leaves either no file or all of it: the bytes
/// go to a temporary file beside it, which is synced, renamed into place, and its folder synced.
public func writeFileDurably(_ path: String, _ bytes: ArraySlice<UInt8>) throws(FileReadError) {
    let temporary = path + ".partial"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw FileReadError("cannot create \(temporary): \(errorText())") }
    if let failure = bytes.withUnsafeBytes({ writeAll(fd, $0) }) {
        close(fd)
        unlink(temporary)
        throw FileReadError("cannot write \(temporary): \(errorText(failure))")
    }
    guard fsync(fd) == 0 else {
        let reason = errorText()
        close(fd)
        unlink(temporary)
        throw FileReadError("cannot sync \(temporary): \(reason)")
    }
    close(fd)
    guard rename(temporary, path) == 0 else {
        let reason = errorText()
        unlink(temporary)
        throw FileReadError("cannot rename \(temporary) to \(path): \(reason)")
    }
    syncFolder(of: path)
}

/// Makes a file's creation or renaming durable (its folder's entry synced).
private func syncFolder(of path: String) {
    let folder = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
    let fd = open(folder.isEmpty ? "/" : folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    close(fd)
}

/// Creates a folder and its parents, as `mkdir -p` does.
public func makeFolders(_ path: String) throws(FileReadError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for part in path.split(separator: "/") {
        prefix += part + "/"
        if mkdir(prefix, 0o755) != 0 && errno != EEXIST { throw FileReadError("cannot create the folder \(prefix): \(errorText())") }
    }
}
