import Kernels
import SwitchyardSupport

/// What a machine can do, for planning: memory sizes and the rates that bound inference.
public struct HardwareProfile: Sendable, Equatable {
    public var name: String
    public var description: String
    /// Accelerator (GPU) memory (0 without one), its bandwidth and dense bf16 throughput.
    public var acceleratorMemory: Int
    public var acceleratorBandwidth: Double
    public var acceleratorFlops: Double
    /// Host → accelerator copy rate from pinned memory.
    public var linkBandwidth: Double
    /// Host RAM, the rate at which CPU expert kernels stream weights, and CPU dense throughput.
    public var ramBytes: Int
    public var cpuBandwidth: Double
    public var cpuFlops: Double
    /// Reading weights that are not in RAM.
    public var diskBandwidth: Double

    static let GB = 1e9, TB = 1e12

    public init(name: String, description: String, acceleratorMemory: Int, acceleratorBandwidth: Double, acceleratorFlops: Double, linkBandwidth: Double,
                ramBytes: Int, cpuBandwidth: Double, cpuFlops: Double, diskBandwidth: Double) {
        self.name = name
        self.description = description
        self.acceleratorMemory = acceleratorMemory
        self.acceleratorBandwidth = acceleratorBandwidth
        self.acceleratorFlops = acceleratorFlops
        self.linkBandwidth = linkBandwidth
        self.ramBytes = ramBytes
        self.cpuBandwidth = cpuBandwidth
        self.cpuFlops = cpuFlops
        self.diskBandwidth = diskBandwidth
    }

    /// Profiles of common machines. The rates are effective (what kernels reach), not peak.
    public static let known: [HardwareProfile] = [
        HardwareProfile(
            name: "quadro-rtx6000-pcie3-2x-xeon-gold-6126",
            description: "Fiddler's machine: Quadro RTX 6000 24 GB on PCIe 3 x16, 2x Xeon Gold 6126 (24 cores, 12 DDR4-2666 channels)",
            acceleratorMemory: 24 << 30, acceleratorBandwidth: 560 * GB, acceleratorFlops: 25 * TB, linkBandwidth: 11 * GB,
            ramBytes: 192 << 30, cpuBandwidth: 110 * GB, cpuFlops: 2.0 * TB, diskBandwidth: 2 * GB),
        HardwareProfile(
            name: "rtx4090-pcie4-ryzen-7950x",
            description: "GeForce RTX 4090 24 GB on PCIe 4 x16, Ryzen 9 7950X (16 cores, 2 DDR5-6000 channels)",
            acceleratorMemory: 24 << 30, acceleratorBandwidth: 900 * GB, acceleratorFlops: 140 * TB, linkBandwidth: 24 * GB,
            ramBytes: 128 << 30, cpuBandwidth: 65 * GB, cpuFlops: 2.5 * TB, diskBandwidth: 5 * GB),
        HardwareProfile(
            name: "h100-pcie5-epyc-9454",
            description: "H100 80 GB on PCIe 5 x16, EPYC 9454 (48 cores, 12 DDR5-4800 channels)",
            acceleratorMemory: 80 << 30, acceleratorBandwidth: 2800 * GB, acceleratorFlops: 700 * TB, linkBandwidth: 50 * GB,
            ramBytes: 768 << 30, cpuBandwidth: 330 * GB, cpuFlops: 8 * TB, diskBandwidth: 7 * GB),
    ]

    /// Fiddler's own CPU expert rate, from its hard-coded 7 ms per Mixtral-8x7B expert (352 MB of bf16
    /// weights) with PyTorch CPU kernels, and its pageable copies (70 ms per expert).
    public static let fiddlerCPUBandwidth = 352e6 / 0.007
    public static let fiddlerCopyBandwidth = 352e6 / 0.070
}

extension HardwareProfile {
    /// This machine: CPU read bandwidth and dense throughput measured now (a 1024 x 1024 bf16
    /// product over 64 tokens, best of 3), RAM from /proc/meminfo; no GPU.
    public static func measureLocal(pool: ThreadPool = .shared) -> HardwareProfile {
        let bandwidth = measureReadBandwidth(bytes: 256 << 20, pool: pool)
        let rows = 1024, columns = 1024, tokens = 64
        let weights = UnsafeMutableRawPointer.allocate(byteCount: rows * columns * 2, alignment: 64)
        defer { weights.deallocate() }
        weights.initializeMemory(as: UInt16.self, repeating: 0x3F80, count: rows * columns)
        let x = [Float](repeating: 0.5, count: tokens * columns)
        var y = [Float](repeating: 0, count: tokens * rows)
        let m = WeightMatrix(element: .bf16, rows: rows, columns: columns, data: weights)
        var best = 0.0
        for _ in 0..<3 {
            let start = ContinuousClock.now
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    matmul(m, input: xp.baseAddress!, inputStride: columns, output: yp.baseAddress!, outputStride: rows, tokens: tokens, pool: pool)
                }
            }
            best = max(best, Double(2 * rows * columns * tokens) / (ContinuousClock.now - start).seconds)
        }
        return HardwareProfile(
            name: "local", description: "this machine, measured: \(fixed(bandwidth / 1e9, 1)) GB/s read, \(fixed(best / 1e9, 0)) GFLOP/s; no GPU",
            acceleratorMemory: 0, acceleratorBandwidth: 0, acceleratorFlops: 0, linkBandwidth: 0,
            ramBytes: availableMemory(), cpuBandwidth: bandwidth, cpuFlops: best, diskBandwidth: 1.5e9)
    }

    /// MemAvailable from /proc/meminfo, in bytes (8 GiB where it cannot be read).
    public static func availableMemory() -> Int {
        guard let bytes = try? readFileBytes("/proc/meminfo") else { return 8 << 30 }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            if let kb = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) { return kb * 1024 }
        }
        return 8 << 30
    }
}
