import Kernels
import Runtime
import SwitchyardSupport

extension Model {
    /// One decode step for several sequences at once: `tokens[i]` is appended to `sessions[i]`.
    /// Returns logits [sessions.count, vocab].
    public func forwardBatch(_ sessions: [Session], _ tokens: [Int], workspace: Workspace) throws(ModelError) -> [Float] {
        guard sessions.count == tokens.count else { throw ModelError("a batch needs one token per session") }
        return try forwardStep(Array(zip(sessions, tokens.map { [$0] })), workspace: workspace)
    }

    /// One forward pass over several sequences, each with one or more new tokens (a prefill chunk of
    /// one, a decode token of others): every weight is read once for all of them, and each attends
    /// only to its own cache. Returns the logits of each sequence's last token, [parts.count, vocab].
    /// Results equal running each sequence alone.
    public func forwardStep(
        _ parts: [(session: Session, tokens: [Int])], workspace: Workspace, microBatches: Int? = nil
    ) throws(ModelError) -> [Float] {
        guard !parts.isEmpty, parts.allSatisfy({ !$0.tokens.isEmpty }) else { throw ModelError("a step needs tokens for each session") }
        guard Set(parts.map { ObjectIdentifier($0.session) }).count == parts.count else {
            throw ModelError("a session appears twice in one step")
        }
        for (session, _) in parts where session.model !== self { throw ModelError("a session of another model is in the step") }
        let littles = microBatchCount(sequences: parts.count, workspace: workspace)
        let tuned = microBatches == nil && littles > 1
        let count = microBatches ?? (tuned ? workspace.microBatchTuner.choose(littlesLaw: littles, sequences: parts.count) : littles)
        let groups = Self.split(parts.map(\.tokens.count), into: count)
        let started = ContinuousClock.now
        let vocab = config.vocabularySize
        var logits = [Float](repeating: 0, count: parts.count * vocab)
        var attempt = 0
        while true {
            // Caches lost with a host are computed again first, so positions are right below.
            try recoverLostCaches(parts.map(\.session))
            for (session, new) in parts { try validate(new, at: session.position, capacity: session.capacity) }
            do {
                try logits.withUnsafeMutableBufferPointer { (out) throws(ModelError) in
                    let batches = groups.enumerated().map { g, range in
                        var tokens: [Int] = [], slots: [TokenSlot] = [], rows: [Int] = []
                        for (session, new) in parts[range] {
                            for (i, token) in new.enumerated() {
                                tokens.append(token)
                                slots.append(TokenSlot(sequence: session.sequence, position: session.position + i))
                            }
                            rows.append(tokens.count - 1)
                        }
                        return MicroBatch(tokens: tokens, slots: slots, workspace: workspace.microBatch(g),
                                          logits: out.baseAddress! + range.lowerBound * vocab, logitRows: rows)
                    }
                    try run(batches)
                }
                break
            } catch {
                attempt += 1
                guard attempt <= Self.recoveryAttempts, parts.contains(where: { lostCache($0.session) }) else { throw error }
            }
        }
        if tuned {
            let tokens = parts.reduce(0) { $0 + $1.tokens.count }
            workspace.microBatchTuner.record(count: groups.count, secondsPerToken: (ContinuousClock.now - started).seconds / Double(tokens))
        }
        for (session, new) in parts { session.appendProcessed(new) }
        return logits
    }

    /// The most micro-batches one step keeps in flight.
    public static let maxMicroBatches = 16

    /// How many micro-batches to keep in flight when attention runs elsewhere, by Little's law
    /// (Glinthawk's rule): enough that tier 1 has work while one micro-batch's attention is
    /// away, 1 + round trip / tier-1 work per layer of one micro-batch, from what was measured
    /// lately. One when attention is on this host, or when the routed experts run across tiers
    /// (whose scheduler plans each layer once per step).
    public func microBatchCount(sequences: Int, workspace: Workspace) -> Int {
        guard expertExecutor == nil, let remote = attention as? any AsynchronousAttention, sequences > 1 else { return 1 }
        guard let rtt = remote.roundTrip, let compute = workspace.meanLayerCompute, compute > 0 else { return min(2, sequences) }
        let wanted = 1 + Int((rtt.seconds / compute).rounded(.up))
        return max(1, min(wanted, sequences, Self.maxMicroBatches))
    }

    /// Consecutive groups of parts with about equal token counts, at most `count` of them.
    static func split(_ sizes: [Int], into count: Int) -> [Range<Int>] {
        let n = max(1, min(count, sizes.count))
        let total = sizes.reduce(0, +)
        var groups: [Range<Int>] = []
        var start = 0, sum = 0
        for (i, size) in sizes.enumerated() {
            sum += size
            // Close a group when its share is reached, leaving a part for each group still to come.
            let target = total * (groups.count + 1) / n
            if groups.count < n - 1, sum >= target, sizes.count - (i + 1) >= n - 1 - groups.count {
                groups.append(start..<(i + 1))
                start = i + 1
            }
        }
        groups.append(start..<sizes.count)
        return groups
    }

