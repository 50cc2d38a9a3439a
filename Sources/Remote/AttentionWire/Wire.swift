import NIOCore
import Runtime
import SwitchyardSupport

#if _endian(big)
#error("the attention wire sends floats as this host stores them: little-endian only")
#endif

/// The attention wire between tier 1 (weights, residual stream) and an attention worker (KV caches,
/// attention). One TCP connection carries frames, little-endian:
///
///     [u32 length of what follows] [u8 kind] [u64 request id] [payload]
///
/// A worker answers every request, in order, with a frame of the request's kind | 0x80 and the same
/// id, or with an `error` frame naming what was wrong with that request; a bad request never ends
/// the connection unless its frame cannot be delimited. Tensors travel as raw float32 bytes, and
/// per layer only what attention needs crosses: queries and new keys/values out, outputs back.
public enum AttentionWire {
    /// Bumped on any change of a frame's layout.
    public static let version: UInt32 = 2
    /// The largest frame either side accepts (a prefill chunk of 64 tokens of a 70B-class model is
    /// about 3 MiB).
    public static let maxFrameBytes = 256 << 20
    /// Kind, request id.
    public static let headerBytes = 9
    /// The most tokens one attend request may carry.
    public static let maxTokens = 1 << 16
    /// The most heads and the widest head either side accepts.
    public static let maxHeads = 1 << 12
    public static let maxHeadDim = 1 << 12
    public static let maxLayers = 1 << 12
    public static let maxPositions = 1 << 24
}

/// What a frame is.
public enum FrameKind: UInt8, Sendable {
    case hello = 1, reserve = 2, free = 3, truncate = 4, attend = 5, status = 6
    case helloReply = 0x81, reserved = 0x82, freed = 0x83, truncated = 0x84, attended = 0x85, statusReply = 0x86
    case error = 0xFF

    /// The kind of the reply to a request of this kind.
    public var reply: FrameKind? { FrameKind(rawValue: rawValue | 0x80) }
}

/// A frame from the wire that is not what it claims to be: the message names the field.
public struct WireError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One sequence's token in an attend request: the worker's sequence id and the position.
public struct RemoteSlot: Sendable, Equatable {
    public var sequence: UInt64
    public var position: Int
    public init(sequence: UInt64, position: Int) {
        self.sequence = sequence
        self.position = position
    }
}

/// The header of an attend request, before its tensors.
public struct AttendHeader: Sendable, Equatable {
    public var layer: Int
    public var shape: AttentionShape
    public var slots: [RemoteSlot]

    public init(layer: Int, shape: AttentionShape, slots: [RemoteSlot]) {
        self.layer = layer
        self.shape = shape
        self.slots = slots
    }

    /// Fixed fields, the sinks, then 12 bytes per slot.
    static let fixedBytes = 10 * 4
    public var tensorBytes: Int { slots.count * (shape.queryWidth + shape.keyWidth + shape.valueWidth) * 4 }
    public var payloadBytes: Int { Self.fixedBytes + (shape.sinks?.count ?? 0) * 4 + slots.count * 12 + tensorBytes }
}

/// Requests as the worker reads them.
public enum WireRequest: Sendable {
    case hello(version: UInt32, layout: KVLayout)
    case reserve(capacity: Int)
    case free(sequence: UInt64)
    case truncate(sequence: UInt64, length: Int)
    /// Queries [T, shape.queryWidth], keys [T, shape.keyWidth], values [T, shape.valueWidth], float32.
    case attend(AttendHeader, queries: [Float], keys: [Float], values: [Float])
    case status
}

/// What a worker reports of itself: its epoch (new each start: a changed epoch means its caches
/// are gone), its KV budget and what is reserved, its sequences and connections.
public struct WorkerStatus: Sendable, Equatable {
    public var epoch: [UInt8]
    /// Bytes all sequences may reserve together (0: no limit).
    public var budget: Int
    public var inUse: Int
    public var sequences: Int
    public var connections: Int

