import Kernels
import Runtime
import SwitchyardSupport
import WeightFiles

extension DecoderWeights {
    /// These weights with the chosen matrices converted; `storage` collects the new buffers.
    func quantized(_ q: WeightQuantization, pool: ThreadPool, storage: inout [HostBuffer]) -> DecoderWeights {
        var buffers: [HostBuffer] = []
        let out = mapMatrices(all: q.all) { m in
            guard let format = q.format.stored(columns: m.columns), !m.element.isBlockQuantized else { return m }
            let element = format.element
            let bytes = HostBuffer(m.rows * element.rowBytes(m.columns))
            buffers.append(bytes)
            let target = bytes.pointer
            format.quantizeRows(of: m, into: target, pool: pool)
            return WeightMatrix(element: element, rows: m.rows, columns: m.columns, data: UnsafeRawPointer(target))
        }
        storage += buffers
        return out
    }

    /// Q8_0 and Q4_0 matrices (rows of whole groups of 128) regrouped for the integer kernels
    /// (GroupedBlocks). Converted weights are regrouped in place; weights read from the files go to
    /// one new buffer (see `rewrittenIntoOneBuffer`).
    func regrouped(pool: ThreadPool, storage: inout [HostBuffer], fileBacked: Bool) -> DecoderWeights {
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

    /// Every matrix read from the files copied into one buffer of transparent huge pages
    /// (`--no-mmap`, and a server by default): decode streams each weight once per token,
    /// and 4 KiB pages cost a page walk every 4 KiB of it.
    func copiedToHugePages(pool: ThreadPool, storage: inout [HostBuffer]) -> DecoderWeights {
        // Every matrix, the embedding and the routers too: then no weight is read from a file's
        // mapping, and a file changed under a running server cannot take one away.
        rewrittenIntoOneBuffer(storage: &storage, releaseFilePages: true, every: true, takes: { _ in true }) { m, target in
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
        storage: inout [HostBuffer], releaseFilePages: Bool, every: Bool = false, takes: (WeightMatrix) -> Bool,
        _ rewrite: (WeightMatrix, UnsafeMutableRawPointer) -> WeightMatrix
    ) -> DecoderWeights {
        func each(_ transform: (WeightMatrix) -> WeightMatrix) -> DecoderWeights {
            every ? mapEveryMatrix(transform) : mapMatrices(all: true, transform)
        }
        let owned = storage
        func picked(_ m: WeightMatrix) -> Bool { takes(m) && !owned.contains(where: { $0.contains(m.data) }) }
        func slot(_ m: WeightMatrix) -> Int { (m.rows * m.rowBytes + 63) / 64 * 64 }
        var total = 0
        _ = each { m in
            if picked(m) { total += slot(m) }
            return m
        }
        guard total > 0 else { return self }
        let buffer = HostBuffer(total)
        storage.append(buffer)
        var offset = 0
        return each { m in
            guard picked(m) else { return m }
            let out = rewrite(m, buffer.pointer + offset)
            offset += slot(m)
            if releaseFilePages { dropPages(m.data, m.rows * m.rowBytes) }
            return out
        }
    }
}
