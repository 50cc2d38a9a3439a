import AttentionWire
import NIOCore
import Runtime
import SwitchyardSupport

/// Tier 1's side of two-tier inference: the KV caches live on attention workers, and each
/// layer's attention is a round trip to them carrying only queries and new keys/values out and
/// attention outputs back. Sequences go to the worker with the most free KV memory. A worker that
/// breaks its connection or misses a deadline loses its sequences (the model computes them again
/// elsewhere, see `RelocatableKVCache`); one that comes back is used again for new placements.
///
/// Cache operations and attention are serialised by one lock: tier 1 runs one step at a time.
public final class RemoteAttention: AsynchronousAttention, RelocatableKVCache, @unchecked Sendable {
    public let layout: KVLayout
    public var cache: any KVCache { self }
    public let deadline: Duration
    /// How long a worker that failed is left alone before a reconnect is tried.
    public var retryInterval: Duration = .seconds(1)
    /// Told of each lost worker, reconnection and relocated sequence, as a line of text.
    public var report: @Sendable (String) -> Void = { _ in }

    private var mutex = pthread_mutex_t()
    private struct Worker {
        let address: WorkerAddress
        var link: WorkerLink?
        var retryAfter: ContinuousClock.Instant
        var budget: Int
        var inUse: Int
        var epoch: [UInt8]
        var lastFailure: String?
        /// Failed connects since the last success: the wait before the next one doubles with each.
        var failedConnects = 0
        var free: Int { budget == 0 ? Int.max : budget - inUse }
    }
    private var workers: [Worker] = []
    private struct Placement {
        var worker: Int
        var remote: UInt64
        let capacity: Int
        var length: Int
        var lost: Bool
    }
    private var sequences: [Int: Placement] = [:]
    private var nextID = 0
    /// Bytes sent and received by attend requests, for the wire-traffic report.
    public private(set) var bytesSent = 0
    public private(set) var bytesReceived = 0
    /// Workers lost since the start, and sequences relocated.
    public private(set) var failures = 0
    public private(set) var relocations = 0

    /// Connects to every worker; each must be up and accept the model's KV layout.
    public init(layout: KVLayout, workers addresses: [WorkerAddress], deadline: Duration = .seconds(30)) throws(LinkFailure) {
        guard !addresses.isEmpty else { throw LinkFailure("no attention workers given") }
        self.layout = layout
        self.deadline = deadline
        pthread_mutex_init(&mutex, nil)
        for address in addresses {
            let link = try WorkerLink(address, layout: layout, deadline: deadline)
            workers.append(Worker(address: address, link: link, retryAfter: .now, budget: link.status.budget, inUse: link.status.inUse,
                                  epoch: link.status.epoch))
        }
    }

    deinit { pthread_mutex_destroy(&mutex) }

