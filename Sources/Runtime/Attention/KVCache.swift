import SwitchyardSupport

/// What a KV cache stores per position: for each layer, `keyWidth` floats of keys and
/// `valueWidth` of values. Grouped-query attention stores [kv_heads x head_dim] of each; a latent
/// (MLA) cache stores its compressed latent and the rotary part as keys and no values. The one
/// place the KV bytes of a model are computed.
public struct KVLayout: Sendable, Equatable {
    public var layers: Int
    public var keyWidth: Int
    public var valueWidth: Int

    public init(layers: Int, keyWidth: Int, valueWidth: Int) {
        self.layers = layers
        self.keyWidth = keyWidth
        self.valueWidth = valueWidth
    }

    /// Bytes one position takes across every layer (float32 values).
    public var bytesPerPosition: Int { layers * (keyWidth + valueWidth) * MemoryLayout<Float>.size }

    public func bytes(positions: Int) -> Int { positions * bytesPerPosition }
}

/// One sequence in a KV cache.
public struct SequenceID: Hashable, Sendable, CustomStringConvertible {
    public let value: Int
    public init(_ value: Int) { self.value = value }
    public var description: String { "sequence \(value)" }
}

/// Where one token of a forward step goes: its sequence and its position there.
public struct TokenSlot: Sendable, Equatable {
    public let sequence: SequenceID
    public let position: Int

    public init(sequence: SequenceID, position: Int) {
        self.sequence = sequence
        self.position = position
    }
}

/// A cache that cannot take a sequence: its memory is spent, or the sequence is unknown.
public struct KVCacheError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The keys and values of every sequence a model is running, per layer, with whole-sequence
/// operations in the manner of llama.cpp's `llama_memory_i`: where the rows live (host slabs, a
/// GPU, another host that also computes the attention) is the cache's business, and nothing above
/// the attention executor sees a row.
public protocol KVCache: AnyObject, Sendable {
    var layout: KVLayout { get }
    /// Starts a sequence that may hold up to `capacity` positions; throws when the memory for it
    /// cannot be had.
    func reserve(capacity: Int) throws(KVCacheError) -> SequenceID
    /// Stores the keys and values of `count` consecutive positions from `position` of `layer`
    /// ([count, keyWidth] and [count, valueWidth]).
    func append(_ sequence: SequenceID, layer: Int, position: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int)
    /// Marks `count` more positions stored, once every layer has appended them.
    func advance(_ sequence: SequenceID, by count: Int)
    /// Forgets positions from `length` on, to reuse a prefix or restart.
    func truncate(_ sequence: SequenceID, to length: Int)
    /// Ends a sequence and releases its memory.
    func free(_ sequence: SequenceID)
    /// Positions stored; the next token goes at this position.
    func length(of sequence: SequenceID) -> Int
    /// The most positions the sequence may hold.
    func capacity(of sequence: SequenceID) -> Int
    /// Bytes the sequences hold now.
    var bytesInUse: Int { get }
    /// Bytes all sequences may reserve together, where the cache has a limit: admission control
    /// admits no more than this.
    var bytesAvailable: Int? { get }
}

/// A KV cache whose rows are host memory, for attention computed on this host.
public protocol HostKVCache: KVCache {
    /// The rows of `sequence` at `layer`: keys [capacity, keyWidth], values [capacity,
    /// valueWidth], valid until the sequence is freed.
    func rows(of sequence: SequenceID, layer: Int) -> (keys: UnsafePointer<Float>, values: UnsafePointer<Float>)
}

/// Host memory, one float32 slab per sequence and layer, sized for the sequence's capacity when it
/// is reserved, with an optional budget for all sequences together.
public final class LocalKVCache: HostKVCache, @unchecked Sendable {
    public let layout: KVLayout
    /// Bytes all sequences may reserve together (nil: no limit).
    public let budget: Int?

    private var mutex = pthread_mutex_t()
    private var sequences: [Int: Slabs] = [:]
    private var nextID = 0
    private var reserved = 0

    public init(layout: KVLayout, budget: Int? = nil) {
        self.layout = layout
        self.budget = budget
        pthread_mutex_init(&mutex, nil)
    }

    deinit { pthread_mutex_destroy(&mutex) }