    public init(epoch: [UInt8], budget: Int, inUse: Int, sequences: Int, connections: Int) {
        self.epoch = epoch
        self.budget = budget
        self.inUse = inUse
        self.sequences = sequences
        self.connections = connections
    }

    public var epochHex: String { epoch.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}

/// Replies as tier 1 reads them.
public enum WireReply: Sendable {
    case hello(version: UInt32, status: WorkerStatus)
    case reserved(sequence: UInt64, inUse: Int)
    case freed(inUse: Int)
    case truncated
    /// Outputs [T, shape.outputWidth], float32.
    case attended([Float])
    case status(WorkerStatus)
    case error(String)
}

// MARK: - Writing

extension ByteBuffer {
    /// Starts a frame; `finishFrame` fills in its length.
    public mutating func startFrame(_ kind: FrameKind, id: UInt64) -> Int {
        let start = writerIndex
        writeInteger(UInt32(0), endianness: .little)
        writeInteger(kind.rawValue)
        writeInteger(id, endianness: .little)
        return start
    }

    public mutating func finishFrame(at start: Int) {
        setInteger(UInt32(writerIndex - start - 4), at: start, endianness: .little)
    }

    public mutating func writeU32(_ v: Int) { writeInteger(UInt32(truncatingIfNeeded: v), endianness: .little) }
    public mutating func writeU64(_ v: Int) { writeInteger(UInt64(truncatingIfNeeded: v), endianness: .little) }
    public mutating func writeU64(_ v: UInt64) { writeInteger(v, endianness: .little) }

    public mutating func writeFloats(_ p: UnsafePointer<Float>, count: Int) {
        writeBytes(UnsafeRawBufferPointer(start: UnsafeRawPointer(p), count: count * 4))
    }

    public mutating func writeStatus(_ s: WorkerStatus) {
        precondition(s.epoch.count == 16)
        writeBytes(s.epoch)
        writeU64(s.budget)
        writeU64(s.inUse)
        writeU32(s.sequences)
        writeU32(s.connections)
    }
}

extension AttentionWire {
    public static func hello(id: UInt64, layout: KVLayout, into b: inout ByteBuffer) {
        let start = b.startFrame(.hello, id: id)
        b.writeInteger(version, endianness: .little)
        b.writeU32(layout.layers)
        b.writeU32(layout.keyWidth)
        b.writeU32(layout.valueWidth)
        b.finishFrame(at: start)
    }

    public static func reserve(id: UInt64, capacity: Int, into b: inout ByteBuffer) {
        let start = b.startFrame(.reserve, id: id)
        b.writeU32(capacity)
        b.finishFrame(at: start)
    }

    public static func free(id: UInt64, sequence: UInt64, into b: inout ByteBuffer) {
        let start = b.startFrame(.free, id: id)
        b.writeU64(sequence)
        b.finishFrame(at: start)
    }

    public static func truncate(id: UInt64, sequence: UInt64, length: Int, into b: inout ByteBuffer) {
        let start = b.startFrame(.truncate, id: id)
        b.writeU64(sequence)
        b.writeU32(length)
        b.finishFrame(at: start)
    }

    public static func status(id: UInt64, into b: inout ByteBuffer) {
        b.finishFrame(at: b.startFrame(.status, id: id))
    }

