import Kernels
import Runtime
import SwitchyardSupport
import WeightFiles

/// DeepSeek-V2/V3's multi-head latent attention. Each token's keys and values come from one
/// latent c (kv_lora_rank values, RMS-normed) and one rotary key k_r shared by every head: head
/// h's key is [W_UK_h c, k_r] and its value W_UV_h c. Only [c, k_r] is cached.
///
/// Attention runs in the absorbed form: q_h · [W_UK_h c, k_r] = [W_UK_hᵀ q_nope_h, q_rope_h] ·
/// [c, k_r], so each head's query is taken into latent space once (`keyAbsorb`, W_UK_hᵀ stacked)
/// and attends over the cached rows themselves, as multi-query attention whose values are the
/// leading kv_lora_rank values of the key rows; W_UV_h is applied to each head's output after.
/// That is what the attention executor (this host, a worker) computes, over rows of
/// kv_lora_rank + qk_rope values per token per layer. Prefill may instead expand keys and values
/// per head (`LatentAttentionForm.expanded`, on this host), which costs fewer operations when a
/// step holds many tokens of a sequence; both give the same result within float32 rounding.
public struct LatentAttention: AttentionBlock {
    /// Compressed query path: [q_lora_rank, hidden], its norm [q_lora_rank], and
    /// [heads x (qk_nope + qk_rope), q_lora_rank]; or, without it, `query` alone.
    public var queryDown: WeightMatrix?
    public var queryDownBias: [Float]?
    public var queryDownNorm: [Float]?
    /// [heads x (qk_nope + qk_rope), q_lora_rank], or [heads x (qk_nope + qk_rope), hidden] without
    /// the compressed path.
    public var query: WeightMatrix
    /// [kv_lora_rank + qk_rope, hidden]: the latent, then the rotary key.
    public var latentDown: WeightMatrix
    public var latentDownBias: [Float]?
    public var latentNorm: [Float]       // [kv_lora_rank]
    /// [heads x (qk_nope + v_head), kv_lora_rank]: per head, W_UK_h's qk_nope rows then W_UV_h's
    /// v_head rows (kv_b_proj as stored).
    public var latentUp: WeightMatrix
    /// [heads x kv_lora_rank, qk_nope]: per head, W_UK_hᵀ (made at load from `latentUp`).
    public var keyAbsorb: WeightMatrix
    public var output: WeightMatrix      // [hidden, heads x v_head]
    public var outputBias: [Float]?      // [hidden]
    /// Owns `keyAbsorb`'s memory while it is the one made at load.
    let absorbStorage: HostBuffer?

    /// The epsilon of both latent norms: DeepSeek's RMSNorm default, not the config's rms_norm_eps.
    static let latentNormEpsilon: Float = 1e-6

    public var matrices: [WeightMatrix] { (queryDown.map { [$0] } ?? []) + [query, latentDown, latentUp, keyAbsorb, output] }

    /// Absorbed decode reads W_UK as `keyAbsorb`, not as `latentUp`'s key rows (heads x qk_nope).
    public var decodeBytes: Int {
        let keyRows = keyAbsorb.rows / latentUp.columns * keyAbsorb.columns
        return matrices.reduce(0) { $0 + $1.byteCount } - keyRows * latentUp.rowBytes
    }

    public func mapMatrices(_ transform: (WeightMatrix) -> WeightMatrix) -> LatentAttention {
        var a = self
        a.queryDown = queryDown.map(transform)
        a.query = transform(query)
        a.latentDown = transform(latentDown)
        a.latentUp = transform(latentUp)
        a.keyAbsorb = transform(keyAbsorb)
        a.output = transform(output)
        return a
    }