    /// How many times one step is run again after the caches of some of its sequences were lost.
    static let recoveryAttempts = 8

    func lostCache(_ session: Session) -> Bool {
        (attention.cache as? any RelocatableKVCache)?.isLost(session.sequence) ?? false
    }

    /// Computes again the cache of every session whose rows were lost with a host: new room
    /// elsewhere, then its tokens through every layer (no logits). The rows come out as they were,
    /// since a token's keys and values do not depend on how the tokens were batched.
    func recoverLostCaches(_ sessions: [Session]) throws(ModelError) {
        guard let cache = attention.cache as? any RelocatableKVCache else { return }
        for session in sessions where cache.isLost(session.sequence) {
            var attempt = 0
            while true {
                do { try cache.relocate(session.sequence) } catch { throw ModelError("cannot recover \(session.sequence): \(error.description)") }
                do {
                    try session.refill()
                    break
                } catch {
                    attempt += 1
                    guard attempt <= Self.recoveryAttempts, cache.isLost(session.sequence) else { throw error }
                }
            }
        }
    }

    /// Checks tokens from outside before any arithmetic: ids in the vocabulary, room in the context.
    func validate(_ tokens: [Int], at position: Int, capacity: Int) throws(ModelError) {
        guard !tokens.isEmpty else { throw ModelError("no tokens to run") }
        for t in tokens where t < 0 || t >= config.vocabularySize {
            throw ModelError("token id \(t) is outside the vocabulary (0..<\(config.vocabularySize))")
        }
        guard tokens.count <= capacity - position else {
            throw ModelError("\(position + tokens.count) tokens exceed the context length of \(capacity)")
        }
    }

    /// The decoder over one step: embeddings, every layer, and the logits of `logitRows` (indices
    /// into `tokens`). Token i is at `slots[i]`: its sequence and position there, so one step may
    /// hold a chunk of one prompt, one token of each of several sequences, or a mix; each weight is
    /// read once for all of them. A failure of work done elsewhere (an expert read from disk)
    /// fails the step, with the positions it wrote not counted as stored.
    func run(_ tokens: [Int], slots: [TokenSlot], workspace s: Workspace, logits: UnsafeMutablePointer<Float>?, logitRows: [Int]) throws(ModelError) {
        try run([MicroBatch(tokens: tokens, slots: slots, workspace: s, logits: logits, logitRows: logitRows)])
    }

    /// Several micro-batches through the layers at once: while one's attention is on the wire or
    /// on a worker, tier 1 runs another's projections and experts (Glinthawk's pipeline). Each
    /// goes layer by layer in order; whichever has its attention back and is deepest goes next,
    /// else the one waiting longest. Results equal running them one after another.
    func run(_ batches: [MicroBatch]) throws(ModelError) {
        let total = batches.reduce(0) { $0 + $1.tokens.count }
        expertExecutor?.beginStep(tokens: total)
        defer { expertExecutor?.endStep() }
        let remote = attention as? any AsynchronousAttention
        do throws(WorkFailure) {
            var order = 0
            for b in batches {
                prepare(b)
                try startLayer(b)
                b.startedAt = order
                order += 1
            }
            var remaining = batches.count
            while remaining > 0 {
                let waiting = batches.filter { !$0.done }
                let ready = remote.map { r in waiting.filter { $0.pending.map(r.isDone) ?? true } } ?? waiting
                let next = ready.max { $0.layer < $1.layer } ?? waiting.min { $0.startedAt < $1.startedAt }!
                let pending = next.pending
                next.pending = nil
                if let pending, let remote { try remote.finish(pending) }
                let started = ContinuousClock.now
                try finishLayer(next)
                if next.done { remaining -= 1 }
                next.startedAt = order
                order += 1
                next.workspace.recordLayerCompute((ContinuousClock.now - started).seconds)
            }
        } catch {
            // Replies still coming for the other micro-batches are waited for (their outputs go
            // to memory that is still theirs), so none lands in a later step.
            if let remote { for b in batches { if let p = b.pending { try? remote.finish(p) } } }
            throw ModelError(error.description)
        }
    }

