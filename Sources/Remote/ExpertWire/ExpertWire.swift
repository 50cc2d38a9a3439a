import AttentionWire
import NIOCore

/// The expert wire between tier 1 and an expert host: AttentionWire's frames
/// (`[u32 length][u8 kind][u64 id][payload]`, little-endian, raw float32 tensors) with kinds of
/// their own. A host answers every request in order with the request's kind | 0x80 and its id, or
/// an error frame (0xFF) naming what was wrong; a bad request never ends the connection unless its
/// frame cannot be delimited. Per layer only the tokens routed to the host's experts cross, and
/// only their outputs come back (EPS-MoE's dispatch and combine).
public enum ExpertWire {
    /// Bumped on any change of a frame's layout.
    public static let version: UInt32 = 1
    public static let maxLayers = 1 << 12
    public static let maxExperts = 1 << 12
    public static let maxWidth = 1 << 16
    /// The most token rows one run request may carry.
    public static let maxRows = 1 << 17
}

/// What an expert frame is.
public enum ExpertFrameKind: UInt8, Sendable {
    case hello = 0x21, assign = 0x22, run = 0x23, status = 0x24, probe = 0x25
    case helloReply = 0xA1, assigned = 0xA2, ran = 0xA3, statusReply = 0xA4, probed = 0xA5
    case error = 0xFF
}

/// The model a host must hold experts of, as tier 1 runs it: a host refuses another.
public struct ExpertModelShape: Sendable, Equatable, CustomStringConvertible {
    public var layers: Int, expertsPerLayer: Int, hidden: Int, intermediate: Int
    /// Activation precision tier 1 computes with (ActivationPrecision's raw value): the host
    /// computes with the same, so its outputs are tier 1's bits.
    public var precision: String

    public init(layers: Int, expertsPerLayer: Int, hidden: Int, intermediate: Int, precision: String) {
        self.layers = layers
        self.expertsPerLayer = expertsPerLayer
        self.hidden = hidden
        self.intermediate = intermediate
        self.precision = precision
    }

    public var description: String {
        "\(layers) layers of \(expertsPerLayer) experts, hidden \(hidden), intermediate \(intermediate), \(precision) activations"
    }
}

/// One routed expert: (layer, expert).
public struct WireExpert: Sendable, Hashable, Comparable {
    public var layer: Int, expert: Int
    public init(layer: Int, expert: Int) {
        self.layer = layer
        self.expert = expert
    }
    public static func < (a: WireExpert, b: WireExpert) -> Bool { (a.layer, a.expert) < (b.layer, b.expert) }
}

/// What a host reports of itself: its epoch (new each start), its memory for experts and what its
/// experts take, the experts it holds, its connections.
public struct ExpertHostStatus: Sendable, Equatable {
    public var epoch: [UInt8]
    public var memory: Int, inUse: Int
    public var experts: [WireExpert]
    public var connections: Int
    /// Whether it holds a fixed set (`--experts`) rather than what tier 1 assigns.
    public var fixed: Bool

    public init(epoch: [UInt8], memory: Int, inUse: Int, experts: [WireExpert], connections: Int, fixed: Bool) {
        self.epoch = epoch
        self.memory = memory
        self.inUse = inUse
        self.experts = experts
        self.connections = connections
        self.fixed = fixed
    }

    public var epochHex: String { epoch.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}

/// One expert's rows in a run request.
public struct RunPart: Sendable, Equatable {
    public var expert: Int, rows: Int
    public init(expert: Int, rows: Int) {
        self.expert = expert
        self.rows = rows
    }
}

/// Requests as the host reads them.
public enum ExpertRequest: Sendable {
    case hello(version: UInt32, shape: ExpertModelShape)
    case assign([WireExpert])
    /// Inputs [Σ rows, hidden], float32, each part's rows consecutive.
    case run(layer: Int, parts: [RunPart], inputs: ByteBuffer)
    case status
    /// Bytes to send back as they came: the link's round trip and bandwidth, measured.
    case probe(ByteBuffer)
}

/// Replies as tier 1 reads them.
public enum ExpertReply: Sendable {
    case hello(version: UInt32, status: ExpertHostStatus)
    case assigned(ExpertHostStatus)
    /// Outputs [Σ rows, hidden], float32.
    case ran(ByteBuffer)
    case status(ExpertHostStatus)
    case probed(ByteBuffer)
    case error(String)
}

// MARK: - Writing

extension ByteBuffer {
    mutating func writeExpertStatus(_ s: ExpertHostStatus) {
        precondition(s.epoch.count == 16)
        writeBytes(s.epoch)
        writeU64(s.memory)
        writeU64(s.inUse)
        writeU32(s.connections)
        writeU32(s.fixed ? 1 : 0)
        writeU32(s.experts.count)
        for e in s.experts {
            writeU32(e.layer)
            writeU32(e.expert)
        }
    }

