import SwitchyardSupport
/// What a machine can do, for planning: memory sizes and the rates that bound inference.
public struct HardwareProfile: Sendable, Equatable {
    public var name: String
    public var description: String
    /// Accelerator memory (0 without one), its bandwidth and dense bf16 throughput.
    public var gpuMemory: Int
    public var gpuBandwidth: Double
    public var gpuFlops: Double
    /// Host → accelerator copy rate from pinned memory.
    public var linkBandwidth: Double
    /// Host RAM, the rate at which CPU expert kernels stream weights, and CPU dense throughput.
    public var ramBytes: Int
    public var cpuBandwidth: Double
    public var cpuFlops: Double
    /// Reading weights that are not in RAM.
    public var diskBandwidth: Double

    static let GB = 1e9, TB = 1e12

    public init(name: String, description: String, gpuMemory: Int, gpuBandwidth: Double, gpuFlops: Double, linkBandwidth: Double,
                ramBytes: Int, cpuBandwidth: Double, cpuFlops: Double, diskBandwidth: Double) {
        self.name = name
        self.description = description
        self.gpuMemory = gpuMemory
        self.gpuBandwidth = gpuBandwidth
        self.gpuFlops = gpuFlops
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
            gpuMemory: 24 << 30, gpuBandwidth: 560 * GB, gpuFlops: 25 * TB, linkBandwidth: 11 * GB,
            ramBytes: 192 << 30, cpuBandwidth: 110 * GB, cpuFlops: 2.0 * TB, diskBandwidth: 2 * GB),
        HardwareProfile(
            name: "rtx4090-pcie4-ryzen-7950x",
            description: "GeForce RTX 4090 24 GB on PCIe 4 x16, Ryzen 9 7950X (16 cores, 2 DDR5-6000 channels)",
            gpuMemory: 24 << 30, gpuBandwidth: 900 * GB, gpuFlops: 140 * TB, linkBandwidth: 24 * GB,
            ramBytes: 128 << 30, cpuBandwidth: 65 * GB, cpuFlops: 2.5 * TB, diskBandwidth: 5 * GB),
        HardwareProfile(
            name: "h100-pcie5-epyc-9454",
            description: "H100 80 GB on PCIe 5 x16, EPYC 9454 (48 cores, 12 DDR5-4800 channels)",
            gpuMemory: 80 << 30, gpuBandwidth: 2800 * GB, gpuFlops: 700 * TB, linkBandwidth: 50 * GB,
            ramBytes: 768 << 30, cpuBandwidth: 330 * GB, cpuFlops: 8 * TB, diskBandwidth: 7 * GB),
    ]

    /// Fiddler's own CPU expert rate, from its hard-coded 7 ms per Mixtral-8x7B expert (352 MB of bf16
    /// weights) with PyTorch CPU kernels, and its pageable copies (70 ms per expert).
    public static let fiddlerCPUBandwidth = 352e6 / 0.007
    public static let fiddlerCopyBandwidth = 352e6 / 0.070
}

/// Where each group of tensors lives and how fast the model should run there.
public struct Plan: Sendable {
    public enum Tier: String, Sendable, CaseIterable { case gpu, ram, disk }

    public struct Group: Sendable {
        public var name: String
        public var bytes: Int
        public var tier: Tier
    }

    public var groups: [Group]
    public var expertsPerTier: [Tier: Int]
    public var expertCount: Int
    public var bytesPerTier: [Tier: Int]
    /// Predicted tokens/s: decode at batch 1, prefill of `prefillTokens`, with CPU, GPU and copies
    /// overlapped (the slowest of them per layer), and summed as Fiddler's code does.
    public var decodeOverlapped: Double
    public var decodeSummed: Double
    public var prefillOverlapped: Double
    public var prefillTokens: Int
    /// Fiddler's own rates on this hardware (its CPU kernels and pageable copies, summed).
    public var decodeFiddler: Double
}

