import Kernels
import SwitchyardSupport

/// One sequence being run through a model: its KV cache and work memory. Not thread-safe: one
/// caller at a time (the kernels inside a call are parallel).
public final class Session {
    public let model: Model
    public let cache: ContiguousKVCache
    /// Work memory for this sequence's forward passes.
    public let workspace = Workspace()
    /// Longest run of tokens pushed through the layers at once. Longer inputs are split, which
    /// bounds the attention score memory (chunk x heads x context) and changes no result.
    public var chunkSize = 64

    init(model: Model, capacity: Int) {
        self.model = model
        let c = model.config
        cache = ContiguousKVCache(layers: c.layerCount, rowWidth: c.keyValueWidth, capacity: capacity)
    }

    /// The tokens processed so far, one per cached position.
    public private(set) var tokens: [Int] = []

    /// Positions processed so far.
    public var position: Int { cache.length }
    public var capacity: Int { cache.capacity }

    /// Records tokens that a shared step processed for this session.
    func appendProcessed(_ new: [Int]) {
        cache.advance(by: new.count)
        tokens += new
    }

    /// Forgets every position from `count` on, keeping the cache of the prefix.
    public func rewind(to count: Int) {
        cache.truncate(to: count)
        tokens.removeSubrange(min(count, tokens.count)...)
    }

    /// Runs `tokens` at the next positions and returns logits, float32, row-major: [tokens.count,
    /// vocab] when `allLogits`, otherwise [1, vocab] for the last token.
    /// - Parameter workspace: work memory to use instead of the session's own (to observe routing).
    public func forward(_ tokens: [Int], allLogits: Bool = false, workspace external: Workspace? = nil) throws(ModelError) -> [Float] {
        let workspace = external ?? self.workspace
        let c = model.config
        guard !tokens.isEmpty else { throw ModelError("no tokens to run") }
        for t in tokens where t < 0 || t >= c.vocabularySize {
            throw ModelError("token id \(t) is outside the vocabulary (0..<\(c.vocabularySize))")
        }
        guard cache.length + tokens.count <= cache.capacity else {
            throw ModelError("\(cache.length + tokens.count) tokens exceed the context length of \(cache.capacity)")
        }
        let vocab = c.vocabularySize
        var logits = [Float](repeating: 0, count: (allLogits ? tokens.count : 1) * vocab)
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + chunkSize)
            let chunk = Array(tokens[start..<end])
            let isLast = end == tokens.count
            let first = cache.length
            let slots = chunk.indices.map { TokenSlot(cache: cache, position: first + $0) }
            logits.withUnsafeMutableBufferPointer { out in
                if allLogits {
                    model.run(chunk, slots: slots, workspace: workspace, logits: out.baseAddress! + start * vocab, logitRows: Array(chunk.indices))
                } else if isLast {
                    model.run(chunk, slots: slots, workspace: workspace, logits: out.baseAddress!, logitRows: [chunk.count - 1])
                } else {
                    model.run(chunk, slots: slots, workspace: workspace, logits: nil, logitRows: [])
                }
            }
            cache.advance(by: chunk.count)
            start = end
        }
        self.tokens += tokens
        return logits
    }
}
