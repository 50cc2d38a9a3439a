import Kernels
import Runtime
import SwitchyardSupport

/// Multi-head attention with grouped KV heads, as Llama, Mistral, Qwen, Mixtral and OLMoE have it:
/// q/k/v projections (optionally with biases), optional RMSNorm of queries and keys (per head or
/// over the whole projection), optional clipping, RoPE, causal (optionally windowed) softmax
/// attention, output projection.
public struct GroupedQueryAttention: AttentionBlock {
    public var query: WeightMatrix   // [heads x head_dim, hidden]
    public var key: WeightMatrix     // [kv_heads x head_dim, hidden]
    public var value: WeightMatrix   // [kv_heads x head_dim, hidden]
    public var output: WeightMatrix  // [hidden, heads x head_dim]
    // Biases and norm weights are small: widened to f32 once at load.
    public var queryBias: [Float]?   // [heads x head_dim]
    public var keyBias: [Float]?     // [kv_heads x head_dim]
    public var valueBias: [Float]?   // [kv_heads x head_dim]
    public var outputBias: [Float]?  // [hidden]
    public var queryNorm: [Float]?   // [head_dim] per head, or [heads x head_dim] whole
    public var keyNorm: [Float]?     // [head_dim] per head, or [kv_heads x head_dim] whole
    public var sinks: [Float]?       // [heads]

    public var matrices: [WeightMatrix] { [query, key, value, output] }

    public func mapMatrices(_ transform: (WeightMatrix) -> WeightMatrix) -> GroupedQueryAttention {
        var a = self
        a.query = transform(query)
        a.key = transform(key)
        a.value = transform(value)
        a.output = transform(output)
        return a
    }

    /// Binds layer `layer`'s attention, checking every shape against the config.
    static func bind(layer l: Int, _ b: WeightBinder) throws(ModelError) -> GroupedQueryAttention {
        let c = b.config, hidden = c.hiddenSize
        var a = GroupedQueryAttention(
            query: try b.matrix(.attention(layer: l, .query), [c.queryWidth, hidden], "num_attention_heads x head_dim, hidden_size"),
            key: try b.matrix(.attention(layer: l, .key), [c.keyValueWidth, hidden], "num_key_value_heads x head_dim, hidden_size"),
            value: try b.matrix(.attention(layer: l, .value), [c.keyValueWidth, hidden], "num_key_value_heads x head_dim, hidden_size"),
            output: try b.matrix(.attention(layer: l, .output), [hidden, c.queryWidth], "hidden_size, num_attention_heads x head_dim"))
        a.queryBias = try b.optionalVector(.attention(layer: l, .queryBias), c.queryWidth)
        a.keyBias = try b.optionalVector(.attention(layer: l, .keyBias), c.keyValueWidth)
        a.valueBias = try b.optionalVector(.attention(layer: l, .valueBias), c.keyValueWidth)
        a.outputBias = try b.optionalVector(.attention(layer: l, .outputBias), hidden)
        if c.attentionSinks { a.sinks = try b.vector(.attention(layer: l, .sinks), c.headCount) }
        switch c.queryKeyNorm {
        case .none: break
        case .perHead:
            a.queryNorm = try b.vector(.attention(layer: l, .queryNorm), c.headDim)
            a.keyNorm = try b.vector(.attention(layer: l, .keyNorm), c.headDim)
        case .wholeProjection:
            a.queryNorm = try b.vector(.attention(layer: l, .queryNorm), c.queryWidth)
            a.keyNorm = try b.vector(.attention(layer: l, .keyNorm), c.keyValueWidth)
        }
        return a
    }

    public func project(layer: Int, input: UnsafePointer<Float>, tokens T: Int, context: LayerContext) -> AttentionShape {
        let c = context.config, s = context.workspace, device = context.device
        let H = c.hiddenSize, hd = c.headDim
        let heads = c.headCount, kvHeads = c.keyValueHeadCount
        let qW = c.queryWidth, kvW = c.keyValueWidth
        let q = s.query.pointer, k = s.key.pointer, v = s.value.pointer
        device.linear(query, input: input, inputStride: H, output: q, outputStride: qW, tokens: T)
        device.linear(key, value, input: input, inputStride: H, outputs: (k, v), outputStride: kvW, tokens: T)
        for t in 0..<T {
            if let b = queryBias { for i in 0..<qW { q[t * qW + i] += b[i] } }
            if let b = keyBias { for i in 0..<kvW { k[t * kvW + i] += b[i] } }
            if let b = valueBias { for i in 0..<kvW { v[t * kvW + i] += b[i] } }
        }
        let epsilon = c.rmsNormEpsilon
        switch c.queryKeyNorm {
        case .none: break
        case .perHead:
            for t in 0..<T {
                for h in 0..<heads { rmsNorm(q + t * qW + h * hd, weight: queryNorm!, epsilon: epsilon, output: q + t * qW + h * hd, count: hd) }
                for h in 0..<kvHeads { rmsNorm(k + t * kvW + h * hd, weight: keyNorm!, epsilon: epsilon, output: k + t * kvW + h * hd, count: hd) }
            }
        case .wholeProjection:
            for t in 0..<T {
                rmsNorm(q + t * qW, weight: queryNorm!, epsilon: epsilon, output: q + t * qW, count: qW)
                rmsNorm(k + t * kvW, weight: keyNorm!, epsilon: epsilon, output: k + t * kvW, count: kvW)
            }
        }
        if let clip = c.clipQKV {
            for i in 0..<(T * qW) { q[i] = min(max(q[i], -clip), clip) }
            for i in 0..<(T * kvW) {
                k[i] = min(max(k[i], -clip), clip)
                v[i] = min(max(v[i], -clip), clip)
            }
        }
        let rotaryDim = s.rotaryDim, half = rotaryDim / 2
        let rotate = c.interleavedRotary ? applyInterleavedRotary : applyRotary
        for t in 0..<T {
            let cs = s.cosSin.pointer + t * 2 * half
            rotate(q + t * qW, heads, hd, rotaryDim, cs, cs + half)
            rotate(k + t * kvW, kvHeads, hd, rotaryDim, cs, cs + half)
        }
        return AttentionShape(heads: heads, keyValueHeads: kvHeads, headDim: hd, scale: 1 / Float(hd).squareRoot(), window: c.slidingWindows[layer],
                              sinks: sinks)
    }

    public func outputProjection(output out: UnsafeMutablePointer<Float>, tokens T: Int, context: LayerContext) {
        let c = context.config, H = c.hiddenSize
        context.device.linear(output, input: context.workspace.attention.pointer, inputStride: c.queryWidth, output: out, outputStride: H, tokens: T)
        if let b = outputBias {
            for t in 0..<T { for i in 0..<H { out[t * H + i] += b[i] } }
        }
    }
}
