import AttentionWire
import Kernels
import Runtime
import SwitchyardSupport

/// An attention worker's state and its answer to each request: the KV caches of the sequences
/// assigned to it and attention over them, with the same kernel as tier 1's own attention, so
/// where attention runs never changes a result. Sequences belong to the connection that reserved
/// them and go with it: tier 1 treats a lost connection as lost caches, and re-prefills.
///
/// Not thread-safe: the server calls it from one thread (the kernels inside are parallel).
public final class AttentionService {
    /// New at each start: tier 1 tells a restarted worker from a reconnect by it.
    public let epoch: [UInt8]
    /// Bytes all sequences may reserve together (nil: no limit).
    public let budget: Int?
    /// How cached keys and values are stored.
    public let element: KVElement
    let pool: ThreadPool
    private var cache: (any KVCache)?
    private var attention: (any AttentionExecutor)?
    private let scratch = FloatBuffer()
    private struct Sequence {
        let owner: Int
        /// Per layer: positions 0..<filled[layer] hold keys and values.
        var filled: [Int]
        let capacity: Int
    }
    private var sequences: [SequenceID: Sequence] = [:]
    private var connections = Set<Int>()

    public init(budget: Int?, pool: ThreadPool, element: KVElement = .f32) {
        self.budget = budget
        self.element = element
        self.pool = pool
        var generator = SystemRandomNumberGenerator()
        epoch = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    public var status: WorkerStatus {
        WorkerStatus(epoch: epoch, budget: budget ?? 0, inUse: cache?.bytesInUse ?? 0, sequences: sequences.count, connections: connections.count)
    }

    public func connectionOpened(_ connection: Int) { connections.insert(connection) }

    /// Frees what the connection reserved.
    public func connectionClosed(_ connection: Int) {
        connections.remove(connection)
        for (id, s) in sequences where s.owner == connection {
            cache?.free(id)
            sequences[id] = nil
        }
    }

    /// The reply to one frame from `connection`: a bad request gets an error naming what was wrong.
    public func handle(_ frame: Frame, connection: Int) -> WireReply {
        do throws(WireError) {
            return try answer(try AttentionWire.request(frame), connection: connection)
        } catch {
            return .error(error.description)
        }
    }

    private func answer(_ request: WireRequest, connection: Int) throws(WireError) -> WireReply {
        switch request {
        case .hello(let version, let layout):
            guard version == AttentionWire.version else {
                throw WireError("this worker speaks version \(AttentionWire.version) of the attention wire, not \(version)")
            }
            if let cache, cache.layout != layout {
                guard sequences.isEmpty else {
                    throw WireError("this worker holds \(sequences.count) sequences of another KV layout (\(cache.layout.layers) layers of \(cache.layout.keyWidth) + \(cache.layout.valueWidth))")
                }
                self.cache = nil
            }
            if cache == nil {
                do {
                    let c = try LocalKVCache(layout: layout, budget: budget, element: element)
                    cache = c
                    attention = LocalAttention(cache: c, pool: pool)
                } catch {
                    throw WireError("this worker stores \(element) keys and values: \(error.description)")
                }
            }
            return .hello(version: AttentionWire.version, status: status)
        case .status:
            return .status(status)
        case .reserve(let capacity):
            let cache = try ready()
            do {
                let id = try cache.reserve(capacity: capacity)
                sequences[id] = Sequence(owner: connection, filled: Array(repeating: 0, count: cache.layout.layers), capacity: capacity)
                return .reserved(sequence: UInt64(id.value), inUse: cache.bytesInUse)
            } catch {
                throw WireError(error.description)
            }
        case .free(let sequence):
            let cache = try ready()
            let id = try owned(sequence, by: connection)
            cache.free(id)
            sequences[id] = nil
            return .freed(inUse: cache.bytesInUse)
        case .truncate(let sequence, let length):
            let id = try owned(sequence, by: connection)
            sequences[id]!.filled = sequences[id]!.filled.map { min($0, length) }
            try ready().truncate(id, to: length)
            return .truncated
        case .attend(let header, let q, let k, let v):
            return .attended(try attend(header, q, k, v, connection: connection))
        }
    }

    private func ready() throws(WireError) -> any KVCache {
        guard let cache else { throw WireError("no hello yet: the KV layout is unknown") }
        return cache
    }

    private func owned(_ sequence: UInt64, by connection: Int) throws(WireError) -> SequenceID {
        guard sequence <= UInt64(Int.max), let s = sequences[SequenceID(Int(sequence))], s.owner == connection else {
            throw WireError("sequence \(sequence) is not on this worker")
        }
        return SequenceID(Int(sequence))
    }

    private func attend(_ h: AttendHeader, _ q: [Float], _ k: [Float], _ v: [Float], connection: Int) throws(WireError) -> [Float] {
        let cache = try ready()
        let layout = cache.layout
        guard h.layer < layout.layers else { throw WireError("attend: layer \(h.layer) of a model of \(layout.layers) layers") }
        guard h.shape.keyWidth == layout.keyWidth, h.shape.valueWidth == layout.valueWidth else {
            throw WireError("attend: keys of \(h.shape.keyWidth) and values of \(h.shape.valueWidth) per token do not match the KV layout (\(layout.keyWidth) + \(layout.valueWidth))")
        }
        guard element != .int8 || (h.shape.headDim % 16 == 0 && h.shape.valueDim % 16 == 0) else {
            throw WireError("attend: an int8 KV cache needs head widths that are multiples of 16, not \(h.shape.headDim) and \(h.shape.valueDim)")
        }
        // Every position must follow what the sequence holds, in order: attention never reads a
        // row that was not written.
        var filled: [SequenceID: Int] = [:]
        var slots: [TokenSlot] = []
        slots.reserveCapacity(h.slots.count)
        for slot in h.slots {
            let id = try owned(slot.sequence, by: connection)
            let s = sequences[id]!
            let f = filled[id] ?? s.filled[h.layer]
            guard slot.position < s.capacity else {
                throw WireError("attend: position \(slot.position) is past the \(s.capacity) positions reserved for sequence \(slot.sequence)")
            }
            guard slot.position <= f else {
                throw WireError("attend: position \(slot.position) of sequence \(slot.sequence) at layer \(h.layer) skips positions (it holds \(f))")
            }
            filled[id] = max(f, slot.position + 1)
            slots.append(TokenSlot(sequence: id, position: slot.position))
        }
        for (id, f) in filled where f > sequences[id]!.filled[h.layer] { sequences[id]!.filled[h.layer] = f }
        var out = [Float](repeating: 0, count: h.slots.count * h.shape.outputWidth)
        let attention = attention!
        q.withUnsafeBufferPointer { q in
            k.withUnsafeBufferPointer { k in
                v.withUnsafeBufferPointer { v in
                    out.withUnsafeMutableBufferPointer { o in
                        // LocalAttention fails only through work elsewhere; it has none here.
                        try? attention.attend(layer: h.layer, shape: h.shape, queries: q.baseAddress!, keys: k.baseAddress!, values: v.baseAddress!,
                                              slots: slots, output: o.baseAddress!, scratch: scratch)
                    }
                }
            }
        }
        return out
    }
}
