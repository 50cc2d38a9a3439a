import Testing
import Engine
import Kernels
@testable import Models
@testable import Orchestration
import Runtime
import SwitchyardSupport
import SwitchyardTestSupport

@Suite("planner")
struct PlannerTests {
    let mixtral = try! HuggingFaceFolder(directory: repositoryRoot + "/benchmarks/configs/mixtral-8x7b").readConfig()
    let fiddlerMachine = HardwareProfile.known.first { $0.name.hasPrefix("quadro-rtx6000") }!

    @Test func budgetsHoldAndEveryTokenWeightsComeFirst() throws {
        let plan = try Planner.plan(mixtral, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: 24_000_000_000,
                                    ramBudget: 40_000_000_000, contextLength: 2048)
        #expect((plan.bytesPerTier[.accelerator] ?? 0) <= 24_000_000_000)
        #expect((plan.bytesPerTier[.ram] ?? 0) <= 40_000_000_000)
        let eligible = zip(plan.footprint.always, plan.placement.alwaysOnAccelerator).filter { $0.0.acceleratorEligible }
        #expect(eligible.allSatisfy { $0.1 }, "attention and the output head on the accelerator")
        #expect(plan.placement.order.count == 256)
        #expect(!plan.placement.experts(on: .disk).isEmpty, "93 GB does not fit in 24 + 40 GB")
        #expect(plan.decodeOverlapped >= plan.decodeSummed)
    }

    @Test("plan predicts prefill with the expert pipeline: faster than without wherever experts move, never slower")
    func pipelinedPrefill() throws {
        // Mixtral-8x7B with 40 GB of RAM and no accelerator: most experts are read from disk.
        let disk = try Planner.plan(mixtral, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: nil, ramBudget: 40_000_000_000,
                                    contextLength: 2048)
        #expect(disk.prefillPipelined > disk.prefillUnpipelined * 1.05, "\(disk.prefillPipelined) vs \(disk.prefillUnpipelined)")
        #expect(disk.prefillPipelined <= disk.prefillOverlapped * 1.000001, "no better than perfect overlap")
        #expect(disk.pipelineGroups.count == 32 && disk.pipelineGroups.allSatisfy { $0 > 1 }, "\(disk.pipelineGroups)")
        // Everything in RAM: nothing moves, so no pipeline and no difference.
        let ram = try Planner.plan(mixtral, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: nil, ramBudget: 1 << 40, contextLength: 2048)
        #expect(ram.pipelineGroups.allSatisfy { $0 == 1 })
        #expect(abs(ram.prefillPipelined - ram.prefillUnpipelined) < 1e-9 * ram.prefillUnpipelined)
    }

    @Test("plan with expert hosts: they take what a RAM budget leaves on disk, and both phases get faster")
    func expertHosts() throws {
        let alone = try Planner.plan(mixtral, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: nil, ramBudget: 40_000_000_000,
                                     contextLength: 2048)
        let hosts = Array(repeating: HostCapacity(memory: 64 << 30, fixed: nil), count: 2)
        let spread = try Planner.plan(mixtral, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: nil, ramBudget: 40_000_000_000,
                                      contextLength: 2048, hosts: hosts, hostRoundTrip: 1e-4, hostBandwidth: 1.25e9)
        let onDisk = alone.pinnedExperts[.disk] ?? 0
        #expect(onDisk > 0)
        #expect(spread.pinnedExperts[.disk] == nil && spread.pinnedExperts[.remote] == onDisk, "\(spread.pinnedExperts)")
        #expect(spread.expertsOnHosts.reduce(0, +) == onDisk && abs(spread.expertsOnHosts[0] - spread.expertsOnHosts[1]) <= 1)
        #expect(spread.decodeOverlapped > alone.decodeOverlapped)
        #expect(spread.prefillPipelined > alone.prefillPipelined)
        #expect((spread.bytesPerTier[.remote] ?? 0) == onDisk * spread.footprint.expertBytes)
    }

    @Test func fiddlersPublishedSettingIsReproduced() throws {
        // Fiddler: Mixtral-8x7B bf16 on a 24 GB Quadro RTX 6000 with 2x Xeon Gold 6126: about 2.5 tok/s.
        let plan = try Planner.plan(mixtral, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: 24_000_000_000,
                                    ramBudget: 192 << 30, contextLength: 2048)
        #expect(plan.decodeFiddler > 2.0 && plan.decodeFiddler < 3.5, "\(plan.decodeFiddler)")
        #expect(plan.decodeOverlapped > 1.5 * plan.decodeFiddler)
    }

