import AttentionWire
import Kernels
import NIOCore
import NIOPosix
import SwitchyardSupport

/// What a worker serves over frames (attention, experts): every request frame gets one reply frame.
/// Called on the server's compute thread only, one request at a time.
public protocol FrameService: AnyObject {
    func connectionOpened(_ connection: Int)
    func connectionClosed(_ connection: Int)
    /// Writes the reply to `frame` (its kind | 0x80 and its id, or an error frame) into `out`.
    func respond(to frame: Frame, connection: Int, into out: inout ByteBuffer)
}

extension AttentionService: FrameService {
    public func respond(to frame: Frame, connection: Int, into out: inout ByteBuffer) {
        AttentionWire.reply(handle(frame, connection: connection), id: frame.id, into: &out)
    }
}

/// A worker's TCP server: NIO cuts frames on its event loop; every request runs on one compute
/// thread, in arrival order, and its reply is written back on the connection's loop. A frame
/// whose length cannot be right ends that connection (the stream cannot be re-synchronised),
/// never the process.
public final class FrameServer<Service: FrameService>: @unchecked Sendable {
    public let service: Service
    private let compute = SerialQueue()
    private let group: MultiThreadedEventLoopGroup
    private var channel: Channel?
    private var mutex = pthread_mutex_t()
    private var nextConnection = 0

    public init(service: Service) {
        self.service = service
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        pthread_mutex_init(&mutex, nil)
    }

    /// Binds `host:port` (port 0: a free one) and returns the address bound.
    public func start(host: String, port: Int) throws -> (host: String, port: Int) {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                let id = newConnection()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ConnectionHandler(server: self, connection: id))
                }
            }
        let channel = try bootstrap.bind(host: host, port: port).wait()
        self.channel = channel
        guard let address = channel.localAddress, let bound = address.port else { throw WireError("the listening socket has no address") }
        return (address.ipAddress ?? host, bound)
    }

    /// Blocks until the server is closed.
    public func wait() throws { try channel?.closeFuture.wait() }

    public func close() {
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
    }

    private func newConnection() -> Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        nextConnection += 1
        return nextConnection
    }

    fileprivate func opened(_ connection: Int) {
        let service = UncheckedBox(service)
        _ = compute.submit { service.value.connectionOpened(connection) }
    }

    fileprivate func closed(_ connection: Int) {
        let service = UncheckedBox(service)
        _ = compute.submit { service.value.connectionClosed(connection) }
    }

    fileprivate func handle(_ frame: Frame, connection: Int, channel: Channel) {
        let box = UncheckedBox(frame)
        let service = UncheckedBox(service)
        _ = compute.submit {
            var out = channel.allocator.buffer(capacity: 64)
            service.value.respond(to: box.value, connection: connection, into: &out)
            channel.writeAndFlush(out, promise: nil)
        }
    }
}

/// Moves a value whose type NIO does not mark Sendable to the compute thread, which alone uses it.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

private final class ConnectionHandler<Service: FrameService>: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let server: FrameServer<Service>
    let connection: Int
    var buffer: ByteBuffer?
    let reader = FrameReader()

    init(server: FrameServer<Service>, connection: Int) {
        self.server = server
        self.connection = connection
    }

    func channelActive(context: ChannelHandlerContext) {
        server.opened(connection)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        server.closed(connection)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        do {
            while let frame = try reader.next(&buffer!) {
                server.handle(frame, connection: connection, channel: context.channel)
            }
            buffer!.discardReadBytes()
        } catch {
            var out = context.channel.allocator.buffer(capacity: 64)
            AttentionWire.reply(.error("\(error); closing the connection"), id: 0, into: &out)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in channel.close(promise: nil) }
            buffer = nil
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// The attention worker's server.
public typealias AttentionServer = FrameServer<AttentionService>
