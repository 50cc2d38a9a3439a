import AttentionWire
import NIOCore
import NIOPosix
import Runtime
import SwitchyardSupport

/// Why a worker could not answer: its connection broke or never came up, or a reply missed its
/// deadline. Either way its caches are treated as lost.
public struct LinkFailure: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A worker's address, "host:port".
public struct WorkerAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses "host:port" (IPv6 as "[::1]:port"), the port in 1...65535.
    public init(parsing text: String) throws(LinkFailure) {
        guard let colon = text.lastIndex(of: ":") else { throw LinkFailure("a worker address is host:port, found \"\(text)\"") }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            throw LinkFailure("a worker address is host:port with a port in 1...65535, found \"\(text)\"")
        }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// One connection to an attention worker, used from tier 1's synchronous threads: `send` writes a
/// request and returns at once; `wait` blocks until its reply, the connection's end, or the
/// deadline. Replies come on NIO's event loop and are handed over under a mutex.
public final class WorkerLink: @unchecked Sendable {
    public let address: WorkerAddress
    /// How long a reply may take before the worker counts as gone.
    public let deadline: Duration
    private let channel: Channel
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var replies: [UInt64: (frame: Frame, arrived: ContinuousClock.Instant)] = [:]
    private var broken: String?
    private var nextID: UInt64 = 0
    /// Requests whose replies nobody waits for (free, truncate).
    private var unawaited = Set<UInt64>()
    /// What the worker said when the link came up.
    public private(set) var status: WorkerStatus

    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// Connects and says hello with the model's KV layout (without one, asks for the worker's
    /// status only: a health check).
    public init(_ address: WorkerAddress, layout: KVLayout?, deadline: Duration = .seconds(30), connectTimeout: Duration = .seconds(2)) throws(LinkFailure) {
        self.address = address
        self.deadline = deadline
        status = WorkerStatus(epoch: [], budget: 0, inUse: 0, sequences: 0, connections: 0)
        let handler = FrameReplyHandler()
        channel = try handler.connect(to: address, timeout: connectTimeout, group: Self.group, what: "the attention worker")
        pthread_mutex_init(&mutex, nil)
        pthread_condattr_t.withMonotonic { pthread_cond_init(&condition, $0) }
        handler.onFrame = { [weak self] in self?.received($0) }
        handler.onFailure = { [weak self] in self?.fail($0) }
        let id = send { id, b in
            if let layout { AttentionWire.hello(id: id, layout: layout, into: &b) } else { AttentionWire.status(id: id, into: &b) }
        }
        switch try wait(id) {
        case .hello(_, let s), .status(let s): status = s
        case .error(let message): close(); throw LinkFailure("the attention worker at \(address) refused the model: \(message)")
        default: close(); throw LinkFailure("the attention worker at \(address) answered hello with something else")
        }
    }

    deinit {
        channel.close(promise: nil)
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    public func close() { channel.close(promise: nil) }

    /// Whether the connection has ended.
    public var isBroken: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return broken != nil
    }

    /// Writes one request; returns its id for `wait` (unless `awaited` is false: its reply is
    /// dropped).
    @discardableResult
    public func send(awaited: Bool = true, _ write: (UInt64, inout ByteBuffer) -> Void) -> UInt64 {
        pthread_mutex_lock(&mutex)
        nextID += 1
        let id = nextID
        if !awaited { unawaited.insert(id) }
        pthread_mutex_unlock(&mutex)
        var b = channel.allocator.buffer(capacity: 64)
        write(id, &b)
        channel.writeAndFlush(b, promise: nil)
        return id
    }

    /// The reply to request `id`, parsed (an attend reply holds `expectedFloats` outputs).
    public func wait(_ id: UInt64, expectedFloats: Int = 0) throws(LinkFailure) -> WireReply {
        try waitTimed(id, expectedFloats: expectedFloats).reply
    }

    /// The reply to request `id` and when it arrived.
    public func waitTimed(_ id: UInt64, expectedFloats: Int = 0) throws(LinkFailure) -> (reply: WireReply, arrived: ContinuousClock.Instant) {
        let (frame, arrived) = try waitFrame(id)
        do { return (try AttentionWire.reply(frame, expectedFloats: expectedFloats), arrived) } catch {
            fail("a malformed reply: \(error)")
            throw LinkFailure("the attention worker at \(address) sent \(error)")
        }
    }

    /// Whether `wait(id)` would return at once.
    public func hasReply(_ id: UInt64) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return replies[id] != nil || broken != nil
    }

    private func waitFrame(_ id: UInt64) throws(LinkFailure) -> (frame: Frame, arrived: ContinuousClock.Instant) {
        var end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &end)
        let ns = Int(deadline.seconds * 1e9)
        end.tv_sec += ns / 1_000_000_000
        end.tv_nsec += ns % 1_000_000_000
        if end.tv_nsec >= 1_000_000_000 { end.tv_sec += 1; end.tv_nsec -= 1_000_000_000 }
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while true {
            if let reply = replies.removeValue(forKey: id) { return reply }
            if let broken { throw LinkFailure("the attention worker at \(address) is gone: \(broken)") }
            if pthread_cond_timedwait(&condition, &mutex, &end) == ETIMEDOUT, replies[id] == nil {
                broken = "no reply within \(deadline.seconds) s"
                channel.close(promise: nil)
            }
        }
    }

    fileprivate func received(_ frame: Frame) {
        pthread_mutex_lock(&mutex)
        if unawaited.remove(frame.id) == nil { replies[frame.id] = (frame, .now) }
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }

    fileprivate func fail(_ reason: String) {
        pthread_mutex_lock(&mutex)
        if broken == nil { broken = reason }
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
        channel.close(promise: nil)
    }
}

/// A worker connection's inbound side (attention workers and expert hosts alike): cuts reply frames
/// from the stream and hands each on, and reports the connection's end or a stream that cannot be
/// delimited. Its callbacks are set once the link exists, before anything is sent.
public final class FrameReplyHandler: ChannelInboundHandler, @unchecked Sendable {
    public typealias InboundIn = ByteBuffer
    public var onFrame: ((Frame) -> Void)?
    public var onFailure: ((String) -> Void)?
    private var buffer: ByteBuffer?
    private let reader = FrameReader()

    public init() {}

    /// Connects to `address` (TCP, no delay) with this handler on the connection.
    public func connect(to address: WorkerAddress, timeout: Duration, group: EventLoopGroup, what: String) throws(LinkFailure) -> Channel {
        do {
            return try ClientBootstrap(group: group)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connectTimeout(.milliseconds(Int64(timeout.seconds * 1000)))
                .channelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(self) }
                }
                .connect(host: address.host, port: address.port).wait()
        } catch {
            throw LinkFailure("cannot connect to \(what) at \(address): \(error)")
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        do {
            while let frame = try reader.next(&buffer!) { onFrame?(frame) }
            buffer!.discardReadBytes()
        } catch {
            onFailure?("\(error)")
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        onFailure?("the connection closed")
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        onFailure?("\(error)")
        context.close(promise: nil)
    }
}

extension pthread_condattr_t {
    /// Runs `body` with attributes for a condition whose timed waits use the monotonic clock.
    static func withMonotonic(_ body: (UnsafePointer<pthread_condattr_t>) -> Void) {
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        body(&attributes)
        pthread_condattr_destroy(&attributes)
    }
}