    /// Experts planned in a block format (--quantize), or as the config stores them (GPT-OSS's
    /// MXFP4 wins over --quantize); everything else stays in the checkpoint's element.
    @Test func expertElementSizesTheExperts() throws {
        let c = try HuggingFaceFolder(directory: repositoryRoot + "/benchmarks/configs/mixtral-8x7b").readConfig()
        let plain = ModelFootprint(config: c, element: .bf16), q4 = ModelFootprint(config: c, element: .bf16, expertElement: .q4_0)
        #expect(plain.expertBytes == 3 * 14336 * 4096 * 2)
        #expect(q4.expertBytes == 3 * 14336 * 4096 / 32 * 18)
        #expect(q4.always == plain.always)
        let oss = try HuggingFaceFolder(directory: repositoryRoot + "/benchmarks/configs/gpt-oss-120b").readConfig()
        #expect(ModelFootprint(config: oss, element: .bf16, expertElement: .q4_0).expertBytes == 3 * 2880 * 2880 / 32 * 17)
    }

    @Test func popularExpertsGoToFastMemoryFirst() throws {
        // Layer 0: expert 3 takes almost every token; with room for one expert on the accelerator
        // (besides what every token touches), it is 3.
        var popularity = [[Double]](repeating: [Double](repeating: 1.0 / 8, count: 8), count: 32)
        popularity[0] = [0.01, 0.01, 0.01, 0.9, 0.01, 0.02, 0.02, 0.02]
        let footprint = ModelFootprint(config: mixtral, element: .bf16)
        let eligible = footprint.always.filter(\.acceleratorEligible).reduce(0) { $0 + ($1.bytes + 63) / 64 * 64 }
        let memory = eligible + ExpertPlacement.acceleratorSlotBytes(footprint.expertMatrixBytes)
        func plan(_ popularity: [[Double]]?) throws -> Plan {
            try Planner.plan(mixtral, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: memory, ramBudget: 1 << 40,
                             contextLength: 2048, popularity: popularity, policy: .cpu)
        }
        let popular = try plan(popularity)
        #expect(popular.placement.experts(on: .accelerator) == [ExpertKey(layer: 0, expert: 3)])
        let uniform = try plan(nil)
        #expect(popular.decodeOverlapped > uniform.decodeOverlapped, "the popular expert on the accelerator saves CPU time")
    }

    /// `plan` places from config.json alone; execution places the loaded weights. For the same
    /// budgets they must agree expert for expert, slot for slot.
    @Test("plan's placement is the placement execution uses", arguments: moeArchitectures)
    func planEqualsExecution(arch: String) throws {
        let config = try HuggingFaceFolder(directory: fixturePath(arch)).readConfig()
        let footprint = ModelFootprint(config: config, element: .bf16)
        let slot = ExpertPlacement.acceleratorSlotBytes(footprint.expertMatrixBytes)
        let always = footprint.always.filter(\.acceleratorEligible).reduce(0) { $0 + ($1.bytes + 63) / 64 * 64 }
        var popularity = [[Double]](repeating: [], count: config.layerCount)
        for (l, n) in footprint.expertsPerLayer.enumerated() where n > 0 {
            popularity[l] = (0..<n).map { Double(($0 * 7 + l * 3) % n + 1) }
        }
        // An accelerator that takes what every token touches and a few experts, a RAM budget that
        // takes a few more: experts on all three tiers, caches on both.
        for (policy, profile) in [(ExpertPolicy.scheduled, false), (.scheduled, true), (.cpu, true), (.naive, false)] {
            let acceleratorMemory = always + 2 * slot + 100
            let reserve = TierOptions.hostReservation(config, positions: testPositions)
            let hostAlways = footprint.always.filter { !$0.acceleratorEligible }.reduce(0) { $0 + $1.bytes }
            let ramBudget = hostAlways + reserve + 1 * ExpertPlacement.ramSlotBytes(footprint.expertMatrixBytes)
            let planned = try Planner.plan(
                config, element: .bf16, hardware: fiddlerMachine, acceleratorMemory: acceleratorMemory, ramBudget: ramBudget,
                contextLength: testPositions, popularity: profile ? popularity : nil, policy: policy)
            var options = EngineOptions(model: fixturePath(arch))
            options.precision = .f32  // the references are f32's
            options.threads = 2
            options.costDirectory = costDirectory
            options.kvPositions = testPositions
            options.accelerator = .emulated
            options.acceleratorMemory = acceleratorMemory
            options.ramBudget = ramBudget
            options.expertPolicy = policy
            options.popularity = profile ? popularity : nil
            let engine = try Engine.load(options)
            let executed = try #require(engine.tiers)
            #expect(executed.footprint == planned.footprint, "\(arch): the same bytes from the config as from the weights")
            #expect(executed.placement == planned.placement, "\(arch) \(policy) profile \(profile)")
            #expect(!planned.placement.experts(on: .accelerator).isEmpty && !planned.placement.experts(on: .disk).isEmpty,
                    "\(arch) \(policy): experts on the accelerator and on disk")
        }
    }
}