    /// Binds layer `l`'s attention, checking every shape against the config, and makes W_UKᵀ.
    static func bind(layer l: Int, _ m: LatentAttentionConfig, _ b: WeightBinder) throws(ModelError) -> LatentAttention {
        let c = b.config, hidden = c.hiddenSize, heads = c.headCount
        let queryRows = heads * m.queryHeadDim
        var queryDown: WeightMatrix?, queryDownNorm: [Float]?, queryDownBias: [Float]?
        let query: WeightMatrix
        if let rank = m.queryRank {
            queryDown = try b.matrix(.attention(layer: l, .queryDown), [rank, hidden], "q_lora_rank, hidden_size")
            queryDownBias = try b.optionalVector(.attention(layer: l, .queryDownBias), rank)
            queryDownNorm = try b.vector(.attention(layer: l, .queryDownNorm), rank)
            query = try b.matrix(.attention(layer: l, .queryUp), [queryRows, rank], "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim), q_lora_rank")
        } else {
            query = try b.matrix(.attention(layer: l, .query), [queryRows, hidden], "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim), hidden_size")
        }
        let latentUp = try b.matrix(.attention(layer: l, .latentUp), [heads * (m.noPositionDim + m.valueDim), m.latentRank],
                                    "num_attention_heads x (qk_nope_head_dim + v_head_dim), kv_lora_rank")
        let (keyAbsorb, storage) = transposedKeys(latentUp, heads: heads, m)
        return LatentAttention(
            queryDown: queryDown, queryDownBias: queryDownBias, queryDownNorm: queryDownNorm, query: query,
            latentDown: try b.matrix(.attention(layer: l, .latentDown), [m.cachedWidth, hidden], "kv_lora_rank + qk_rope_head_dim, hidden_size"),
            latentDownBias: try b.optionalVector(.attention(layer: l, .latentDownBias), m.cachedWidth),
            latentNorm: try b.vector(.attention(layer: l, .latentNorm), m.latentRank),
            latentUp: latentUp, keyAbsorb: keyAbsorb,
            output: try b.matrix(.attention(layer: l, .output), [hidden, heads * m.valueDim], "hidden_size, num_attention_heads x v_head_dim"),
            outputBias: try b.optionalVector(.attention(layer: l, .outputBias), hidden),
            absorbStorage: storage)
    }

    /// W_UK_hᵀ for every head, [heads x kv_lora_rank, qk_nope], in the element of `latentUp` when
    /// that is a plain float (the same values), float32 otherwise (the exact widened values).
    static func transposedKeys(_ up: WeightMatrix, heads: Int, _ m: LatentAttentionConfig) -> (WeightMatrix, HostBuffer) {
        let R = m.latentRank, nope = m.noPositionDim, perHead = m.noPositionDim + m.valueDim
        let element: WeightElement = [.bf16, .f16, .f32].contains(up.element) ? up.element : .f32
        let size = element == .f32 ? 4 : 2
        let buffer = HostBuffer(heads * R * nope * size)
        let out = buffer.pointer
        // Widened a row at a time: a K-quant value alone costs its whole block.
        var row = [Float](repeating: 0, count: R)
        for h in 0..<heads {
            for i in 0..<nope {
                let source = h * perHead + i
                if element != up.element { row.withUnsafeMutableBufferPointer { up.widenRow(source, into: $0.baseAddress!) } }
                for r in 0..<R {
                    let target = ((h * R + r) * nope + i) * size
                    if element == up.element {
                        (out + target).copyMemory(from: up.data + (source * R + r) * size, byteCount: size)
                    } else {
                        out.storeBytes(of: row[r], toByteOffset: target, as: Float.self)
                    }
                }
            }
        }
        return (WeightMatrix(element: element, rows: heads * R, columns: nope, data: UnsafeRawPointer(out)), buffer)
    }

    public func project(layer: Int, input: UnsafePointer<Float>, tokens T: Int, context: LayerContext) -> AttentionShape {
        guard case .latent(let m) = context.config.attention else { preconditionFailure("latent attention needs a latent config") }
        let c = context.config, s = context.workspace, device = context.device
        let H = c.hiddenSize, heads = c.headCount, qhd = m.queryHeadDim, R = m.latentRank, cw = m.cachedWidth
        let nope = m.noPositionDim, rope = m.rotaryDim
        let fullWidth = heads * qhd
        s.latentExpanded = false
        s.fullQuery.reserve(T * fullWidth)
        let full = s.fullQuery.pointer
        if let queryDown, let norm = queryDownNorm {
            let rank = queryDown.rows
            s.compressedQuery.reserve(T * rank)
            let cq = s.compressedQuery.pointer
            device.linear(queryDown, input: input, inputStride: H, output: cq, outputStride: rank, tokens: T)
            if let b = queryDownBias { for t in 0..<T { for i in 0..<rank { cq[t * rank + i] += b[i] } } }
            for t in 0..<T { rmsNorm(cq + t * rank, weight: norm, epsilon: Self.latentNormEpsilon, output: cq + t * rank, count: rank) }
            device.linear(query, input: cq, inputStride: rank, output: full, outputStride: fullWidth, tokens: T)
        } else {
            device.linear(query, input: input, inputStride: H, output: full, outputStride: fullWidth, tokens: T)
        }
        // The cached rows: [latent (normed), rotary key] per token.
        let k = s.key.pointer
        device.linear(latentDown, input: input, inputStride: H, output: k, outputStride: cw, tokens: T)
        if let b = latentDownBias { for t in 0..<T { for i in 0..<cw { k[t * cw + i] += b[i] } } }
        let half = s.rotaryDim / 2
        for t in 0..<T {
            rmsNorm(k + t * cw, weight: latentNorm, epsilon: Self.latentNormEpsilon, output: k + t * cw, count: R)
            let cs = s.cosSin.pointer + t * 2 * half
            let rotate = m.interleavedRotary ? applyInterleavedRotary : applyRotary
            rotate(full + t * fullWidth + nope, heads, qhd, rope, cs, cs + half)
            rotate(k + t * cw + R, 1, rope, rope, cs, cs + half)
        }
        // Each head's query in latent space: [W_UK_hᵀ q_nope_h, q_rope_h].
        let q = s.query.pointer, qW = heads * cw
        for h in 0..<heads {
            device.linear(keyAbsorb.rows(h * R..<(h + 1) * R), input: full + h * qhd, inputStride: fullWidth,
                          output: q + h * cw, outputStride: qW, tokens: T)
        }
        for t in 0..<T {
            for h in 0..<heads {
                (q + t * qW + h * cw + R).update(from: full + t * fullWidth + h * qhd + nope, count: rope)
            }
        }
        return AttentionShape(heads: heads, keyValueHeads: 1, headDim: cw, scale: m.softmaxScale, window: nil, valueDim: R, valuesInKeys: true)
    }

