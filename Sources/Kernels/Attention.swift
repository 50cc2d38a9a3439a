import SwitchyardSupport

/// Causal attention of the `group` query heads that share one KV head (grouped-query attention),
/// for one token, over positions first...last of a key/value cache, in one pass: scores, softmax
/// and the weighted sum of values together, as flash attention does. Positions go in tiles of 16:
/// a tile's scores for every head of the group (each key row read once for all of them), the
/// running maximum raised once per tile (rescaling what was summed so far), the tile's weights by a
/// vectorised e^x, then the value rows added into each head's sum while they are in cache. The
/// scores never go to memory, so the work memory is one tile and the result needs no second pass.
///
/// The same kernel runs wherever attention runs (this host's cores, an attention worker), so a
/// placement changes speed, never the result.
///
/// - Parameters:
///   - queries: [group x headDim], this token's heads of the group, contiguous.
///   - keys, values: row j (position j) at `j * rowStride` floats, [headDim] of this KV head.
///   - tile: work memory of `group * 16` floats.
///   - output: [group x headDim].
@inlinable
public func attendGroup(
    queries: UnsafePointer<Float>, group: Int, headDim: Int, scale: Float,
    keys: UnsafePointer<Float>, values: UnsafePointer<Float>, rowStride: Int, first: Int, last: Int,
    tile: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>
) {
    // Per head: the running maximum and the sum of weights so far. A group is at most a few
    // dozen heads; the stack holds them.
    let tileLanes = Vector16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * group) { state in
        let maximum = state.baseAddress!, total = maximum + group
        maximum.update(repeating: -Float.infinity, count: group)
        total.update(repeating: 0, count: group)
        output.update(repeating: 0, count: group * headDim)
        var start = first
        while start <= last {
            let n = min(16, last - start + 1)
            for g in 0..<group {
                let q = queries + g * headDim, scores = tile + g * 16
                var tileMaximum = -Float.infinity
                for j in 0..<n {
                    let s = dot(q, keys + (start + j) * rowStride, headDim) * scale
                    scores[j] = s
                    tileMaximum = max(tileMaximum, s)
                }
                if tileMaximum > maximum[g] {
                    // e^-inf is 0: the first tile rescales nothing.
                    let factor = expf(maximum[g] - tileMaximum)
                    total[g] *= factor
                    let o = output + g * headDim
                    for i in 0..<headDim { o[i] *= factor }
                    maximum[g] = tileMaximum
                }
                let raw = UnsafeMutableRawPointer(scores)
                // Lanes past the last position weigh nothing (exp16 clamps, it never gives 0).
                let weights = exp16(raw.loadUnaligned(as: Vector16.self) - Vector16(repeating: maximum[g]))
                    .replacing(with: 0, where: tileLanes .>= Vector16(repeating: Float(n)))
                raw.storeBytes(of: weights, as: Vector16.self)
                total[g] += weights.sum()
            }
            // Values second, so each value row is read once for every head of the group.
            for j in 0..<n {
                let v = values + (start + j) * rowStride
                for g in 0..<group { axpy(tile[g * 16 + j], v, output + g * headDim, headDim) }
            }
            start += n
        }
        for g in 0..<group {
            let inverse = 1 / total[g], o = output + g * headDim
            for i in 0..<headDim { o[i] *= inverse }
        }
    }
}