    private func locked<T>(_ body: () throws(KVCacheError) -> T) throws(KVCacheError) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }

    private func slabs(_ sequence: SequenceID) -> Slabs {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard let s = sequences[sequence.value] else { preconditionFailure("\(sequence) is not in this cache") }
        return s
    }

    public func reserve(capacity: Int) throws(KVCacheError) -> SequenceID {
        guard capacity > 0 else { throw KVCacheError("a sequence needs room for at least one position") }
        let (bytes, overflow) = capacity.multipliedReportingOverflow(by: layout.bytesPerPosition)
        guard !overflow else { throw KVCacheError("a KV cache of \(capacity) positions is too large") }
        let id: Int = try locked { () throws(KVCacheError) -> Int in
            if let budget, reserved + bytes > budget {
                throw KVCacheError("the KV cache is full: \(formatBytes(reserved)) of \(formatBytes(budget)) reserved, \(formatBytes(bytes)) more needed for \(capacity) positions")
            }
            reserved += bytes
            nextID += 1
            return nextID
        }
        guard let slabs = Slabs(layout, capacity: capacity) else {
            try locked { () throws(KVCacheError) in reserved -= bytes }
            throw KVCacheError("cannot allocate \(formatBytes(bytes)) for a KV cache of \(capacity) positions; give a shorter --context-length")
        }
        try locked { () throws(KVCacheError) in sequences[id] = slabs }
        return SequenceID(id)
    }

    public func append(_ sequence: SequenceID, layer: Int, position: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        let s = slabs(sequence)
        precondition(position >= 0 && position + count <= s.capacity, "KV cache overflow")
        (s.keys[layer] + position * layout.keyWidth).update(from: keys, count: count * layout.keyWidth)
        (s.values[layer] + position * layout.valueWidth).update(from: values, count: count * layout.valueWidth)
    }

    public func advance(_ sequence: SequenceID, by count: Int) {
        let s = slabs(sequence)
        precondition(s.length + count <= s.capacity, "KV cache overflow")
        s.length += count
    }

    public func truncate(_ sequence: SequenceID, to length: Int) {
        let s = slabs(sequence)
        s.length = min(s.length, max(0, length))
    }

    public func free(_ sequence: SequenceID) {
        pthread_mutex_lock(&mutex)
        if let s = sequences.removeValue(forKey: sequence.value) { reserved -= layout.bytes(positions: s.capacity) }
        pthread_mutex_unlock(&mutex)
    }

    public func length(of sequence: SequenceID) -> Int { slabs(sequence).length }
    public func capacity(of sequence: SequenceID) -> Int { slabs(sequence).capacity }

    public var bytesInUse: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return reserved
    }

    public var bytesAvailable: Int? { budget }

    public func rows(of sequence: SequenceID, layer: Int) -> (keys: UnsafePointer<Float>, values: UnsafePointer<Float>) {
        let s = slabs(sequence)
        return (UnsafePointer(s.keys[layer]), UnsafePointer(s.values[layer]))
    }
}

/// One sequence's rows in a `LocalKVCache`: a float32 slab per layer for keys and for values.
private final class Slabs {
    let keys: [UnsafeMutablePointer<Float>]
    let values: [UnsafeMutablePointer<Float>]
    let capacity: Int
    var length = 0
    /// Nil when the memory cannot be had (the machine's, not the budget's, limit).
    init?(_ layout: KVLayout, capacity: Int) {
        self.capacity = capacity
        var all: [UnsafeMutablePointer<Float>] = []
        for width in Array(repeating: layout.keyWidth, count: layout.layers) + Array(repeating: layout.valueWidth, count: layout.layers) {
            guard let p = malloc(max(1, capacity * width) * MemoryLayout<Float>.size) else {
                for q in all { free(q) }
                return nil
            }
            all.append(p.assumingMemoryBound(to: Float.self))
        }
        keys = Array(all[..<layout.layers])
        values = Array(all[layout.layers...])
    }
    deinit {
        for p in keys { free(p) }
        for p in values { free(p) }
    }
}

/// A cache whose rows may be lost with the host that held them (an attention worker that died or
/// dropped off the network). The model computes a lost sequence's rows again from its tokens.
public protocol RelocatableKVCache: KVCache {
    /// Whether the rows of `sequence` are gone; its length is 0 until they are computed again.
    func isLost(_ sequence: SequenceID) -> Bool
    /// Gives a lost sequence new, empty room of the same capacity (on another host).
    func relocate(_ sequence: SequenceID) throws(KVCacheError)
}
