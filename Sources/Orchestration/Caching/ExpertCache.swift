import Runtime
import SwitchyardSupport

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
    /// Brought in by prefetch and not used since.
    var prefetched = false

    init(key: ExpertKey, slot: Int, weights: FeedForwardWeights, ready: Completion) {
        self.key = key
        self.slot = slot
        self.weights = weights
        self.ready = ready
    }
}

/// Fixed-size slots of a fast tier holding experts whose home is a slower one (the slots' memory
/// is the executor's: host buffers, or offsets in an accelerator's memory; the cache deals in
/// their indices). The victim is the
/// entry with the lowest recency-weighted frequency: uses decayed by `decay` per step, remembered
/// for every expert, cached or not. So an expert used often stays through a burst of others, one
/// evicted earlier comes back with its standing, one brought in by a wrong guess leaves first, and
/// one not used for a while ages out.
final class ExpertCache {
    let capacity: Int
    let decay: Double
    let transientSlots: Int
    private(set) var entries: [ExpertKey: CacheEntry] = [:]
    private var owners: [CacheEntry?]
    private(set) var evictions = 0
    private var history: [ExpertKey: (score: Double, step: Int)] = [:]

    /// - Parameter transientSlots: slots for experts used less than the cached ones (about one
    ///   layer's worth for one token); none when the cache is too small to split.
    init(slots: Int, transientSlots: Int = 0, decay: Double = 0.8) {
        capacity = slots
        self.transientSlots = slots >= 2 * transientSlots ? transientSlots : 0
        self.decay = decay
        owners = Array(repeating: nil, count: slots)
    }

    /// The entry of `key`, unless its fill failed (a disk read that went wrong): such an entry is
    /// dropped, so the expert is read again next time.
    func lookup(_ key: ExpertKey) -> CacheEntry? {
        guard let entry = entries[key] else { return nil }
        if entry.ready.isDone, entry.ready.wait() != nil {
            entries[key] = nil
            owners[entry.slot] = nil
            return nil
        }
        return entry
    }

    func score(_ key: ExpertKey, at step: Int) -> Double {
        guard let h = history[key] else { return 0 }
        return h.score * pow(decay, Double(step - h.step))
    }

    /// The step at which `key` was last used, if ever.
    func lastUse(_ key: ExpertKey) -> Int? { history[key]?.step }

    /// A use of `key` at `step`, whether it was cached or not.
    func record(_ key: ExpertKey, step: Int) {
        history[key] = (score(key, at: step) + 1, step)
    }

    /// A slot index for `key` (which must not be cached), or nil when every slot is in use. An entry can
    /// be evicted when it is not `protected`, not being filled, not being read and, with
    /// `keepUsedSince`, not used at or after that step.
    ///
    /// Admission: the first `transientSlots` slots take experts that have been used less than
    /// everything in the others; a newcomer displaces an entry of the others only when its standing
    /// is higher. So when a step touches more experts than the cache holds, the most used ones stay
    /// and the rest pass through, instead of all of them evicting each other in turn.
    func insert(_ key: ExpertKey, step: Int, protected: Set<ExpertKey>, keepUsedSince: Int? = nil) -> Int? {
        precondition(entries[key] == nil)
        func evictable(_ owner: CacheEntry) -> Bool {
            !protected.contains(owner.key) && owner.ready.isDone && (owner.readers?.isDone ?? true)
                && (lastUse(owner.key) ?? Int.min) < keepUsedSince ?? Int.max
        }
        func lowest(_ range: Range<Int>) -> (slot: Int, score: Double)? {
            var best: (slot: Int, score: Double)?
            for i in range {
                guard let owner = owners[i] else { return (i, -1) }
                guard evictable(owner) else { continue }
                let s = score(owner.key, at: step)
                if best == nil || s < best!.score { best = (i, s) }
            }
            return best
        }
        // The newcomer's standing before the use that brings it in: residents are compared on the
        // same footing (each was used about as recently), or whichever expert came last would
        // always win and a hot set larger than the cache would evict itself in turn.
        let newcomer = score(key, at: step) - (history[key]?.step == step ? 1 : 0)
        let main = lowest(transientSlots..<owners.count)
        let transient = lowest(0..<transientSlots)
        let chosen: Int
        if let main, main.score < 0 || main.score < newcomer || transient == nil {
            chosen = main.slot
        } else if let transient {
            chosen = transient.slot
        } else {
            return nil
        }
        if let old = owners[chosen] {
            entries[old.key] = nil
            owners[chosen] = nil
            evictions += 1
        }
        return chosen
    }

    func store(_ entry: CacheEntry) {
        entries[entry.key] = entry
        owners[entry.slot] = entry
    }
}

