import Kernels

/// Weights converted to a quantised format at load (`--quantize`), in memory the model owns.
public struct WeightQuantization: Sendable, Equatable {
    public enum Format: String, Sendable, CaseIterable {
        case q8_0, q4_0, q4_k, q6_k

        public var element: WeightElement {
            switch self {
            case .q8_0: return .q8_0
            case .q4_0: return .q4_0
            case .q4_k: return .q4_k
            case .q6_k: return .q6_k
            }
        }

        /// The format a matrix of `columns` values per row is stored in: this one when its rows are
        /// whole blocks; for rows that are not whole super-blocks of 256, Q4_0 for Q4_K and Q8_0
        /// for Q6_K (as llama-quantize falls back for them); nil when rows are not whole blocks of 32.
        public func stored(columns: Int) -> Format? {
            if columns % element.blockValues == 0 { return self }
            guard columns % 32 == 0 else { return nil }
            switch self {
            case .q4_k: return .q4_0
            case .q6_k: return .q8_0
            default: return nil
            }
        }

        /// Every row of `matrix` (plain floats, in host memory) quantised into consecutive rows of
        /// blocks at `target`, rows split across `pool`.
        public func quantizeRows(of matrix: WeightMatrix, into target: UnsafeMutableRawPointer, pool: ThreadPool) {
            let rowBytes = element.rowBytes(matrix.columns)
            pool.parallelFor((matrix.rows + 63) / 64) { chunk in
                let row = UnsafeMutablePointer<Float>.allocate(capacity: matrix.columns)
                defer { row.deallocate() }
                for r in (chunk * 64)..<min(matrix.rows, chunk * 64 + 64) {
                    matrix.widenRow(r, into: row)
                    quantize(row, count: matrix.columns, into: target + r * rowBytes)
                }
            }
        }

        /// Quantises `count` floats (a multiple of the block size) into blocks at `out`.
        public func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutableRawPointer) {
            switch self {
            case .q8_0: Q8_0.quantize(x, count: count, into: out)
            case .q4_0: Q4_0.quantize(x, count: count, into: out)
            case .q4_k: Q4_K.quantize(x, count: count, into: out)
            case .q6_k: Q6_K.quantize(x, count: count, into: out)
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
