import Kernels
import SwitchyardSupport

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

    /// One parallel region for both, over one prepared input.
    public func linear(
        _ first: WeightMatrix, _ second: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>), outputStride: Int, tokens: Int
    ) {
        matmul(first, second, input: input, inputStride: inputStride, outputs: outputs, outputStride: outputStride, tokens: tokens, pool: pool,
               precision: precision)
    }
}
