import Kernels
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

/// How a host KV cache stores keys and values.
public enum KVElement: String, Sendable, CaseIterable {
    /// Exact: results equal attention over the float32 rows.
    case f32
    /// Rounded to bf16, nearest even (half the memory).
    case bf16
    /// int8 codes with a float32 scale per 16 values (1.25 bytes a value); rows must be a multiple
    /// of 16 values.
    case int8

    /// Bytes one stored row of `width` values takes: the values, then (int8) their block scales.
    public func rowBytes(_ width: Int) -> Int {
        switch self {
        case .f32: 4 * width
        case .bf16: 2 * width
        case .int8: width + width / 16 * 4
        }
    }
}

/// A KV cache whose rows are host memory, for attention computed on this host.
public protocol HostKVCache: KVCache {
    /// How the rows are stored.
    var element: KVElement { get }
    /// The rows of `sequence` at `layer`: keys [capacity] and values [capacity] rows of
    /// `element.rowBytes(width)` bytes each, valid until the sequence is freed.
    func rows(of sequence: SequenceID, layer: Int) -> (keys: UnsafeRawPointer, values: UnsafeRawPointer)
}

/// Host memory, one slab per sequence and layer for keys and one for values, sized for the
/// sequence's capacity when it is reserved, with an optional budget for all sequences together.
/// Rows are stored as `element`: float32, or rounded once, when stored, to bf16 or int8.
public final class LocalKVCache: HostKVCache, @unchecked Sendable {
    public let layout: KVLayout
    public let element: KVElement
    /// Bytes all sequences may reserve together (nil: no limit).
    public let budget: Int?
    /// Bytes one position takes across every layer, as stored.
    public let bytesPerPosition: Int

    private var mutex = pthread_mutex_t()
    private var sequences: [Int: Slabs] = [:]
    private var nextID = 0
    private var reserved = 0

    /// Float32 rows.
    public init(layout: KVLayout, budget: Int? = nil) {
        self.layout = layout
        self.budget = budget
        element = .f32
        bytesPerPosition = layout.bytesPerPosition
        pthread_mutex_init(&mutex, nil)
    }

    /// Rows stored as `element`; int8 needs rows of a multiple of 16 values.
    public init(layout: KVLayout, budget: Int?, element: KVElement) throws(KVCacheError) {
        guard element != .int8 || (layout.keyWidth % 16 == 0 && layout.valueWidth % 16 == 0) else {
            throw KVCacheError("an int8 KV cache needs rows of a multiple of 16 values, not \(layout.keyWidth) and \(layout.valueWidth)")
        }
        self.layout = layout
        self.budget = budget
        self.element = element
        bytesPerPosition = layout.layers * (element.rowBytes(layout.keyWidth) + element.rowBytes(layout.valueWidth))
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
        let (bytes, overflow) = capacity.multipliedReportingOverflow(by: bytesPerPosition)
        guard !overflow else { throw KVCacheError("a KV cache of \(capacity) positions is too large") }
        let id: Int = try locked { () throws(KVCacheError) -> Int in
            if let budget, reserved + bytes > budget {
                throw KVCacheError("the KV cache is full: \(formatBytes(reserved)) of \(formatBytes(budget)) reserved, \(formatBytes(bytes)) more needed for \(capacity) positions")
            }
            reserved += bytes
            nextID += 1
            return nextID
        }
        guard let slabs = Slabs(layout, element, capacity: capacity) else {
            try locked { () throws(KVCacheError) in reserved -= bytes }
            throw KVCacheError("cannot allocate \(formatBytes(bytes)) for a KV cache of \(capacity) positions; give a shorter --context-length")
        }
        try locked { () throws(KVCacheError) in sequences[id] = slabs }
        return SequenceID(id)
    }

    public func append(_ sequence: SequenceID, layer: Int, position: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        let s = slabs(sequence)
        precondition(position >= 0 && position + count <= s.capacity, "KV cache overflow")
        store(keys, count: count, width: layout.keyWidth, into: s.keys[layer], at: position)
        store(values, count: count, width: layout.valueWidth, into: s.values[layer], at: position)
    }

    /// Rows [count, width] of float32 into a slab as `element`.
    private func store(_ source: UnsafePointer<Float>, count: Int, width: Int, into slab: UnsafeMutableRawPointer, at position: Int) {
        let rowBytes = element.rowBytes(width)
        for t in 0..<count {
            let row = source + t * width, out = slab + (position + t) * rowBytes
            switch element {
            case .f32:
                out.copyMemory(from: row, byteCount: rowBytes)
            case .bf16:
                let h = out.assumingMemoryBound(to: UInt16.self)
                for i in 0..<width { h[i] = roundToBF16(row[i]) }
            case .int8:
                let codes = out.assumingMemoryBound(to: Int8.self), scales = (out + width).assumingMemoryBound(to: Float.self)
                for b in 0..<(width / 16) { scales[b] = quantizeBlockInt8(row + b * 16, 16, codes: codes + b * 16) }
            }
        }
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
        if let s = sequences.removeValue(forKey: sequence.value) { reserved -= s.capacity * bytesPerPosition }
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

    public func rows(of sequence: SequenceID, layer: Int) -> (keys: UnsafeRawPointer, values: UnsafeRawPointer) {
        let s = slabs(sequence)
        return (UnsafeRawPointer(s.keys[layer]), UnsafeRawPointer(s.values[layer]))
    }
}

/// One sequence's rows in a `LocalKVCache`: a slab per layer for keys and for values.
private final class Slabs {
    let keys: [UnsafeMutableRawPointer]
    let values: [UnsafeMutableRawPointer]
    let capacity: Int
    var length = 0
    /// Nil when the memory cannot be had (the machine's, not the budget's, limit).
    init?(_ layout: KVLayout, _ element: KVElement, capacity: Int) {
        self.capacity = capacity
        var all: [UnsafeMutableRawPointer] = []
        for width in Array(repeating: layout.keyWidth, count: layout.layers) + Array(repeating: layout.valueWidth, count: layout.layers) {
            guard let p = malloc(max(1, capacity * element.rowBytes(width))) else {
                for q in all { free(q) }
                return nil
            }
            all.append(p)
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
