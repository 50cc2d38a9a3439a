import Testing
import Engine
import Kernels
@testable import Models
@testable import Orchestration
import Runtime
import SwitchyardSupport
import SwitchyardTestSupport

/// A prompt's logits at every position, then 8 greedy tokens one at a time through the KV cache.
func run(_ model: Model, prompt: [Int] = [1, 15, 302, 77, 9, 1000, 4, 250, 31, 8]) throws -> (logits: [Float], tokens: [Int]) {
    let session = try model.makeSession(contextLength: 64)
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

/// KV positions the tiered test engines reserve RAM for.
let testPositions = 64

/// An engine for `arch` with its experts run across tiers, made the way every command makes one
/// (`Engine.load`). `configure` receives the host bytes a RAM budget must hold besides experts
/// (what every token touches, the KV cache and work memory) and one expert's RAM slot, so budgets
/// can be set in experts.
func tiered(_ arch: String, directory: String? = nil, accelerator acceleratorMemory: Int? = nil,
            _ configure: (inout EngineOptions, _ always: Int, _ slot: Int) -> Void) throws -> (Model, TieredExecutor) {
    var options = EngineOptions(model: directory ?? fixturePath(arch))
    options.precision = .f32  // the references are f32's
    options.threads = 2
    options.costDirectory = costDirectory
    options.kvPositions = testPositions
    options.tuneKernels = false
    if let acceleratorMemory {
        options.accelerator = .emulated
        options.acceleratorMemory = acceleratorMemory
    } else {
        // A RAM budget so large it holds everything: a throwaway placement to learn the sizes.
        options.ramBudget = 1 << 40
    }
    let probe = try Engine.load(options)
    let tiers = try #require(probe.tiers)
    let always = tiers.placement.alwaysHostBytes + tiers.options.reservedHostBytes
    let slot = tiers.footprint.expertBytes == 0 ? 0 : ExpertPlacement.ramSlotBytes(tiers.footprint.expertMatrixBytes)
    if acceleratorMemory == nil { options.ramBudget = nil }
    configure(&options, always, slot)
    let engine = try Engine.load(options)
    return (engine.model, try #require(engine.tiers))
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
            let room = probe.1.placement.acceleratorTensorBytes + 3 * ExpertPlacement.acceleratorSlotBytes(probe.1.footprint.expertMatrixBytes) + 4096
            let (model, executor) = try tiered(arch, accelerator: room) { options, _, _ in options.expertPolicy = policy }
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
                options.expertPolicy = policy
            }
            let result = try run(model)
            #expect(result.tokens == reference.tokens, "\(arch) \(policy)")
            #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch) \(policy): logits differ")
            let s = executor.statistics
            let moeLayers = model.config.feedForward.filter { $0.moe != nil }.count
            #expect(executor.placement.experts(on: .disk).count >= moeLayers * 4 - 3)
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
        let room = probe.1.placement.acceleratorTensorBytes + 2 * ExpertPlacement.acceleratorSlotBytes(probe.1.footprint.expertMatrixBytes) + 4096
        let (model, executor) = try tiered(arch, accelerator: room) { options, always, slot in
            options.ramBudget = always + 2 * slot
            options.expertPolicy = .copy
        }
        let result = try run(model)
        #expect(result.tokens == reference.tokens)
        #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch): logits differ")
        #expect(executor.statistics.diskBytesRead > 0)
        #expect(executor.statistics.bytesCopied > 0)
    }
}

@Suite("A failing drive fails the step, not the process")
struct DiskFailureTests {
    /// Every expert on disk; the file then loses its experts (a drive gone bad, a file cut short)
    /// and comes back. The steps in between fail with a message naming the file; the engine is
    /// left whole, and once the file is back it computes exactly what it computed before.
    @Test func failedReadsFailTheStepAndTheEngineRecovers() throws {
        let copy = try ExpertsLastCheckpoint(copying: fixturePath("mixtral"), to: "/tmp/switchyard-failing-drive-\(getpid())")
        defer { copy.remove() }
        let reference = try run(Model(directory: fixturePath("mixtral"), threads: 2))
        let (model, executor) = try tiered("mixtral", directory: copy.directory) { options, always, slot in
            options.ramBudget = always + 2 * slot
        }
        #expect(executor.placement.experts(on: .ram).isEmpty && !executor.placement.experts(on: .disk).isEmpty)
        copy.loseExperts()
        do {
            _ = try run(model)
            Issue.record("a step whose experts cannot be read succeeded")
        } catch {
            #expect("\(error)".contains(copy.weightsPath) && "\(error)".contains("the file ended"), "\(error)")
        }
        copy.restore()
        let after = try run(model)
        #expect(after.tokens == reference.tokens)
        #expect(firstDifference(after.logits, reference.logits) == nil, "logits after the drive came back")
    }
}

@Suite("The expert pipeline changes no result")
struct PipelineInvarianceTests {
    /// A prompt long enough that most experts of a layer move (44 tokens, then 8 greedy ones).
    func longRun(_ model: Model) throws -> (logits: [Float], tokens: [Int]) {
        try run(model, prompt: (0..<44).map { ($0 * 37 + 5) % min(model.config.vocabularySize, 3000) + 3 })
    }

