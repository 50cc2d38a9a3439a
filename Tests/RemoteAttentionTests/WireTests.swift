import AttentionWire
import AttentionWorker
import Kernels
import NIOCore
import Runtime
import SwitchyardSupport
import Testing

/// One frame from bytes written by `write`.
func frame(_ write: (inout ByteBuffer) -> Void) throws -> Frame {
    var b = ByteBufferAllocator().buffer(capacity: 64)
    write(&b)
    return try #require(try FrameReader().next(&b))
}

/// A raw frame: kind, id, payload bytes.
func rawFrame(_ kind: UInt8, _ payload: [UInt8]) -> Frame {
    var b = ByteBufferAllocator().buffer(capacity: payload.count)
    b.writeBytes(payload)
    return Frame(kind: kind, id: 7, payload: b)
}

let layout = KVLayout(layers: 2, keyWidth: 8, valueWidth: 8)
let shape = AttentionShape(heads: 4, keyValueHeads: 2, headDim: 4, scale: 0.5, window: nil)

func attendFrame(_ slots: [RemoteSlot], layer: Int = 0, shape: AttentionShape = shape, seed: Float = 1) throws -> Frame {
    let T = slots.count
    let q = (0..<(T * 16)).map { Float($0 % 7) * 0.1 * seed }, k = (0..<(T * 8)).map { Float($0 % 5) * 0.2 }, v = (0..<(T * 8)).map { Float($0 % 3) }
    return try frame { b in
        AttentionWire.attend(id: 9, AttendHeader(layer: layer, shape: shape, slots: slots), rows: Array(0..<T), queries: q, keys: k, values: v, into: &b)
    }
}

func errorText(_ reply: WireReply) -> String? {
    if case .error(let message) = reply { return message }
    return nil
}

@Suite("attention wire")
struct WireTests {
    @Test func attendRoundTrip() throws {
        let slots = [RemoteSlot(sequence: 3, position: 0), RemoteSlot(sequence: 3, position: 1), RemoteSlot(sequence: 5, position: 0)]
        let f = try attendFrame(slots, layer: 1)
        #expect(f.kind == FrameKind.attend.rawValue && f.id == 9)
        guard case .attend(let h, let q, let k, let v) = try AttentionWire.request(f) else { Issue.record("not an attend"); return }
        #expect(h.layer == 1 && h.shape == shape && h.slots == slots)
        #expect(q.count == 3 * 16 && k.count == 3 * 8 && v.count == 3 * 8)
        #expect(q[15] == Float(15 % 7) * 0.1 && v[23] == Float(23 % 3))
    }

    @Test func repliesRoundTrip() throws {
        let status = WorkerStatus(epoch: Array(0..<16), budget: 1 << 30, inUse: 4096, sequences: 2, connections: 1)
        let cases: [WireReply] = [.hello(version: 1, status: status), .reserved(sequence: 42, inUse: 99), .freed(inUse: 5), .truncated,
                                  .attended([1, 2, 3]), .status(status), .error("bad thing")]
        for reply in cases {
            let f = try frame { AttentionWire.reply(reply, id: 11, into: &$0) }
            #expect(f.id == 11)
            let back = try AttentionWire.reply(f, expectedFloats: 3)
            #expect("\(back)" == "\(reply)")
        }
    }

    @Test func framesThatCannotBeDelimited() throws {
        var b = ByteBufferAllocator().buffer(capacity: 16)
        b.writeInteger(UInt32(3), endianness: .little)
        b.writeBytes([1, 2, 3])
        #expect(throws: WireError.self) { try FrameReader().next(&b) }
        var huge = ByteBufferAllocator().buffer(capacity: 16)
        huge.writeInteger(UInt32.max, endianness: .little)
        #expect(throws: WireError.self) { try FrameReader().next(&huge) }
        var partial = ByteBufferAllocator().buffer(capacity: 16)
        partial.writeInteger(UInt32(20), endianness: .little)
        partial.writeBytes([5, 0, 0])
        #expect(try FrameReader().next(&partial) == nil, "a partial frame waits for more bytes")
    }

