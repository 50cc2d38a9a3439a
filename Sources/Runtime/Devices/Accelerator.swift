import Kernels
import SwitchyardSupport

/// An accelerator that cannot be had: no device, not enough memory. The message says which.
public struct AcceleratorError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A device with memory of its own that weights must be copied into before it computes with them:
/// a GPU (the CUDA backend), or the emulated accelerator that stands in for one in tests. The
/// vocabulary is ggml-backend's and CUDA's: a memory budget handed out as offsets, a copy stream
/// and a kernel stream whose work is ordered by completions (events).
///
/// Tiers and the scheduler hold `any Accelerator` and never name a concrete device, so a backend
/// is a module that conforms to this protocol.
public protocol Accelerator: AnyObject, Sendable {
    var name: String { get }
    /// Bytes of device memory in all.
    var capacity: Int { get }
    /// Bytes allocated so far (allocation is front to back).
    var used: Int { get }
    /// Bytes host → device moved through the copy stream so far.
    var bytesCopied: Int { get }

    /// `bytes` of device memory (64-byte aligned), as an offset into it, or nil when the budget is
    /// spent.
    func allocate(_ bytes: Int) -> Int?
    /// Returns everything allocated after `mark` (a past value of `used`): scratch for calibration.
    func release(to mark: Int)
    /// `matrix`'s shape and element with its bytes at `offset` of this device's memory.
    func matrix(_ matrix: WeightMatrix, at offset: Int) -> WeightMatrix
    /// Host → device copy of `bytes` at `source` to `offset`, on the copy stream after `after`; the
    /// host memory must stay valid until the returned completion is done. Copies run in order.
    func copy(from source: UnsafeRawPointer, toOffset offset: Int, bytes: Int, after: [Completion]) -> Completion
    /// One product on weights it holds (`weight.location` is `.accelerator`), with host
    /// activations, returning when done.
    func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int)
    /// One expert on weights it holds, on the kernel stream after `after`: output[tokens, hidden] =
    /// SwiGLU(input), host activations that must stay valid until the returned completion is done.
    /// It must give what `ComputeDevice.feedForward` gives on the CPU (bit for bit where the device
    /// runs the CPU's kernels, within the conformance suite's bound otherwise).
    func runExpert(
        _ weights: FeedForwardWeights, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens: Int,
        after: [Completion]) -> Completion
}

extension Accelerator {
    /// Bytes not yet allocated (after the alignment the next allocation would take).
    public var available: Int { capacity - ((used + 63) & ~63) }

    /// Copies a host matrix into freshly allocated device memory and returns it there, or nil when
    /// it does not fit. Waits for the copy.
    public func moveIn(_ m: WeightMatrix) -> WeightMatrix? {
        precondition(m.location == .host, "moving in a matrix that is not in host memory")
        guard let offset = allocate(m.byteCount) else { return nil }
        copy(from: m.data, toOffset: offset, bytes: m.byteCount, after: []).wait()
        return matrix(m, at: offset)
    }
}

/// The model's device when an accelerator is present: a product whose weights the accelerator
/// holds runs there; every other runs on the CPU. It decides by each weight's location, a value
/// set when the weight was placed.
public final class AcceleratedDevice: ComputeDevice {
    public let cpu: CPUDevice
    public let accelerator: any Accelerator
    public var precision: ActivationPrecision { cpu.precision }
    public var name: String { "\(cpu.name) + \(accelerator.name)" }

    public init(cpu: CPUDevice, accelerator: any Accelerator) {
        self.cpu = cpu
        self.accelerator = accelerator
    }

    public func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int
    ) {
        switch weight.location {
        case .host:
            cpu.linear(weight, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens)
        case .accelerator:
            accelerator.linear(weight, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens)
        }
    }

    public func linear(
        _ first: WeightMatrix, _ second: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        outputs: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>), outputStride: Int, tokens: Int
    ) {
        if first.location == .host && second.location == .host {
            cpu.linear(first, second, input: input, inputStride: inputStride, outputs: outputs, outputStride: outputStride, tokens: tokens)
            return
        }
        linear(first, input: input, inputStride: inputStride, output: outputs.0, outputStride: outputStride, tokens: tokens)
        linear(second, input: input, inputStride: inputStride, output: outputs.1, outputStride: outputStride, tokens: tokens)
    }
}
