import GGUF
import Models
import SwitchyardSupport
import Tokenizers

/// GGUF files: a real fixture's metadata (its vocabulary cut to 300 tokens) with small tensors,
/// mutated; each input is parsed, every tensor's first and last byte read, and the model config and
/// tokenizer made from the metadata, as loading a model does.
final class GGUFTarget: Target {
    let seeds: [[UInt8]]
    let path = "/tmp/switchyard-fuzz-\(getpid()).gguf"

    init(root: String) {
        var seeds: [[UInt8]] = []
        for name in ["mixtral-q8_0", "qwen3-iq4", "deepseek_v3-q8"] {
            guard let source = try? GGUFFile(path: root + "/fixtures/gguf/\(name).gguf") else { continue }
            var metadata: [(key: String, value: GGUFValue)] = []
            for key in source.keys {
                var value = source.metadata[key]!
                if key.hasPrefix("tokenizer.ggml."), case .array(let type, let values) = value { value = .array(elementType: type, Array(values.prefix(300))) }
                metadata.append((key, value))
            }
            // DeepSeek's attn_k_b and attn_v_b too, which loading joins into one matrix.
            let tensors = source.tensors.filter { $0.name.hasPrefix("blk.0.") && ($0.byteCount <= 4096 || $0.name.contains("_b.weight")) }.map { t in
                GGUFWriter.Tensor(name: t.name, type: t.type, dimensions: t.dimensions) { $0.copyMemory(from: t.data, byteCount: t.byteCount) }
            } + [GGUFWriter.Tensor(name: "token_embd.weight", type: .f16, dimensions: [8, 300]) { $0.initializeMemory(as: UInt8.self, repeating: 0x3C, count: 4800) }]
            let seedPath = path + ".seed"
            if (try? GGUFWriter.write(metadata: metadata, tensors: tensors, to: seedPath)) != nil, let bytes = try? readFileBytes(seedPath) {
                seeds.append(bytes)
            }
            unlink(seedPath)
        }
        self.seeds = seeds
    }

    func exercise(_ input: [UInt8]) -> Bool {
        guard writeInput(input, to: path), let file = try? GGUFFile(path: path) else { return false }
        var sum: UInt8 = 0
        for t in file.tensors where t.byteCount > 0 {
            sum &+= t.data.load(as: UInt8.self) &+ t.data.load(fromByteOffset: t.byteCount - 1, as: UInt8.self)
        }
        withExtendedLifetime(sum) {}
        if let source = try? GGUFSource(path: path), let config = try? source.readConfig() {
            _ = config.kvLayout.bytes(positions: min(config.maxPositions, 4096))
            if let tensors = try? source.openTensors(), let joined = try? tensors.tensor("blk.0.attn_kv_b.weight", shape: []), joined.byteCount > 0 {
                withExtendedLifetime(joined.data.load(fromByteOffset: joined.byteCount - 1, as: UInt8.self)) {}
            }
        }
        if let tokenizer = try? Tokenizer(gguf: file.metadata, path: path) {
            _ = tokenizer.decode(tokenizer.encode("Hello wörld 🦙 12345"))
        }
        return true
    }
}
