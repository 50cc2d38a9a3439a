import Kernels

/// Where matrix products run. The forward pass hands every weight product to a device; the CPU
/// device runs them on the kernel thread pool. The planner and the accelerator backends (emulated,
/// CUDA) plug in here: a device that holds a weight computes with it.
public protocol ComputeDevice: AnyObject, Sendable {
    var name: String { get }
    /// output[t, 0..<rows] = weight · input[t, 0..<columns] for t in 0..<tokens.
    func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int)
}

public final class CPUDevice: ComputeDevice {
    public let pool: ThreadPool
    public var name: String { "cpu (\(pool.threadCount) threads)" }

    public init(pool: ThreadPool) { self.pool = pool }

    public convenience init(threads: Int? = nil) {
        self.init(pool: threads.map { ThreadPool(threads: $0) } ?? .shared)
    }

    public func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int
    ) {
        matmul(weight, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens, pool: pool)
    }
}
