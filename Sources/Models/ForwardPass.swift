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
    public func forwardStep(_ parts: [(session: Session, tokens: [Int])], workspace: Workspace) throws(ModelError) -> [Float] {
        guard !parts.isEmpty, parts.allSatisfy({ !$0.tokens.isEmpty }) else { throw ModelError("a step needs tokens for each session") }
        guard Set(parts.map { ObjectIdentifier($0.session) }).count == parts.count else {
            throw ModelError("a session appears twice in one step")
        }
        for (session, _) in parts where session.model !== self { throw ModelError("a session of another model is in the step") }
        var logits = [Float](repeating: 0, count: parts.count * config.vocabularySize)
        var attempt = 0
        while true {
            // Caches lost with a host are computed again first, so positions are right below.
            try recoverLostCaches(parts.map(\.session))
            var tokens: [Int] = [], slots: [TokenSlot] = [], rows: [Int] = []
            for (session, new) in parts {
                try validate(new, at: session.position, capacity: session.capacity)
                for (i, token) in new.enumerated() {
                    tokens.append(token)
                    slots.append(TokenSlot(sequence: session.sequence, position: session.position + i))
                }
                rows.append(tokens.count - 1)
            }
            do {
                try logits.withUnsafeMutableBufferPointer { (out) throws(ModelError) in
                    try run(tokens, slots: slots, workspace: workspace, logits: out.baseAddress!, logitRows: rows)
                }
                break
            } catch {
                attempt += 1
                guard attempt <= Self.recoveryAttempts, parts.contains(where: { lostCache($0.session) }) else { throw error }
            }
        }
        for (session, new) in parts { session.appendProcessed(new) }
        return logits
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
        let c = config
        let w = weights
        let T = tokens.count
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
        s.attention.reserve(T * qW); s.projected.reserve(T * H)
        s.gate.reserve(T * maxInner); s.up.reserve(T * maxInner)
        s.routerLogits.reserve(T * max(maxExperts, 1))
        s.gathered.reserve(T * maxTopK * H); s.expertOutput.reserve(T * max(maxTopK, 1) * H)
        s.rotaryDim = rotary.rotaryDim
        let half = rotary.rotaryDim / 2
        s.cosSin.reserve(T * 2 * max(half, 1))

        let x = s.residual.pointer, xn = s.normed.pointer
        for (t, token) in tokens.enumerated() {
            let row = w.embedding
            for i in 0..<H { x[t * H + i] = row.value(token, i) }
        }
        for t in 0..<T {
            let cs = s.cosSin.pointer + t * 2 * half
            rotary.cosSin(position: slots[t].position, cos: cs, sin: cs + half)
        }

        let context = LayerContext(config: c, device: device, attention: attention, workspace: s)
        expertExecutor?.beginStep(tokens: T)
        defer { expertExecutor?.endStep() }
        do throws(WorkFailure) {
            for (l, layer) in w.layers.enumerated() {
                for t in 0..<T {
                    rmsNorm(x + t * H, weight: layer.inputNorm, epsilon: c.rmsNormEpsilon, output: xn + t * H, count: H)
                }
                try layer.attention.forward(layer: l, input: xn, output: s.projected.pointer, slots: slots, context: context)
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
            }
        } catch {
            throw ModelError(error.description)
        }
        guard let logits, !logitRows.isEmpty else { return }
        for (i, t) in logitRows.enumerated() {
            rmsNorm(x + t * H, weight: w.finalNorm, epsilon: c.rmsNormEpsilon, output: xn + i * H, count: H)
        }
        device.linear(w.lmHead, input: xn, inputStride: H, output: logits, outputStride: c.vocabularySize, tokens: logitRows.count)
    }
}