    public func outputProjection(output out: UnsafeMutablePointer<Float>, tokens T: Int, context: LayerContext) {
        guard case .latent(let m) = context.config.attention else { preconditionFailure("latent attention needs a latent config") }
        let c = context.config, s = context.workspace, device = context.device
        let H = c.hiddenSize, heads = c.headCount, R = m.latentRank, v = m.valueDim, perHead = m.noPositionDim + m.valueDim
        s.headValues.reserve(T * heads * v)
        let values = s.headValues.pointer, latent = s.attention.pointer
        // Each head's output out of latent space: W_UV_h · (attention-weighted latent), unless the
        // expanded form computed the values themselves.
        for h in 0..<heads where !s.latentExpanded {
            device.linear(latentUp.rows(h * perHead + m.noPositionDim..<(h + 1) * perHead), input: latent + h * R, inputStride: heads * R,
                          output: values + h * v, outputStride: heads * v, tokens: T)
        }
        device.linear(output, input: values, inputStride: heads * v, output: out, outputStride: H, tokens: T)
        if let b = outputBias {
            for t in 0..<T { for i in 0..<H { out[t * H + i] += b[i] } }
        }
    }

    public func attendDirectly(layer: Int, shape: AttentionShape, slots: [TokenSlot], context: LayerContext) -> Bool {
        guard case .latent(let m) = context.config.attention, context.latentForm != .absorbed,
              let local = context.attention as? LocalAttention else { return false }
        // One token (a decode step) never costs less expanded: it re-projects its whole context.
        if context.latentForm == .automatic && slots.count == 1 { return false }
        // Each sequence's tokens in the step, in order, and the context its last one sees.
        var order: [SequenceID] = []
        var tokens: [SequenceID: [Int]] = [:]
        for (t, slot) in slots.enumerated() {
            if tokens[slot.sequence] == nil { order.append(slot.sequence) }
            tokens[slot.sequence, default: []].append(t)
        }
        if context.latentForm == .automatic {
            var absorbed = 0, expanded = 0
            for sequence in order {
                let mine = tokens[sequence]!
                let seen = mine.reduce(0) { $0 + slots[$1].position + 1 }
                let cost = LatentAttentionForm.cost(m, tokens: mine.count, positionsSeen: seen, context: slots[mine.last!].position + 1)
                absorbed += cost.absorbed
                expanded += cost.expanded
            }
            guard expanded < absorbed else { return false }
        }
        attendExpanded(layer: layer, m, cache: local.hostCache, pool: local.pool, order: order, tokens: tokens, slots: slots, context: context)
        return true
    }

