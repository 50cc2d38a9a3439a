import Kernels
import SwitchyardSupport
import WeightFiles

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
    let count: Int
    init(_ count: Int) {
        self.count = count
        var raw: UnsafeMutableRawPointer?
        if count >= 2 << 20, posix_memalign(&raw, 2 << 20, count) == 0, let raw {
            // Weights stream through the TLB once per token: 2 MiB pages where the kernel grants
            // them (transparent huge pages in madvise mode) take one page walk instead of 512.
            _ = madvise(raw, count, Int32(MADV_HUGEPAGE))
            pointer = raw
        } else {
            pointer = malloc(max(count, 1))!
        }
    }
    deinit { free(pointer) }

    func contains(_ p: UnsafeRawPointer) -> Bool { p >= UnsafeRawPointer(pointer) && p < UnsafeRawPointer(pointer) + count }
}

extension DecoderWeights {
    /// These weights with `transform` applied to the routed experts' matrices and, when `all`, to
    /// every other matrix but the embedding and the routers (a tied output head is the embedding,
    /// which stays as stored, as `switchyard quantize` keeps it).
    func mapMatrices(all: Bool, _ transform: (WeightMatrix) -> WeightMatrix) -> DecoderWeights {
        var out = self
        func convert(_ f: FeedForwardWeights) -> FeedForwardWeights {
            FeedForwardWeights(gate: transform(f.gate), up: transform(f.up), down: transform(f.down))
        }
        for i in out.layers.indices {
            switch out.layers[i].feedForward {
            case .dense(let f):
                if all { out.layers[i].feedForward = .dense(convert(f)) }
            case .mixtureOfExperts(var m):
                m.experts = m.experts.map(convert)
                if all, let shared = m.sharedExpert { m.sharedExpert = convert(shared) }
                out.layers[i].feedForward = .mixtureOfExperts(m)
            }
            if all {
                let a = out.layers[i].attention
                out.layers[i].attention.query = transform(a.query)
                out.layers[i].attention.key = transform(a.key)
                out.layers[i].attention.value = transform(a.value)
                out.layers[i].attention.output = transform(a.output)
            }
        }
        if all && out.lmHead.data != out.embedding.data { out.lmHead = transform(out.lmHead) }
        return out
    }

    /// These weights with the chosen matrices converted; `storage` collects the new buffers.
    func quantized(_ q: WeightQuantization, pool: ThreadPool, storage: inout [OwnedBytes]) -> DecoderWeights {
        var buffers: [OwnedBytes] = []
        let out = mapMatrices(all: q.all) { m in
            guard let format = q.format.stored(columns: m.columns), !m.element.isBlockQuantized else { return m }
            let element = format.element
            let rowBytes = element.rowBytes(m.columns)
            let bytes = OwnedBytes(m.rows * rowBytes)
            buffers.append(bytes)
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
        storage += buffers
        return out
    }

    /// Q8_0 and Q4_0 matrices (rows of whole groups of 128) regrouped for the integer kernels
    /// (GroupedBlocks). Converted weights are regrouped in place; weights read from the files go to
    /// one new buffer (see `rewrittenIntoOneBuffer`).
    func regrouped(pool: ThreadPool, storage: inout [OwnedBytes], fileBacked: Bool) -> DecoderWeights {
        func regroupable(_ m: WeightMatrix) -> Bool { GroupedBlocks.grouped(m.element) != nil && m.columns % GroupedBlocks.groupValues == 0 }
        let owned = storage
        let inPlace = mapMatrices(all: true) { m in
            guard regroupable(m), let converted = owned.first(where: { $0.contains(m.data) }) else { return m }
            return GroupedBlocks.regroup(m, into: converted.pointer + (m.data - UnsafeRawPointer(converted.pointer)), pool: pool)
        }
        return inPlace.rewrittenIntoOneBuffer(storage: &storage, releaseFilePages: fileBacked, takes: regroupable) { m, target in
            GroupedBlocks.regroup(m, into: target, pool: pool)
        }
    }

    /// Every matrix read from the files (all but the embedding and the routers) copied into one
    /// buffer of transparent huge pages (`--no-mmap`): decode streams each weight once per token,
    /// and 4 KiB pages cost a page walk every 4 KiB of it.
    func copiedToHugePages(pool: ThreadPool, storage: inout [OwnedBytes]) -> DecoderWeights {
        rewrittenIntoOneBuffer(storage: &storage, releaseFilePages: true, takes: { _ in true }) { m, target in
            let bytes = m.rows * m.rowBytes, chunk = 1 << 20
            pool.parallelFor((bytes + chunk - 1) / chunk) { i in
                (target + i * chunk).copyMemory(from: m.data + i * chunk, byteCount: min(chunk, bytes - i * chunk))
            }
            return WeightMatrix(element: m.element, rows: m.rows, columns: m.columns, data: UnsafeRawPointer(target))
        }
    }

    /// These weights with every matrix not already in `storage` that `takes` picks rewritten by
    /// `rewrite` into one new buffer, appended to `storage`: one buffer, so its pages can be huge
    /// (a Q4_0 expert at hidden 1024 is just under 2 MiB alone). The files' pages of the rewritten
    /// matrices are released, so resident memory does not hold both.
    private func rewrittenIntoOneBuffer(
        storage: inout [OwnedBytes], releaseFilePages: Bool, takes: (WeightMatrix) -> Bool,
        _ rewrite: (WeightMatrix, UnsafeMutableRawPointer) -> WeightMatrix
    ) -> DecoderWeights {
        let owned = storage
        func picked(_ m: WeightMatrix) -> Bool { takes(m) && !owned.contains(where: { $0.contains(m.data) }) }
        func slot(_ m: WeightMatrix) -> Int { (m.rows * m.rowBytes + 63) / 64 * 64 }
        var total = 0
        _ = mapMatrices(all: true) { m in
            if picked(m) { total += slot(m) }
            return m
        }
        guard total > 0 else { return self }
        let buffer = OwnedBytes(total)
        storage.append(buffer)
        var offset = 0
        return mapMatrices(all: true) { m in
            guard picked(m) else { return m }
            let out = rewrite(m, buffer.pointer + offset)
            offset += slot(m)
            if releaseFilePages { dropPages(m.data, m.rows * m.rowBytes) }
            return out
        }
    }
}
