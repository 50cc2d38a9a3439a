import Kernels

/// Weights converted to a quantised format at load (`--quantize`), in memory the model owns.
public struct WeightQuantization: Sendable, Equatable {
    public enum Format: String, Sendable, CaseIterable {
        case q8_0, q4_0, q4_k

        public var element: WeightElement {
            switch self {
            case .q8_0: return .q8_0
            case .q4_0: return .q4_0
            case .q4_k: return .q4_k
            }
        }

        /// The format a matrix of `columns` values per row is stored in: this one when its rows are
        /// whole blocks; for Q4_K rows that are not whole super-blocks of 256, Q4_0 (as
        /// llama-quantize falls back for them); nil when rows are not whole blocks of 32.
        public func stored(columns: Int) -> Format? {
            if columns % element.blockValues == 0 { return self }
            return self == .q4_k && columns % 32 == 0 ? .q4_0 : nil
        }

        /// Quantises `count` floats (a multiple of the block size) into blocks at `out`.
        func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
            switch self {
            case .q8_0: Q8_0.quantize(x, count: count, into: out)
            case .q4_0: Q4_0.quantize(x, count: count, into: out)
            case .q4_k: Q4_K.quantize(x, count: count, into: out)
            }
        }
    }
    public var format: Format
    /// Every matrix (attention, dense and shared MLPs, output head) rather than the routed experts
    /// only. Routers and the embedding stay as stored.
    public var all: Bool

    public init(format: Format, all: Bool = false) {
        self.format = format
        self.all = all
    }
}

/// Owns the bytes of converted weights.
final class OwnedBytes: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    init(_ count: Int) { pointer = .allocate(byteCount: max(count, 1), alignment: 64) }
    deinit { pointer.deallocate() }
}

extension DecoderWeights {
    /// These weights with the chosen matrices converted; `storage` collects the new buffers.
    func quantized(_ q: WeightQuantization, pool: ThreadPool, storage: inout [OwnedBytes]) -> DecoderWeights {
        var out = self
        func convert(_ m: WeightMatrix) -> WeightMatrix {
            guard let format = q.format.stored(columns: m.columns), !m.element.isBlockQuantized else { return m }
            let element = format.element
            let rowBytes = element.rowBytes(m.columns)
            let bytes = OwnedBytes(m.rows * rowBytes)
            storage.append(bytes)
            let target = bytes.pointer
            pool.parallelFor((m.rows + 63) / 64) { chunk in
                let row = UnsafeMutablePointer<Float>.allocate(capacity: m.columns)
                defer { row.deallocate() }
                for r in (chunk * 64)..<min(m.rows, chunk * 64 + 64) {
                    let source = m.data + r * m.rowBytes
                    for c in 0..<m.columns { row[c] = widenScalar(m.element, source, c) }
                    format.quantize(row, count: m.columns, into: target + r * rowBytes)
                }
            }
            return WeightMatrix(element: element, rows: m.rows, columns: m.columns, data: UnsafeRawPointer(target))
        }
        func convert(_ f: FeedForwardWeights) -> FeedForwardWeights {
            FeedForwardWeights(gate: convert(f.gate), up: convert(f.up), down: convert(f.down))
        }
        for i in out.layers.indices {
            switch out.layers[i].feedForward {
            case .dense(let f):
                if q.all { out.layers[i].feedForward = .dense(convert(f)) }
            case .mixtureOfExperts(var m):
                m.experts = m.experts.map(convert)
                if q.all, let shared = m.sharedExpert { m.sharedExpert = convert(shared) }
                out.layers[i].feedForward = .mixtureOfExperts(m)
            }
            if q.all {
                let a = out.layers[i].attention
                out.layers[i].attention.query = convert(a.query)
                out.layers[i].attention.key = convert(a.key)
                out.layers[i].attention.value = convert(a.value)
                out.layers[i].attention.output = convert(a.output)
            }
        }
        // A tied output head is the embedding, which stays as stored (as `switchyard quantize` keeps it).
        if q.all && out.lmHead.data != out.embedding.data { out.lmHead = convert(out.lmHead) }
        return out
    }
}
