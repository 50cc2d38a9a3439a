#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sum of a[i] * b[i] with four vector accumulators.
@inlinable
public func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var s0 = Vector16(), s1 = Vector16(), s2 = Vector16(), s3 = Vector16()
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    var i = 0
    while i + 64 <= n {
        s0.addProduct(ra.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self), rb.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self))
        s1.addProduct(ra.loadUnaligned(fromByteOffset: (i + 16) * 4, as: Vector16.self), rb.loadUnaligned(fromByteOffset: (i + 16) * 4, as: Vector16.self))
        s2.addProduct(ra.loadUnaligned(fromByteOffset: (i + 32) * 4, as: Vector16.self), rb.loadUnaligned(fromByteOffset: (i + 32) * 4, as: Vector16.self))
        s3.addProduct(ra.loadUnaligned(fromByteOffset: (i + 48) * 4, as: Vector16.self), rb.loadUnaligned(fromByteOffset: (i + 48) * 4, as: Vector16.self))
        i += 64
    }
    while i + 16 <= n {
        s0.addProduct(ra.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self), rb.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self))
        i += 16
    }
    var s = horizontalSum((s0 + s1) + (s2 + s3))
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

/// y[i] += alpha * x[i]
@inlinable
public func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    let a = Vector16(repeating: alpha)
    let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
    var i = 0
    while i + 16 <= n {
        var v = ry.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self)
        v.addProduct(a, rx.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self))
        ry.storeBytes(of: v, toByteOffset: i * 4, as: Vector16.self)
        i += 16
    }
    while i < n { y[i] += alpha * x[i]; i += 1 }
}

/// RMSNorm as transformers computes it in float32: x * rsqrt(mean(x²) + eps) * weight.
/// `output` may alias `input`.
@inlinable
public func rmsNorm(
    _ input: UnsafePointer<Float>, weight: UnsafePointer<Float>, epsilon: Float,
    output: UnsafeMutablePointer<Float>, count n: Int
) {
    let meanSquare = dot(input, input, n) / Float(n)
    // torch.rsqrt in float32; 1/sqrt in float matches it to an ulp.
    let scale = 1 / (meanSquare + epsilon).squareRoot()
    for i in 0..<n { output[i] = weight[i] * (input[i] * scale) }
}

/// In-place softmax over `n` values, in float32 with the maximum subtracted.
@inlinable
public func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
    var m = -Float.infinity
    for i in 0..<n where x[i] > m { m = x[i] }
    var sum: Float = 0
    for i in 0..<n {
        let e = expf(x[i] - m)
        x[i] = e
        sum += e
    }
    let inv = 1 / sum
    for i in 0..<n { x[i] *= inv }
}

/// gate[i] = silu(gate[i]) * up[i], SiLU(x) = x / (1 + e^-x).
@inlinable
public func siluMultiply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
    for i in 0..<n {
        let g = gate[i]
        gate[i] = g / (1 + expf(-g)) * up[i]
    }
}

/// Rotary position embedding in the "rotate half" layout (what transformers uses for every
/// architecture here): dimension i pairs with i + rotaryDim/2. Dimensions past `rotaryDim` (partial
/// rotary) are left unchanged.
///
/// - Parameters:
///   - x: `heads` vectors of `headDim`, contiguous.
///   - cos, sin: [rotaryDim / 2] for this position, already multiplied by the attention factor.
@inlinable
public func applyRotary(
    _ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, rotaryDim: Int,
    cos: UnsafePointer<Float>, sin: UnsafePointer<Float>
) {
    let half = rotaryDim / 2
    for h in 0..<heads {
        let v = x + h * headDim
        for i in 0..<half {
            let a = v[i], b = v[i + half]
            v[i] = a * cos[i] - b * sin[i]
            v[i + half] = b * cos[i] + a * sin[i]
        }
    }
}

/// Causal attention of one query head over positions first...last of a key/value cache, with
/// grouped-query attention: query head `head` reads KV head `head / (heads / kvHeads)`, so repeated
/// heads are never materialised.
///
/// - Parameters:
///   - query: [heads x headDim] for this token.
///   - keys, values: row 0 is position 0; each row is [kvHeads x headDim], `rowStride` floats apart.
///   - scores: room for last + 1 floats.
///   - output: [headDim] for this head.
@inlinable
public func attendHead(
    head: Int, heads: Int, kvHeads: Int, headDim: Int, scale: Float,
    query: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, rowStride: Int,
    first: Int, last: Int, scores: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>
) {
    let kvOffset = (head / (heads / kvHeads)) * headDim
    let q = query + head * headDim
    for j in first...last {
        scores[j] = dot(q, keys + j * rowStride + kvOffset, headDim) * scale
    }
    softmax(scores + first, last - first + 1)
    output.update(repeating: 0, count: headDim)
    for j in first...last {
        axpy(scores[j], values + j * rowStride + kvOffset, output, headDim)
    }
}
