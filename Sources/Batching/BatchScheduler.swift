import Generation
import Runtime
import Models
import Synchronization
import Tokenizers
import SwitchyardSupport

/// One completion to run: tokens in, sampling settings, limits.
public struct CompletionRequest: Sendable {
    public var promptTokens: [Int]
    public var maxTokens: Int
    public var sampling: SamplingParameters
    public var stopStrings: [String]
    /// Report the chosen token's log-probability and this many alternatives (nil: none).
    public var topLogprobs: Int?
    /// Interactive requests are admitted before any waiting batch work.
    public var priority: Priority = .interactive
    /// Generate past end-of-sequence tokens, to exactly `maxTokens` (benchmarks; llama-server's
    /// and vLLM's `ignore_eos`).
    public var ignoreEOS = false

    public enum Priority: Sendable { case interactive, batch }

    public init(promptTokens: [Int], maxTokens: Int, sampling: SamplingParameters, stopStrings: [String] = [], topLogprobs: Int? = nil) {
        self.promptTokens = promptTokens
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopStrings = stopStrings
        self.topLogprobs = topLogprobs
    }
}

public struct TokenLogprob: Sendable {
    public var token: Int
    public var logprob: Float
    public var top: [(token: Int, logprob: Float)]
}

/// What a running completion reports, in order: text pieces as they become final, then one
/// `finished` (or `failed`).
public enum CompletionEvent: Sendable {
    case text(String, tokens: [Int], logprobs: [TokenLogprob])
    case finished(FinishReason, promptTokens: Int, completionTokens: Int)
    case failed(String)
}

public struct SchedulerError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable { case queueFull, tooLong, shuttingDown }
    public var kind: Kind
    public var description: String
}

/// Continuous batching: every step admits waiting sequences (as many as `maxSequences` and the KV
/// memory budget allow), runs prefill chunks of admitted prompts (up to `prefillChunk` tokens in
/// all, oldest first), and one batched decode step for every sequence that is generating, in which
/// each expert's weights are read once for all of them. Finished or cancelled sequences leave at
/// once and free their KV cache. Each sequence samples with its own settings and seed, and a
/// batched step computes exactly what a solo one does, so a request's text never depends on what
/// else is running. Which tokens run is decided by `StepPlanner`; the model runs the step here;
/// each sequence's `DecodeLoop` turns its logits into events.
public final class BatchScheduler: @unchecked Sendable {
    public let model: Model
    public let tokenizer: Tokenizer
    public let maxSequences: Int
    public let contextLength: Int
    public let queueLimit: Int
    /// KV cache memory all running sequences may use together.
    public let kvBudgetBytes: Int
    /// Prompt tokens a step may take (all prompts together): the longest pause a prefill puts
    /// between another stream's tokens.
    public let prefillChunk: Int
    var limits: StepPlanner.Limits { StepPlanner.Limits(maxSequences: maxSequences, prefillChunk: prefillChunk, kvBudgetBytes: kvBudgetBytes) }

    public struct Stats: Sendable {
        public var queued = 0
        public var running = 0
        public var kvBytes = 0
        public var promptTokens = 0
        public var completionTokens = 0
    }

    /// Owned by the queue (under the lock) until admitted, then only by the scheduler thread.
    final class Sequence: @unchecked Sendable {
        let id: Int
        let request: CompletionRequest
        let continuation: AsyncStream<CompletionEvent>.Continuation
        var session: Session?
        var prefilled = 0
        var pending: Int?          // sampled, not yet run through the model
        var loop: DecodeLoop
        let kvBytes: Int
        var cancelled = false
        var finished = false
        init(id: Int, request: CompletionRequest, tokenizer: Tokenizer, eos: Set<Int>, kvBytes: Int,
             continuation: AsyncStream<CompletionEvent>.Continuation) {
            self.id = id
            self.request = request
            self.continuation = continuation
            self.kvBytes = kvBytes
            loop = DecodeLoop(sampling: request.sampling, tokenizer: tokenizer, promptTokens: request.promptTokens,
                              stopStrings: request.stopStrings, eos: eos, maxTokens: request.maxTokens)
        }
        var isDone: Bool { finished || cancelled }
    }

