import Kernels
import SwitchyardSupport
import WeightFiles

/// Random weights of the shapes a config implies, in a chosen element type, made when first asked
/// for: normal-like values of standard deviation 0.02 (uniform in ±0.02·√3), norm weights near 1.
/// They answer to Hugging Face names.
final class RandomTensors: TensorSource, @unchecked Sendable {
    let config: DecoderConfig
    let element: WeightElement
    /// Matrices this converts are made in its format directly (never as floats).
    let quantization: WeightQuantization?
    let pool: ThreadPool
    private var made: [StoredTensor] = []
    private var seed: UInt64 = 0x5EED

    /// Owns the memory of one random tensor.
    final class Buffer {
        let pointer: UnsafeMutableRawPointer
        init(bytes: Int) { pointer = .allocate(byteCount: max(bytes, 1), alignment: 64) }
        deinit { pointer.deallocate() }
    }

    init(config: DecoderConfig, element: WeightElement, quantization: WeightQuantization? = nil, pool: ThreadPool) {
        precondition([.bf16, .f16, .f32].contains(element), "random weights are plain floats")
        self.config = config
        self.element = element
        self.quantization = quantization
        self.pool = pool
    }

    func contains(_ name: String) -> Bool {
        let c = config
        if name == "lm_head.weight" { return !c.tieWordEmbeddings }
        if name.hasSuffix("e_score_correction_bias") { return false }
        if name.hasSuffix("_blocks") { return c.feedForward.contains { $0.moe?.expertElement == .mxfp4 } }
        if name.hasSuffix("experts.gate_up_proj") { return c.naming.stackedExpertsTransposed }
        // Expert biases are made stacked (gate and up interleaved), as the released checkpoints have them.
        if name.hasSuffix(".experts.gate_proj_bias") || name.hasSuffix(".experts.up_proj_bias") { return false }
        if name.hasSuffix("o_proj.bias") { return c.outputBias }
        if name.hasSuffix("q_proj.bias") || name.hasSuffix("k_proj.bias") || name.hasSuffix("v_proj.bias") { return c.queryKeyValueBias }
        if name.hasSuffix("q_a_proj.bias") || name.hasSuffix("kv_a_proj_with_mqa.bias") { return c.queryKeyValueBias }
        return true
    }

    var allTensors: [StoredTensor] { made }
    var files: [MappedFile] { [] }

    func tensor(_ name: String, shape: [Int]) throws(ModelError) -> StoredTensor {
        if name.hasSuffix("_blocks") || name.hasSuffix("_scales") { return mxfp4Bytes(name, shape: shape) }
        if let q = quantization, shape.count == 2, let format = q.format.stored(columns: shape[1]),
           QuantizedCheckpoint.converts(name: name, all: q.all) {
            return quantizedTensor(name, rows: shape[0], columns: shape[1], format: format)
        }
        let count = shape.reduce(1, *)
        let bytes = element.rowBytes(count)
        let buffer = Buffer(bytes: bytes)
        let isNorm = shape.count == 1 && name.contains("norm")
        seed &+= 0x9E37_79B9_7F4A_7C15
        fillRandom(buffer.pointer, count: count, center: isNorm ? 1 : 0, halfWidth: isNorm ? 0.1 : 0.02 * 3.0.squareRoot(), seed: seed)
        let tensor = StoredTensor(name: name, element: element, typeName: "\(element)".uppercased(), shape: shape,
                                  data: UnsafeRawPointer(buffer.pointer), byteCount: bytes, file: "(random weights)", owner: buffer)
        made.append(tensor)
        return tensor
    }

    /// MXFP4 as released, U8: random codes, and scale bytes 2^-8...2^-6 that give values of about
    /// the same spread as the float weights.
    private func mxfp4Bytes(_ name: String, shape: [Int]) -> StoredTensor {
        let count = shape.reduce(1, *)
        let buffer = Buffer(bytes: count)
        seed &+= 0x9E37_79B9_7F4A_7C15
        let seed = self.seed, scales = name.hasSuffix("_scales")
        let chunk = 1 << 16
        pool.parallelFor((count + chunk - 1) / chunk) { item in
            var state = seed ^ (UInt64(item) &* 0xD1B5_4A32_D192_ED03) | 1
            for i in (item * chunk)..<min(count, (item + 1) * chunk) {
                state ^= state >> 12; state ^= state << 25; state ^= state >> 27
                let r = UInt8(truncatingIfNeeded: (state &* 0x2545_F491_4F6C_DD1D) >> 56)
                buffer.pointer.storeBytes(of: scales ? 119 + r % 3 : r, toByteOffset: i, as: UInt8.self)
            }
        }
        let tensor = StoredTensor(name: name, element: nil, typeName: "U8", shape: shape, data: UnsafeRawPointer(buffer.pointer),
                                  byteCount: count, file: "(random weights)", owner: buffer)
        made.append(tensor)
        return tensor
    }

    /// Random values of the same distribution, quantised row by row into `format`'s blocks.
    private func quantizedTensor(_ name: String, rows: Int, columns: Int, format: WeightQuantization.Format) -> StoredTensor {
        let rowBytes = format.element.rowBytes(columns)
        let buffer = Buffer(bytes: rows * rowBytes)
        seed &+= 0x9E37_79B9_7F4A_7C15
        let seed = self.seed, halfWidth = 0.02 * 3.0.squareRoot()
        pool.parallelFor((rows + 63) / 64) { chunk in
            let row = UnsafeMutablePointer<Float>.allocate(capacity: columns)
            defer { row.deallocate() }
            for r in (chunk * 64)..<min(rows, chunk * 64 + 64) {
                var state = seed ^ (UInt64(r) &* 0xD1B5_4A32_D192_ED03) | 1
                for c in 0..<columns {
                    state ^= state >> 12; state ^= state << 25; state ^= state >> 27
                    row[c] = Float((2 * Double((state &* 0x2545_F491_4F6C_DD1D) >> 11) * 0x1.0p-53 - 1) * halfWidth)
                }
                format.quantize(row, count: columns, into: buffer.pointer + r * rowBytes)
            }
        }
        let tensor = StoredTensor(name: name, element: format.element, typeName: format.rawValue, shape: [rows, columns],
                                  data: UnsafeRawPointer(buffer.pointer), byteCount: rows * rowBytes, file: "(random weights)", owner: buffer)
        made.append(tensor)
        return tensor
    }

    private func fillRandom(_ p: UnsafeMutableRawPointer, count: Int, center: Double, halfWidth: Double, seed: UInt64) {
        let chunk = 1 << 16
        let element = self.element
        pool.parallelFor((count + chunk - 1) / chunk) { item in
            var state = seed ^ (UInt64(item) &* 0xD1B5_4A32_D192_ED03)
            for i in (item * chunk)..<min(count, (item + 1) * chunk) {
                // xorshift64*: fast and good enough for benchmark weights.
                state ^= state >> 12; state ^= state << 25; state ^= state >> 27
                let unit = Double((state &* 0x2545_F491_4F6C_DD1D) >> 11) * 0x1.0p-53
                let value = Float(center + (2 * unit - 1) * halfWidth)
                switch element {
                case .bf16: p.storeBytes(of: UInt16(truncatingIfNeeded: value.bitPattern >> 16), toByteOffset: 2 * i, as: UInt16.self)
                case .f16: p.storeBytes(of: Float16(value), toByteOffset: 2 * i, as: Float16.self)
                default: p.storeBytes(of: value, toByteOffset: 4 * i, as: Float.self)
                }
            }
        }
    }
}
