import Kernels

/// One sequence being run through a model: its KV cache and work memory. Not thread-safe: one
/// caller at a time (the kernels inside a call are parallel).
public final class Session {
    public let model: Model
    public let cache: ContiguousKVCache
    let scratch = Scratch()
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

    public func reset() { rewind(to: 0) }

    /// Forgets every position from `count` on, keeping the cache of the prefix.
    public func rewind(to count: Int) {
        cache.truncate(to: count)
        tokens.removeSubrange(min(count, tokens.count)...)
    }

    /// Runs `tokens` at the next positions and returns logits, float32, row-major: [tokens.count,
    /// vocab] when `allLogits`, otherwise [1, vocab] for the last token.
    public func forward(_ tokens: [Int], allLogits: Bool = false) throws(ModelError) -> [Float] {
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
            logits.withUnsafeMutableBufferPointer { out in
                if allLogits {
                    runChunk(chunk, logits: out.baseAddress! + start * vocab, logitRows: 0..<chunk.count)
                } else if isLast {
                    runChunk(chunk, logits: out.baseAddress!, logitRows: (chunk.count - 1)..<chunk.count)
                } else {
                    runChunk(chunk, logits: nil, logitRows: 0..<0)
                }
            }
            start = end
        }
        self.tokens += tokens
        return logits
    }

    /// The decoder over one chunk: embeddings, every layer, and the logits of `logitRows`.
    func runChunk(_ tokens: [Int], logits: UnsafeMutablePointer<Float>?, logitRows: Range<Int>) {
        let c = model.config
        let w = model.weights
        let T = tokens.count
        let H = c.hiddenSize
        let qW = c.queryWidth, kvW = c.keyValueWidth
        let start = cache.length
        let maxInner = c.feedForward.map { kind -> Int in
            switch kind {
            case .dense(let i): return i
            case .mixtureOfExperts(let m): return max(m.expertIntermediateSize, m.sharedExpertIntermediateSize ?? 0)
            }
        }.max() ?? 0
        let maxExperts = c.feedForward.compactMap { $0.moe?.expertCount }.max() ?? 0
        let s = scratch
        s.residual.reserve(T * H); s.normed.reserve(T * H)
        s.query.reserve(T * qW); s.key.reserve(T * kvW); s.value.reserve(T * kvW)
        s.attention.reserve(T * qW); s.projected.reserve(T * H)
        s.scores.reserve(T * c.headCount * (start + T))
        s.gate.reserve(T * maxInner); s.up.reserve(T * maxInner)
        s.routerLogits.reserve(T * max(maxExperts, 1)); s.gathered.reserve(T * H); s.expertOutput.reserve(T * H)
        let half = model.rotary.rotaryDim / 2
        s.cosSin.reserve(T * 2 * max(half, 1))

        let x = s.residual.pointer, xn = s.normed.pointer
        for (t, token) in tokens.enumerated() {
            let row = w.embedding
            for i in 0..<H { x[t * H + i] = row.value(token, i) }
        }
        for t in 0..<T {
            let cs = s.cosSin.pointer + t * 2 * half
            model.rotary.cosSin(position: start + t, cos: cs, sin: cs + half)
        }

        for (l, layer) in w.layers.enumerated() {
            for t in 0..<T {
                rmsNorm(x + t * H, weight: layer.inputNorm, epsilon: c.rmsNormEpsilon, output: xn + t * H, count: H)
            }
            attentionBlock(layer.attention, layer: l, input: xn, output: s.projected.pointer, tokens: T, start: start)
            for i in 0..<(T * H) { x[i] += s.projected.pointer[i] }

            for t in 0..<T {
                rmsNorm(x + t * H, weight: layer.postAttentionNorm, epsilon: c.rmsNormEpsilon, output: xn + t * H, count: H)
            }
            switch (layer.feedForward, c.feedForward[l]) {
            case (.dense(let ff), _):
                denseFeedForward(ff, input: xn, output: s.projected.pointer, tokens: T)
            case (.mixtureOfExperts(let moeWeights), .mixtureOfExperts(let moe)):
                mixtureOfExperts(moeWeights, moe, input: xn, output: s.projected.pointer, tokens: T)
            case (.mixtureOfExperts, .dense):
                preconditionFailure("weights and config disagree on layer \(l)")
            }
            for i in 0..<(T * H) { x[i] += s.projected.pointer[i] }
        }
        cache.advance(by: T)

        guard let logits, !logitRows.isEmpty else { return }
        for (i, t) in logitRows.enumerated() {
            rmsNorm(x + t * H, weight: w.finalNorm, epsilon: c.rmsNormEpsilon, output: xn + i * H, count: H)
        }
        model.device.linear(w.lmHead, input: xn, inputStride: H, output: logits, outputStride: c.vocabularySize, tokens: logitRows.count)
    }

    /// Self-attention for T new tokens at positions start..<start+T: projections, q/k norms, RoPE,
    /// cache update, causal (optionally windowed) softmax attention with grouped KV heads, output
    /// projection.
    func attentionBlock(_ a: AttentionWeights, layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens T: Int, start: Int) {
        let c = model.config
        let H = c.hiddenSize, hd = c.headDim
        let heads = c.headCount, kvHeads = c.keyValueHeadCount
        let qW = c.queryWidth, kvW = c.keyValueWidth
        let s = scratch
        let q = s.query.pointer, k = s.key.pointer, v = s.value.pointer
        let device = model.device
        device.linear(a.query, input: input, inputStride: H, output: q, outputStride: qW, tokens: T)
        device.linear(a.key, input: input, inputStride: H, output: k, outputStride: kvW, tokens: T)
        device.linear(a.value, input: input, inputStride: H, output: v, outputStride: kvW, tokens: T)
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
        let rotaryDim = model.rotary.rotaryDim, half = rotaryDim / 2
        for t in 0..<T {
            let cs = s.cosSin.pointer + t * 2 * half
            applyRotary(q + t * qW, heads: heads, headDim: hd, rotaryDim: rotaryDim, cos: cs, sin: cs + half)
            applyRotary(k + t * kvW, heads: kvHeads, headDim: hd, rotaryDim: rotaryDim, cos: cs, sin: cs + half)
            cache.keyRow(layer: layer, position: start + t).update(from: k + t * kvW, count: kvW)
            cache.valueRow(layer: layer, position: start + t).update(from: v + t * kvW, count: kvW)
        }

        let out = s.attention.pointer
        let scores = s.scores.pointer
        let context = start + T
        let scale = 1 / Float(hd).squareRoot()
        let window = c.slidingWindows[layer]
        let keys = UnsafePointer(cache.keyRow(layer: layer, position: 0))
        let values = UnsafePointer(cache.valueRow(layer: layer, position: 0))
        let stride = cache.rowWidth
        model.pool.parallelFor(T * heads) { item in
            let t = item / heads, h = item % heads
            let position = start + t
            attendHead(
                head: h, heads: heads, kvHeads: kvHeads, headDim: hd, scale: scale,
                query: q + t * qW, keys: keys, values: values, rowStride: stride,
                first: window.map { max(0, position - $0 + 1) } ?? 0, last: position,
                scores: scores + item * context, output: out + t * qW + h * hd)
        }
        device.linear(a.output, input: out, inputStride: qW, output: output, outputStride: H, tokens: T)
        if let b = a.outputBias {
            for t in 0..<T { for i in 0..<H { output[t * H + i] += b[i] } }
        }
    }
}