    @Test("off, 1, 2, 3 and every expert's group, under a RAM budget and with the emulated accelerator", arguments: moeArchitectures)
    func everyGroupCount(arch: String) throws {
        let reference = try longRun(Model(directory: fixturePath(arch), threads: 2))
        let counts = try Model(directory: fixturePath(arch), threads: 1).config.feedForward.compactMap { $0.moe?.expertCount }
        let experts = try #require(counts.max())
        for setting in [PipelineSetting.off, .groups(1), .groups(2), .groups(3), .groups(experts), .auto] {
            // Three RAM slots for the layer's four experts: groups of one when overlapped.
            let (model, executor) = try tiered(arch) { options, always, slot in
                options.ramBudget = always + 3 * slot
                options.expertPipeline = setting
            }
            let result = try longRun(model)
            #expect(result.tokens == reference.tokens, "\(arch) RAM \(setting)")
            #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch) RAM \(setting): logits differ")
            let s = executor.statistics
            #expect(s.diskBytesRead > 0)
            switch setting {
            case .off, .groups(1): #expect(s.pipelinedLayers == 0, "\(arch) \(setting)")
            case .groups(let n): #expect(s.mostPipelineGroups >= min(n, 2), "\(arch) \(setting): \(s.mostPipelineGroups) groups at most")
            case .auto: break
            }

            // Copies into the accelerator's cache (one expert pinned, two slots), pipelined the same way.
            let probe = try tiered(arch, accelerator: 2 * modelBytes(arch)) { _, _, _ in }
            let room = probe.1.placement.acceleratorTensorBytes + 3 * ExpertPlacement.acceleratorSlotBytes(probe.1.footprint.expertMatrixBytes) + 4096
            let (copied, copier) = try tiered(arch, accelerator: room) { options, _, _ in
                options.expertPolicy = .copy
                options.expertPipeline = setting
            }
            let viaCopies = try longRun(copied)
            #expect(viaCopies.tokens == reference.tokens, "\(arch) accelerator \(setting)")
            #expect(firstDifference(viaCopies.logits, reference.logits) == nil, "\(arch) accelerator \(setting): logits differ")
            #expect(copier.statistics.bytesCopied > 0)
            if case .groups(let n) = setting, n >= 2 { #expect(copier.statistics.mostPipelineGroups >= 2, "\(arch) accelerator \(setting)") }
        }
    }
}

@Suite("Grouped or dense experts give the same bits")
struct ExpertKernelInvarianceTests {
    @Test("the kernel choice forced each way, in place and under a RAM budget", arguments: moeArchitectures)
    func forcedEachWay(arch: String) throws {
        let reference = try run(Model(directory: fixturePath(arch), threads: 2))
        for kernel in [EngineOptions.ExpertKernel.grouped, .dense] {
            var options = EngineOptions(model: fixturePath(arch))
            options.precision = .f32  // the references are f32's
            options.threads = 2
            options.tuneKernels = false
            options.expertKernel = kernel
            let plain = try run(Engine.load(options).model)
            #expect(plain.tokens == reference.tokens, "\(arch) \(kernel)")
            #expect(firstDifference(plain.logits, reference.logits) == nil, "\(arch) \(kernel): logits differ")
            // Room for a layer's experts, so those found in the cache run together.
            let (model, executor) = try tiered(arch) { o, always, slot in
                o.ramBudget = always + 8 * slot
                o.expertKernel = kernel
            }
            let result = try run(model)
            #expect(result.tokens == reference.tokens, "\(arch) \(kernel) RAM")
            #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch) \(kernel) RAM: logits differ")
            #expect(kernel == .grouped ? executor.statistics.groupedPasses > 0 : executor.statistics.groupedPasses == 0, "\(arch) \(kernel)")
        }
    }
}

@Suite("GGUF models across the tiers, as safetensors ones")
struct GGUFPlacementTests {
    /// Experts read from the GGUF file's merged tensors on disk under a RAM budget, copied into the
    /// emulated accelerator's cache with the rest of RAM and disk, and run as grouped passes: every
    /// result bit for bit the in-memory one.
    /// The one whose formats (Q2_K, Q3_K, Q4_0 experts, a shared expert) only GGUF brings; the
    /// others' formats are tested on safetensors models above.
    @Test(arguments: ["qwen2_moe-k"])
    func tiersChangeNothing(name: String) throws {
        let path = ggufFixturePath(name)
        let prompt = [1, 450, 203, 17, 300, 42, 99, 5, 250, 3]
        let reference = try run(Model(directory: path, threads: 2), prompt: prompt)
        let (model, executor) = try tiered(name, directory: path) { options, always, slot in
            options.ramBudget = always + 3 * slot
        }
        let fromDisk = try run(model, prompt: prompt)
        #expect(fromDisk.tokens == reference.tokens)
        #expect(firstDifference(fromDisk.logits, reference.logits) == nil, "\(name) disk: logits differ")
        #expect(executor.statistics.diskBytesRead > 0)

        let bytes = try Model(directory: path, threads: 1).tensors.allTensors.reduce(0) { $0 + $1.byteCount }
        let probe = try tiered(name, directory: path, accelerator: 2 * bytes) { _, _, _ in }
        let room = probe.1.placement.acceleratorTensorBytes + 2 * ExpertPlacement.acceleratorSlotBytes(probe.1.footprint.expertMatrixBytes) + 4096
        let (everywhere, tiers) = try tiered(name, directory: path, accelerator: room) { options, always, slot in
            options.ramBudget = always + 2 * slot
            options.expertPolicy = .copy
        }
        let allTiers = try run(everywhere, prompt: prompt)
        #expect(allTiers.tokens == reference.tokens)
        #expect(firstDifference(allTiers.logits, reference.logits) == nil, "\(name) all tiers: logits differ")
        #expect(tiers.statistics.diskBytesRead > 0 && tiers.statistics.bytesCopied > 0)

        let (grouped, groupedTiers) = try tiered(name, directory: path) { o, always, slot in
            o.ramBudget = always + 8 * slot
            o.expertKernel = .grouped
        }
        let groupedRun = try run(grouped, prompt: prompt)
        #expect(firstDifference(groupedRun.logits, reference.logits) == nil, "\(name) grouped: logits differ")
        #expect(groupedTiers.statistics.groupedPasses > 0)
    }
}
