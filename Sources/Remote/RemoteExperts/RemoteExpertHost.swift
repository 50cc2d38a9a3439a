import AttentionWire
import ExpertWire
import NIOCore
import NIOPosix
import Orchestration
import RemoteAttention
import Runtime
import SwitchyardSupport

/// Tier 1's connection to one expert host, over AttentionWire's frames. Run requests complete
/// asynchronously: their outputs are copied into place on NIO's event loop as the reply arrives,
/// and their completion is signalled there, so tier 1's threads wait only where they need the
/// outputs. Other requests (hello, assign, status, probe) are waited for. A reply that misses the
/// deadline, or a connection that ends, fails every request in flight: the host counts as lost.
public final class RemoteExpertHost: ExpertHost, @unchecked Sendable {
    public let address: WorkerAddress
    public let deadline: Duration
    private let channel: Channel
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var nextID: UInt64 = 0
    private var replies: [UInt64: Frame] = [:]
    /// Runs in flight: where each part's output rows go ([start row, rows] of `output`).
    private var runs: [UInt64: (done: Completion, output: UnsafeMutablePointer<Float>, parts: [(first: Int, rows: Int)], hidden: Int)] = [:]
    private var broken: String?
    public private(set) var status: ExpertHostStatus
    public private(set) var roundTrip = 0.0, bandwidth = 0.0

    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    public var name: String { "expert host \(address)" }
    public var memory: Int { status.memory }
    public var fixed: Bool { status.fixed }
    public var held: Set<ExpertKey> { Set(status.experts.map { ExpertKey(layer: $0.layer, expert: $0.expert) }) }

    /// Connects, says hello with the model's shape (without one, only asks for the host's status:
    /// a health check) and measures the link.
    public init(_ address: WorkerAddress, shape: ExpertModelShape?, deadline: Duration = .seconds(30),
                connectTimeout: Duration = .seconds(2)) throws(LinkFailure) {
        self.address = address
        self.deadline = deadline
        status = ExpertHostStatus(epoch: [], memory: 0, inUse: 0, experts: [], connections: 0, fixed: false)
        let handler = FrameReplyHandler()
        channel = try handler.connect(to: address, timeout: connectTimeout, group: Self.group, what: "the expert host")
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        handler.onFrame = { [weak self] in self?.received($0) }
        handler.onFailure = { [weak self] in self?.fail($0) }
        let id = send { id, b in
            if let shape { ExpertWire.hello(id: id, shape: shape, into: &b) } else { ExpertWire.status(id: id, into: &b) }
        }
        switch try reply(id) {
        case .hello(_, let s), .status(let s): status = s
        case .error(let message): close(); throw LinkFailure("the expert host at \(address) refused the model: \(message)")
        default: close(); throw LinkFailure("the expert host at \(address) answered hello with something else")
        }
        if shape != nil { try measureLink() }
    }

    deinit {
        channel.close(promise: nil)
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    public func close() { channel.close(promise: nil) }

    public var isLost: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return broken != nil
    }

    /// Round trip: the fastest of five empty probes. Bandwidth: a 1 MiB probe, which crosses the
    /// link twice, less the round trip.
    private func measureLink() throws(LinkFailure) {
        func probe(_ bytes: Int) throws(LinkFailure) -> Double {
            let started = ContinuousClock.now
            let id = send { id, b in ExpertWire.probe(id: id, bytes: bytes, into: &b) }
            guard case .probed = try reply(id) else { throw LinkFailure("the expert host at \(address) answered a probe with something else") }
            return (ContinuousClock.now - started).seconds
        }
        roundTrip = try (0..<5).map { _ throws(LinkFailure) in try probe(0) }.min()!
        let big = 1 << 20
        let seconds = try (0..<2).map { _ throws(LinkFailure) in try probe(big) }.min()!
        bandwidth = Double(2 * big) / max(seconds - roundTrip, 1e-6)
    }

    @discardableResult
    private func send(_ write: (UInt64, inout ByteBuffer) -> Void) -> UInt64 {
        pthread_mutex_lock(&mutex)
        nextID += 1
        let id = nextID
        pthread_mutex_unlock(&mutex)
        var b = channel.allocator.buffer(capacity: 64)
        write(id, &b)
        channel.writeAndFlush(b, promise: nil)
        return id
    }