    private struct Shared {
        var queue: [Sequence] = []
        var cancelled: Set<Int> = []
        var nextID = 1
        var stopping = false
        var stats = Stats()
        var failure: String?
        /// Ids in the order their sequences finished, once `recordFinishOrder()` asks (tests: the
        /// order streams are read in is not the order the scheduler ran them).
        var finishOrder: [Int]?
    }

    private let shared = Mutex(Shared())
    private var wakeMutex = pthread_mutex_t()
    private var wake = pthread_cond_t()
    private var thread = pthread_t()
    private let workspace = Workspace()
    private let eos: Set<Int>
    /// KV bytes per position: the model's cache layout says.
    let kvBytesPerPosition: Int

    public init(model: Model, tokenizer: Tokenizer, maxSequences: Int = 8, contextLength: Int? = nil,
                queueLimit: Int = 64, kvBudgetBytes: Int? = nil, prefillChunk: Int = 128) {
        self.model = model
        self.prefillChunk = max(1, prefillChunk)
        self.tokenizer = tokenizer
        self.maxSequences = max(1, maxSequences)
        self.contextLength = min(contextLength ?? model.config.maxPositions, model.config.maxPositions)
        self.queueLimit = queueLimit
        kvBytesPerPosition = model.attention.cache.layout.bytesPerPosition
        // Never more than the cache can hold (attention workers' real room, under two tiers).
        let cache = model.attention.cache
        self.kvBudgetBytes = min(kvBudgetBytes ?? cache.layout.bytes(positions: self.contextLength * self.maxSequences), cache.bytesAvailable ?? .max)
        eos = Set(model.config.eosTokenIDs)
        pthread_mutex_init(&wakeMutex, nil)
        pthread_cond_init(&wake, nil)
        // The scheduler keeps itself alive until `shutdown()` has let its thread end.
        thread = startThread("the scheduler") { [self] in loop() }
    }

    deinit {
        pthread_cond_destroy(&wake)
        pthread_mutex_destroy(&wakeMutex)
    }

    public var stats: Stats { shared.withLock { $0.stats } }

    func recordFinishOrder() { shared.withLock { $0.finishOrder = [] } }
    var finishOrder: [Int] { shared.withLock { $0.finishOrder ?? [] } }

    /// Why the last model step failed (a weight file that cannot be read), until a step succeeds
    /// again; nil while steps succeed. What `/health` reports.
    public var failure: String? { shared.withLock { $0.failure } }

    /// Queues a completion. Its events arrive on the returned stream; `cancel(id)` stops it.
    public func submit(_ request: CompletionRequest) throws(SchedulerError) -> (id: Int, events: AsyncStream<CompletionEvent>) {
        guard !request.promptTokens.isEmpty, request.promptTokens.count < contextLength else {
            throw SchedulerError(kind: .tooLong, description: "the prompt has \(request.promptTokens.count) tokens; the context length is \(contextLength)")
        }
        let (stream, continuation) = AsyncStream<CompletionEvent>.makeStream()
        let positions = StepPlanner.positions(promptLength: request.promptTokens.count, maxTokens: request.maxTokens, contextLength: contextLength)
        let id: Int = try shared.withLock { (s: inout Shared) throws(SchedulerError) -> Int in
            guard !s.stopping else { throw SchedulerError(kind: .shuttingDown, description: "the server is shutting down") }
            // The queue limit bounds interactive requests; batch work is paced by its producer.
            let waiting = s.queue.filter { $0.request.priority == request.priority }.count
            guard request.priority == .batch || waiting < queueLimit else {
                throw SchedulerError(kind: .queueFull, description: "\(waiting) requests are already waiting")
            }
            let id = s.nextID
            s.nextID += 1
            let sequence = Sequence(id: id, request: request, tokenizer: tokenizer, eos: request.ignoreEOS ? [] : eos, kvBytes: positions * kvBytesPerPosition,
                                    continuation: continuation)
            // Interactive requests go ahead of every waiting batch request (in order among themselves).
            if request.priority == .interactive, let firstBatch = s.queue.firstIndex(where: { $0.request.priority == .batch }) {
                s.queue.insert(sequence, at: firstBatch)
            } else {
                s.queue.append(sequence)
            }
            s.stats.queued = s.queue.count
            return id
        }
        signal()
        return (id, stream)
    }

