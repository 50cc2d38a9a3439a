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
    attendGroup(queries: queries, group: group, headDim: headDim, valueDim: headDim, scale: scale, keys: F32Rows(keys, rowStride),
                values: F32Rows(values, rowStride), first: first, last: last, tile: tile, output: output)
}

/// The same over cached rows of any element (float32, bf16, int8 with a scale per row), with
/// values of `valueDim` per head (latent attention's values are wider or narrower than its keys);
/// output [group x valueDim]. With `sinks` ([group], GPT-OSS), each head's softmax has one more
/// logit, its sink, which has no value: the weights of the positions sum to less than one.
@inlinable
public func attendGroup<Keys: KeyValueRows, Values: KeyValueRows>(
    queries: UnsafePointer<Float>, group: Int, headDim: Int, valueDim: Int, scale: Float, keys: Keys, values: Values, first: Int, last: Int,
    tile: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>, sinks: UnsafePointer<Float>? = nil
) {
    // Per head: the running maximum and the sum of weights so far. A group is at most a few
    // dozen heads; the stack holds them.
    let tileLanes = Vector16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * group) { state in
        let maximum = state.baseAddress!, total = maximum + group
        maximum.update(repeating: -Float.infinity, count: group)
        total.update(repeating: 0, count: group)
        output.update(repeating: 0, count: group * valueDim)
        var start = first
        while start <= last {
            let n = min(16, last - start + 1)
            for g in 0..<group {
                let q = queries + g * headDim, scores = tile + g * 16
                var tileMaximum = -Float.infinity
                for j in 0..<n {
                    let s = keys.dot(q, start + j, headDim) * scale
                    scores[j] = s
                    tileMaximum = max(tileMaximum, s)
                }
                if tileMaximum > maximum[g] {
                    // e^-inf is 0: the first tile rescales nothing.
                    let factor = expf(maximum[g] - tileMaximum)
                    total[g] *= factor
                    let o = output + g * valueDim
                    for i in 0..<valueDim { o[i] *= factor }
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
                for g in 0..<group { values.axpy(tile[g * 16 + j], start + j, output + g * valueDim, valueDim) }
            }
            start += n
        }
        for g in 0..<group {
            // The sink's e^(s - max) joins the denominator (it may exceed every position's).
            if let sinks { total[g] += expf(sinks[g] - maximum[g]) }
            let inverse = 1 / total[g], o = output + g * valueDim
            for i in 0..<valueDim { o[i] *= inverse }
        }
    }
}

/// One KV head's cached rows (keys or values) as attention reads them: row j is position j.
public protocol KeyValueRows {
    /// q · row j over `n` values.
    func dot(_ q: UnsafePointer<Float>, _ j: Int, _ n: Int) -> Float
    /// out += a · row j over `n` values.
    func axpy(_ a: Float, _ j: Int, _ out: UnsafeMutablePointer<Float>, _ n: Int)
}

/// Float32 rows, `stride` floats apart.
public struct F32Rows: KeyValueRows {
    public let base: UnsafePointer<Float>
    public let stride: Int
    @inlinable public init(_ base: UnsafePointer<Float>, _ stride: Int) {
        self.base = base
        self.stride = stride
    }
    @inlinable public func dot(_ q: UnsafePointer<Float>, _ j: Int, _ n: Int) -> Float { Kernels.dot(q, base + j * stride, n) }
    @inlinable public func axpy(_ a: Float, _ j: Int, _ out: UnsafeMutablePointer<Float>, _ n: Int) { Kernels.axpy(a, base + j * stride, out, n) }
}