    private func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }

    /// The workers now: addresses, whether each is connected, its free KV bytes (nil: no limit).
    public var workerStates: [(address: WorkerAddress, up: Bool, free: Int?, sequences: Int)] {
        locked {
            workers.enumerated().map { i, w in
                (w.address, w.link != nil, w.budget == 0 ? nil : w.free, sequences.values.filter { $0.worker == i && !$0.lost }.count)
            }
        }
    }

    /// Replaces the worker list (a deployment's supervisor learned of a restart elsewhere):
    /// workers no longer listed lose their sequences; new ones are connected when next needed.
    public func setWorkers(_ addresses: [WorkerAddress]) {
        locked {
            var kept: [Worker] = []
            var newIndex: [Int: Int] = [:]
            for (i, w) in workers.enumerated() {
                if addresses.contains(w.address) { newIndex[i] = kept.count; kept.append(w) } else { w.link?.close() }
            }
            for a in addresses where !kept.contains(where: { $0.address == a }) {
                kept.append(Worker(address: a, link: nil, retryAfter: .now, budget: 0, inUse: 0, epoch: [], lastFailure: nil))
            }
            for (id, var p) in sequences {
                if let n = newIndex[p.worker] { p.worker = n } else { p.lost = true; p.length = 0 }
                sequences[id] = p
            }
            workers = kept
        }
    }

    // MARK: - Worker health (under the lock)

    private func markDown(_ w: Int, _ reason: String) {
        workers[w].link?.close()
        workers[w].link = nil
        workers[w].lastFailure = reason
        workers[w].retryAfter = .now + retryInterval
        failures += 1
        var lost = 0
        for (id, p) in sequences where p.worker == w && !p.lost {
            sequences[id]!.lost = true
            sequences[id]!.length = 0
            lost += 1
        }
        report("attention worker \(workers[w].address) lost (\(reason)); its \(lost) sequences will be computed again on the others")
    }

    /// A connected link to worker `w`, reconnecting when its retry time has come.
    private func link(_ w: Int) -> WorkerLink? {
        if let link = workers[w].link {
            if !link.isBroken { return link }
            markDown(w, "the connection closed")
        }
        guard ContinuousClock.now >= workers[w].retryAfter else { return nil }
        do throws(LinkFailure) {
            let link = try WorkerLink(workers[w].address, layout: layout, deadline: deadline)
            workers[w].link = link
            workers[w].budget = link.status.budget
            workers[w].inUse = link.status.inUse
            let how = workers[w].epoch.isEmpty ? "connected" : workers[w].epoch == link.status.epoch ? "reconnected" : "back after a restart"
            report("attention worker \(workers[w].address) \(how) (epoch \(link.status.epochHex))")
            workers[w].epoch = link.status.epoch
            workers[w].failedConnects = 0
            return link
        } catch {
            // An unreachable host costs a connect timeout per try: back off, up to a minute.
            workers[w].lastFailure = error.description
            workers[w].failedConnects += 1
            workers[w].retryAfter = .now + retryInterval * (1 << min(6, workers[w].failedConnects))
            return nil
        }
    }

    /// Reserves room on the worker with the most free KV memory that has it.
    private func place(capacity: Int) throws(KVCacheError) -> (worker: Int, remote: UInt64) {
        let need = layout.bytes(positions: capacity)
        var reasons: [String] = []
        let order = workers.indices.filter { link($0) != nil }.sorted { workers[$0].free > workers[$1].free }
        // The worker decides whether the sequence fits: it may store keys and values more compactly
        // than float32 (`--kv-dtype`).
        for w in order {
            guard let link = workers[w].link else { continue }
            let id = link.send { id, b in AttentionWire.reserve(id: id, capacity: capacity, into: &b) }
            do throws(LinkFailure) {
                switch try link.wait(id) {
                case .reserved(let remote, let inUse):
                    workers[w].inUse = inUse
                    return (w, remote)
                case .error(let message): reasons.append("\(workers[w].address): \(message)")
                default: reasons.append("\(workers[w].address): an unexpected reply")
                }
            } catch {
                markDown(w, error.description)
                reasons.append(error.description)
            }
        }
        for w in workers.indices where workers[w].link == nil {
            reasons.append("\(workers[w].address) is down (\(workers[w].lastFailure ?? "not connected"))")
        }
        throw KVCacheError("no attention worker has room for \(capacity) positions (\(formatBytes(need)) at float32): " + reasons.joined(separator: "; "))
    }

    // MARK: - KVCache

    public func reserve(capacity: Int) throws(KVCacheError) -> SequenceID {
        guard capacity > 0, capacity <= AttentionWire.maxPositions else {
            throw KVCacheError("a sequence needs room for 1 to \(AttentionWire.maxPositions) positions, not \(capacity)")
        }
        return try locked { () throws(KVCacheError) -> SequenceID in
            let (w, remote) = try place(capacity: capacity)
            nextID += 1
            sequences[nextID] = Placement(worker: w, remote: remote, capacity: capacity, length: 0, lost: false)
            return SequenceID(nextID)
        }
    }

    public func relocate(_ sequence: SequenceID) throws(KVCacheError) {
        try locked { () throws(KVCacheError) in
            guard let p = sequences[sequence.value], p.lost else { return }
            let (w, remote) = try place(capacity: p.capacity)
            sequences[sequence.value] = Placement(worker: w, remote: remote, capacity: p.capacity, length: 0, lost: false)
            relocations += 1
            report("\(sequence) moves to attention worker \(workers[w].address)")
        }
    }

    public func isLost(_ sequence: SequenceID) -> Bool { locked { sequences[sequence.value]?.lost ?? false } }

    /// Rows reach a worker only with the attention that uses them (`attend`).
    public func append(_ sequence: SequenceID, layer: Int, position: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        preconditionFailure("a remote KV cache is written by its attention requests")
    }

    public func advance(_ sequence: SequenceID, by count: Int) {
        locked {
            guard var p = sequences[sequence.value], !p.lost else { return }
            precondition(p.length + count <= p.capacity, "KV cache overflow")
            p.length += count
            sequences[sequence.value] = p
        }
    }

    public func truncate(_ sequence: SequenceID, to length: Int) {
        locked {
            guard var p = sequences[sequence.value] else { return }
            p.length = min(p.length, max(0, length))
            sequences[sequence.value] = p
            if !p.lost, let link = workers[p.worker].link {
                link.send(awaited: false) { id, b in AttentionWire.truncate(id: id, sequence: p.remote, length: p.length, into: &b) }
            }
        }
    }

    public func free(_ sequence: SequenceID) {
        locked {
            guard let p = sequences.removeValue(forKey: sequence.value) else { return }
            if !p.lost, let link = workers[p.worker].link {
                // The worker's own count (it may store compactly) arrives with its next reserve reply.
                link.send(awaited: false) { id, b in AttentionWire.free(id: id, sequence: p.remote, into: &b) }
            }
        }
    }

    public func length(of sequence: SequenceID) -> Int { locked { sequences[sequence.value]?.length ?? 0 } }
    public func capacity(of sequence: SequenceID) -> Int { locked { sequences[sequence.value]?.capacity ?? 0 } }

    public var bytesInUse: Int { locked { sequences.values.reduce(0) { $0 + layout.bytes(positions: $1.capacity) } } }

    /// The KV memory of the workers that are up (nil when one has no limit).
    public var bytesAvailable: Int? {
        locked {
            let up = workers.filter { $0.link != nil }
            return up.contains { $0.budget == 0 } ? nil : up.reduce(0) { $0 + $1.budget }
        }
    }

    // MARK: - Attention

    /// Requests sent for one step's attention, one per worker that holds some of its tokens.
    final class Pending: PendingAttention {
        /// The link each request went on (not a worker index: the worker list may change meanwhile).
        var requests: [(link: WorkerLink, id: UInt64, rows: [Int])] = []
        let output: UnsafeMutablePointer<Float>
        /// Per token, the outputs' width.
        let outputWidth: Int
        let layer: Int
        let sent = ContinuousClock.now
        init(output: UnsafeMutablePointer<Float>, outputWidth: Int, layer: Int) {
            self.output = output
            self.outputWidth = outputWidth
            self.layer = layer
        }
    }

    private var meanRoundTrip: Double?

    public var roundTrip: Duration? { locked { meanRoundTrip.map { .nanoseconds(Int64($0 * 1e9)) } } }

    public func attend(
        layer: Int, shape: AttentionShape, queries: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        slots: [TokenSlot], output: UnsafeMutablePointer<Float>, scratch: FloatBuffer
    ) throws(WorkFailure) {
        try finish(try startRemote(layer: layer, shape: shape, queries: queries, keys: keys, values: values, slots: slots, output: output))
    }

    public func startRemote(
        layer: Int, shape: AttentionShape, queries: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        slots: [TokenSlot], output: UnsafeMutablePointer<Float>
    ) throws(WorkFailure) -> any PendingAttention {
        try locked { () throws(WorkFailure) -> Pending in
            // The tokens of each worker, in step order.
            var rows: [Int: [Int]] = [:]
            var remoteSlots: [Int: [RemoteSlot]] = [:]
            for (t, slot) in slots.enumerated() {
                guard let p = sequences[slot.sequence.value] else { throw WorkFailure("\(slot.sequence) is not in the remote KV cache") }
                guard !p.lost, workers[p.worker].link != nil else {
                    throw WorkFailure("the rows of \(slot.sequence) were lost with the attention worker at \(workers[p.worker].address)")
                }
                rows[p.worker, default: []].append(t)
                remoteSlots[p.worker, default: []].append(RemoteSlot(sequence: p.remote, position: slot.position))
            }
            // Every worker's request goes out before any reply is awaited: the workers compute at once.
            let pending = Pending(output: output, outputWidth: shape.outputWidth, layer: layer)
            for (w, r) in rows.sorted(by: { $0.key < $1.key }) {
                let header = AttendHeader(layer: layer, shape: shape, slots: remoteSlots[w]!)
                let id = workers[w].link!.send { id, b in
                    AttentionWire.attend(id: id, header, rows: r, queries: queries, keys: keys, values: values, into: &b)
                }
                bytesSent += 13 + header.payloadBytes
                pending.requests.append((workers[w].link!, id, r))
            }
            return pending
        }
    }

    public func isDone(_ pending: any PendingAttention) -> Bool {
        let p = pending as! Pending
        return p.requests.allSatisfy { $0.link.hasReply($0.id) }
    }

    public func finish(_ pending: any PendingAttention) throws(WorkFailure) {
        let p = pending as! Pending
        let qW = p.outputWidth
        try locked { () throws(WorkFailure) in
            var failure: WorkFailure?
            var latest = p.sent
            // Each reply is taken once, even if finish is called again after a failure.
            let requests = p.requests
            p.requests = []
            for (link, id, r) in requests {
                let address = link.address
                do throws(LinkFailure) {
                    let (reply, arrived) = try link.waitTimed(id, expectedFloats: r.count * qW)
                    latest = max(latest, arrived)
                    switch reply {
                    case .attended(let out):
                        bytesReceived += 13 + out.count * 4
                        out.withUnsafeBufferPointer { o in
                            for (i, t) in r.enumerated() { (p.output + t * qW).update(from: o.baseAddress! + i * qW, count: qW) }
                        }
                    case .error(let message):
                        failure = failure ?? WorkFailure("the attention worker at \(address) refused layer \(p.layer): \(message)")
                    default:
                        failure = failure ?? WorkFailure("the attention worker at \(address) answered attend with something else")
                    }
                } catch {
                    // The worker may have been replaced or dropped from the list meanwhile.
                    if let w = workers.firstIndex(where: { $0.link === link }) { markDown(w, error.description) }
                    failure = failure ?? WorkFailure(error.description)
                }
            }
            if let failure { throw failure }
            let seconds = (latest - p.sent).seconds
            meanRoundTrip = meanRoundTrip.map { 0.9 * $0 + 0.1 * seconds } ?? seconds
        }
    }
}
