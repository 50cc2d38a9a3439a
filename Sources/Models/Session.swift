import Kernels
import Runtime
import SwitchyardSupport

/// One sequence being run through a model: its place in the model's KV cache and its work memory.
/// Not thread-safe: one caller at a time (the kernels inside a call are parallel). Its cache
/// memory is released when it goes away.
public final class Session {
    public let model: Model
    /// The sequence in `model.attention.cache`.
    public let sequence: SequenceID
    /// Work memory for this sequence's forward passes.
    public let workspace = Workspace()
    /// Longest run of tokens pushed through the layers at once. Longer inputs are split, which
    /// bounds the attention score memory (chunk x heads x context) and changes no result.
    public var chunkSize: Int
    private var cache: any KVCache { model.attention.cache }

    init(model: Model, capacity: Int) throws(ModelError) {
        self.model = model
        chunkSize = model.promptChunk
        do { sequence = try model.attention.cache.reserve(capacity: capacity) } catch { throw ModelError(error.description) }
    }

    deinit { cache.free(sequence) }

    /// The tokens processed so far, one per cached position.
    public private(set) var tokens: [Int] = []

    /// Positions processed so far.
    public var position: Int { cache.length(of: sequence) }
    public var capacity: Int { cache.capacity(of: sequence) }

    /// Records tokens that a shared step processed for this session.
    func appendProcessed(_ new: [Int]) {
        cache.advance(sequence, by: new.count)
        tokens += new
    }

    /// Forgets every position from `count` on, keeping the cache of the prefix.
    public func rewind(to count: Int) {
        cache.truncate(sequence, to: count)
        tokens.removeSubrange(min(count, tokens.count)...)
    }

    /// Computes the cache rows of every token processed so far again, into an empty cache (after
    /// they were lost with the host that held them).
    func refill() throws(ModelError) {
        precondition(position == 0, "a refill starts from an empty cache")
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + chunkSize)
            let chunk = Array(tokens[start..<end])
            let slots = chunk.indices.map { TokenSlot(sequence: sequence, position: start + $0) }
            try model.run(chunk, slots: slots, workspace: workspace, logits: nil, logitRows: [])
            cache.advance(sequence, by: chunk.count)
            start = end
        }
    }

    /// Runs `tokens` at the next positions and returns logits, float32, row-major: [tokens.count,
    /// vocab] when `allLogits`, otherwise [1, vocab] for the last token.
    /// - Parameter workspace: work memory to use instead of the session's own (to observe routing).
    public func forward(_ tokens: [Int], allLogits: Bool = false, workspace external: Workspace? = nil) throws(ModelError) -> [Float] {
        try forward(tokens, logitsFrom: allLogits ? 0 : max(0, tokens.count - 1), workspace: external)
    }

    /// Runs `tokens` at the next positions and returns the logits of those from index `first` on,
    /// [tokens.count - first, vocab]: a perplexity pass scores only the second half of its window,
    /// and the output head is a large share of a small model's work.
    public func forward(_ tokens: [Int], logitsFrom first: Int, workspace external: Workspace? = nil) throws(ModelError) -> [Float] {
        let workspace = external ?? self.workspace
        let c = model.config
        try model.validate(tokens, at: position, capacity: capacity)
        guard (0..<tokens.count).contains(first) else {
            throw ModelError("logits from token \(first) of \(tokens.count): outside the tokens")
        }
        let vocab = c.vocabularySize
        var logits = [Float](repeating: 0, count: (tokens.count - first) * vocab)
        var start = 0
        var attempt = 0
        while start < tokens.count {
            try model.recoverLostCaches([self])
            let end = min(tokens.count, start + chunkSize)
            let chunk = Array(tokens[start..<end])
            let firstSlot = position
            let slots = chunk.indices.map { TokenSlot(sequence: sequence, position: firstSlot + $0) }
            // The rows of this chunk that return logits, and where the first of them goes.
            let from = max(start, first)
            let rows = from < end ? Array((from - start)..<chunk.count) : []
            do {
                try logits.withUnsafeMutableBufferPointer { (out) throws(ModelError) in
                    let target: UnsafeMutablePointer<Float>? = rows.isEmpty ? nil : out.baseAddress! + (from - first) * vocab
                    try model.run(chunk, slots: slots, workspace: workspace, logits: target, logitRows: rows)
                }
            } catch {
                // Rows lost with a host mid-chunk: recover them and run the chunk again.
                attempt += 1
                guard attempt <= Model.recoveryAttempts, model.lostCache(self) else { throw error }
                continue
            }
            appendProcessed(chunk)
            start = end
        }
        return logits
    }
}
