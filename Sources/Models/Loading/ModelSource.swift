import GGUF
import Kernels
import SwitchyardJSON
import SwitchyardSupport

/// A model as some file format holds it: its configuration and its tensors. The rest of the
/// engine sees only `DecoderConfig`, `TensorSource` and `TensorNaming`, so a new format (GGUF) is
/// a conformance to this protocol and one line in `ModelFormats.open`.
public protocol ModelSource: Sendable {
    /// The folder or file, for messages.
    var path: String { get }
    /// The decoder's configuration, EOS and BOS tokens included.
    func readConfig() throws(ModelError) -> DecoderConfig
    /// The stored weights' element (for random weights of the right type).
    func storedElement() throws(ModelError) -> WeightElement
    /// The tensors, read in place from the files.
    func openTensors() throws(ModelError) -> TensorSource
    /// How this format names `config`'s family's tensors.
    func naming(for config: DecoderConfig) -> TensorNaming
}

/// The formats Switchyard reads.
public enum ModelFormats {
    /// The model at `path`, in whichever format it is.
    public static func open(_ path: String) throws(ModelError) -> ModelSource {
        if fileExists(path + "/config.json") { return HuggingFaceFolder(directory: path) }
        if isGGUFFile(path) { return try GGUFSource(path: path) }
        throw ModelError("\(path): neither a GGUF file nor a folder with config.json (a Hugging Face model folder)")
    }
}

/// A JSON file's value; the message names the file.
public func readJSON(_ path: String) throws(ModelError) -> JSONValue {
    let bytes: [UInt8]
    do { bytes = try readFileBytes(path) } catch { throw ModelError(error.description) }
    do { return try JSONValue.parse(bytes) } catch { throw ModelError("\(path): malformed JSON: \(error)") }
}
