import Kernels
import SwitchyardSupport

/// The attention of one layer: how many query and KV heads, their width, the score scale and an
/// optional sliding window.
public struct AttentionShape: Sendable, Equatable {
    public var heads: Int
    public var keyValueHeads: Int
    /// Per head, the width of queries and keys.
    public var headDim: Int
    public var scale: Float
    /// Attend to the last `window` positions only (nil: all of them).
    public var window: Int?
    /// Per head, the width of values and of the output: `headDim` but for latent attention.
    public var valueDim: Int
    /// The values are the leading `valueDim` values of each key row, none stored apart (latent
    /// attention, whose key row is the latent then the rotary key).
    public var valuesInKeys: Bool
    /// Per head, a learned logit that joins the softmax without a value (GPT-OSS's attention
    /// sinks): it takes its share of the weight away from the positions.
    public var sinks: [Float]?

    public init(heads: Int, keyValueHeads: Int, headDim: Int, scale: Float, window: Int?, valueDim: Int? = nil, valuesInKeys: Bool = false,
                sinks: [Float]? = nil) {
        self.heads = heads
        self.keyValueHeads = keyValueHeads
        self.headDim = headDim
        self.scale = scale
        self.window = window
        self.valueDim = valueDim ?? headDim
        self.valuesInKeys = valuesInKeys
        self.sinks = sinks
    }

    /// Per token: queries [heads x headDim], keys [kv_heads x headDim], values [kv_heads x
    /// valueDim] (none when in the keys), outputs [heads x valueDim].
    public var queryWidth: Int { heads * headDim }
    public var keyWidth: Int { keyValueHeads * headDim }
    public var valueWidth: Int { valuesInKeys ? 0 : keyValueHeads * valueDim }
    public var outputWidth: Int { heads * valueDim }
}

/// Where attention over the KV cache is computed: on this host over host rows (`LocalAttention`),
/// or where the cache lives (another host, a GPU). The model's attention block computes the
/// projections, norms and rotary embedding and hands the result here, one call per layer per step.
public protocol AttentionExecutor: AnyObject, Sendable {
    /// The cache holding every sequence's keys and values.
    var cache: any KVCache { get }
    /// For each token t of the step: stores keys[t] and values[t] ([shape.keyWidth] and
    /// [shape.valueWidth]) at `slots[t]` of `layer`, then writes output[t] ([shape.outputWidth]) = softmax(q · Kᵀ ·
    /// scale) · V over its own sequence's positions up to and including `slots[t].position` (the
    /// last `window` of them with a window). Tokens of one sequence come in position order.
    /// - Parameter scratch: work memory the executor may use during the call.
    func attend(
        layer: Int, shape: AttentionShape, queries: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        slots: [TokenSlot], output: UnsafeMutablePointer<Float>, scratch: FloatBuffer) throws(WorkFailure)
}

/// Attention under way elsewhere: `AttentionExecutor.finish` waits for it.
public protocol PendingAttention: AnyObject {}

extension AttentionExecutor {
    /// Starts `attend` and returns at once when the work goes elsewhere (nil: it is done already,
    /// as on this host). The pointers must stay valid, and the output untouched, until `finish`.
    public func start(
        layer: Int, shape: AttentionShape, queries: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        slots: [TokenSlot], output: UnsafeMutablePointer<Float>, scratch: FloatBuffer
    ) throws(WorkFailure) -> (any PendingAttention)? {
        if let remote = self as? any AsynchronousAttention {
            return try remote.startRemote(layer: layer, shape: shape, queries: queries, keys: keys, values: values, slots: slots, output: output)
        }
        try attend(layer: layer, shape: shape, queries: queries, keys: keys, values: values, slots: slots, output: output, scratch: scratch)
        return nil
    }
}

/// An executor whose attention runs elsewhere and can be left running while tier 1 does other
/// work (micro-batches in flight).
public protocol AsynchronousAttention: AttentionExecutor {
    /// Sends the work; the queries, keys and values have been copied out when it returns.
    func startRemote(
        layer: Int, shape: AttentionShape, queries: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        slots: [TokenSlot], output: UnsafeMutablePointer<Float>) throws(WorkFailure) -> any PendingAttention
    /// Whether `finish` would return without waiting.
    func isDone(_ pending: any PendingAttention) -> Bool
    /// Waits for the outputs and writes them where `startRemote` was told.
    func finish(_ pending: any PendingAttention) throws(WorkFailure)
    /// The mean time from a request's send to its reply, lately (nil before the first).
    var roundTrip: Duration? { get }
}

/// Attention on this host's cores over a host KV cache of any element: grouped KV heads, causal,
/// optionally windowed, the heads of one KV head for one token per work item (`attendGroup`
/// reading the rows as stored).
public final class LocalAttention: AttentionExecutor, @unchecked Sendable {
    public let hostCache: any HostKVCache
    public let pool: ThreadPool
    public var cache: any KVCache { hostCache }

    public init(cache: any HostKVCache, pool: ThreadPool) {
        hostCache = cache
        self.pool = pool
    }

