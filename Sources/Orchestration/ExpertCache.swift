import Models

/// One routed expert of one layer.
public struct ExpertKey: Hashable, Sendable, Comparable {
    public let layer: Int
    public let expert: Int

    public init(layer: Int, expert: Int) {
        self.layer = layer
        self.expert = expert
    }

    public static func < (a: ExpertKey, b: ExpertKey) -> Bool { (a.layer, a.expert) < (b.layer, b.expert) }
}

/// An expert held in a cache slot.
final class CacheEntry {
    let key: ExpertKey
    let slot: Int
    /// The expert's matrices inside the slot.
    var weights: FeedForwardWeights
    /// Done once the bytes are in the slot (a disk read or a copy may still be under way).
    var ready: Completion
    /// Done once nothing reads the slot any more (a copy from it to the accelerator).
    var readers: Completion?
    /// Recency-weighted use count: every step multiplies it by `decay`, every use adds 1.
    var score = 0.0
    var lastStep = 0
    /// Brought in by prefetch and not used since.
    var prefetched = false

    init(key: ExpertKey, slot: Int, weights: FeedForwardWeights, ready: Completion) {
        self.key = key
        self.slot = slot
        self.weights = weights
        self.ready = ready
    }
}

/// Fixed-size slots of a fast tier holding experts whose home is a slower one. The victim is the
/// entry with the lowest recency-weighted frequency (uses decayed by `decay` per step), so an
/// expert used often stays through a burst of others, and one not used for a while ages out.
final class ExpertCache {
    let slots: [UnsafeMutableRawPointer]
    let slotBytes: Int
    let decay: Double
    private(set) var entries: [ExpertKey: CacheEntry] = [:]
    private var owners: [CacheEntry?]
    private(set) var evictions = 0

    init(slots: [UnsafeMutableRawPointer], slotBytes: Int, decay: Double = 0.8) {
        self.slots = slots
        self.slotBytes = slotBytes
        self.decay = decay
        owners = Array(repeating: nil, count: slots.count)
    }

    var capacity: Int { slots.count }

    func lookup(_ key: ExpertKey) -> CacheEntry? { entries[key] }

    func score(_ entry: CacheEntry, at step: Int) -> Double {
        entry.score * pow(decay, Double(step - entry.lastStep))
    }

    func touch(_ entry: CacheEntry, step: Int) {
        entry.score = score(entry, at: step) + 1
        entry.lastStep = step
    }

    /// A slot for `key` (which must not be cached): a free one, or the lowest-scored entry's that is
    /// not `protected`, not being filled, not being read and, with `keepUsedSince`, not used at or
    /// after that step. Nil when every slot is in use.
    func insert(_ key: ExpertKey, step: Int, protected: Set<ExpertKey>, keepUsedSince: Int? = nil) -> (slot: Int, pointer: UnsafeMutableRawPointer)? {
        precondition(entries[key] == nil)
        var chosen = owners.firstIndex { $0 == nil }
        if chosen == nil {
            var best = Double.infinity
            for (i, owner) in owners.enumerated() {
                guard let owner, !protected.contains(owner.key), owner.ready.isDone, owner.readers?.isDone ?? true,
                      owner.lastStep < keepUsedSince ?? Int.max else { continue }
                let s = score(owner, at: step)
                if s < best { best = s; chosen = i }
            }
            guard let victim = chosen, let old = owners[victim] else { return nil }
            entries[old.key] = nil
            owners[victim] = nil
            evictions += 1
        }
        return (chosen!, slots[chosen!])
    }

    func store(_ entry: CacheEntry, step: Int) {
        entry.lastStep = step
        entries[entry.key] = entry
        owners[entry.slot] = entry
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
