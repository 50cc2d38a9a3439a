import SwitchyardSupport

/// A model in one GGUF file or split into several (`name-00001-of-00003.gguf`, as llama.cpp's
/// gguf-split writes them): the first file's metadata, every file's tensors by name.
public final class GGUFModel: @unchecked Sendable {
    /// The files in split order; the first holds the model's metadata.
    public let files: [GGUFFile]
    /// Tensor name → (file index, tensor index in that file).
    private let index: [String: (file: Int, tensor: Int)]

    public var path: String { files[0].path }
    public var metadata: [String: GGUFValue] { files[0].metadata }

    /// The most split files a model may have (gguf-split numbers them with five digits).
    static let maxSplits = 99_999

    /// Opens `path`; a file named as the first of a split (`-00001-of-0000N.gguf`), or whose
    /// `split.count` says it is one, brings the others from beside it.
    public init(path: String) throws(GGUFError) {
        let first = try GGUFFile.shared(path: path)
        var files = [first]
        var splitCount = 1
        if let value = first.metadata["split.count"] {
            guard let n = value.intValue, (1...Self.maxSplits).contains(n) else {
                throw GGUFError("\(path): metadata 'split.count' = \(value.summary) is not a count from 1 to \(Self.maxSplits)")
            }
            if let no = first.metadata["split.no"], no.intValue != 0 {
                throw GGUFError("\(path): this is split \(no.summary) of \(n) (split.no); open the first split (split.no 0)")
            }
            splitCount = n
        }
        if splitCount > 1 {
            guard let (prefix, _) = Self.splitName(path), let totalFromName = Self.splitTotal(path), totalFromName == splitCount else {
                throw GGUFError("\(path): metadata says the model is split into \(splitCount) files, but the name is not '<name>-00001-of-\(Self.fiveDigits(splitCount)).gguf'")
            }
            for i in 2...splitCount {
                let other = "\(prefix)-\(Self.fiveDigits(i))-of-\(Self.fiveDigits(splitCount)).gguf"
                guard fileExists(other) else { throw GGUFError("\(path): split \(i) of \(splitCount) is missing (\(other))") }
                let file = try GGUFFile.shared(path: other)
                if let no = file.metadata["split.no"], no.intValue != i - 1 {
                    throw GGUFError("\(other): metadata 'split.no' = \(no.summary), expected \(i - 1)")
                }
                files.append(file)
            }
        }
        var index: [String: (file: Int, tensor: Int)] = [:]
        for (f, file) in files.enumerated() {
            for (t, info) in file.tensors.enumerated() {
                if index[info.name] != nil { throw GGUFError("\(file.path): tensor '\(info.name)' is also in another split") }
                index[info.name] = (f, t)
            }
        }
        if let expected = first.metadata["split.tensors.count"]?.intValue, expected != index.count {
            throw GGUFError("\(path): metadata 'split.tensors.count' = \(expected), but the \(files.count) splits hold \(index.count) tensors")
        }
        self.files = files
        self.index = index
    }

    public func tensor(_ name: String) -> GGUFTensorInfo? {
        guard let (f, t) = index[name] else { return nil }
        return files[f].tensors[t]
    }

    public var tensorNames: [String] { files.flatMap { $0.tensors.map(\.name) } }
    public var tensorCount: Int { index.count }

    /// The file holding tensor `name`.
    public func file(of name: String) -> GGUFFile? { index[name].map { files[$0.file] } }

    static func fiveDigits(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }

    /// ("prefix", split number) for "prefix-0000K-of-0000N.gguf".
    static func splitName(_ path: String) -> (String, Int)? {
        guard path.hasSuffix(".gguf") else { return nil }
        let stem = Array(path.dropLast(5))
        // "-00001-of-00003" is 15 characters.
        guard stem.count > 15 else { return nil }
        let tail = String(stem.suffix(15))
        let parts = tail.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0].isEmpty, parts[2] == "of", parts[1].count == 5, let k = Int(parts[1]), Int(parts[3]) != nil else { return nil }
        return (String(stem.dropLast(15)), k)
    }

    static func splitTotal(_ path: String) -> Int? {
        guard splitName(path) != nil else { return nil }
        return Int(path.dropLast(5).suffix(5))
    }
}