    /// The reply to request `id`, waited for up to the deadline.
    private func reply(_ id: UInt64) throws(LinkFailure) -> ExpertReply {
        let end = ContinuousClock.now + deadline
        pthread_mutex_lock(&mutex)
        var frame: Frame?
        while frame == nil {
            if let f = replies.removeValue(forKey: id) { frame = f; break }
            if let broken {
                pthread_mutex_unlock(&mutex)
                throw LinkFailure("the expert host at \(address) is gone: \(broken)")
            }
            let left = end - ContinuousClock.now
            if left <= .zero {
                pthread_mutex_unlock(&mutex)
                fail("no reply within \(deadline.seconds) s")
                throw LinkFailure("the expert host at \(address) did not answer within \(deadline.seconds) s")
            }
            var until = timespec()
            clock_gettime(CLOCK_REALTIME, &until)
            let ns = Int(min(left.seconds, 1) * 1e9) + until.tv_nsec
            until.tv_sec += ns / 1_000_000_000
            until.tv_nsec = ns % 1_000_000_000
            pthread_cond_timedwait(&condition, &mutex, &until)
        }
        pthread_mutex_unlock(&mutex)
        do { return try ExpertWire.reply(frame!) } catch {
            fail("a malformed reply: \(error)")
            throw LinkFailure("the expert host at \(address) sent \(error)")
        }
    }

    public func assign(_ experts: [ExpertKey]) throws(WorkFailure) {
        let wire = experts.map { WireExpert(layer: $0.layer, expert: $0.expert) }
        let answer: ExpertReply
        do throws(LinkFailure) {
            let id = send { id, b in ExpertWire.assign(id: id, experts: wire, into: &b) }
            answer = try reply(id)
        } catch {
            throw WorkFailure(error.description)
        }
        switch answer {
        case .assigned(let s): status = s
        case .error(let message): throw WorkFailure("the expert host at \(address) refused \(experts.count) experts: \(message)")
        default: throw WorkFailure("the expert host at \(address) answered an assignment with something else")
        }
    }

    public func run(layer: Int, tasks: [ExpertTask], input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                    hidden: Int) -> Completion {
        let done = Completion()
        let parts = tasks.map { RunPart(expert: $0.expert, rows: $0.tokens) }
        pthread_mutex_lock(&mutex)
        if let broken {
            pthread_mutex_unlock(&mutex)
            return Completion(failed: WorkFailure("the expert host at \(address) is gone: \(broken)"))
        }
        nextID += 1
        let id = nextID
        runs[id] = (done, output, tasks.map { ($0.firstRow, $0.tokens) }, hidden)
        pthread_mutex_unlock(&mutex)
        done.markStarted()
        var b = channel.allocator.buffer(capacity: 0)
        ExpertWire.run(id: id, layer: layer, parts: parts, firstRows: tasks.map(\.firstRow), input: input, hidden: hidden, into: &b)
        channel.writeAndFlush(b, promise: nil)
        let deadline = self.deadline
        channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(deadline.seconds * 1e9))) { [weak self] in
            guard let self else { return }
            pthread_mutex_lock(&self.mutex)
            let waiting = self.runs[id] != nil
            pthread_mutex_unlock(&self.mutex)
            if waiting { self.fail("no reply within \(deadline.seconds) s") }
        }
        return done
    }

    private func received(_ frame: Frame) {
        pthread_mutex_lock(&mutex)
        if let run = runs.removeValue(forKey: frame.id) {
            pthread_mutex_unlock(&mutex)
            do throws(WireError) {
                switch try ExpertWire.reply(frame, expectedFloats: run.parts.reduce(0) { $0 + $1.rows } * run.hidden) {
                case .ran(let outputs):
                    // The rows come back in the order sent, each part's to its own rows.
                    outputs.withUnsafeReadableBytes { bytes in
                        var offset = 0
                        for p in run.parts {
                            let count = p.rows * run.hidden * 4
                            UnsafeMutableRawPointer(run.output + p.first * run.hidden).copyMemory(from: bytes.baseAddress! + offset, byteCount: count)
                            offset += count
                        }
                    }
                    run.done.signal()
                case .error(let message):
                    run.done.signal(failure: WorkFailure("the expert host at \(address) refused a run: \(message)"))
                default:
                    run.done.signal(failure: WorkFailure("the expert host at \(address) answered a run with something else"))
                }
            } catch {
                run.done.signal(failure: WorkFailure("the expert host at \(address) sent \(error)"))
            }
            return
        }
        replies[frame.id] = frame
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }

    private func fail(_ reason: String) {
        pthread_mutex_lock(&mutex)
        if broken == nil { broken = reason }
        let failed = runs
        runs = [:]
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
        for (_, run) in failed { run.done.signal(failure: WorkFailure("the expert host at \(address) is gone: \(reason)")) }
        channel.close(promise: nil)
    }
}