    /// Stops a completion (a client went away): its sequence leaves at the next step.
    public func cancel(_ id: Int) {
        shared.withLock { _ = $0.cancelled.insert(id) }
        signal()
    }

    /// Finishes running sequences as cancelled and stops the loop.
    public func shutdown() {
        let first = shared.withLock { s -> Bool in defer { s.stopping = true }; return !s.stopping }
        signal()
        if first { pthread_join(thread, nil) }
    }

    private func signal() {
        pthread_mutex_lock(&wakeMutex)
        pthread_cond_signal(&wake)
        pthread_mutex_unlock(&wakeMutex)
    }

    // MARK: The loop (its own thread: model steps are long and must not block Swift concurrency)

    private func loop() {
        var running: [Sequence] = []
        while true {
            let (stopping, admitted, cancelled) = shared.withLock { s -> (Bool, [Sequence], Set<Int>) in
                let count = s.stopping ? 0 : StepPlanner.admit(waitingBytes: s.queue.map(\.kvBytes), running: running.count,
                                                               kvInUse: s.stats.kvBytes, limits: limits)
                let admitted = Array(s.queue.prefix(count))
                s.queue.removeFirst(count)
                let cancelled = s.cancelled
                s.cancelled.removeAll()
                // Queued requests that were cancelled never start.
                for id in cancelled { if let i = s.queue.firstIndex(where: { $0.id == id }) { s.queue.remove(at: i).continuation.finish() } }
                s.stats.kvBytes += admitted.reduce(0) { $0 + $1.kvBytes }
                s.stats.queued = s.queue.count
                s.stats.running = running.count + admitted.count
                return (s.stopping, admitted, cancelled)
            }
            for seq in admitted {
                running.append(seq)
                do {
                    seq.session = try model.makeSession(contextLength: seq.kvBytes / kvBytesPerPosition)
                } catch {
                    finish(seq, .failed(error.description))
                }
            }
            for seq in running where cancelled.contains(seq.id) { seq.cancelled = true }
            if stopping {
                for seq in running { finish(seq, .failed("the server is shutting down")) }
                let queued = shared.withLock { s -> [Sequence] in defer { s.queue.removeAll() }; return s.queue }
                for seq in queued { seq.continuation.yield(.failed("the server is shutting down")); seq.continuation.finish() }
                return
            }
            running.removeAll { seq in
                guard seq.isDone else { return false }
                release(seq)
                if seq.cancelled { seq.continuation.finish() }
                return true
            }
            shared.withLock { $0.stats.running = running.count }
            if running.isEmpty {
                pthread_mutex_lock(&wakeMutex)
                let idle = shared.withLock { $0.queue.isEmpty && $0.cancelled.isEmpty && !$0.stopping }
                if idle { pthread_cond_wait(&wake, &wakeMutex) }
                pthread_mutex_unlock(&wakeMutex)
                continue
            }
            step(&running)
        }
    }

