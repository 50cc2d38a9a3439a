import Kernels
import Models
import Runtime
import SwitchyardSupport
import WeightFiles

extension TieredExecutor {
    /// Starts reading an expert from disk into a RAM cache slot, after `after`. Nil when no slot can
    /// be had. A failed read fails the returned completion (and whatever waits for it).
    func startRead(_ key: ExpertKey, ranges: [FileRange], protected: Set<ExpertKey>, prefetched: Bool,
                   after: [Completion] = []) -> (CacheEntry, Completion)? {
        // A guess must not push out an expert this step has already needed.
        guard let cache = ramCache,
              let slot = cache.insert(key, step: step, protected: protected, keepUsedSince: prefetched ? step : nil) else { return nil }
        let pointer = ramSlots[slot]
        let reader = reader!
        let layout = ExpertPlacement.ramSlotOffsets(ranges.map(\.bytes))
        // The matrices' positions inside the slot depend on their alignment in the file, known
        // before the read: the weights can be described now and filled by the disk queue.
        let a = DirectReader.alignment
        var shapes = storedShapes(key)
        for (i, r) in ranges.enumerated() { shapes[i] = shapes[i].moved(to: pointer + layout[i] + (r.offset - r.offset / a * a)) }
        let ready = Completion(parts: ranges.count)
        for (i, r) in ranges.enumerated() {
            nextDiskQueue = (nextDiskQueue + 1) % diskQueues.count
            let target = pointer + layout[i]
            diskQueues[nextDiskQueue].submit(after: after) {
                ready.markStarted()
                do throws(WeightFileError) {
                    _ = try reader.read(file: r.file, offset: r.offset, bytes: r.bytes, into: target)
                    ready.signal()
                } catch {
                    ready.signal(failure: WorkFailure("\(key): \(error.description)"))
                }
            }
        }
        let entry = CacheEntry(key: key, slot: slot, weights: storedExpert(key).withMatrices(shapes), ready: ready)
        entry.prefetched = prefetched
        if options.learnCosts { movements.append(Movement(done: ready, bytes: ranges.reduce(0) { $0 + $1.bytes }, link: .disk)) }
        cache.store(entry)
        return (entry, ready)
    }

    /// Starts copying an expert into an accelerator cache slot after `after`. Nil when no slot can be had.
    func startCopy(_ key: ExpertKey, from source: FeedForwardWeights, after: [Completion], protected: Set<ExpertKey>,
                   prefetched: Bool) -> CacheEntry? {
        guard let accelerator, let cache = acceleratorCache,
              let slot = cache.insert(key, step: step, protected: protected, keepUsedSince: prefetched ? step : nil) else { return nil }
        let offset = acceleratorSlots[slot]
        let copies = TieredExecutor.copyCompact(source, toOffset: offset, accelerator: accelerator, after: after)
        if options.learnCosts { for (c, m) in zip(copies, source.matrices) { movements.append(Movement(done: c, bytes: m.byteCount, link: .copy)) } }
        let done = copies.last!
        if let ramEntry = ramCache?.lookup(key) { ramEntry.readers = done }
        let entry = CacheEntry(key: key, slot: slot, weights: TieredExecutor.compactLayout(source, atOffset: offset, accelerator: accelerator),
                               ready: done)
        entry.prefetched = prefetched
        cache.store(entry)
        return entry
    }

    /// Reads an expert into the staging buffer, now.
    func readNow(_ key: ExpertKey, _ ranges: [FileRange]) throws(WorkFailure) -> FeedForwardWeights {
        if staging == nil && overflow == nil {
            overflow = TieredExecutor.allocateAligned(ExpertPlacement.ramSlotBytes(ranges.map(\.bytes)))
        }
        let buffer = (staging ?? overflow)!
        let layout = ExpertPlacement.ramSlotOffsets(ranges.map(\.bytes))
        var matrices: [WeightMatrix] = []
        for (i, r) in ranges.enumerated() {
            let start: Int
            do { start = try reader!.read(file: r.file, offset: r.offset, bytes: r.bytes, into: buffer + layout[i]) } catch {
                throw WorkFailure("\(key): \(error.description)")
            }
            matrices.append(storedShapes(key)[i].moved(to: buffer + layout[i] + start))
        }
        return storedExpert(key).withMatrices(matrices)
    }

    /// One routed expert's matrices where they are stored (for their shapes).
    func storedShapes(_ key: ExpertKey) -> [WeightMatrix] { storedExpert(key).matrices }

    /// One routed expert as stored: its matrices' shapes, its biases and activation.
    func storedExpert(_ key: ExpertKey) -> FeedForwardWeights { TieredExecutor.storedExpert(weights, key) }

    // MARK: Layouts

    /// An expert in an accelerator slot: its three matrices back to back, 64-byte aligned.
    static func compactLayout(_ f: FeedForwardWeights, atOffset base: Int, accelerator: any Accelerator) -> FeedForwardWeights {
        let o = ExpertPlacement.acceleratorSlotOffsets(f.matrices.map(\.byteCount))
        return f.withMatrices(f.matrices.enumerated().map { i, m in accelerator.matrix(m, at: base + o[i]) })
    }

    /// Copies an expert from host memory into an accelerator slot: the completion of each matrix's
    /// copy. Each copy waits for the one before, so the last completion covers all three, failures
    /// (of a read they wait for) included.
    static func copyCompact(_ f: FeedForwardWeights, toOffset base: Int, accelerator: any Accelerator, after: [Completion]) -> [Completion] {
        let o = ExpertPlacement.acceleratorSlotOffsets(f.matrices.map(\.byteCount))
        var copies: [Completion] = []
        for (i, m) in f.matrices.enumerated() {
            copies.append(accelerator.copy(from: m.data, toOffset: base + o[i], bytes: m.byteCount, after: i == 0 ? after : [copies[i - 1]]))
        }
        return copies
    }

    static func allocateAligned(_ bytes: Int) -> UnsafeMutableRawPointer {
        var raw: UnsafeMutableRawPointer?
        precondition(posix_memalign(&raw, DirectReader.alignment, max(bytes, 1)) == 0, "cannot allocate \(bytes) bytes")
        return raw!
    }
}
