#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A one-shot signal: work that others wait for (a copy, a disk read, a kernel) sets it when done;
/// with `parts`, when that many pieces of work have each signalled.
public final class Completion: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var done: Bool
    private var remaining: Int

    public init(done: Bool = false, parts: Int = 1) {
        self.done = done
        remaining = done ? 0 : parts
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    public func signal() {
        pthread_mutex_lock(&mutex)
        remaining -= 1
        done = remaining <= 0
        if done { pthread_cond_broadcast(&condition) }
        pthread_mutex_unlock(&mutex)
    }

    public func wait() {
        pthread_mutex_lock(&mutex)
        while !done { pthread_cond_wait(&condition, &mutex) }
        pthread_mutex_unlock(&mutex)
    }

    public var isDone: Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return done
    }
}

/// A thread that runs jobs one after another in submission order, each after the completions it
/// depends on: a device's kernel stream, its copy engine, or a disk queue. Jobs on different queues
/// overlap; that is what lets copies, disk reads and CPU and accelerator kernels run at once.
final class SerialQueue: @unchecked Sendable {
    private struct Job {
        let after: [Completion]
        let body: () -> Void
        let done: Completion
    }

    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var jobs: [Job] = []
    private var head = 0
    private var stopping = false
    private var thread = pthread_t()

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        let context = Unmanaged.passRetained(self)
        let result = pthread_create(&thread, nil, { raw in
            let queue = Unmanaged<SerialQueue>.fromOpaque(raw!).takeRetainedValue()
            queue.loop()
            return nil
        }, context.toOpaque())
        precondition(result == 0, "cannot start a queue thread: error \(result)")
    }

    /// Stops the thread once the jobs already submitted have run. The queue keeps itself alive
    /// until then, so it must be stopped to be freed.
    func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
        pthread_join(thread, nil)
    }

    @discardableResult
    func submit(after: [Completion] = [], _ body: @escaping () -> Void) -> Completion {
        let done = Completion()
        pthread_mutex_lock(&mutex)
        jobs.append(Job(after: after, body: body, done: done))
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
        return done
    }

    private func loop() {
        while true {
            pthread_mutex_lock(&mutex)
            while head == jobs.count && !stopping { pthread_cond_wait(&condition, &mutex) }
            if head == jobs.count {
                pthread_mutex_unlock(&mutex)
                return
            }
            let job = jobs[head]
            head += 1
            if head > 64 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            pthread_mutex_unlock(&mutex)
            for dependency in job.after { dependency.wait() }
            job.body()
            job.done.signal()
        }
    }
}