    /// An attend request whose tensors are rows `rows` of the step's queries [*, qW] and keys and
    /// values [*, kvW]: the rows of one worker's tokens, gathered straight into the frame.
    public static func attend(
        id: UInt64, _ header: AttendHeader, rows: [Int], queries: UnsafePointer<Float>, keys: UnsafePointer<Float>,
        values: UnsafePointer<Float>, into b: inout ByteBuffer
    ) {
        precondition(rows.count == header.slots.count)
        let qW = header.shape.queryWidth, kW = header.shape.keyWidth, vW = header.shape.valueWidth
        b.reserveCapacity(minimumWritableBytes: 13 + header.payloadBytes)
        let start = b.startFrame(.attend, id: id)
        b.writeU32(header.layer)
        b.writeU32(header.shape.heads)
        b.writeU32(header.shape.keyValueHeads)
        b.writeU32(header.shape.headDim)
        b.writeInteger(header.shape.scale.bitPattern, endianness: .little)
        b.writeU32(header.shape.window ?? 0)
        b.writeU32(header.shape.valueDim)
        b.writeU32(header.shape.valuesInKeys ? 1 : 0)
        b.writeU32(header.shape.sinks?.count ?? 0)
        if let sinks = header.shape.sinks { sinks.withUnsafeBufferPointer { b.writeFloats($0.baseAddress!, count: $0.count) } }
        b.writeU32(header.slots.count)
        for slot in header.slots {
            b.writeU64(slot.sequence)
            b.writeU32(slot.position)
        }
        for r in rows { b.writeFloats(queries + r * qW, count: qW) }
        for r in rows { b.writeFloats(keys + r * kW, count: kW) }
        for r in rows { b.writeFloats(values + r * vW, count: vW) }
        b.finishFrame(at: start)
    }

    /// A reply frame (the worker's side).
    public static func reply(_ reply: WireReply, id: UInt64, into b: inout ByteBuffer) {
        switch reply {
        case .hello(let v, let s):
            let start = b.startFrame(.helloReply, id: id)
            b.writeInteger(v, endianness: .little)
            b.writeStatus(s)
            b.finishFrame(at: start)
        case .reserved(let sequence, let inUse):
            let start = b.startFrame(.reserved, id: id)
            b.writeU64(sequence)
            b.writeU64(inUse)
            b.finishFrame(at: start)
        case .freed(let inUse):
            let start = b.startFrame(.freed, id: id)
            b.writeU64(inUse)
            b.finishFrame(at: start)
        case .truncated:
            b.finishFrame(at: b.startFrame(.truncated, id: id))
        case .attended(let out):
            b.reserveCapacity(minimumWritableBytes: 13 + out.count * 4)
            let start = b.startFrame(.attended, id: id)
            out.withUnsafeBufferPointer { b.writeFloats($0.baseAddress!, count: $0.count) }
            b.finishFrame(at: start)
        case .status(let s):
            let start = b.startFrame(.statusReply, id: id)
            b.writeStatus(s)
            b.finishFrame(at: start)
        case .error(let message):
            let start = b.startFrame(.error, id: id)
            b.writeString(String(message.utf8.prefix(4096)) ?? "error")
            b.finishFrame(at: start)
        }
    }
}

// MARK: - Reading

/// One frame cut from the stream: its kind byte, request id and payload.
public struct Frame: Sendable {
    public var kind: UInt8
    public var id: UInt64
    public var payload: ByteBuffer

    public init(kind: UInt8, id: UInt64, payload: ByteBuffer) {
        self.kind = kind
        self.id = id
        self.payload = payload
    }
}

/// Cuts frames from a byte stream. A length outside 9...maxFrameBytes cannot be delimited: the
/// stream is unusable after it, and the caller closes the connection.
public struct FrameReader: Sendable {
    public init() {}

    /// The next whole frame in `buffer`, consumed; nil when more bytes are needed.
    public func next(_ buffer: inout ByteBuffer) throws(WireError) -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else { return nil }
        guard Int(length) >= AttentionWire.headerBytes, Int(length) <= AttentionWire.maxFrameBytes else {
            throw WireError("a frame of \(length) bytes (a frame holds \(AttentionWire.headerBytes) to \(AttentionWire.maxFrameBytes))")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let kind: UInt8 = buffer.readInteger()!
        let id: UInt64 = buffer.readInteger(endianness: .little)!
        let payload = buffer.readSlice(length: Int(length) - AttentionWire.headerBytes)!
        return Frame(kind: kind, id: id, payload: payload)
    }
}

/// Reads a payload's fields, each checked for presence.
public struct PayloadReader {
    public var buffer: ByteBuffer
    public let what: String

    public init(buffer: ByteBuffer, what: String) {
        self.buffer = buffer
        self.what = what
    }