    /// Attention with keys and values up-projected per head from the cached rows: for each sequence
    /// of the step, its rows 0...last widened to float32, then per head K_h = [W_UK_h c, k_r] and
    /// V_h = W_UV_h c for every position, and each of its tokens attends over them, straight into
    /// the per-head values that `outputProjection` takes.
    private func attendExpanded(
        layer: Int, _ m: LatentAttentionConfig, cache: any HostKVCache, pool: ThreadPool, order: [SequenceID], tokens: [SequenceID: [Int]],
        slots: [TokenSlot], context: LayerContext
    ) {
        let c = context.config, s = context.workspace, device = context.device
        let heads = c.headCount, R = m.latentRank, cw = m.cachedWidth, nope = m.noPositionDim, rope = m.rotaryDim
        let qhd = m.queryHeadDim, v = m.valueDim, perHead = nope + v, fullWidth = heads * qhd
        let rowWidth = qhd + v  // one position of one head: [k_nope, k_rope, v]
        let k = s.key.pointer
        for (t, slot) in slots.enumerated() {
            cache.append(slot.sequence, layer: layer, position: slot.position, keys: k + t * cw, values: k, count: 1)
        }
        s.latentExpanded = true
        s.headValues.reserve(slots.count * heads * v)
        let full = s.fullQuery.pointer, out = s.headValues.pointer
        for sequence in order {
            let mine = tokens[sequence]!
            let positions = slots[mine.last!].position + 1
            s.latentRows.reserve(positions * cw)
            s.expandedRows.reserve(positions * rowWidth)
            s.scores.reserve(mine.count * 16)
            let rows = s.latentRows.pointer, expanded = s.expandedRows.pointer, tiles = s.scores.pointer
            Self.widen(cache, sequence: sequence, layer: layer, width: cw, positions: positions, into: rows)
            for h in 0..<heads {
                device.linear(latentUp.rows(h * perHead..<h * perHead + nope), input: rows, inputStride: cw,
                              output: expanded, outputStride: rowWidth, tokens: positions)
                device.linear(latentUp.rows(h * perHead + nope..<(h + 1) * perHead), input: rows, inputStride: cw,
                              output: expanded + qhd, outputStride: rowWidth, tokens: positions)
                for j in 0..<positions { (expanded + j * rowWidth + nope).update(from: rows + j * cw + R, count: rope) }
                pool.parallelFor(mine.count) { i in
                    let t = mine[i]
                    attendGroup(
                        queries: full + t * fullWidth + h * qhd, group: 1, headDim: qhd, valueDim: v, scale: m.softmaxScale,
                        keys: F32Rows(expanded, rowWidth), values: F32Rows(expanded + qhd, rowWidth), first: 0, last: slots[t].position,
                        tile: tiles + i * 16, output: out + t * heads * v + h * v)
                }
            }
        }
    }

    /// Rows 0..<positions of a sequence's cached latent rows, as float32 [positions, width].
    static func widen(_ cache: any HostKVCache, sequence: SequenceID, layer: Int, width: Int, positions: Int,
                      into out: UnsafeMutablePointer<Float>) {
        let base = cache.rows(of: sequence, layer: layer).keys, rowBytes = cache.element.rowBytes(width)
        out.update(repeating: 0, count: positions * width)
        for j in 0..<positions {
            let row = base + j * rowBytes, o = out + j * width
            switch cache.element {
            case .f32: o.update(from: row.assumingMemoryBound(to: Float.self), count: width)
            case .bf16: BF16Rows(row.assumingMemoryBound(to: UInt16.self), width).axpy(1, 0, o, width)
            case .int8:
                Int8Rows(row.assumingMemoryBound(to: Int8.self), rowBytes, scales: (row + width).assumingMemoryBound(to: Float.self),
                         scaleStride: rowBytes / 4).axpy(1, 0, o, width)
            }
        }
    }
}

/// How latent attention computes a step. Absorbed: each head's query is taken into latent space and
/// attends over the cached rows (per token and head: kv_lora_rank x (qk_nope + v_head) for the
/// projections, 2 kv_lora_rank + qk_rope per position seen). Expanded: every position's keys and
/// values are up-projected per head (kv_lora_rank x (qk_nope + v_head) per position of the
/// context), then attention is plain (qk_nope + qk_rope + v_head per position seen). Absorbed wins
/// for decode; expanded for prefill steps of many tokens over a short context.
public enum LatentAttentionForm: String, Sendable, CaseIterable {
    case absorbed, expanded
    /// The form of fewer multiply-adds for each step (expanded only where attention runs on this host).
    case automatic = "auto"

    /// Multiply-adds per head of each form for one sequence's `tokens` in a step, which see
    /// `positionsSeen` cached positions in all, the last of them `context`.
    public static func cost(_ m: LatentAttentionConfig, tokens: Int, positionsSeen: Int, context: Int) -> (absorbed: Int, expanded: Int) {
        let projections = m.latentRank * (m.noPositionDim + m.valueDim)
        let absorbed = tokens * projections + positionsSeen * (2 * m.latentRank + m.rotaryDim)
        let expanded = context * projections + positionsSeen * (m.queryHeadDim + m.valueDim)
        return (absorbed, expanded)
    }
}