    @Test func badRequestsGetErrorsThatNameTheField() throws {
        let service = AttentionService(budget: 1 << 20, pool: ThreadPool(threads: 1))
        func reply(_ f: Frame) -> WireReply { service.handle(f, connection: 1) }
        // Before hello the layout is unknown.
        #expect(errorText(reply(try frame { AttentionWire.reserve(id: 1, capacity: 4, into: &$0) }))?.contains("no hello") == true)
        #expect(errorText(reply(rawFrame(1, [1, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0])))?.contains("version") == true)
        guard case .hello = reply(try frame { AttentionWire.hello(id: 1, layout: layout, into: &$0) }) else { Issue.record("hello refused"); return }
        guard case .reserved(let seq, _) = reply(try frame { AttentionWire.reserve(id: 2, capacity: 4, into: &$0) }) else {
            Issue.record("reserve refused"); return
        }
        // Unknown kind, truncated payloads, trailing bytes.
        #expect(errorText(reply(rawFrame(0x42, [])))?.contains("unknown request kind") == true)
        #expect(errorText(reply(rawFrame(2, [4, 0])))?.contains("capacity") == true)
        #expect(errorText(reply(rawFrame(3, [1, 0, 0, 0, 0, 0, 0, 0, 9])))?.contains("after the last field") == true)
        #expect(errorText(reply(rawFrame(2, [0, 0, 0, 0])))?.contains("capacity 0") == true)
        // A budget that cannot hold the sequence.
        #expect(errorText(reply(try frame { AttentionWire.reserve(id: 3, capacity: 1 << 20, into: &$0) }))?.contains("full") == true)
        // Unknown sequence, positions past capacity or skipping, a layer the model lacks, sizes that disagree.
        #expect(errorText(reply(try attendFrame([RemoteSlot(sequence: 999, position: 0)])))?.contains("not on this worker") == true)
        #expect(errorText(reply(try attendFrame([RemoteSlot(sequence: seq, position: 4)])))?.contains("past the 4 positions") == true)
        #expect(errorText(reply(try attendFrame([RemoteSlot(sequence: seq, position: 1)])))?.contains("skips") == true)
        #expect(errorText(reply(try attendFrame([RemoteSlot(sequence: seq, position: 0)], layer: 5)))?.contains("layer 5") == true)
        let wide = AttentionShape(heads: 4, keyValueHeads: 4, headDim: 4, scale: 0.5, window: nil)
        #expect(errorText(reply(try attendFrame([RemoteSlot(sequence: seq, position: 0)], shape: wide)))?.contains("KV layout") == true)
        var cut = try attendFrame([RemoteSlot(sequence: seq, position: 0)])
        cut.payload = cut.payload.getSlice(at: cut.payload.readerIndex, length: cut.payload.readableBytes - 4)!
        #expect(errorText(reply(cut))?.contains("bytes of tensors") == true)
        // Another connection's sequence is not this one's.
        #expect(errorText(service.handle(try attendFrame([RemoteSlot(sequence: seq, position: 0)]), connection: 2))?.contains("not on this worker") == true)
        // After all that, the sequence still works, in order.
        guard case .attended(let out) = reply(try attendFrame([RemoteSlot(sequence: seq, position: 0), RemoteSlot(sequence: seq, position: 1)])) else {
            Issue.record("a good request failed after bad ones"); return
        }
        #expect(out.count == 2 * 16 && out.allSatisfy(\.isFinite))
        // The connection's end frees what it reserved.
        service.connectionClosed(1)
        #expect(service.status.inUse == 0 && service.status.sequences == 0)
    }

    /// An int8 worker refuses a model whose rows are not a multiple of 16 values, at hello.
    @Test func int8NeedsRowsOfSixteen() throws {
        let service = AttentionService(budget: nil, pool: ThreadPool(threads: 1), element: .int8)
        #expect(errorText(service.handle(try frame { AttentionWire.hello(id: 1, layout: layout, into: &$0) }, connection: 1))?.contains("multiple of 16") == true)
        let wide = KVLayout(layers: 2, keyWidth: 32, valueWidth: 32)
        guard case .hello = service.handle(try frame { AttentionWire.hello(id: 1, layout: wide, into: &$0) }, connection: 1) else {
            Issue.record("a layout of 32-value rows refused"); return
        }
    }

    /// The worker computes what tier 1 would: its outputs equal LocalAttention's on the same rows.
    @Test func workerEqualsLocalAttention() throws {
        let service = AttentionService(budget: nil, pool: ThreadPool(threads: 2))
        _ = service.handle(try frame { AttentionWire.hello(id: 1, layout: layout, into: &$0) }, connection: 1)
        guard case .reserved(let seq, _) = service.handle(try frame { AttentionWire.reserve(id: 2, capacity: 8, into: &$0) }, connection: 1) else {
            Issue.record("reserve refused"); return
        }
        let local = LocalKVCache(layout: layout)
        let id = try local.reserve(capacity: 8)
        let attention = LocalAttention(cache: local, pool: ThreadPool(threads: 1))
        for step in 0..<3 {
            let slots = (0..<2).map { RemoteSlot(sequence: seq, position: step * 2 + $0) }
            let f = try attendFrame(slots, seed: Float(step + 1))
            guard case .attend(let h, let q, let k, let v) = try AttentionWire.request(f),
                  case .attended(let remote) = service.handle(f, connection: 1) else { Issue.record("attend failed"); return }
            var out = [Float](repeating: 0, count: remote.count)
            try attention.attend(layer: 0, shape: h.shape, queries: q, keys: k, values: v,
                                 slots: slots.map { TokenSlot(sequence: id, position: $0.position) }, output: &out, scratch: FloatBuffer())
            #expect(out == remote, "step \(step)")
        }
    }
}