    public mutating func u32(_ field: String) throws(WireError) -> Int {
        guard let v = buffer.readInteger(endianness: .little, as: UInt32.self) else { throw WireError("\(what): the payload ends before \(field)") }
        return Int(v)
    }

    public mutating func u64(_ field: String) throws(WireError) -> UInt64 {
        guard let v = buffer.readInteger(endianness: .little, as: UInt64.self) else { throw WireError("\(what): the payload ends before \(field)") }
        return v
    }

    public mutating func size(_ field: String) throws(WireError) -> Int {
        let v = try u64(field)
        guard v <= UInt64(Int.max / 2) else { throw WireError("\(what): \(field) \(v) is out of range") }
        return Int(v)
    }

    public mutating func bytes(_ count: Int, _ field: String) throws(WireError) -> [UInt8] {
        guard let v = buffer.readBytes(length: count) else { throw WireError("\(what): the payload ends before \(field)") }
        return v
    }

    public mutating func floats(_ count: Int, _ field: String) throws(WireError) -> [Float] {
        guard buffer.readableBytes >= count * 4 else { throw WireError("\(what): the payload ends inside \(field)") }
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBytes { dst in
            buffer.withUnsafeReadableBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src.prefix(count * 4))) }
        }
        buffer.moveReaderIndex(forwardBy: count * 4)
        return out
    }

    public func end() throws(WireError) {
        guard buffer.readableBytes == 0 else { throw WireError("\(what): \(buffer.readableBytes) bytes after the last field") }
    }

    public mutating func status() throws(WireError) -> WorkerStatus {
        WorkerStatus(epoch: try bytes(16, "epoch"), budget: try size("budget"), inUse: try size("bytes in use"),
                     sequences: try u32("sequences"), connections: try u32("connections"))
    }
}

public func check(_ value: Int, _ range: ClosedRange<Int>, _ field: String, _ what: String) throws(WireError) {
    guard range.contains(value) else { throw WireError("\(what): \(field) \(value) is outside \(range.lowerBound)...\(range.upperBound)") }
}