public enum Planner {
    /// Places a model and predicts its speed.
    ///
    /// - Parameters:
    ///   - weightBytes: bytes per weight element as stored (2 for bf16).
    ///   - popularity: [layer][expert] share of routed tokens (a routing profile); uniform when nil.
    public static func plan(
        _ c: DecoderConfig, weightBytes: Int, gpuBudget: Int, ramBudget: Int, hardware: HardwareProfile,
        contextLength: Int, popularity: [[Double]]? = nil, prefillTokens: Int = 512
    ) -> Plan {
        let H = c.hiddenSize, w = weightBytes
        var always: [(String, Int, Double)] = []  // name, bytes, FLOPs per token
        always.append(("embedding", c.vocabularySize * H * w, 0))
        for (i, kind) in c.feedForward.enumerated() {
            let attention = (2 * c.queryWidth * H + 2 * c.keyValueWidth * H) * w
            always.append(("layer \(i) attention", attention, Double(attention / w) * 2))
            switch kind {
            case .dense(let inner):
                always.append(("layer \(i) dense MLP", 3 * H * inner * w, Double(3 * H * inner) * 2))
            case .mixtureOfExperts(let m):
                always.append(("layer \(i) router", m.expertCount * H * w, Double(m.expertCount * H) * 2))
                if let s = m.sharedExpertIntermediateSize {
                    always.append(("layer \(i) shared expert", 3 * H * s * w, Double(3 * H * s) * 2))
                }
            }
        }
        always.append(("output head", c.vocabularySize * H * w, Double(c.vocabularySize * H) * 2))
        let kvBytes = c.layerCount * 2 * c.keyValueWidth * contextLength * MemoryLayout<Float>.size

        var gpuFree = gpuBudget, ramFree = ramBudget
        var groups: [Plan.Group] = []
        func place(_ name: String, _ bytes: Int) -> Plan.Tier {
            let tier: Plan.Tier
            if bytes <= gpuFree { tier = .gpu; gpuFree -= bytes } else if bytes <= ramFree { tier = .ram; ramFree -= bytes } else { tier = .disk }
            groups.append(Plan.Group(name: name, bytes: bytes, tier: tier))
            return tier
        }
        // Everything every token touches first, KV cache included; then experts, most popular first.
        var alwaysTier: [String: Plan.Tier] = [:]
        alwaysTier["KV cache"] = place("KV cache (\(contextLength) tokens, f32)", kvBytes)
        for (name, bytes, _) in always { alwaysTier[name] = place(name, bytes) }
        struct Expert { let layer: Int, index: Int, bytes: Int, share: Double }
        var experts: [Expert] = []
        for (layer, kind) in c.feedForward.enumerated() {
            guard let m = kind.moe else { continue }
            for e in 0..<m.expertCount {
                let share = popularity.flatMap { layer < $0.count && e < $0[layer].count ? $0[layer][e] : nil } ?? 1 / Double(m.expertCount)
                experts.append(Expert(layer: layer, index: e, bytes: 3 * H * m.expertIntermediateSize * w, share: share))
            }
        }
        var expertTier: [Plan.Tier] = []
        var perTier: [Plan.Tier: Int] = [:]
        for e in experts.sorted(by: { $0.share > $1.share }) {
            let tier: Plan.Tier
            if e.bytes <= gpuFree { tier = .gpu; gpuFree -= e.bytes } else if e.bytes <= ramFree { tier = .ram; ramFree -= e.bytes } else { tier = .disk }
            perTier[tier, default: 0] += 1
            expertTier.append(tier)
        }
        let sorted = experts.sorted(by: { $0.share > $1.share })
        for tier in Plan.Tier.allCases {
            let list = zip(sorted, expertTier).filter { $0.1 == tier }
            if !list.isEmpty {
                groups.append(Plan.Group(name: "experts (\(list.count))", bytes: list.reduce(0) { $0 + $1.0.bytes }, tier: tier))
            }
        }

        // Decode, batch 1: each MoE layer reads its activated experts where they live; an expert in
        // RAM runs on the CPU (a token's activations cross the link, not the weights); one on disk is
        // read, then run on the CPU. Weights every token touches are read where they were placed.
        let hasGPU = gpuBudget > 0 && hardware.gpuMemory > 0
        func rate(_ tier: Plan.Tier) -> Double {
            switch tier {
            case .gpu: return hardware.gpuBandwidth
            case .ram: return hardware.cpuBandwidth
            case .disk: return hardware.diskBandwidth
            }
        }
        var gpuTime = 0.0, cpuTime = 0.0, diskTime = 0.0
        var fiddlerTime = 0.0
        for (name, bytes, _) in always where name != "embedding" {
            let tier = alwaysTier[name]!
            let t = Double(bytes) / rate(tier)
            if tier == .gpu { gpuTime += t } else if tier == .ram { cpuTime += t } else { diskTime += t }
            fiddlerTime += tier == .gpu ? t : Double(bytes) / HardwareProfile.fiddlerCPUBandwidth
        }
        for (e, tier) in zip(sorted, expertTier) {
            let k = Double(c.feedForward[e.layer].moe!.expertsPerToken)
            let expectedBytes = Double(e.bytes) * min(1, e.share * k)
            switch tier {
            case .gpu:
                gpuTime += expectedBytes / hardware.gpuBandwidth
                fiddlerTime += expectedBytes / hardware.gpuBandwidth
            case .ram:
                cpuTime += expectedBytes / hardware.cpuBandwidth
                fiddlerTime += expectedBytes / HardwareProfile.fiddlerCPUBandwidth
            case .disk:
                diskTime += expectedBytes / hardware.diskBandwidth
                cpuTime += expectedBytes / hardware.cpuBandwidth
                fiddlerTime += expectedBytes / hardware.diskBandwidth + expectedBytes / HardwareProfile.fiddlerCPUBandwidth
            }
        }
        let decodeOverlapped = 1 / max(gpuTime, cpuTime, diskTime, 1e-9)
        let decodeSummed = 1 / max(gpuTime + cpuTime + diskTime, 1e-9)

        // Prefill of T tokens: dense work on the GPU (or CPU); each expert in RAM either computes its
        // share of the tokens on the CPU or is copied to the GPU, whichever is faster.
        let T = Double(prefillTokens)
        var gpuPrefill = 0.0, cpuPrefill = 0.0, linkPrefill = 0.0
        let gpuFlops = hasGPU ? hardware.gpuFlops : hardware.cpuFlops
        for (name, _, flops) in always where name != "embedding" {
            if alwaysTier[name] == .gpu && hasGPU { gpuPrefill += T * flops / gpuFlops } else { cpuPrefill += T * flops / hardware.cpuFlops }
        }
        for (e, tier) in zip(sorted, expertTier) {
            let k = Double(c.feedForward[e.layer].moe!.expertsPerToken)
            let flops = T * min(1, e.share * k) * Double(e.bytes / w) * 2
            if tier == .gpu {
                gpuPrefill += flops / gpuFlops
            } else {
                let read = tier == .disk ? Double(e.bytes) / hardware.diskBandwidth : 0
                let onCPU = max(flops / hardware.cpuFlops, Double(e.bytes) / hardware.cpuBandwidth)
                let copied = hasGPU ? Double(e.bytes) / hardware.linkBandwidth : .infinity
                if copied < onCPU {
                    linkPrefill += copied + read
                    gpuPrefill += flops / gpuFlops
                } else {
                    cpuPrefill += onCPU + read
                }
            }
        }
        let prefillOverlapped = T / max(gpuPrefill, cpuPrefill, linkPrefill, 1e-9)

        var bytesPerTier: [Plan.Tier: Int] = [:]
        for g in groups { bytesPerTier[g.tier, default: 0] += g.bytes }
        return Plan(
            groups: groups, expertsPerTier: perTier, expertCount: experts.count, bytesPerTier: bytesPerTier,
            decodeOverlapped: decodeOverlapped, decodeSummed: decodeSummed, prefillOverlapped: prefillOverlapped,
            prefillTokens: prefillTokens, decodeFiddler: 1 / max(fiddlerTime, 1e-9))
    }
}