    mutating func startExpertFrame(_ kind: ExpertFrameKind, id: UInt64) -> Int {
        let start = writerIndex
        writeInteger(UInt32(0), endianness: .little)
        writeInteger(kind.rawValue)
        writeInteger(id, endianness: .little)
        return start
    }
}

extension ExpertWire {
    public static func hello(id: UInt64, shape: ExpertModelShape, into b: inout ByteBuffer) {
        let start = b.startExpertFrame(.hello, id: id)
        b.writeInteger(version, endianness: .little)
        b.writeU32(shape.layers)
        b.writeU32(shape.expertsPerLayer)
        b.writeU32(shape.hidden)
        b.writeU32(shape.intermediate)
        let precision = Array(shape.precision.utf8.prefix(16))
        b.writeU32(precision.count)
        b.writeBytes(precision)
        b.finishFrame(at: start)
    }

    public static func assign(id: UInt64, experts: [WireExpert], into b: inout ByteBuffer) {
        let start = b.startExpertFrame(.assign, id: id)
        b.writeU32(experts.count)
        for e in experts {
            b.writeU32(e.layer)
            b.writeU32(e.expert)
        }
        b.finishFrame(at: start)
    }

    public static func status(id: UInt64, into b: inout ByteBuffer) {
        b.finishFrame(at: b.startExpertFrame(.status, id: id))
    }

    /// A probe of `bytes` bytes (zeros), echoed back.
    public static func probe(id: UInt64, bytes: Int, into b: inout ByteBuffer) {
        b.reserveCapacity(minimumWritableBytes: 13 + bytes)
        let start = b.startExpertFrame(.probe, id: id)
        b.writeRepeatingByte(0, count: bytes)
        b.finishFrame(at: start)
    }

    /// A run request: each part's rows of `input` ([*, hidden]), starting at `firstRows[i]`,
    /// gathered straight into the frame.
    public static func run(id: UInt64, layer: Int, parts: [RunPart], firstRows: [Int], input: UnsafePointer<Float>, hidden: Int,
                           into b: inout ByteBuffer) {
        let rows = parts.reduce(0) { $0 + $1.rows }
        b.reserveCapacity(minimumWritableBytes: 13 + 8 + 8 * parts.count + rows * hidden * 4)
        let start = b.startExpertFrame(.run, id: id)
        b.writeU32(layer)
        b.writeU32(parts.count)
        for p in parts {
            b.writeU32(p.expert)
            b.writeU32(p.rows)
        }
        for (p, first) in zip(parts, firstRows) { b.writeFloats(input + first * hidden, count: p.rows * hidden) }
        b.finishFrame(at: start)
    }

    /// A reply frame (the host's side). `ran` outputs are written by `writeOutputs`, straight
    /// from the host's buffer.
    public static func reply(_ reply: ExpertReply, id: UInt64, into b: inout ByteBuffer) {
        switch reply {
        case .hello(let v, let s):
            let start = b.startExpertFrame(.helloReply, id: id)
            b.writeInteger(v, endianness: .little)
            b.writeExpertStatus(s)
            b.finishFrame(at: start)
        case .assigned(let s):
            let start = b.startExpertFrame(.assigned, id: id)
            b.writeExpertStatus(s)
            b.finishFrame(at: start)
        case .ran(var outputs):
            b.reserveCapacity(minimumWritableBytes: 13 + outputs.readableBytes)
            let start = b.startExpertFrame(.ran, id: id)
            b.writeBuffer(&outputs)
            b.finishFrame(at: start)
        case .status(let s):
            let start = b.startExpertFrame(.statusReply, id: id)
            b.writeExpertStatus(s)
            b.finishFrame(at: start)
        case .probed(var bytes):
            let start = b.startExpertFrame(.probed, id: id)
            b.writeBuffer(&bytes)
            b.finishFrame(at: start)
        case .error(let message):
            let start = b.startExpertFrame(.error, id: id)
            b.writeString(String(message.utf8.prefix(4096)) ?? "error")
            b.finishFrame(at: start)
        }
    }

    /// A `ran` reply whose outputs are `rows` x `hidden` floats at `outputs`.
    public static func ran(id: UInt64, outputs: UnsafePointer<Float>, count: Int, into b: inout ByteBuffer) {
        b.reserveCapacity(minimumWritableBytes: 13 + count * 4)
        let start = b.startExpertFrame(.ran, id: id)
        b.writeFloats(outputs, count: count)
        b.finishFrame(at: start)
    }
}

// MARK: - Reading

extension PayloadReader {
    mutating func expertStatus() throws(WireError) -> ExpertHostStatus {
        let epoch = try bytes(16, "epoch")
        let memory = try size("memory"), inUse = try size("bytes in use")
        let connections = try u32("connections"), fixed = try u32("fixed")
        let experts = try self.experts()
        return ExpertHostStatus(epoch: epoch, memory: memory, inUse: inUse, experts: experts, connections: connections, fixed: fixed != 0)
    }

