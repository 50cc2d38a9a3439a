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
    public var chunkSize = 64
    private var cache: any KVCache { model.attention.cache }

    init(model: Model, capacity: Int) throws(ModelError) {
        self.model = model
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

    /// Runs `tokens` at the next positions and returns logits, float32, row-major: [tokens.count,
    /// vocab] when `allLogits`, otherwise [1, vocab] for the last token.
    /// - Parameter workspace: work memory to use instead of the session's own (to observe routing).
    public func forward(_ tokens: [Int], allLogits: Bool = false, workspace external: Workspace? = nil) throws(ModelError) -> [Float] {
        let workspace = external ?? self.workspace
        let c = model.config
        try model.validate(tokens, at: position, capacity: capacity)
        let vocab = c.vocabularySize
        var logits = [Float](repeating: 0, count: (allLogits ? tokens.count : 1) * vocab)
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + chunkSize)
            let chunk = Array(tokens[start..<end])
            let isLast = end == tokens.count
            let first = position
            let slots = chunk.indices.map { TokenSlot(sequence: sequence, position: first + $0) }
            try logits.withUnsafeMutableBufferPointer { (out) throws(ModelError) in
                if allLogits {
                    try model.run(chunk, slots: slots, workspace: workspace, logits: out.baseAddress! + start * vocab, logitRows: Array(chunk.indices))
                } else if isLast {
                    try model.run(chunk, slots: slots, workspace: workspace, logits: out.baseAddress!, logitRows: [chunk.count - 1])
                } else {
                    try model.run(chunk, slots: slots, workspace: workspace, logits: nil, logitRows: [])
                }
            }
            appendProcessed(chunk)
            start = end
        }
        return logits
    }
}
