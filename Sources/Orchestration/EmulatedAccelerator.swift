import Kernels
import Models
import Synchronization
import SwitchyardSupport

/// An accelerator emulated on the host, for tests and development until a GPU backend runs models:
/// it has its own memory pool with a hard budget, its own kernel threads and a kernel stream, and a
/// copy engine through which weights must enter its memory before it can compute with them, as a
/// GPU's would. Its speed is not a claim; its bookkeeping and its effect on results are real.
public final class EmulatedAccelerator: @unchecked Sendable {
    /// The device's memory: `capacity` bytes, handed out front to back and never returned (pinned
    /// weights first, then the expert cache's slots, which are reused).
    public let capacity: Int
    private let base: UnsafeMutableRawPointer
    public private(set) var used = 0
    public let pool: ThreadPool
    let kernels = SerialQueue()
    let copyEngine = SerialQueue()
    private let copied = Atomic<Int>(0)

    public init(memory: Int, threads: Int) {
        capacity = memory
        // Reserved address space: pages become resident only as weights are copied in.
        var raw: UnsafeMutableRawPointer?
        precondition(posix_memalign(&raw, 4096, max(memory, 4096)) == 0, "cannot reserve \(memory) bytes for the emulated accelerator")
        base = raw!
        pool = ThreadPool(threads: threads)
    }

    deinit {
        kernels.stop()
        copyEngine.stop()
        free(base)
    }

    /// Bytes moved host → device through the copy engine so far.
    public var bytesCopied: Int { copied.load(ordering: .relaxed) }

    /// `bytes` of device memory (64-byte aligned), or nil when the budget is spent.
    func allocate(_ bytes: Int) -> UnsafeMutableRawPointer? {
        let start = (used + 63) & ~63
        guard start + bytes <= capacity else { return nil }
        used = start + bytes
        return base + start
    }

    /// Returns everything allocated after `mark` (a past value of `used`): scratch for calibration.
    func release(to mark: Int) { used = mark }

    public var available: Int { capacity - ((used + 63) & ~63) }

    public func contains(_ pointer: UnsafeRawPointer) -> Bool {
        pointer >= UnsafeRawPointer(base) && pointer < UnsafeRawPointer(base + capacity)
    }

    /// Host → device copy on the copy engine, after `after`; the host memory must stay valid until
    /// the returned completion is done.
    @discardableResult
    func copy(_ source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, bytes: Int, after: [Completion] = []) -> Completion {
        precondition(contains(destination) && contains(destination + max(bytes - 1, 0)), "copy outside the accelerator's memory")
        return copyEngine.submit(after: after) { [self] in
            destination.copyMemory(from: source, byteCount: bytes)
            self.copied.add(bytes, ordering: .relaxed)
        }
    }

    /// Runs `body` on the device's kernel stream after `after`.
    @discardableResult
    func launch(after: [Completion] = [], _ body: @escaping () -> Void) -> Completion {
        kernels.submit(after: after, body)
    }
}

/// The model's device when an accelerator is present: a product whose weights are in the
/// accelerator's memory runs there (on its kernel stream, waited for); every other runs on the CPU.
public final class TieredDevice: ComputeDevice {
    public let cpu: CPUDevice
    public let accelerator: EmulatedAccelerator
    public var precision: ActivationPrecision { cpu.precision }
    public var name: String { "\(cpu.name) + emulated accelerator (\(accelerator.pool.threadCount) threads, \(formatBytes(accelerator.capacity)))" }

    public init(cpu: CPUDevice, accelerator: EmulatedAccelerator) {
        self.cpu = cpu
        self.accelerator = accelerator
    }

    public func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int
    ) {
        guard accelerator.contains(weight.data) else {
            cpu.linear(weight, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens)
            return
        }
        let pool = accelerator.pool
        nonisolated(unsafe) let input = input, output = output
        accelerator.launch {
            matmul(weight, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens, pool: pool,
                   precision: self.precision)
        }.wait()
    }
}

public struct OrchestrationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
