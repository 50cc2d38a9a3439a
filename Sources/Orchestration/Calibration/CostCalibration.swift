import Kernels
import Models
import Runtime
import SwitchyardSupport
import WeightFiles

extension CostModel {
    /// The cost table for this machine, these devices and this expert shape: from the cache, or
    /// measured now (one expert on the CPU and on the accelerator for each of `measuredTokenCounts`,
    /// the copy stream, and the drive).
    /// - Parameter layers: the routed experts of each MoE layer, as loaded (the disk read is timed
    ///   on three of them, from different layers, so no read is helped by the drive's read-ahead).
    static func calibrate(
        sample: FeedForwardWeights, cpu: CPUDevice, accelerator: (any Accelerator)?, reader: DirectReader?,
        layers: [[FeedForwardWeights]], options: TierOptions
    ) throws(OrchestrationError) -> CostModel {
        let hidden = sample.down.rows, inner = sample.intermediateSize
        let expertBytes = sample.byteCount
        let key = "\(CostModel.machineDescription); cpu threads \(cpu.pool.threadCount); accelerator \(accelerator?.name ?? "none"); disk \(reader != nil ? "yes" : "no"); expert \(hidden)x\(inner) \(sample.gate.element), activations \(cpu.precision.rawValue)"
        if !options.recalibrate, let cached = CostModel.load(key: key, directory: options.costDirectory), cached.expertBytes == expertBytes {
            return cached
        }
        // A host copy of a sample expert to time kernels on: read from disk when there is a disk
        // tier (timing it), copied from where it is stored otherwise.
        let sizes = sample.matrices.map(\.byteCount)
        let buffer = TieredExecutor.allocateAligned(ExpertPlacement.ramSlotBytes(sizes))
        defer { free(buffer) }
        let layout = ExpertPlacement.ramSlotOffsets(sizes)
        var matrices: [WeightMatrix] = []
        var diskRate = 0.0
        let picks = [layers[0][0], layers[layers.count / 2][layers[0].count / 2], layers[layers.count - 1][layers[0].count - 1]]
        // Experts rearranged at load (GPT-OSS's) are in the files only when spilled: timed reads
        // need three that are.
        if let reader, picks.allSatisfy({ $0.matrices.allSatisfy { reader.location(of: $0.data, bytes: $0.byteCount) != nil } }) {
            var readBytes = 0, seconds = 0.0
            for (p, f) in picks.enumerated() {
                let started = ContinuousClock.now
                for (i, m) in f.matrices.enumerated() {
                    guard let place = reader.location(of: m.data, bytes: m.byteCount) else {
                        throw OrchestrationError("an expert's weights are not in the model files")
                    }
                    let start: Int
                    do { start = try reader.read(file: place.file, offset: place.offset, bytes: m.byteCount, into: buffer + layout[i]) } catch {
                        throw OrchestrationError(error.description)
                    }
                    if p == picks.count - 1 { matrices.append(m.moved(to: buffer + layout[i] + start)) }
                }
                seconds += (ContinuousClock.now - started).seconds
                readBytes += f.byteCount
            }
            diskRate = Double(readBytes) / seconds
        } else {
            for (i, m) in sample.matrices.enumerated() {
                (buffer + layout[i]).copyMemory(from: m.data, byteCount: m.byteCount)
                matrices.append(m.moved(to: buffer + layout[i]))
            }
        }
        let expert = sample.withMatrices(matrices)
        let counts = CostModel.measuredTokenCounts
        let largest = counts.last!
        let x = UnsafeMutablePointer<Float>.allocate(capacity: largest * hidden)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: largest * hidden)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * largest * inner)
        defer { x.deallocate(); y.deallocate(); scratch.deallocate() }
        for i in 0..<(largest * hidden) { x[i] = Float((i * 7919) % 1000) / 1000 - 0.5 }

        let cpuSeconds = counts.map { n in
            fastestSeconds { cpu.feedForward(expert, input: x, output: y, tokens: n, gate: scratch, up: scratch + n * inner) }
        }
        var acceleratorSeconds: [Double] = []
        var copyRate = 0.0
        let slotBytes = ExpertPlacement.acceleratorSlotBytes(sizes)
        if let accelerator, accelerator.available >= slotBytes {
            let mark = accelerator.used
            let offset = accelerator.allocate(slotBytes)!
            let copySeconds = fastestSeconds { _ = TieredExecutor.copyCompact(expert, toOffset: offset, accelerator: accelerator, after: []).last!.wait() }
            copyRate = Double(expertBytes) / copySeconds
            let onDevice = TieredExecutor.compactLayout(expert, atOffset: offset, accelerator: accelerator)
            acceleratorSeconds = counts.map { n in
                fastestSeconds { _ = accelerator.runExpert(onDevice, input: x, output: y, tokens: n, after: []).wait() }
            }
            accelerator.release(to: mark)
        }
        let table = CostModel(key: key, tokenCounts: counts, cpuSeconds: cpuSeconds, acceleratorSeconds: acceleratorSeconds,
                              copyBytesPerSecond: copyRate, diskBytesPerSecond: diskRate, expertBytes: expertBytes,
                              groupOverheadSeconds: measureGroupOverhead())
        table.save(directory: options.costDirectory)
        return table
    }

    /// One more pipeline group costs a hand-off to another thread and a wake-up on its completion:
    /// the median of 64 empty jobs through a queue, each waited for.
    static func measureGroupOverhead() -> Double {
        let queue = SerialQueue()
        defer { queue.stop() }
        var samples: [Double] = []
        for _ in 0..<65 {
            let started = ContinuousClock.now
            queue.submit {}.wait()
            samples.append((ContinuousClock.now - started).seconds)
        }
        return samples.dropFirst().sorted()[32]
    }
}
