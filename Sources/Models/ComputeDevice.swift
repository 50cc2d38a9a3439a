import Kernels

/// Where matrix products run. The forward pass hands every weight product to a device; the CPU
/// device runs them on the kernel thread pool. The planner and the accelerator backends (emulated,
/// CUDA) plug in here: a device that holds a weight computes with it.
public protocol ComputeDevice: AnyObject, Sendable {
    var name: String { get }
    /// Activations of products with block-quantised weights (Q8_0, Q4_0, Q4_K).
    var precision: ActivationPrecision { get }
    /// output[t, 0..<rows] = weight · input[t, 0..<columns] for t in 0..<tokens.
    func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int)
}

public final class CPUDevice: ComputeDevice {
    public let pool: ThreadPool
    /// Activations of products with block-quantised weights.
    public let precision: ActivationPrecision
    public var name: String { "cpu (\(pool.threadCount) threads)" }

    public init(pool: ThreadPool, precision: ActivationPrecision = .f32) {
        self.pool = pool
        self.precision = precision
    }

    public convenience init(threads: Int? = nil) {
        self.init(pool: threads.map { ThreadPool(threads: $0) } ?? .shared)
    }

    public func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int
    ) {
        matmul(weight, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens, pool: pool,
               precision: precision)
    }
}
