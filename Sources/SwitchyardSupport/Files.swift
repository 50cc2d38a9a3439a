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
