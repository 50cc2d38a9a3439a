/// A thread that runs jobs one after another in submission order, each after the completions it
/// depends on: a device's kernel stream, its copy engine, or a disk queue. Jobs on different queues
/// overlap; that is what lets copies, disk reads and CPU and accelerator kernels run at once.
/// A job whose dependencies failed does not run: its completion carries their failure on.
public final class SerialQueue: @unchecked Sendable {
    private struct Job {
        let after: [Completion]
        let body: () throws(WorkFailure) -> Void
        let done: Completion
    }

    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var jobs: [Job] = []
    private var head = 0
    private var stopping = false
    private var thread = pthread_t()

    public init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        // The queue keeps itself alive until `stop()` has let its thread end.
        thread = startThread("a queue") { [self] in loop() }
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    /// Stops the thread once the jobs already submitted have run. The queue keeps itself alive
    /// until then, so it must be stopped to be freed.
    public func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
        pthread_join(thread, nil)
    }

    @discardableResult
    public func submit(after: [Completion] = [], _ body: @escaping () throws(WorkFailure) -> Void) -> Completion {
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
            var failure = job.after.waitAll()
            if failure == nil {
                job.done.markStarted()
                do { try job.body() } catch { failure = error }
            }
            job.done.signal(failure: failure)
        }
    }
}
