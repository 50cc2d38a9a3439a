import Kernels
import SwitchyardSupport

extension StoredTensor {
    /// The index of the first stored number that is a NaN or an infinity (a value of a float
    /// tensor; a block scale of a quantised one), or nil when every one is finite: what
    /// `--check-tensors` looks for, as llama.cpp's `--check-tensors` does. It reads the bit
    /// patterns (an exponent of all ones), so it is a pass over the bytes, not a dequantisation.
    public func firstNonFinite(pool: ThreadPool) -> Int? {
        guard let element else { return nil }
        // Numbers checked: every value of a float tensor; every block's half-precision scale of a
        // quantised one (Q4_K: its two).
        let chunk = 1 << 16
        let count: Int
        switch element {
        case .f32: count = byteCount / 4
        case .f16, .bf16: count = byteCount / 2
        case .q8_0: count = byteCount / Q8_0.blockBytes
        case .q4_0: count = byteCount / Q4_0.blockBytes
        case .q4_k: count = byteCount / Q4_K.blockBytes
        case .mxfp4: count = byteCount / MXFP4.blockBytes
        case .q8_0x4, .q4_0x4: return nil  // only made at load, from checked tensors
        case .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs: count = byteCount / GGMLBlocks.blockBytes(element)
        }
        let scaleOffsets = GGMLBlocks.handles(element) ? GGMLBlocks.scaleOffsets(element) : []
        let data = self.data
        let found = UnsafeMutablePointer<Int>.allocate(capacity: (count + chunk - 1) / chunk + 1)
        defer { found.deallocate() }
        let items = (count + chunk - 1) / chunk
        pool.parallelFor(items) { item in
            found[item] = -1
            for i in (item * chunk)..<min(count, (item + 1) * chunk) {
                let bad: Bool
                switch element {
                case .f32: bad = data.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) & 0x7F80_0000 == 0x7F80_0000
                case .bf16: bad = data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) & 0x7F80 == 0x7F80
                case .f16: bad = data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) & 0x7C00 == 0x7C00
                case .q8_0: bad = data.loadUnaligned(fromByteOffset: i * Q8_0.blockBytes, as: UInt16.self) & 0x7C00 == 0x7C00
                case .q4_0: bad = data.loadUnaligned(fromByteOffset: i * Q4_0.blockBytes, as: UInt16.self) & 0x7C00 == 0x7C00
                case .q4_k:
                    let d = data.loadUnaligned(fromByteOffset: i * Q4_K.blockBytes, as: UInt16.self)
                    let dmin = data.loadUnaligned(fromByteOffset: i * Q4_K.blockBytes + 2, as: UInt16.self)
                    bad = d & 0x7C00 == 0x7C00 || dmin & 0x7C00 == 0x7C00
                // E8M0's all-ones scale is its NaN.
                case .mxfp4: bad = data.load(fromByteOffset: i * MXFP4.blockBytes, as: UInt8.self) == 0xFF
                case .q8_0x4, .q4_0x4: bad = false
                case .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs:
                    let block = i * GGMLBlocks.blockBytes(element)
                    bad = scaleOffsets.contains { data.loadUnaligned(fromByteOffset: block + $0, as: UInt16.self) & 0x7C00 == 0x7C00 }
                }
                if bad { found[item] = i; return }
            }
        }
        for item in 0..<items where found[item] >= 0 { return found[item] }
        return nil
    }
}
