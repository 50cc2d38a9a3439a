import Synchronization
import SwitchyardSupport

/// A persistent pool of worker threads for kernels.
///
/// Decode runs hundreds of small parallel regions per token, so the cost of starting one matters:
/// workers spin on a generation counter (for up to `spinNanoseconds`) before sleeping on a condition
/// variable, which makes a region cost about a tenth of a microsecond when the cores are free (see
/// DESIGN.md).
/// Work is split into `count` items. Each thread first claims, in order, the items of its own
/// share (thread t: t·count/threads up to the next thread's), so its weight rows form one stream
/// that the prefetchers follow across items; then it claims what is left of the others' shares,
/// so uneven items and a late thread still balance.
public final class ThreadPool: @unchecked Sendable {
    public let threadCount: Int

    private let generation = Atomic<Int>(0)
    /// One claim counter per thread's share, each on its own cache line.
    private let cursors: UnsafeMutablePointer<Atomic<Int>>
    private static let cursorStride = 8
    private let pending = Atomic<Int>(0)
    private var itemCount = 0
    private var job: ((Int) -> Void)?
    private var mutex = pthread_mutex_t()
    private var wake = pthread_cond_t()
    private var sleepers = 0
    private var shuttingDown = false
    private var threads: [pthread_t] = []
    /// Serialises callers: the pool runs one parallel region at a time.
    private let callerLock = Mutex(())

    /// The number of cores this process may run on (its affinity mask, as the kernel reports it in
    /// /proc/self/status), at least 1.
    public static var availableCores: Int {
        #if os(Linux)
        if let file = fopen("/proc/self/status", "r") {
            defer { fclose(file) }
            var line: UnsafeMutablePointer<CChar>? = nil
            var capacity = 0
            defer { free(line) }
            while getline(&line, &capacity, file) > 0, let line {
                let text = String(cString: line)
                guard text.hasPrefix("Cpus_allowed:") else { continue }
                let count = text.dropFirst("Cpus_allowed:".count).reduce(0) { total, c in
                    total + (c.hexDigitValue.map { $0.nonzeroBitCount } ?? 0)
                }
                if count > 0 { return count }
            }
        }
        #endif
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }

    public static let shared = ThreadPool(threads: availableCores)