/// bf16 rows (the high half of a float32), `stride` values apart; widened exactly as read.
public struct BF16Rows: KeyValueRows {
    public let base: UnsafePointer<UInt16>
    public let stride: Int
    @inlinable public init(_ base: UnsafePointer<UInt16>, _ stride: Int) {
        self.base = base
        self.stride = stride
    }
    @inlinable @inline(__always) func load(_ p: UnsafePointer<UInt16>) -> Vector16 {
        let h = UnsafeRawPointer(p).loadUnaligned(as: SIMD16<UInt16>.self)
        return unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: h) &<< 16, to: Vector16.self)
    }
    @inlinable public func dot(_ q: UnsafePointer<Float>, _ j: Int, _ n: Int) -> Float {
        let row = base + j * stride, rq = UnsafeRawPointer(q)
        var s0 = Vector16(), s1 = Vector16()
        var i = 0
        while i + 32 <= n {
            s0.addProduct(rq.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self), load(row + i))
            s1.addProduct(rq.loadUnaligned(fromByteOffset: (i + 16) * 4, as: Vector16.self), load(row + i + 16))
            i += 32
        }
        if i + 16 <= n {
            s0.addProduct(rq.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self), load(row + i))
            i += 16
        }
        var s = horizontalSum(s0 + s1)
        while i < n { s += q[i] * Float(bitPattern: UInt32(row[i]) << 16); i += 1 }
        return s
    }
    @inlinable public func axpy(_ a: Float, _ j: Int, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
        let row = base + j * stride, ro = UnsafeMutableRawPointer(out), va = Vector16(repeating: a)
        var i = 0
        while i + 16 <= n {
            var v = ro.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self)
            v.addProduct(va, load(row + i))
            ro.storeBytes(of: v, toByteOffset: i * 4, as: Vector16.self)
            i += 16
        }
        while i < n { out[i] += a * Float(bitPattern: UInt32(row[i]) << 16); i += 1 }
    }
}

/// int8 rows in blocks of 16 values, each with its float32 scale (value = scale x code): row j's
/// codes `stride` apart, its block scales `scaleStride` apart. `n` must be a multiple of 16.
public struct Int8Rows: KeyValueRows {
    public let base: UnsafePointer<Int8>
    public let stride: Int
    public let scales: UnsafePointer<Float>
    public let scaleStride: Int
    @inlinable public init(_ base: UnsafePointer<Int8>, _ stride: Int, scales: UnsafePointer<Float>, scaleStride: Int) {
        self.base = base
        self.stride = stride
        self.scales = scales
        self.scaleStride = scaleStride
    }
    @inlinable @inline(__always) func load(_ p: UnsafePointer<Int8>) -> Vector16 {
        Vector16(SIMD16<Int32>(truncatingIfNeeded: UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Int8>.self)))
    }
    @inlinable public func dot(_ q: UnsafePointer<Float>, _ j: Int, _ n: Int) -> Float {
        let row = base + j * stride, scale = scales + j * scaleStride, rq = UnsafeRawPointer(q)
        var s = Vector16()
        for b in 0..<(n / 16) {
            s.addProduct(rq.loadUnaligned(fromByteOffset: b * 64, as: Vector16.self) * Vector16(repeating: scale[b]), load(row + b * 16))
        }
        return horizontalSum(s)
    }
    @inlinable public func axpy(_ a: Float, _ j: Int, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
        let row = base + j * stride, scale = scales + j * scaleStride, ro = UnsafeMutableRawPointer(out)
        for b in 0..<(n / 16) {
            var v = ro.loadUnaligned(fromByteOffset: b * 64, as: Vector16.self)
            v.addProduct(Vector16(repeating: a * scale[b]), load(row + b * 16))
            ro.storeBytes(of: v, toByteOffset: b * 64, as: Vector16.self)
        }
    }
}

/// x rounded to the nearest bf16, ties to even (NaN stays NaN).
@inlinable
public func roundToBF16(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x40 }
    return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
}

/// n values (at most 16) as int8 codes with one scale (max |x| / 127; 0 for zeros), rounded to
/// nearest; a non-finite value becomes 0.
@inlinable
public func quantizeBlockInt8(_ x: UnsafePointer<Float>, _ n: Int, codes: UnsafeMutablePointer<Int8>) -> Float {
    var m: Float = 0
    for i in 0..<n where x[i].isFinite { m = max(m, abs(x[i])) }
    let scale = m / 127
    let inverse = scale > 0 ? 1 / scale : 0
    for i in 0..<n {
        let v = x[i].isFinite ? (x[i] * inverse).rounded() : 0
        codes[i] = Int8(max(-127, min(127, v)))
    }
    return scale
}
