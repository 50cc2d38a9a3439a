import Kernels

/// Where matrix products run. The forward pass hands every weight product to a device; the CPU
/// device runs them on the kernel thread pool, `AcceleratedDevice` sends those whose weights an
/// accelerator holds to it. A device that holds a weight computes with it.
public protocol ComputeDevice: AnyObject, Sendable {
    var name: String { get }
    /// Activations of products with block-quantised weights (Q8_0, Q4_0, Q4_K).
    var precision: ActivationPrecision { get }
    /// output[t, 0..<rows] = weight · input[t, 0..<columns] for t in 0..<tokens.
    func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int)
    /// Two products of one input (an MLP's gate and up projections), each exactly what `linear`
    /// gives; a device may run them together.
    func linear(
        _ first: WeightMatrix, _ second: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>), outputStride: Int, tokens: Int)
}

extension ComputeDevice {
    public func linear(
        _ first: WeightMatrix, _ second: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>), outputStride: Int, tokens: Int
    ) {
        linear(first, input: input, inputStride: inputStride, output: outputs.0, outputStride: outputStride, tokens: tokens)
        linear(second, input: input, inputStride: inputStride, output: outputs.1, outputStride: outputStride, tokens: tokens)
    }

    /// output[T, hidden] = down(silu(gate · x) * (up · x)): the one SwiGLU of the engine (with the
    /// network's biases and activation when it has others). Dense layers, shared experts and
    /// routed experts on every device run through it, so an expert's output is the same bits
    /// wherever it runs.
    /// - Parameters:
    ///   - gate, up: scratch of [tokens, intermediate] each.
    public func feedForward(
        _ w: FeedForwardWeights, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens: Int,
        gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>
    ) {
        let hidden = w.down.rows, inner = w.intermediateSize
        linear(w.gate, w.up, input: input, inputStride: hidden, outputs: (gate, up), outputStride: inner, tokens: tokens)
        w.activate(gate: gate, up: up, rows: 0..<tokens)
        linear(w.down, input: gate, inputStride: inner, output: output, outputStride: hidden, tokens: tokens)
        w.addDownBias(output, rows: 0..<tokens)
    }
}

/// The host's cores: products on the kernel thread pool, with the kernel choices measured for
/// this machine.
public final class CPUDevice: ComputeDevice {
    public let pool: ThreadPool
    /// Activations of products with block-quantised weights.
    public let precision: ActivationPrecision
    public let tuning: KernelTuning
    public var name: String { "cpu (\(pool.threadCount) threads)" }

    public init(pool: ThreadPool, precision: ActivationPrecision = .f32, tuning: KernelTuning = .default) {
        self.pool = pool
        self.precision = precision
        self.tuning = tuning
    }

    public convenience init(threads: Int? = nil) {
        self.init(pool: threads.map { ThreadPool(threads: $0) } ?? .shared)
    }

    public func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int
    ) {
        precondition(weight.location == .host, "the CPU reads host memory only")
        matmul(weight, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens, pool: pool,
               precision: precision, tuning: tuning)
    }

    /// One parallel region for both, over one prepared input.
    public func linear(
        _ first: WeightMatrix, _ second: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>), outputStride: Int, tokens: Int
    ) {
        precondition(first.location == .host && second.location == .host, "the CPU reads host memory only")
        matmul(first, second, input: input, inputStride: inputStride, outputs: outputs, outputStride: outputStride, tokens: tokens,
               pool: pool, precision: precision, tuning: tuning)
    }
}

/// One expert's part of a grouped pass: its weights and its rows of the input and output.
public struct GroupedExpert {
    public var weights: FeedForwardWeights
    public var firstRow: Int, tokens: Int

    public init(_ weights: FeedForwardWeights, firstRow: Int, tokens: Int) {
        self.weights = weights
        self.firstRow = firstRow
        self.tokens = tokens
    }
}

extension FeedForwardWeights {
    /// Rows `rows` of the gate and up products ([*, intermediate]) through the biases and the
    /// activation, into the gate rows.
    @inlinable
    func activate(gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>, rows: Range<Int>) {
        let inner = intermediateSize
        for t in rows {
            let g = gate + t * inner, u = up + t * inner
            if let b = biases {
                for i in 0..<inner {
                    g[i] += b.gate[i]
                    u[i] += b.up[i]
                }
            }
            activation.apply(g, u, inner)
        }
    }

    /// The down product's bias added to rows `rows` of output [*, hidden].
    @inlinable
    func addDownBias(_ output: UnsafeMutablePointer<Float>, rows: Range<Int>) {
        guard let b = biases?.down else { return }
        let hidden = down.rows
        for t in rows { for i in 0..<hidden { output[t * hidden + i] += b[i] } }
    }
}

extension CPUDevice {
    /// Several experts' SwiGLU as one grouped pass: every gate and up product in one parallel
    /// region, every down product in another (EPS-MoE's GroupGemm), instead of two regions per
    /// expert. Each expert's rows are exactly what `feedForward` over them alone gives. The experts
    /// must share their shape and element (a layer's do); others run one after another.
    /// - Parameters:
    ///   - input, output: [*, hidden]; each expert reads and writes its own rows.
    ///   - gate, up: scratch of [Σ tokens, intermediate] each.
    public func feedForward(group experts: [GroupedExpert], input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                            gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>) {
        guard let head = experts.first?.weights else { return }
        let hidden = head.down.rows, inner = head.intermediateSize
        let uniform = experts.allSatisfy { e in
            e.weights.intermediateSize == inner && e.weights.matrices.allSatisfy { $0.element == head.gate.element && $0.location == .host }
        }
        guard uniform else {
            var row = 0
            for e in experts {
                feedForward(e.weights, input: input + e.firstRow * hidden, output: output + e.firstRow * hidden, tokens: e.tokens,
                            gate: gate + row * inner, up: up + row * inner)
                row += e.tokens
            }
            return
        }
        var gateUp: [RowSegment] = [], down: [RowSegment] = []
        var row = 0
        for e in experts {
            gateUp.append(RowSegment(e.weights.gate, e.weights.up, inputRow: e.firstRow, outputRow: row, tokens: e.tokens))
            down.append(RowSegment(e.weights.down, inputRow: row, outputRow: e.firstRow, tokens: e.tokens))
            row += e.tokens
        }
        matmulSegments(gateUp, input: input, inputStride: hidden, outputs: (gate, up), outputStride: inner, pool: pool,
                       precision: precision, tuning: tuning)
        row = 0
        for e in experts {
            e.weights.activate(gate: gate, up: up, rows: row..<(row + e.tokens))
            row += e.tokens
        }
        matmulSegments(down, input: gate, inputStride: inner, outputs: (output, nil), outputStride: hidden, pool: pool,
                       precision: precision, tuning: tuning)
        for e in experts { e.weights.addDownBias(output, rows: e.firstRow..<(e.firstRow + e.tokens)) }
    }
}
