/// Work that failed after it was handed to another thread (a disk read, a copy): the message says
/// what failed and why, and travels to whoever waits for the work.
public struct WorkFailure: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A one-shot signal: work that others wait for (a copy, a disk read, a kernel) sets it when done;
/// with `parts`, when that many pieces of work have each signalled. A part may signal a failure,
/// which every waiter then sees (the first one is kept).
public final class Completion: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var done: Bool
    private var remaining: Int
    private var failure: WorkFailure?
    private var started: ContinuousClock.Instant?
    private var finished: ContinuousClock.Instant?

    public init(done: Bool = false, parts: Int = 1) {
        self.done = done
        remaining = done ? 0 : parts
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    /// A completion that is already done, with `failure`.
    public convenience init(failed failure: WorkFailure) {
        self.init(done: true)
        self.failure = failure
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    public func signal(failure: WorkFailure? = nil) {
        pthread_mutex_lock(&mutex)
        if self.failure == nil { self.failure = failure }
        remaining -= 1
        done = remaining <= 0
        if done {
            finished = ContinuousClock.now
            pthread_cond_broadcast(&condition)
        }
        pthread_mutex_unlock(&mutex)
    }

    /// Records that the work began (the first part to begin, for work in parts): with
    /// `finishedAt`, how long the work itself took, as opposed to waiting in a queue.
    public func markStarted() {
        let now = ContinuousClock.now
        pthread_mutex_lock(&mutex)
        if started == nil { started = now }
        pthread_mutex_unlock(&mutex)
    }

    /// When the work began, if the one doing it said so (`SerialQueue` jobs do).
    public var startedAt: ContinuousClock.Instant? {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return started
    }

    /// When the last part signalled; nil while not done (and for completions made done).
    public var finishedAt: ContinuousClock.Instant? {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return finished
    }

    /// Blocks until done; the failure if a part failed.
    @discardableResult
    public func wait() -> WorkFailure? {
        pthread_mutex_lock(&mutex)
        while !done { pthread_cond_wait(&condition, &mutex) }
        let failure = self.failure
        pthread_mutex_unlock(&mutex)
        return failure
    }

    /// Blocks until done; throws the failure if a part failed.
    public func check() throws(WorkFailure) {
        if let failure = wait() { throw failure }
    }

    public var isDone: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return done
    }
}

extension Array where Element == Completion {
    /// Waits for every completion (all of them, even after a failure, so no work is still running
    /// when the caller moves on) and returns the first failure.
    @discardableResult
    public func waitAll() -> WorkFailure? {
        var first: WorkFailure?
        for c in self {
            let f = c.wait()
            if first == nil { first = f }
        }
        return first
    }
}
