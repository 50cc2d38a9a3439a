import SwitchyardSupport

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

/// gate[i] = silu(gate[i]) * up[i], SiLU(x) = x / (1 + e^-x), 16 at a time with `exp16`: decode
/// ran libm's expf once per value of every expert's 3584 on one core while the other waited
/// (2% of Q8_0 decode).
@inlinable
public func siluMultiply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
    let rg = UnsafeMutableRawPointer(gate), ru = UnsafeRawPointer(up)
    let one = Vector16(repeating: 1)
    var i = 0
    while i + 16 <= n {
        let g = rg.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self)
        let u = ru.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self)
        rg.storeBytes(of: g / (one + exp16(-g)) * u, toByteOffset: i * 4, as: Vector16.self)
        i += 16
    }
    while i < n {
        let g = gate[i]
        gate[i] = g / (1 + expf(-g)) * up[i]
        i += 1
    }
}

/// GPT-OSS's gated activation: gate[i] = g x sigmoid(alpha x g) x (u + 1), with g = min(gate[i],
/// limit) and u = up[i] clamped to [-limit, limit] (transformers' `_apply_gate`).
@inlinable
public func clampedSiluMultiply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int, alpha: Float, limit: Float) {
    let rg = UnsafeMutableRawPointer(gate), ru = UnsafeRawPointer(up)
    let one = Vector16(repeating: 1), a = Vector16(repeating: alpha), high = Vector16(repeating: limit), low = Vector16(repeating: -limit)
    var i = 0
    while i + 16 <= n {
        let g = rg.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self).clamped(lowerBound: Vector16(repeating: -.infinity), upperBound: high)
        let u = ru.loadUnaligned(fromByteOffset: i * 4, as: Vector16.self).clamped(lowerBound: low, upperBound: high)
        rg.storeBytes(of: g / (one + exp16(-(g * a))) * (u + one), toByteOffset: i * 4, as: Vector16.self)
        i += 16
    }
    while i < n {
        let g = min(gate[i], limit), u = min(max(up[i], -limit), limit)
        gate[i] = g / (1 + expf(-(g * alpha))) * (u + 1)
        i += 1
    }
}

/// e^x for 16 floats, within 1 ulp of the exact value (0.88 at worst in the tests) over
/// [-87.3, 88.3]; inputs beyond are clamped there (e^x below 1.2e-38 or above 2.1e38; NaN stays
/// NaN). Cody-Waite reduction x = n·ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r,
/// then 2^n put in the exponent field.
@inlinable @inline(__always)
public func exp16(_ x: Vector16) -> Vector16 {
    let high = Vector16(repeating: 88.3), low = Vector16(repeating: -87.3)
    var v = x.replacing(with: high, where: x .> high)
    v = v.replacing(with: low, where: v .< low)
    // Round to nearest by the 1.5·2^23 trick: the sum's low mantissa bits are n.
    let magic = Vector16(repeating: 12_582_912)
    let shifted = v * Vector16(repeating: 1.442_695_04) + magic
    let n = shifted - magic
    var r = v - n * Vector16(repeating: 0.693_359_375)
    r = r - n * Vector16(repeating: -2.121_944_4e-4)
    var p = Vector16(repeating: 1.987_569_15e-4)
    p = p * r + Vector16(repeating: 1.398_199_95e-3)
    p = p * r + Vector16(repeating: 8.333_451_9e-3)
    p = p * r + Vector16(repeating: 4.166_579_59e-2)
    p = p * r + Vector16(repeating: 1.666_666_55e-1)
    p = p * r + Vector16(repeating: 5.000_000_12e-1)
    p = p * (r * r) + r + Vector16(repeating: 1)
    let exponent = (unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    return p * unsafeBitCast(exponent, to: Vector16.self)
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

/// RoPE over adjacent pairs (x0, x1), (x2, x3)... of the first `rotaryDim` values of each head,
/// as DeepSeek lays out its rotary dimensions; pair i turns by frequency i. Same arguments as
/// `applyRotary`.
@inlinable
public func applyInterleavedRotary(
    _ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, rotaryDim: Int,
    cos: UnsafePointer<Float>, sin: UnsafePointer<Float>
) {
    for h in 0..<heads {
        let v = x + h * headDim
        for i in 0..<(rotaryDim / 2) {
            let a = v[2 * i], b = v[2 * i + 1]
            v[2 * i] = a * cos[i] - b * sin[i]
            v[2 * i + 1] = b * cos[i] + a * sin[i]
        }
    }
}
