import SwitchyardSupport

/// Threads of their own for work that takes CPU time (JSON decoding, chat templates, tokenising a
/// prompt of megabytes): run on Swift concurrency's few threads it would stall every other
/// request's I/O and `/health`.
final class Offload: Sendable {
    private let queues: [SerialQueue]
    private let next = Counter()

    init(threads: Int) { queues = (0..<max(1, threads)).map { _ in SerialQueue() } }

    deinit { for q in queues { q.stop() } }

    /// `work` on one of the threads; its result or error back here.
    func run<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let queue = queues[next.increment() % queues.count]
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            queue.submit {
                do throws(E) { continuation.resume(returning: .success(try work())) } catch { continuation.resume(returning: .failure(error)) }
            }
        }
        return try result.get()
    }
}

/// A counter threads share.
final class Counter: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var value = 0
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func increment() -> Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        value += 1
        return value
    }
}
