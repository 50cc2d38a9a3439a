import Kernels
import SwitchyardSupport

/// Where one token of a forward step goes: its sequence's KV cache and its position there.
struct TokenSlot {
    let cache: ContiguousKVCache
    let position: Int
}

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
        var tokens: [Int] = [], slots: [TokenSlot] = [], rows: [Int] = []
        for (session, new) in parts {
            guard session.model === self else { throw ModelError("a session of another model is in the step") }
            for token in new where token < 0 || token >= config.vocabularySize {
                throw ModelError("token id \(token) is outside the vocabulary (0..<\(config.vocabularySize))")
            }
            guard session.position + new.count <= session.capacity else {
                throw ModelError("\(session.position + new.count) tokens exceed the context length of \(session.capacity)")
            }
            for (i, token) in new.enumerated() {
                tokens.append(token)
                slots.append(TokenSlot(cache: session.cache, position: session.position + i))
            }
            rows.append(tokens.count - 1)
        }
        var logits = [Float](repeating: 0, count: parts.count * config.vocabularySize)
        logits.withUnsafeMutableBufferPointer { out in
            run(tokens, slots: slots, workspace: workspace, logits: out.baseAddress!, logitRows: rows)
        }
        for (session, new) in parts { session.appendProcessed(new) }
        return logits
    }

    /// The decoder over one step: embeddings, every layer, and the logits of `logitRows` (indices
    /// into `tokens`). Token i is at `slots[i]`: its sequence's cache and position there, so one step
    /// may hold a chunk of one prompt, one token of each of several sequences, or a mix; each
    /// weight is read once for all of them.
    func run(_ tokens: [Int], slots: [TokenSlot], workspace s: Workspace, logits: UnsafeMutablePointer<Float>?, logitRows: [Int]) {
        let c = config
        let w = weights
        let T = tokens.count
        let H = c.hiddenSize
        let qW = c.queryWidth, kvW = c.keyValueWidth
        let context = slots.map { $0.position + 1 }.max() ?? 1
        let maxInner = c.feedForward.map { kind -> Int in
            switch kind {
            case .dense(let i): return i
            case .mixtureOfExperts(let m): return max(m.expertIntermediateSize, m.sharedExpertIntermediateSize ?? 0)
            }
        }.max() ?? 0
        let maxExperts = c.feedForward.compactMap { $0.moe?.expertCount }.max() ?? 0
        s.residual.reserve(T * H); s.normed.reserve(T * H)
        s.query.reserve(T * qW); s.key.reserve(T * kvW); s.value.reserve(T * kvW)
        s.attention.reserve(T * qW); s.projected.reserve(T * H)
        s.scores.reserve(T * c.headCount * context)
        s.gate.reserve(T * maxInner); s.up.reserve(T * maxInner)
        s.routerLogits.reserve(T * max(maxExperts, 1)); let maxTopK = c.feedForward.compactMap { $0.moe?.expertsPerToken }.max() ?? 1
        s.gathered.reserve(T * maxTopK * H); s.expertOutput.reserve(T * max(maxTopK, 1) * H)
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

        expertExecutor?.beginStep(tokens: T)
        defer { expertExecutor?.endStep() }
        for (l, layer) in w.layers.enumerated() {
            for t in 0..<T {
                rmsNorm(x + t * H, weight: layer.inputNorm, epsilon: c.rmsNormEpsilon, output: xn + t * H, count: H)
            }
            attentionBlock(layer.attention, layer: l, input: xn, output: s.projected.pointer, slots: slots, workspace: s)
            for i in 0..<(T * H) { x[i] += s.projected.pointer[i] }

            for t in 0..<T {
                rmsNorm(x + t * H, weight: layer.postAttentionNorm, epsilon: c.rmsNormEpsilon, output: xn + t * H, count: H)
            }
            switch (layer.feedForward, c.feedForward[l]) {
            case (.dense(let ff), _):
                denseFeedForward(ff, input: xn, output: s.projected.pointer, tokens: T, workspace: s)
            case (.mixtureOfExperts(let moeWeights), .mixtureOfExperts(let moe)):
                mixtureOfExperts(moeWeights, moe, layer: l, input: xn, output: s.projected.pointer, tokens: T, workspace: s)
            case (.mixtureOfExperts, .dense):
                preconditionFailure("weights and config disagree on layer \(l)")
            }
            for i in 0..<(T * H) { x[i] += s.projected.pointer[i] }
        }
        guard let logits, !logitRows.isEmpty else { return }
        for (i, t) in logitRows.enumerated() {
            rmsNorm(x + t * H, weight: w.finalNorm, epsilon: c.rmsNormEpsilon, output: xn + i * H, count: H)
        }
        device.linear(w.lmHead, input: xn, inputStride: H, output: logits, outputStride: c.vocabularySize, tokens: logitRows.count)
    }

    /// Self-attention for T new tokens at positions start..<start+T: projections, q/k norms, RoPE,
    /// cache update, causal (optionally windowed) softmax attention with grouped KV heads, output
    /// projection.
    func attentionBlock(_ a: AttentionWeights, layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, slots: [TokenSlot], workspace s: Workspace) {
        let c = config
        let T = slots.count
        let H = c.hiddenSize, hd = c.headDim
        let heads = c.headCount, kvHeads = c.keyValueHeadCount
        let qW = c.queryWidth, kvW = c.keyValueWidth
        let q = s.query.pointer, k = s.key.pointer, v = s.value.pointer
        device.linear(a.query, input: input, inputStride: H, output: q, outputStride: qW, tokens: T)
        device.linear(a.key, a.value, input: input, inputStride: H, outputs: (k, v), outputStride: kvW, tokens: T)
        for t in 0..<T {
            if let b = a.queryBias { for i in 0..<qW { q[t * qW + i] += b[i] } }
            if let b = a.keyBias { for i in 0..<kvW { k[t * kvW + i] += b[i] } }
            if let b = a.valueBias { for i in 0..<kvW { v[t * kvW + i] += b[i] } }
        }
        let epsilon = c.rmsNormEpsilon
        switch c.queryKeyNorm {
        case .none: break
        case .perHead:
            for t in 0..<T {
                for h in 0..<heads { rmsNorm(q + t * qW + h * hd, weight: a.queryNorm!, epsilon: epsilon, output: q + t * qW + h * hd, count: hd) }
                for h in 0..<kvHeads { rmsNorm(k + t * kvW + h * hd, weight: a.keyNorm!, epsilon: epsilon, output: k + t * kvW + h * hd, count: hd) }
            }
        case .wholeProjection:
            for t in 0..<T {
                rmsNorm(q + t * qW, weight: a.queryNorm!, epsilon: epsilon, output: q + t * qW, count: qW)
                rmsNorm(k + t * kvW, weight: a.keyNorm!, epsilon: epsilon, output: k + t * kvW, count: kvW)
            }
        }
        if let clip = c.clipQKV {
            for i in 0..<(T * qW) { q[i] = min(max(q[i], -clip), clip) }
            for i in 0..<(T * kvW) {
                k[i] = min(max(k[i], -clip), clip)
                v[i] = min(max(v[i], -clip), clip)
            }
        }
        let rotaryDim = rotary.rotaryDim, half = rotaryDim / 2
        for t in 0..<T {
            let cs = s.cosSin.pointer + t * 2 * half
            applyRotary(q + t * qW, heads: heads, headDim: hd, rotaryDim: rotaryDim, cos: cs, sin: cs + half)
            applyRotary(k + t * kvW, heads: kvHeads, headDim: hd, rotaryDim: rotaryDim, cos: cs, sin: cs + half)
            slots[t].cache.keyRow(layer: layer, position: slots[t].position).update(from: k + t * kvW, count: kvW)
            slots[t].cache.valueRow(layer: layer, position: slots[t].position).update(from: v + t * kvW, count: kvW)
        }

        let out = s.attention.pointer
        let scores = s.scores.pointer
        let context = slots.map { $0.position + 1 }.max() ?? 1
        let scale = 1 / Float(hd).squareRoot()
        let window = c.slidingWindows[layer]
        pool.parallelFor(T * heads) { item in
            let t = item / heads, h = item % heads
            let slot = slots[t]
            let keys = UnsafePointer(slot.cache.keyRow(layer: layer, position: 0))
            let values = UnsafePointer(slot.cache.valueRow(layer: layer, position: 0))
            attendHead(
                head: h, heads: heads, kvHeads: kvHeads, headDim: hd, scale: scale,
                query: q + t * qW, keys: keys, values: values, rowStride: slot.cache.rowWidth,
                first: window.map { max(0, slot.position - $0 + 1) } ?? 0, last: slot.position,
                scores: scores + item * context, output: out + t * qW + h * hd)
        }
        device.linear(a.output, input: out, inputStride: qW, output: output, outputStride: H, tokens: T)
        if let b = a.outputBias {
            for t in 0..<T { for i in 0..<H { output[t * H + i] += b[i] } }
        }
    }
}