    /// - Parameter threads: total threads including the caller, which takes part in every region.
    public init(threads: Int) {
        threadCount = max(1, threads)
        Self.liveThreads.add(threadCount, ordering: .relaxed)
        cursors = .allocate(capacity: threadCount * Self.cursorStride)
        for i in 0..<(threadCount * Self.cursorStride) { (cursors + i).initialize(to: Atomic<Int>(0)) }
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&wake, nil)
        for index in 1..<threadCount {
            // Not a strong or checked `unowned` reference: deinit wakes the workers to exit, and they
            // read the pool while its deinit runs. That is safe because deinit joins every worker
            // before the memory goes.
            let thread = startThread("a kernel") { [unowned(unsafe) self] in workerLoop(index: index) }
            self.threads.append(thread)
        }
    }

    deinit {
        pthread_mutex_lock(&mutex)
        shuttingDown = true
        generation.add(1, ordering: .releasing)
        pthread_cond_broadcast(&wake)
        pthread_mutex_unlock(&mutex)
        for thread in threads { pthread_join(thread, nil) }
        Self.liveThreads.subtract(threadCount, ordering: .relaxed)
        cursors.deinitialize(count: threadCount * Self.cursorStride)
        cursors.deallocate()
        pthread_cond_destroy(&wake)
        pthread_mutex_destroy(&mutex)
    }

    /// Runs `body(i)` for every i in 0..<count on the pool's threads and returns when all are done.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || threadCount == 1 {
            for i in 0..<count { body(i) }
            return
        }
        callerLock.withLock { _ in
            withoutActuallyEscaping(body) { escaping in
                itemCount = count
                job = escaping
                for t in 0..<threadCount { cursors[t * Self.cursorStride].store(rangeStart(t, count), ordering: .relaxed) }
                pending.store(threadCount - 1, ordering: .relaxed)
                pthread_mutex_lock(&mutex)
                generation.add(1, ordering: .releasing)
                if sleepers > 0 { pthread_cond_broadcast(&wake) }
                pthread_mutex_unlock(&mutex)
                runItems(escaping, thread: 0)
                while pending.load(ordering: .acquiring) > 0 { spinPause() }
                job = nil
            }
        }
    }

    @inline(__always)
    private func rangeStart(_ thread: Int, _ count: Int) -> Int { thread * count / threadCount }

    private func runItems(_ body: (Int) -> Void, thread: Int) {
        let count = itemCount
        for k in 0..<threadCount {
            let t = (thread + k) % threadCount
            let end = rangeStart(t + 1, count)
            while true {
                let i = cursors[t * Self.cursorStride].add(1, ordering: .relaxed).oldValue
                if i >= end { break }
                body(i)
            }
        }
    }

    /// How long a worker spins for the next region before it sleeps. Decode leaves gaps of tens of
    /// microseconds between regions (attention, routing, quantising activations); a worker that
    /// slept through one came back through a futex wake-up, which on this 2-core VM cost 7% of
    /// Q8_0 decode (20,000 spins, about 20 µs: 82 tok/s; 1-2 ms: 88). Spinning that long costs a
    /// core only while regions keep coming; an idle pool sleeps. With more threads than cores a
    /// spinning worker would take a core from one with work, so when the process's pools have
    /// more threads in all than it has cores, workers spin 20 µs.
    var spinNanoseconds: UInt64 {
        Self.liveThreads.load(ordering: .relaxed) <= Self.cores ? 2_000_000 : 20_000
    }
    /// Threads of every pool alive in the process, callers included.
    private static let liveThreads = Atomic<Int>(0)
    private static let cores = availableCores

    private func workerLoop(index: Int) {
        var seen = 0
        while true {
            var spins = 0
            var spinStart: UInt64 = 0
            var current = generation.load(ordering: .acquiring)
            while current == seen {
                spins += 1
                // The clock every 256 spins: a read costs about as much as 20 spins.
                if spins & 255 == 0 {
                    let now = monotonicNanoseconds()
                    if spinStart == 0 { spinStart = now }
                    if now - spinStart > spinNanoseconds {
                        pthread_mutex_lock(&mutex)
                        current = generation.load(ordering: .acquiring)
                        while current == seen {
                            sleepers += 1
                            pthread_cond_wait(&wake, &mutex)
                            sleepers -= 1
                            current = generation.load(ordering: .acquiring)
                        }
                        pthread_mutex_unlock(&mutex)
                        break
                    }
                }
                spinPause()
                current = generation.load(ordering: .acquiring)
            }
            seen = current
            pthread_mutex_lock(&mutex)
            let stop = shuttingDown
            pthread_mutex_unlock(&mutex)
            if stop { return }
            if let body = job { runItems(body, thread: index) }
            pending.subtract(1, ordering: .releasing)
        }
    }

    @inline(__always)
    private func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    @inline(__always)
    private func spinPause() {
        #if arch(x86_64) || arch(i386)
        // No pause intrinsic in Swift; a yield every iteration would cost microseconds, so spin.
        #endif
    }
}

/// The machine's read bandwidth in bytes per second: a vectorised sum over a buffer much larger
/// than the caches, split across the pool's threads, best of `repetitions`. The decode roofline of
/// a memory-bound model is this figure over the bytes read per token.
public func measureReadBandwidth(bytes: Int = 512 << 20, repetitions: Int = 3, pool: ThreadPool) -> Double {
    let count = bytes / MemoryLayout<Float>.size
    let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
    defer { buffer.deallocate() }
    buffer.initialize(repeating: 1, count: count)
    let chunk = (count / (pool.threadCount * 16)) & ~63
    let items = count / chunk
    let sums = UnsafeMutablePointer<Float>.allocate(capacity: items)
    defer { sums.deallocate() }
    var best = 0.0
    let clock = ContinuousClock()
    for _ in 0..<repetitions {
        let start = clock.now
        pool.parallelFor(items) { item in
            let p = UnsafeRawPointer(buffer + item * chunk)
            var a = Vector16(), b = Vector16(), c = Vector16(), d = Vector16()
            var i = 0
            while i < chunk * 4 {
                a += p.loadUnaligned(fromByteOffset: i, as: Vector16.self)
                b += p.loadUnaligned(fromByteOffset: i + 64, as: Vector16.self)
                c += p.loadUnaligned(fromByteOffset: i + 128, as: Vector16.self)
                d += p.loadUnaligned(fromByteOffset: i + 192, as: Vector16.self)
                i += 256
            }
            sums[item] = horizontalSum((a + b) + (c + d))
        }
        best = max(best, Double(items * chunk * 4) / (clock.now - start).seconds)
    }
    return best
}

