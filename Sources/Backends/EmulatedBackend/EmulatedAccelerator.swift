import Kernels
import Runtime
import Synchronization
import SwitchyardSupport

/// An accelerator emulated on the host, for tests and development until a GPU backend runs models
/// (swift-nio's EmbeddedChannel to the CUDA backend's real device): its own memory with a hard
/// budget, its own kernel threads and kernel stream, and a copy engine through which weights must
/// enter its memory before it can compute with them, as a GPU's would. Its speed is not a claim;
/// its bookkeeping and its effect on results are real. It runs the CPU's kernels, so its results
/// are the CPU's bit for bit.
public final class EmulatedAccelerator: Accelerator, @unchecked Sendable {
    /// The device's memory: `capacity` bytes, handed out front to back (pinned weights first, then
    /// the expert cache's slots, which are reused).
    public let capacity: Int
    private let base: UnsafeMutableRawPointer
    public private(set) var used = 0
    /// Its kernels' threads and settings: a CPU device of its own.
    public let kernels: CPUDevice
    private let kernelStream = SerialQueue()
    private let copyStream = SerialQueue()
    private let copied = Atomic<Int>(0)
    /// Scratch of expert runs, used on the kernel stream only.
    private let scratch = FloatBuffer()
    /// The host link's rate, bytes per second; nil: as fast as the host copies memory. The emulated
    /// device computes at the host's speed, far below a GPU's, so a link as fast as host memory
    /// makes copies nearly free beside its kernels, which a real GPU's link never is.
    public let linkBytesPerSecond: Double?

    public var name: String {
        "emulated accelerator (\(kernels.pool.threadCount) threads\(linkBytesPerSecond.map { ", a \(formatBytes(Int($0), digits: 2))/s link" } ?? ""))"
    }

    /// - Parameters:
    ///   - memory: its budget, in host memory: at most this machine's RAM.
    ///   - precision, tuning: the CPU's, so products give the CPU's bits.
    ///   - link: the host link's rate in bytes per second (a copy takes at least bytes / link).
    public init(memory: Int, threads: Int, precision: ActivationPrecision = .f32, tuning: KernelTuning = .default,
                link: Double? = nil) throws(AcceleratorError) {
        let ram = physicalMemory()
        guard memory > 0, memory <= ram else {
            throw AcceleratorError("the emulated accelerator's \(formatBytes(memory)) of memory live in host RAM, and this machine has \(formatBytes(ram))")
        }
        if let link, !(link > 0) { throw AcceleratorError("the emulated accelerator's link rate must be positive") }
        linkBytesPerSecond = link
        capacity = memory
        // Reserved address space: pages become resident only as weights are copied in.
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, 4096, max(memory, 4096)) == 0, let raw else {
            throw AcceleratorError("cannot reserve \(formatBytes(memory)) of host memory for the emulated accelerator")
        }
        base = raw
        kernels = CPUDevice(pool: ThreadPool(threads: threads), precision: precision, tuning: tuning)
    }

    deinit {
        kernelStream.stop()
        copyStream.stop()
        free(base)
    }

    public var bytesCopied: Int { copied.load(ordering: .relaxed) }

    public func allocate(_ bytes: Int) -> Int? {
        let start = (used + 63) & ~63
        guard start + bytes <= capacity else { return nil }
        used = start + bytes
        return start
    }

    public func release(to mark: Int) { used = mark }

    public func matrix(_ matrix: WeightMatrix, at offset: Int) -> WeightMatrix {
        precondition(offset >= 0 && offset + matrix.byteCount <= capacity, "a matrix outside the accelerator's memory")
        return matrix.moved(to: UnsafeRawPointer(base + offset), location: .accelerator(offset: offset))
    }

    public func copy(from source: UnsafeRawPointer, toOffset offset: Int, bytes: Int, after: [Completion]) -> Completion {
        precondition(offset >= 0 && offset + bytes <= capacity, "copy outside the accelerator's memory")
        let destination = base + offset
        let minimum = linkBytesPerSecond.map { Double(bytes) / $0 }
        return copyStream.submit(after: after) { [self] in
            let started = ContinuousClock.now
            destination.copyMemory(from: source, byteCount: bytes)
            self.copied.add(bytes, ordering: .relaxed)
            // The link's pace: the copy stream is busy until the bytes could have crossed it.
            if let minimum {
                let left = minimum - (ContinuousClock.now - started).seconds
                if left > 0 { usleep(UInt32(min(left, 60) * 1e6)) }
            }
        }
    }

    /// The weight's memory as the host sees it (the emulated memory is host memory).
    private func resident(_ m: WeightMatrix) -> WeightMatrix {
        guard case .accelerator(let offset) = m.location else { preconditionFailure("the accelerator computes with weights it holds") }
        return m.moved(to: UnsafeRawPointer(base + offset))
    }

    public func linear(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
        output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int
    ) {
        let w = resident(weight)
        let kernels = self.kernels
        nonisolated(unsafe) let input = input, output = output
        kernelStream.submit {
            kernels.linear(w, input: input, inputStride: inputStride, output: output, outputStride: outputStride, tokens: tokens)
        }.wait()
    }

    public func runExpert(
        _ weights: FeedForwardWeights, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens: Int,
        after: [Completion]
    ) -> Completion {
        let w = weights.mapMatrices(resident)
        let kernels = self.kernels, scratch = self.scratch
        nonisolated(unsafe) let input = input, output = output
        return kernelStream.submit(after: after) {
            let inner = w.intermediateSize
            scratch.reserve(2 * tokens * inner)
            kernels.feedForward(w, input: input, output: output, tokens: tokens, gate: scratch.pointer, up: scratch.pointer + tokens * inner)
        }
    }
}