    public func attend(
        layer: Int, shape: AttentionShape, queries: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        slots: [TokenSlot], output: UnsafeMutablePointer<Float>, scratch: FloatBuffer
    ) throws(WorkFailure) {
        let kW = shape.keyWidth, vW = shape.valueWidth
        precondition(hostCache.layout.keyWidth == kW && hostCache.layout.valueWidth == vW, "the cache's rows are the shape's keys and values")
        for (t, slot) in slots.enumerated() {
            hostCache.append(slot.sequence, layer: layer, position: slot.position, keys: keys + t * kW, values: values + t * vW, count: 1)
        }
        // Latent attention reads its values from the key rows.
        let valueRows = shape.valuesInKeys ? kW : vW, vd = shape.valueDim
        let hd = shape.headDim, keyBytes = hostCache.element.rowBytes(kW), valueBytes = hostCache.element.rowBytes(valueRows)
        switch hostCache.element {
        case .f32:
            attendAll(layer, shape, queries, slots, output, scratch,
                      keyRows: { row, kv in F32Rows(row.assumingMemoryBound(to: Float.self) + kv * hd, kW) },
                      valueRows: { row, kv in F32Rows(row.assumingMemoryBound(to: Float.self) + kv * vd, valueRows) })
        case .bf16:
            attendAll(layer, shape, queries, slots, output, scratch,
                      keyRows: { row, kv in BF16Rows(row.assumingMemoryBound(to: UInt16.self) + kv * hd, kW) },
                      valueRows: { row, kv in BF16Rows(row.assumingMemoryBound(to: UInt16.self) + kv * vd, valueRows) })
        case .int8:
            precondition(hd % 16 == 0 && vd % 16 == 0, "int8 rows need head widths that are multiples of 16")
            attendAll(layer, shape, queries, slots, output, scratch,
                      keyRows: { row, kv in
                          Int8Rows(row.assumingMemoryBound(to: Int8.self) + kv * hd, keyBytes,
                                   scales: (row + kW).assumingMemoryBound(to: Float.self) + kv * hd / 16, scaleStride: keyBytes / 4)
                      },
                      valueRows: { row, kv in
                          Int8Rows(row.assumingMemoryBound(to: Int8.self) + kv * vd, valueBytes,
                                   scales: (row + valueRows).assumingMemoryBound(to: Float.self) + kv * vd / 16, scaleStride: valueBytes / 4)
                      })
        }
    }

    /// Every (token, KV head) through the kernel; `keyRows(slab, kvHead)` and `valueRows` read one
    /// KV head's rows of a slab (called once per work item, never per value).
    private func attendAll<Keys: KeyValueRows, Values: KeyValueRows>(
        _ layer: Int, _ shape: AttentionShape, _ queries: UnsafePointer<Float>, _ slots: [TokenSlot], _ output: UnsafeMutablePointer<Float>,
        _ scratch: FloatBuffer, keyRows: (UnsafeRawPointer, Int) -> Keys, valueRows: (UnsafeRawPointer, Int) -> Values
    ) {
        let T = slots.count
        let heads = shape.heads, kvHeads = shape.keyValueHeads, hd = shape.headDim, vd = shape.valueDim
        let qW = shape.queryWidth, oW = shape.outputWidth
        let inKeys = shape.valuesInKeys
        // Each sequence's rows once per call, not once per token and head.
        var slabs: [SequenceID: (keys: UnsafeRawPointer, values: UnsafeRawPointer)] = [:]
        for slot in slots where slabs[slot.sequence] == nil { slabs[slot.sequence] = hostCache.rows(of: slot.sequence, layer: layer) }
        let bases = slots.map { slabs[$0.sequence]! }
        let group = heads / kvHeads
        // A large group (latent attention's one KV head for every head) is split into parts of at
        // most 8 heads, so one token's attention spreads over the cores; each head's arithmetic is
        // the same either way.
        let part = (1...min(8, group)).last { group % $0 == 0 }!, parts = group / part
        scratch.reserve(T * kvHeads * group * 16)
        let tiles = scratch.pointer
        let window = shape.window, scale = shape.scale
        let sinks = shape.sinks ?? []
        sinks.withUnsafeBufferPointer { sinks in
            pool.parallelFor(T * kvHeads * parts) { item in
                let t = item / (kvHeads * parts), kv = item / parts % kvHeads, head0 = (kv * parts + item % parts) * part
                let position = slots[t].position
                attendGroup(
                    queries: queries + t * qW + head0 * hd, group: part, headDim: hd, valueDim: vd, scale: scale,
                    keys: keyRows(bases[t].keys, kv), values: valueRows(inKeys ? bases[t].keys : bases[t].values, kv),
                    first: window.map { max(0, position - $0 + 1) } ?? 0, last: position,
                    tile: tiles + item * part * 16, output: output + t * oW + head0 * vd,
                    sinks: sinks.isEmpty ? nil : sinks.baseAddress! + head0)
            }
        }
    }
}
