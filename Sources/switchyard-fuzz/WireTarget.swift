import AttentionWire
import AttentionWorker
import Kernels
import NIOCore
import Runtime

/// The attention wire as a worker reads it: the input is a byte stream of frames (a session's
/// hello, reserves, attends, truncates, frees, mutated), cut and answered as the server does, on a
/// fresh worker each time. Every frame must get a reply; a stream that cannot be delimited ends.
struct WireTarget: Target {
    let seeds: [[UInt8]]
    let pool = ThreadPool(threads: 1)

    init() {
        var b = ByteBufferAllocator().buffer(capacity: 4096)
        let layout = KVLayout(layers: 2, keyWidth: 32, valueWidth: 32)
        AttentionWire.hello(id: 1, layout: layout, into: &b)
        AttentionWire.reserve(id: 2, capacity: 16, into: &b)
        AttentionWire.reserve(id: 3, capacity: 4, into: &b)
        let shape = AttentionShape(heads: 4, keyValueHeads: 2, headDim: 16, scale: 0.5, window: 2)
        let q = [Float](repeating: 0.25, count: 3 * 64), kv = [Float](repeating: -0.5, count: 3 * 32)
        for layer in 0..<2 {
            let slots = [RemoteSlot(sequence: 1, position: 0), RemoteSlot(sequence: 1, position: 1), RemoteSlot(sequence: 2, position: 0)]
            AttentionWire.attend(id: UInt64(4 + layer), AttendHeader(layer: layer, shape: shape, slots: slots), rows: [0, 1, 2],
                                 queries: q, keys: kv, values: kv, into: &b)
        }
        AttentionWire.truncate(id: 6, sequence: 1, length: 1, into: &b)
        AttentionWire.status(id: 7, into: &b)
        AttentionWire.free(id: 8, sequence: 2, into: &b)
        seeds = [b.readBytes(length: b.readableBytes)!]
    }

    func exercise(_ input: [UInt8]) -> Bool {
        // Each storage of keys and values in turn (the seed's layout is int8-compatible: rows of 16).
        let service = AttentionService(budget: 1 << 20, pool: pool, element: KVElement.allCases[input.count % KVElement.allCases.count])
        var buffer = ByteBufferAllocator().buffer(capacity: input.count)
        buffer.writeBytes(input)
        var answered = 0
        do {
            while let frame = try FrameReader().next(&buffer) {
                let reply = service.handle(frame, connection: 1)
                var out = ByteBufferAllocator().buffer(capacity: 64)
                AttentionWire.reply(reply, id: frame.id, into: &out)
                // The reply must itself read back.
                _ = try AttentionWire.reply(FrameReader().next(&out)!, expectedFloats: { if case .attended(let o) = reply { return o.count } else { return 0 } }())
                answered += 1
            }
        } catch {}
        service.connectionClosed(1)
        precondition(service.status.inUse == 0, "a closed connection's sequences must be freed")
        return answered > 0
    }
}
