import SafeTensors
import SwitchyardSupport

/// A copy of a fixture model whose routed experts are stored after every other tensor, so that
/// cutting the file short takes experts away and nothing else: what a drive that fails under the
/// disk tier looks like to the engine, without touching a weight it reads through the mapping.
public struct ExpertsLastCheckpoint {
    public let directory: String
    public let weightsPath: String
    /// Where the first expert's bytes start in the file.
    public let expertsOffset: Int
    private let original: [UInt8]

    public init(copying fixture: String, to directory: String) throws {
        self.directory = directory
        mkdir(directory, 0o755)
        for name in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] where fileExists(fixture + "/" + name) {
            let bytes = try readFileBytes(fixture + "/" + name)
            let out = fopen(directory + "/" + name, "wb")!
            _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, out) }
            fclose(out)
        }
        let file = try SafeTensorsFile(path: fixture + "/model.safetensors")
        let names = file.names.filter { !$0.contains(".experts.") } + file.names.filter { $0.contains(".experts.") }
        let entries = names.map { name in
            let t = file.tensors[name]!
            return SafeTensorsWriter.Entry(name: name, dtype: t.dtype, shape: t.shape, byteCount: t.byteCount) { out in
                out.copyMemory(from: t.data, byteCount: t.byteCount)
            }
        }
        weightsPath = directory + "/model.safetensors"
        try SafeTensorsWriter.write(entries, metadata: file.metadata, to: weightsPath)
        let written = try SafeTensorsFile(path: weightsPath)
        let first = names.first { $0.contains(".experts.") }!
        expertsOffset = written.tensors[first]!.data - written.mapping.base
        original = try readFileBytes(weightsPath)
    }

    /// Cuts the file just after the first expert's first byte: every expert read now fails.
    public func loseExperts() {
        truncate(weightsPath, off_t(expertsOffset + 1))
    }

    /// Puts the file back as it was written.
    public func restore() {
        let out = fopen(weightsPath, "r+b")!
        _ = original.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, out) }
        fclose(out)
    }

    public func remove() {
        for name in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
            unlink(directory + "/" + name)
        }
        rmdir(directory)
    }
}
