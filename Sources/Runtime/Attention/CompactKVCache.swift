import Kernels
import SwitchyardSupport

/// How an attention worker stores cached keys and values.
public enum KVElement: String, Sendable, CaseIterable {
    /// Exact: results equal attention on tier 1.
    case f32
    /// Rounded to bf16 (half the memory): relative error about 2^-9 per value.
    case bf16
    /// int8 codes with a float32 scale per 16 values (under a third of the memory); needs a head
    /// width that is a multiple of 16.
    case int8

    /// Bytes one cached value takes, its scale's share included.
    public var bytesPerValue: Double {
        switch self {
        case .f32: 4
        case .bf16: 2
        case .int8: 1.25
        }
    }
}

/// A host KV cache that stores rows as bf16 or int8 (`KVElement`), with attention over them: the
/// same one-pass kernel as `LocalAttention`, reading the compact rows and widening as it goes.
/// Rows are rounded once, when stored; attention then reads them exactly as stored.
public final class CompactKVAttention: AttentionExecutor, KVCache, @unchecked Sendable {
    public let layout: KVLayout
    public let element: KVElement
    public let budget: Int?
    public let pool: ThreadPool
    public var cache: any KVCache { self }

    private var mutex = pthread_mutex_t()
    private final class Rows {
        /// Per layer: keys then values, [capacity, width] of the element; int8 scales [capacity, width / 16].
        let keys: [UnsafeMutableRawPointer], values: [UnsafeMutableRawPointer]
        let keyScales: [UnsafeMutablePointer<Float>], valueScales: [UnsafeMutablePointer<Float>]
        let capacity: Int
        var length = 0
        init(_ layout: KVLayout, _ element: KVElement, capacity: Int) {
            self.capacity = capacity
            let size = element == .bf16 ? 2 : 1
            var raw: [UnsafeMutableRawPointer] = [], scales: [UnsafeMutablePointer<Float>] = []
            for _ in 0..<(2 * layout.layers) {
                raw.append(UnsafeMutableRawPointer.allocate(byteCount: max(1, capacity * layout.keyWidth * size), alignment: 64))
                if element == .int8 { scales.append(UnsafeMutablePointer<Float>.allocate(capacity: max(1, capacity * layout.keyWidth / 16))) }
            }
            keys = Array(raw[..<layout.layers])
            values = Array(raw[layout.layers...])
            keyScales = element == .int8 ? Array(scales[..<layout.layers]) : []
            valueScales = element == .int8 ? Array(scales[layout.layers...]) : []
        }
        deinit {
            for p in keys + values { p.deallocate() }
            for p in keyScales + valueScales { p.deallocate() }
        }
    }
    private var sequences: [Int: Rows] = [:]
    private var nextID = 0
    private var reserved = 0

    /// - Parameter layout: keys and values of equal width (grouped-query attention), a multiple of
    ///   16 for int8.
    public init(layout: KVLayout, element: KVElement, budget: Int?, pool: ThreadPool) throws(KVCacheError) {
        guard element != .f32 else { throw KVCacheError("a compact KV cache stores bf16 or int8; float32 rows go in LocalKVCache") }
        guard layout.keyWidth == layout.valueWidth else { throw KVCacheError("a compact KV cache needs keys and values of one width") }
        guard element != .int8 || layout.keyWidth % 16 == 0 else {
            throw KVCacheError("an int8 KV cache needs rows of a multiple of 16 values, not \(layout.keyWidth)")
        }
        self.layout = layout
        self.element = element
        self.budget = budget
        self.pool = pool
        pthread_mutex_init(&mutex, nil)
    }

    deinit { pthread_mutex_destroy(&mutex) }

    /// Bytes one position takes across every layer.
    public var bytesPerPosition: Int {
        let width = layout.keyWidth
        return layout.layers * 2 * (element == .bf16 ? 2 * width : width + width / 16 * 4)
    }

    private func rows(_ sequence: SequenceID) -> Rows {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard let r = sequences[sequence.value] else { preconditionFailure("\(sequence) is not in this cache") }
        return r
    }

    public func reserve(capacity: Int) throws(KVCacheError) -> SequenceID {
        guard capacity > 0 else { throw KVCacheError("a sequence needs room for at least one position") }
        let (bytes, overflow) = capacity.multipliedReportingOverflow(by: bytesPerPosition)
        guard !overflow else { throw KVCacheError("a KV cache of \(capacity) positions is too large") }
        pthread_mutex_lock(&mutex)
        if let budget, reserved + bytes > budget {
            pthread_mutex_unlock(&mutex)
            throw KVCacheError("the KV cache is full: \(formatBytes(reserved)) of \(formatBytes(budget)) reserved, \(formatBytes(bytes)) more needed for \(capacity) positions")
        }
        reserved += bytes
        nextID += 1
        let id = nextID
        pthread_mutex_unlock(&mutex)
        let r = Rows(layout, element, capacity: capacity)
        pthread_mutex_lock(&mutex)
        sequences[id] = r
        pthread_mutex_unlock(&mutex)
        return SequenceID(id)
    }

