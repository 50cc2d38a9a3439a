#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct FileReadError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// The whole contents of a (small) file: configs, indexes, tokenizers.
public func readFileBytes(_ path: String) throws(FileReadError) -> [UInt8] {
    guard let file = fopen(path, "rb") else {
        throw FileReadError(description: "cannot open \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
        if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
        if n < chunk.count {
            if ferror(file) != 0 { throw FileReadError(description: "cannot read \(path): \(String(cString: strerror(errno)))") }
            return bytes
        }
    }
}