    /// One forward pass: the planner's prompt chunks and decode tokens, then each member's decode
    /// loop over its logits. A failed step fails its members only.
    private func step(_ running: inout [Sequence]) {
        let plan = StepPlanner.plan(
            running.map { StepPlanner.Running(id: $0.id, promptLength: $0.request.promptTokens.count, prefilled: $0.prefilled,
                                              decoding: $0.pending != nil) },
            limits: limits)
        let byID = Dictionary(uniqueKeysWithValues: running.map { ($0.id, $0) })
        var parts: [(session: Session, tokens: [Int])] = []
        var members: [Sequence] = []
        for (id, range) in plan.prefill {
            let seq = byID[id]!
            parts.append((seq.session!, Array(seq.request.promptTokens[range])))
            members.append(seq)
        }
        for id in plan.decode {
            let seq = byID[id]!
            parts.append((seq.session!, [seq.pending!]))
            members.append(seq)
        }
        if !parts.isEmpty {
            do {
                let logits = try model.forwardStep(parts, workspace: workspace)
                shared.withLock { $0.failure = nil }
                let vocab = model.config.vocabularySize
                for (i, seq) in members.enumerated() {
                    let row = Array(logits[(i * vocab)..<((i + 1) * vocab)])
                    if seq.pending != nil {
                        seq.pending = nil
                        sample(seq, row)
                    } else {
                        seq.prefilled += parts[i].tokens.count
                        if seq.prefilled == seq.request.promptTokens.count { sample(seq, row) }
                    }
                }
            } catch {
                shared.withLock { $0.failure = error.description }
                for seq in members { finish(seq, .failed(error.description)) }
            }
        }
        running.removeAll { seq in
            guard seq.isDone else { return false }
            release(seq)
            return true
        }
        shared.withLock { $0.stats.running = running.count }
    }

    /// The sequence's decode loop over the logits of its last position; events for the client.
    private func sample(_ seq: Sequence, _ logits: [Float]) {
        if seq.loop.isEmpty {
            finish(seq, .finished(.length, promptTokens: seq.request.promptTokens.count, completionTokens: 0))
            return
        }
        let session = seq.session!
        let step: DecodeStep
        do { step = try seq.loop.next(logits: logits, contextFull: session.position >= session.capacity) } catch {
            finish(seq, .failed(error.description))
            return
        }
        var logprobs: [TokenLogprob] = []
        if let top = seq.request.topLogprobs { logprobs = [logprob(logits, step.token, top: top)] }
        shared.withLock { $0.stats.completionTokens += 1 }
        // An end-of-sequence token is not part of the text, nor of the streamed tokens.
        let isEOS = step.finish == .stop && eos.contains(step.token)
        if !step.text.isEmpty || (!logprobs.isEmpty && !isEOS) {
            seq.continuation.yield(.text(step.text, tokens: isEOS ? [] : [step.token], logprobs: isEOS ? [] : logprobs))
        }
        if let reason = step.finish {
            finish(seq, .finished(reason, promptTokens: seq.request.promptTokens.count, completionTokens: seq.loop.generated.count))
        } else {
            seq.pending = step.token
        }
    }

    private func logprob(_ logits: [Float], _ token: Int, top: Int) -> TokenLogprob {
        let m = logits.max() ?? 0
        let logSum = m + Float(log(logits.reduce(0.0) { $0 + Double(exp($1 - m)) }))
        let best = top > 0 ? Array(logits.indices.sorted { logits[$0] > logits[$1] }.prefix(top)) : []
        return TokenLogprob(token: token, logprob: logits[token] - logSum, top: best.map { ($0, logits[$0] - logSum) })
    }

    private func finish(_ seq: Sequence, _ event: CompletionEvent) {
        guard !seq.isDone else { return }
        seq.finished = true
        // Counted before the stream ends, so a reader that saw it end sees it counted.
        shared.withLock {
            $0.stats.promptTokens += seq.request.promptTokens.count
            $0.finishOrder?.append(seq.id)
        }
        seq.continuation.yield(event)
        seq.continuation.finish()
    }

    private func release(_ seq: Sequence) {
        seq.session = nil  // frees the KV cache now
        shared.withLock { $0.stats.kvBytes -= seq.kvBytes }
    }
}