    /// Work memory, embeddings and rotary angles of a micro-batch.
    private func prepare(_ b: MicroBatch) {
        let c = config, s = b.workspace
        let T = b.tokens.count
        let H = c.hiddenSize
        let qW = c.queryWidth, kvW = c.keyValueWidth
        let maxInner = c.feedForward.map { kind -> Int in
            switch kind {
            case .dense(let i): return i
            case .mixtureOfExperts(let m): return max(m.expertIntermediateSize, m.sharedExpertIntermediateSize ?? 0)
            }
        }.max() ?? 0
        let maxExperts = c.feedForward.compactMap { $0.moe?.expertCount }.max() ?? 0
        let maxTopK = c.feedForward.compactMap { $0.moe?.expertsPerToken }.max() ?? 1
        s.residual.reserve(T * H); s.normed.reserve(T * H)
        s.query.reserve(T * qW); s.key.reserve(T * kvW); s.value.reserve(T * kvW)
        s.attention.reserve(T * c.attentionOutputWidth); s.projected.reserve(T * H)
        s.gate.reserve(T * maxInner); s.up.reserve(T * maxInner)
        s.routerLogits.reserve(T * max(maxExperts, 1))
        s.gathered.reserve(T * maxTopK * H); s.expertOutput.reserve(T * max(maxTopK, 1) * H)
        s.rotaryDim = rotary.rotaryDim
        let half = rotary.rotaryDim / 2
        s.cosSin.reserve(T * 2 * max(half, 1))
        let x = s.residual.pointer
        for (t, token) in b.tokens.enumerated() {
            weights.embedding.widenRow(token, into: x + t * H)
        }
        for t in 0..<T {
            let cs = s.cosSin.pointer + t * 2 * half
            rotary.cosSin(position: b.slots[t].position, cos: cs, sin: cs + half)
        }
    }

    private func context(_ b: MicroBatch) -> LayerContext {
        LayerContext(config: config, device: device, attention: attention, workspace: b.workspace, latentForm: latentAttentionForm)
    }

    /// The first half of layer `b.layer`: input norm, projections, and the attention started.
    private func startLayer(_ b: MicroBatch) throws(WorkFailure) {
        let c = config, s = b.workspace, T = b.tokens.count, H = c.hiddenSize
        let layer = weights.layers[b.layer]
        let x = s.residual.pointer, xn = s.normed.pointer
        for t in 0..<T {
            rmsNorm(x + t * H, weight: layer.inputNorm, epsilon: c.rmsNormEpsilon, output: xn + t * H, count: H)
        }
        let shape = layer.attention.project(layer: b.layer, input: xn, tokens: T, context: context(b))
        if layer.attention.attendDirectly(layer: b.layer, shape: shape, slots: b.slots, context: context(b)) { return }
        b.pending = try attention.start(
            layer: b.layer, shape: shape, queries: s.query.pointer, keys: s.key.pointer, values: s.value.pointer, slots: b.slots,
            output: s.attention.pointer, scratch: s.scores)
    }

    /// The second half of layer `b.layer` once its attention is back: output projection, residual,
    /// the feed-forward or experts, residual; then the next layer's first half, or the logits.
    private func finishLayer(_ b: MicroBatch) throws(WorkFailure) {
        let c = config, s = b.workspace, T = b.tokens.count, H = c.hiddenSize
        let l = b.layer
        let layer = weights.layers[l]
        let x = s.residual.pointer, xn = s.normed.pointer
        layer.attention.outputProjection(output: s.projected.pointer, tokens: T, context: context(b))
        for i in 0..<(T * H) { x[i] += s.projected.pointer[i] }
        for t in 0..<T {
            rmsNorm(x + t * H, weight: layer.postAttentionNorm, epsilon: c.rmsNormEpsilon, output: xn + t * H, count: H)
        }
        switch (layer.feedForward, c.feedForward[l]) {
        case (.dense(let ff), _):
            device.feedForward(ff, input: xn, output: s.projected.pointer, tokens: T, gate: s.gate.pointer, up: s.up.pointer)
        case (.mixtureOfExperts(let moeWeights), .mixtureOfExperts(let moe)):
            try mixtureOfExperts(moeWeights, moe, layer: l, input: xn, output: s.projected.pointer, tokens: T, workspace: s)
        case (.mixtureOfExperts, .dense):
            preconditionFailure("weights and config disagree on layer \(l)")
        }
        for i in 0..<(T * H) { x[i] += s.projected.pointer[i] }
        b.layer += 1
        if b.layer < weights.layers.count {
            try startLayer(b)
            return
        }
        b.done = true
        guard let logits = b.logits, !b.logitRows.isEmpty else { return }
        for (i, t) in b.logitRows.enumerated() {
            rmsNorm(x + t * H, weight: weights.finalNorm, epsilon: c.rmsNormEpsilon, output: xn + i * H, count: H)
        }
        device.linear(weights.lmHead, input: xn, inputStride: H, output: logits, outputStride: c.vocabularySize, tokens: b.logitRows.count)
    }
}

/// One micro-batch of a step and where it is in the layers.
final class MicroBatch {
    let tokens: [Int]
    let slots: [TokenSlot]
    let workspace: Workspace
    /// Where the logits of `logitRows` go, [logitRows.count, vocab].
    let logits: UnsafeMutablePointer<Float>?
    let logitRows: [Int]
    var layer = 0
    var pending: (any PendingAttention)?
    var startedAt = 0
    var done = false

    init(tokens: [Int], slots: [TokenSlot], workspace: Workspace, logits: UnsafeMutablePointer<Float>?, logitRows: [Int]) {
        self.tokens = tokens
        self.slots = slots
        self.workspace = workspace
        self.logits = logits
        self.logitRows = logitRows
    }
}