    /// Rounds and stores rows.
    public func append(_ sequence: SequenceID, layer: Int, position: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        let r = rows(sequence)
        precondition(position >= 0 && position + count <= r.capacity, "KV cache overflow")
        let w = layout.keyWidth
        for (source, raw, scales) in [(keys, r.keys[layer], r.keyScales.isEmpty ? nil : r.keyScales[layer]),
                                      (values, r.values[layer], r.valueScales.isEmpty ? nil : r.valueScales[layer])] {
            for t in 0..<count {
                let row = source + t * w, at = position + t
                if let scales {
                    let codes = (raw + at * w).assumingMemoryBound(to: Int8.self)
                    for b in 0..<(w / 16) { scales[at * (w / 16) + b] = quantizeBlockInt8(row + b * 16, 16, codes: codes + b * 16) }
                } else {
                    let out = (raw + at * w * 2).assumingMemoryBound(to: UInt16.self)
                    for i in 0..<w { out[i] = roundToBF16(row[i]) }
                }
            }
        }
    }

    public func advance(_ sequence: SequenceID, by count: Int) {
        let r = rows(sequence)
        precondition(r.length + count <= r.capacity, "KV cache overflow")
        r.length += count
    }

    public func truncate(_ sequence: SequenceID, to length: Int) {
        let r = rows(sequence)
        r.length = min(r.length, max(0, length))
    }

    public func free(_ sequence: SequenceID) {
        pthread_mutex_lock(&mutex)
        if let r = sequences.removeValue(forKey: sequence.value) { reserved -= r.capacity * bytesPerPosition }
        pthread_mutex_unlock(&mutex)
    }

    public func length(of sequence: SequenceID) -> Int { rows(sequence).length }
    public func capacity(of sequence: SequenceID) -> Int { rows(sequence).capacity }

    public var bytesInUse: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return reserved
    }

    public var bytesAvailable: Int? { budget }

    public func attend(
        layer: Int, shape: AttentionShape, queries: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        slots: [TokenSlot], output: UnsafeMutablePointer<Float>, scratch: FloatBuffer
    ) throws(WorkFailure) {
        let T = slots.count
        let heads = shape.heads, kvHeads = shape.keyValueHeads, hd = shape.headDim
        let qW = heads * hd, kvW = kvHeads * hd
        precondition(layout.keyWidth == kvW, "a grouped-query cache row is [kv_heads x head_dim]")
        precondition(element != .int8 || hd % 16 == 0, "int8 rows need a head width that is a multiple of 16")
        for (t, slot) in slots.enumerated() {
            append(slot.sequence, layer: layer, position: slot.position, keys: keys + t * kvW, values: values + t * kvW, count: 1)
        }
        var byID: [SequenceID: Rows] = [:]
        for slot in slots where byID[slot.sequence] == nil { byID[slot.sequence] = rows(slot.sequence) }
        let rowsOf = slots.map { byID[$0.sequence]! }
        let group = heads / kvHeads
        scratch.reserve(T * kvHeads * group * 16)
        let tiles = scratch.pointer
        let window = shape.window, scale = shape.scale, element = element
        pool.parallelFor(T * kvHeads) { item in
            let t = item / kvHeads, kv = item % kvHeads
            let position = slots[t].position
            let r = rowsOf[t]
            let first = window.map { max(0, position - $0 + 1) } ?? 0
            let q = queries + t * qW + kv * group * hd, out = output + t * qW + kv * group * hd, tile = tiles + item * group * 16
            if element == .bf16 {
                let k = BF16Rows(UnsafePointer(r.keys[layer].assumingMemoryBound(to: UInt16.self)) + kv * hd, kvW)
                let v = BF16Rows(UnsafePointer(r.values[layer].assumingMemoryBound(to: UInt16.self)) + kv * hd, kvW)
                attendGroup(queries: q, group: group, headDim: hd, scale: scale, keys: k, values: v, first: first, last: position, tile: tile, output: out)
            } else {
                let blocks = kvW / 16
                let k = Int8Rows(UnsafePointer(r.keys[layer].assumingMemoryBound(to: Int8.self)) + kv * hd, kvW,
                                 scales: UnsafePointer(r.keyScales[layer]) + kv * hd / 16, scaleStride: blocks)
                let v = Int8Rows(UnsafePointer(r.values[layer].assumingMemoryBound(to: Int8.self)) + kv * hd, kvW,
                                 scales: UnsafePointer(r.valueScales[layer]) + kv * hd / 16, scaleStride: blocks)
                attendGroup(queries: q, group: group, headDim: hd, scale: scale, keys: k, values: v, first: first, last: position, tile: tile, output: out)
            }
        }
    }
}
