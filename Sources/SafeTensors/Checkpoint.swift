import SwitchyardJSON
import SwitchyardSupport

/// The weights of a Hugging Face model folder, addressed by tensor name: one `model.safetensors`,
/// or shards listed by `model.safetensors.index.json`. Every file is mapped and validated when the
/// checkpoint is opened; tensors are read in place.
public final class Checkpoint: @unchecked Sendable {
    public let directory: String
    public let files: [SafeTensorsFile]
    private let index: [String: TensorView]

    public init(directory: String) throws(CheckpointError) {
        self.directory = directory
        let indexPath = directory + "/model.safetensors.index.json"
        let singlePath = directory + "/model.safetensors"
        var files: [SafeTensorsFile] = []
        var index: [String: TensorView] = [:]
        if fileExists(indexPath) {
            let bytes: [UInt8]
            do { bytes = try readFileBytes(indexPath) } catch { throw CheckpointError(error.description) }
            let json: JSONValue
            do { json = try JSONValue.parse(bytes) } catch {
                throw CheckpointError("\(indexPath): malformed JSON: \(error)")
            }
            guard let weightMap = json["weight_map"]?.objectValue else {
                throw CheckpointError("\(indexPath): missing 'weight_map' object")
            }
            var byFile: [String: SafeTensorsFile] = [:]
            for (tensor, value) in weightMap.entries {
                guard let name = value.stringValue, !name.isEmpty, !name.hasPrefix("/"), !name.contains("..") else {
                    throw CheckpointError("\(indexPath): weight_map entry for '\(tensor)' is not a file name")
                }
                if byFile[name] == nil {
                    let path = directory + "/" + name
                    guard fileExists(path) else {
                        throw CheckpointError("\(indexPath): tensor '\(tensor)' is in shard '\(name)', which does not exist")
                    }
                    let file = try SafeTensorsFile(path: path)
                    byFile[name] = file
                    files.append(file)
                }
                guard let view = byFile[name]!.tensors[tensor] else {
                    throw CheckpointError("\(directory)/\(name): tensor '\(tensor)' is listed in the index but missing from the shard")
                }
                index[tensor] = view
            }
        } else if fileExists(singlePath) {
            let file = try SafeTensorsFile(path: singlePath)
            files.append(file)
            index = file.tensors
        } else {
            throw CheckpointError("\(directory): no weights found (expected model.safetensors or model.safetensors.index.json)")
        }
        self.files = files
        self.index = index
    }

    public func contains(_ name: String) -> Bool { index[name] != nil }

    public func tensor(_ name: String) throws(CheckpointError) -> TensorView {
        guard let t = index[name] else { throw CheckpointError("\(directory): tensor '\(name)' not found in the checkpoint") }
        return t
    }

    public var allTensors: [TensorView] { Array(index.values) }
}