    mutating func experts() throws(WireError) -> [WireExpert] {
        let count = try u32("experts")
        try check(count, 0...(ExpertWire.maxLayers * ExpertWire.maxExperts), "experts", what)
        var out: [WireExpert] = []
        out.reserveCapacity(count)
        for _ in 0..<count {
            let layer = try u32("an expert's layer"), expert = try u32("an expert's index")
            try check(layer, 0...(ExpertWire.maxLayers - 1), "layer", what)
            try check(expert, 0...(ExpertWire.maxExperts - 1), "expert", what)
            out.append(WireExpert(layer: layer, expert: expert))
        }
        return out
    }
}

extension ExpertWire {
    /// A request from its frame, every field range-checked. A run's tensor bytes are checked
    /// against `hidden` by the host, which knows its model.
    public static func request(_ frame: Frame) throws(WireError) -> ExpertRequest {
        guard let kind = ExpertFrameKind(rawValue: frame.kind), kind.rawValue < 0x80 else {
            throw WireError("unknown request kind \(frame.kind)")
        }
        var r = PayloadReader(buffer: frame.payload, what: "\(kind) request")
        let request: ExpertRequest
        switch kind {
        case .hello:
            let version = UInt32(try r.u32("version"))
            let layers = try r.u32("layers"), experts = try r.u32("experts per layer")
            let hidden = try r.u32("hidden size"), inner = try r.u32("intermediate size")
            let length = try r.u32("precision's length")
            try check(layers, 1...maxLayers, "layers", r.what)
            try check(experts, 1...maxExperts, "experts per layer", r.what)
            try check(hidden, 1...maxWidth, "hidden size", r.what)
            try check(inner, 1...maxWidth, "intermediate size", r.what)
            try check(length, 1...16, "precision's length", r.what)
            guard let precision = String(validating: try r.bytes(length, "precision"), as: UTF8.self) else {
                throw WireError("\(r.what): the precision is not UTF-8")
            }
            request = .hello(version: version, shape: ExpertModelShape(layers: layers, expertsPerLayer: experts, hidden: hidden,
                                                                       intermediate: inner, precision: precision))
        case .assign:
            request = .assign(try r.experts())
        case .status:
            request = .status
        case .probe:
            request = .probe(r.buffer.readSlice(length: r.buffer.readableBytes)!)
        case .run:
            let layer = try r.u32("layer"), count = try r.u32("parts")
            try check(layer, 0...(maxLayers - 1), "layer", r.what)
            try check(count, 1...maxExperts, "parts", r.what)
            var parts: [RunPart] = []
            var rows = 0
            for _ in 0..<count {
                let expert = try r.u32("a part's expert"), n = try r.u32("a part's rows")
                try check(expert, 0...(maxExperts - 1), "expert", r.what)
                try check(n, 1...maxRows, "rows", r.what)
                rows += n
                parts.append(RunPart(expert: expert, rows: n))
            }
            try check(rows, 1...maxRows, "rows in all", r.what)
            let inputs = r.buffer.readSlice(length: r.buffer.readableBytes)!
            request = .run(layer: layer, parts: parts, inputs: inputs)
        default:
            throw WireError("unknown request kind \(frame.kind)")
        }
        try r.end()
        return request
    }

    /// A reply from its frame; a `ran` reply must hold `expectedFloats` outputs.
    public static func reply(_ frame: Frame, expectedFloats: Int = 0) throws(WireError) -> ExpertReply {
        guard let kind = ExpertFrameKind(rawValue: frame.kind), kind.rawValue >= 0x80 else { throw WireError("unknown reply kind \(frame.kind)") }
        var r = PayloadReader(buffer: frame.payload, what: "\(kind) reply")
        let reply: ExpertReply
        switch kind {
        case .helloReply: reply = .hello(version: UInt32(try r.u32("version")), status: try r.expertStatus())
        case .assigned: reply = .assigned(try r.expertStatus())
        case .statusReply: reply = .status(try r.expertStatus())
        case .probed: reply = .probed(r.buffer.readSlice(length: r.buffer.readableBytes)!)
        case .ran:
            guard r.buffer.readableBytes == expectedFloats * 4 else {
                throw WireError("run reply: \(r.buffer.readableBytes) bytes, \(expectedFloats * 4) expected")
            }
            reply = .ran(r.buffer.readSlice(length: r.buffer.readableBytes)!)
        case .error: reply = .error(r.buffer.readString(length: r.buffer.readableBytes) ?? "an error that is not UTF-8")
        default: throw WireError("unknown reply kind \(frame.kind)")
        }
        try r.end()
        return reply
    }
}
