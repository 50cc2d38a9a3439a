import Testing
import Kernels
@testable import Models
@testable import Orchestration
import SwitchyardSupport
import SwitchyardTestSupport



/// A prompt's logits at every position, then 8 greedy tokens one at a time through the KV cache.
func run(_ model: Model) throws -> (logits: [Float], tokens: [Int]) {
    let prompt = [1, 15, 302, 77, 9, 1000, 4, 250, 31, 8]
    let session = model.makeSession(contextLength: 64)
    let logits = try session.forward(prompt, allLogits: true)
    let v = model.config.vocabularySize
    var last = Array(logits[(prompt.count - 1) * v..<prompt.count * v])
    var tokens: [Int] = []
    for _ in 0..<8 {
        let next = last.indices.max { last[$0] < last[$1] }!
        tokens.append(next)
        last = try session.forward([next])
    }
    return (logits, tokens)
}

/// A model of `arch` with its experts run by a TieredExecutor configured by `configure`, which
/// receives the bytes every token touches and one expert's RAM slot size, so budgets can be set in
/// experts.
func tiered(_ arch: String, accelerator acceleratorMemory: Int? = nil, _ configure: (inout TierOptions, _ always: Int, _ slot: Int) -> Void) throws -> (Model, TieredExecutor) {
    let pool = ThreadPool(threads: 2)
    func make(_ options: TierOptions) throws -> (Model, TieredExecutor) {
        var accelerator: EmulatedAccelerator?
        var device: ComputeDevice = CPUDevice(pool: pool)
        if let acceleratorMemory {
            let a = EmulatedAccelerator(memory: acceleratorMemory, threads: 1)
            accelerator = a
            device = TieredDevice(cpu: CPUDevice(pool: pool), accelerator: a)
        }
        let model = try Model(directory: fixturePath(arch), device: device, pool: pool)
        return (model, try TieredExecutor(model: model, accelerator: accelerator, options: options))
    }
    // A throwaway placement with the same accelerator, to learn the sizes.
    var options = TierOptions()
    options.costDirectory = costDirectory
    let (probe, sizes) = try make(options)
    let always = sizes.placement.ramAlwaysBytes
    let slot = sizes.placement.expertBytes == 0 ? 0 : TieredExecutor.spanBytes(try #require(firstExpert(probe)))
    configure(&options, always, slot)
    return try make(options)
}
func firstExpert(_ model: Model) -> FeedForwardWeights? {
    for layer in model.weights.layers {
        if case .mixtureOfExperts(let m) = layer.feedForward { return m.experts[0] }
    }
    return nil
}

func modelBytes(_ arch: String) throws -> Int {
    let model = try Model(directory: fixturePath(arch), threads: 1)
    return model.tensors.allTensors.reduce(0) { $0 + $1.byteCount }
}

@Suite("Results never depend on placement")
struct PlacementInvarianceTests {
    @Test("everything on the emulated accelerator", arguments: allArchitectures)
    func allOnAccelerator(arch: String) throws {
        let reference = try run(Model(directory: fixturePath(arch), threads: 2))
        let (model, executor) = try tiered(arch, accelerator: 2 * modelBytes(arch)) { _, _, _ in }
        let result = try run(model)
        #expect(result.tokens == reference.tokens)
        #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch): logits differ")
        #expect(executor.placement.acceleratorTensorBytes > 0)
        if moeArchitectures.contains(arch) {
            #expect(executor.statistics.acceleratorRuns > 0)
            #expect(executor.statistics.cpuRuns == 0)
        }
    }

    @Test("experts split across the accelerator and RAM, copied on demand", arguments: moeArchitectures)
    func splitWithCopies(arch: String) throws {
        let reference = try run(Model(directory: fixturePath(arch), threads: 2))
        for policy in [ExpertPolicy.copy, .scheduled, .cpu] {
            // Room for what every token touches and three experts: one pinned, two cache slots.
            let probe = try tiered(arch, accelerator: 2 * modelBytes(arch)) { _, _, _ in }
            let room = probe.1.placement.acceleratorTensorBytes + 3 * TieredExecutor.compactBytes(try #require(firstExpert(probe.0))) + 4096
            let (model, executor) = try tiered(arch, accelerator: room) { options, _, _ in options.policy = policy }
            let result = try run(model)
            #expect(result.tokens == reference.tokens, "\(arch) \(policy)")
            #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch) \(policy): logits differ")
            let s = executor.statistics
            // The cpu policy never copies, so it pins the whole room and keeps no cache.
            #expect(policy == .cpu ? executor.placement.acceleratorCacheSlots == 0 : executor.placement.acceleratorCacheSlots >= 1)
            switch policy {
            case .copy:
                #expect(s.bytesCopied > 0)
            case .cpu:
                #expect(s.cpuRuns > 0)
                #expect(s.acceleratorRuns > 0)  // the pinned experts
            default:
                #expect(s.cpuRuns + s.acceleratorRuns > 0)
            }
        }
    }

    @Test("experts read from disk under a small RAM budget", arguments: moeArchitectures)
    func diskUnderRAMBudget(arch: String) throws {
        let reference = try run(Model(directory: fixturePath(arch), threads: 2))
        for policy in [ExpertPolicy.scheduled, .naive, .cpu] {
            let (model, executor) = try tiered(arch) { options, always, slot in
                options.ramBudget = always + 3 * slot
                options.policy = policy
            }
            let result = try run(model)
            #expect(result.tokens == reference.tokens, "\(arch) \(policy)")
            #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch) \(policy): logits differ")
            let s = executor.statistics
            let moeLayers = model.config.feedForward.filter { $0.moe != nil }.count
            #expect(executor.placement.diskExperts >= moeLayers * 4 - 3)
            #expect(s.diskBytesRead > 0)
            if policy == .naive {
                #expect(s.prefetchLoads == 0)
                #expect(s.cacheHits == 0)
            } else {
                #expect(s.cacheHits + s.cacheMisses > 0)
                // A prediction needs a next MoE layer.
                #expect(moeLayers < 2 || s.predictionHits + s.predictionMisses > 0)
            }
        }
    }

    @Test("accelerator, RAM budget and disk at once", arguments: moeArchitectures)
    func allTiers(arch: String) throws {
        let reference = try run(Model(directory: fixturePath(arch), threads: 2))
        let probe = try tiered(arch, accelerator: 2 * modelBytes(arch)) { _, _, _ in }
        let room = probe.1.placement.acceleratorTensorBytes + 2 * TieredExecutor.compactBytes(try #require(firstExpert(probe.0))) + 4096
        let (model, executor) = try tiered(arch, accelerator: room) { options, always, slot in
            options.ramBudget = always + 2 * slot
            options.policy = .copy
        }
        let result = try run(model)
        #expect(result.tokens == reference.tokens)
        #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch): logits differ")
        #expect(executor.statistics.diskBytesRead > 0)
        #expect(executor.statistics.bytesCopied > 0)
    }
}
