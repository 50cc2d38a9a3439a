import Kernels
import Runtime
import SafeTensors
import SwitchyardSupport

/// `switchyard quantize`: a model folder rewritten with its matrices in a GGUF block format, so the
/// conversion `--quantize` does at every load is paid once. The weights go to one model.safetensors;
/// a quantised tensor is stored as U8 with its last dimension in bytes and named in the metadata
/// (`switchyard.quantization.<tensor>`), which Switchyard reads and other tools do not. Every
/// other file of the folder (config, tokenizer, chat template) is copied.
public enum QuantizedCheckpoint {
    /// Whether `quantize` converts a tensor: float matrices whose rows are whole blocks; the
    /// routed experts only unless `all`, and never the embedding, routers or norms.
    public static func converts(_ t: TensorView, format: WeightQuantization.Format, all: Bool) -> Bool {
        guard [.bf16, .f16, .f32].contains(t.dtype), t.shape.count >= 2, format.stored(columns: t.shape.last!) != nil else { return false }
        return converts(name: t.name, all: all)
    }

    /// Whether a matrix of this name is one `quantize` converts (given rows of whole blocks).
    public static func converts(name: String, all: Bool) -> Bool {
        if name.contains("embed_tokens") || name.hasSuffix(".gate.weight") || name.hasSuffix("shared_expert_gate.weight") { return false }
        return all || name.contains(".experts.")
    }

    /// Writes the quantised folder and returns (tensors converted, bytes written).
    public static func write(from directory: String, to output: String, format: WeightQuantization.Format, all: Bool,
                             pool: ThreadPool) throws(ModelError) -> (converted: Int, bytes: Int) {
        let checkpoint: Checkpoint
        do { checkpoint = try Checkpoint(directory: directory) } catch { throw ModelError(error.description) }
        // Blocks run along a row's inputs; input-major stacked experts would be blocked along outputs.
        let config = try HuggingFaceFolder(directory: directory).readConfig()
        if config.naming.stackedExpertsTransposed {
            throw ModelError("\(directory): \(config.modelType)'s experts are stored input-major; quantise them at load with --quantize instead")
        }
        guard mkdir(output, 0o755) == 0 || errno == EEXIST else {
            throw ModelError("\(output): cannot create the folder: \(errorText())")
        }
        guard realPath(output) != realPath(directory) else { throw ModelError("\(output): the output must be another folder than the model's") }
        for file in checkpoint.files {
            for (key, value) in file.metadata where key.hasPrefix(quantizationMetadataKey("")) {
                throw ModelError("\(file.path): already quantised (\(key) = \(value))")
            }
        }
        var entries: [SafeTensorsWriter.Entry] = []
        var metadata: [String: String] = ["format": "pt"]
        var converted = 0
        for file in checkpoint.files {
            for name in file.names {
                let t = file.tensors[name]!
                if converts(t, format: format, all: all) {
                    let columns = t.shape.last!
                    let rows = t.elementCount / columns
                    let stored = format.stored(columns: columns)!
                    let rowBytes = stored.element.rowBytes(columns)
                    let source = WeightMatrix(element: t.dtype == .bf16 ? .bf16 : t.dtype == .f16 ? .f16 : .f32,
                                              rows: rows, columns: columns, data: t.data)
                    entries.append(SafeTensorsWriter.Entry(name: name, dtype: .u8, shape: t.shape.dropLast() + [rowBytes],
                                                           byteCount: rows * rowBytes) { out in
                        stored.quantizeRows(of: source, into: out, pool: pool)
                    })
                    metadata[quantizationMetadataKey(name)] = stored.rawValue
                    converted += 1
                } else {
                    entries.append(SafeTensorsWriter.Entry(name: name, dtype: t.dtype, shape: t.shape, byteCount: t.byteCount) { out in
                        out.copyMemory(from: t.data, byteCount: t.byteCount)
                    })
                }
            }
        }
        do {
            try SafeTensorsWriter.write(entries, metadata: metadata, to: output + "/model.safetensors")
        } catch {
            throw ModelError(error.description)
        }
        // The rest of the folder: configs, tokenizer, templates (not the old weights or index).
        if let listing = opendir(directory) {
            defer { closedir(listing) }
            while let entry = readdir(listing) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasPrefix(".") || name.hasSuffix(".safetensors") || name == "model.safetensors.index.json" { continue }
                let path = directory + "/" + name
                guard fileExists(path) else { continue }
                do {
                    let bytes = try readFileBytes(path)
                    guard let out = fopen(output + "/" + name, "wb") else { throw CheckpointError("cannot write") }
                    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, out) }
                    fclose(out)
                } catch {
                    throw ModelError("\(output)/\(name): cannot copy from the model folder: \(error)")
                }
            }
        }
        return (converted, entries.reduce(0) { $0 + $1.byteCount })
    }

    private static func realPath(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