extension AttentionWire {
    /// A request from its frame, every field range-checked; sizes must match to the byte.
    public static func request(_ frame: Frame) throws(WireError) -> WireRequest {
        guard let kind = FrameKind(rawValue: frame.kind), kind.rawValue < 0x80 else {
            throw WireError("unknown request kind \(frame.kind)")
        }
        var r = PayloadReader(buffer: frame.payload, what: "\(kind) request")
        let request: WireRequest
        switch kind {
        case .hello:
            let version = UInt32(try r.u32("version"))
            let layers = try r.u32("layers"), keyWidth = try r.u32("key width"), valueWidth = try r.u32("value width")
            try check(layers, 1...maxLayers, "layers", r.what)
            try check(keyWidth, 1...(maxHeads * maxHeadDim), "key width", r.what)
            try check(valueWidth, 0...(maxHeads * maxHeadDim), "value width", r.what)
            request = .hello(version: version, layout: KVLayout(layers: layers, keyWidth: keyWidth, valueWidth: valueWidth))
        case .reserve:
            let capacity = try r.u32("capacity")
            try check(capacity, 1...maxPositions, "capacity", r.what)
            request = .reserve(capacity: capacity)
        case .free:
            request = .free(sequence: try r.u64("sequence"))
        case .truncate:
            let sequence = try r.u64("sequence")
            let length = try r.u32("length")
            try check(length, 0...maxPositions, "length", r.what)
            request = .truncate(sequence: sequence, length: length)
        case .status:
            request = .status
        case .attend:
            let layer = try r.u32("layer"), heads = try r.u32("heads"), kvHeads = try r.u32("kv heads"), headDim = try r.u32("head dim")
            let scale = Float(bitPattern: UInt32(try r.u32("scale")))
            let window = try r.u32("window"), valueDim = try r.u32("value dim"), inKeys = try r.u32("values-in-keys flag")
            let sinkCount = try r.u32("sinks")
            try check(heads, 1...maxHeads, "heads", r.what)
            guard sinkCount == 0 || sinkCount == heads else { throw WireError("\(r.what): \(sinkCount) sinks for \(heads) heads") }
            let sinks = sinkCount == 0 ? nil : try r.floats(sinkCount, "sinks")
            guard sinks?.allSatisfy(\.isFinite) ?? true else { throw WireError("\(r.what): a sink is not finite") }
            let count = try r.u32("tokens")
            try check(layer, 0...(maxLayers - 1), "layer", r.what)
            try check(heads, 1...maxHeads, "heads", r.what)
            try check(kvHeads, 1...heads, "kv heads", r.what)
            guard heads % kvHeads == 0 else { throw WireError("\(r.what): \(heads) heads are not a multiple of \(kvHeads) kv heads") }
            try check(headDim, 1...maxHeadDim, "head dim", r.what)
            guard scale.isFinite else { throw WireError("\(r.what): the scale is not finite") }
            try check(window, 0...maxPositions, "window", r.what)
            try check(valueDim, 1...maxHeadDim, "value dim", r.what)
            try check(inKeys, 0...1, "values-in-keys flag", r.what)
            guard inKeys == 0 || valueDim <= headDim else {
                throw WireError("\(r.what): values of \(valueDim) cannot be the leading values of keys of \(headDim)")
            }
            try check(count, 1...maxTokens, "tokens", r.what)
            var slots: [RemoteSlot] = []
            slots.reserveCapacity(count)
            for _ in 0..<count {
                let sequence = try r.u64("a slot's sequence"), position = try r.u32("a slot's position")
                try check(position, 0...(maxPositions - 1), "position", r.what)
                slots.append(RemoteSlot(sequence: sequence, position: position))
            }
            let header = AttendHeader(
                layer: layer,
                shape: AttentionShape(heads: heads, keyValueHeads: kvHeads, headDim: headDim, scale: scale, window: window == 0 ? nil : window,
                                      valueDim: valueDim, valuesInKeys: inKeys == 1, sinks: sinks),
                slots: slots)
            // Each factor is bounded above, so these products cannot overflow.
            guard r.buffer.readableBytes == header.tensorBytes else {
                throw WireError("\(r.what): \(r.buffer.readableBytes) bytes of tensors for \(count) tokens of \(heads) query and \(kvHeads) kv heads of \(headDim), \(header.tensorBytes) expected")
            }
            let q = try r.floats(count * header.shape.queryWidth, "queries")
            let k = try r.floats(count * header.shape.keyWidth, "keys")
            let v = try r.floats(count * header.shape.valueWidth, "values")
            request = .attend(header, queries: q, keys: k, values: v)
        default:
            throw WireError("unknown request kind \(frame.kind)")
        }
        try r.end()
        return request
    }

    /// A reply from its frame; `expectedFloats` is the size of an attend reply's outputs.
    public static func reply(_ frame: Frame, expectedFloats: Int = 0) throws(WireError) -> WireReply {
        guard let kind = FrameKind(rawValue: frame.kind), kind.rawValue >= 0x80 else { throw WireError("unknown reply kind \(frame.kind)") }
        var r = PayloadReader(buffer: frame.payload, what: "\(kind) reply")
        let reply: WireReply
        switch kind {
        case .helloReply: reply = .hello(version: UInt32(try r.u32("version")), status: try r.status())
        case .reserved: reply = .reserved(sequence: try r.u64("sequence"), inUse: try r.size("bytes in use"))
        case .freed: reply = .freed(inUse: try r.size("bytes in use"))
        case .truncated: reply = .truncated
        case .attended:
            guard r.buffer.readableBytes == expectedFloats * 4 else {
                throw WireError("attend reply: \(r.buffer.readableBytes) bytes, \(expectedFloats * 4) expected")
            }
            reply = .attended(try r.floats(expectedFloats, "outputs"))
        case .statusReply: reply = .status(try r.status())
        case .error: reply = .error(r.buffer.readString(length: r.buffer.readableBytes) ?? "an error that is not UTF-8")
        default: throw WireError("unknown reply kind \(frame.kind)")
        }
        try r.end()
        return reply
    }
}
