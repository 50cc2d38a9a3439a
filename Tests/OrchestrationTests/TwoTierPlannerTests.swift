import Kernels
import Models
import Orchestration
import SwitchyardSupport
import SwitchyardTestSupport
import Testing

@Suite("two-tier planner")
struct TwoTierPlannerTests {
    let config = try! HuggingFaceFolder(directory: repositoryRoot + "/benchmarks/configs/bench-mixtral-800m").readConfig()
    let machine = HardwareProfile.known.first { $0.name.hasPrefix("h100") }!

    func inputs(rtt: Double, workers: Int = 2, shared: Bool = false) -> TwoTierPlanner.Inputs {
        TwoTierPlanner.Inputs(config: config, element: .bf16, hardware: machine, workers: workers, roundTrip: rtt, networkBandwidth: 1.25e9,
                              tier1KVBytes: 8 * config.kvLayout.bytes(positions: 512), workerKVBytes: 8 << 30, contextLength: 512,
                              meanPositions: 256, sharedCores: shared)
    }

    @Test func moreBatchNeverSlowerAndDelayNeedsMoreMicroBatches() throws {
        let fast = try TwoTierPlanner.plan(inputs(rtt: 0.0001))
        let slow = try TwoTierPlanner.plan(inputs(rtt: 0.010))
        for plan in [fast, slow] {
            for (a, b) in zip(plan.curve, plan.curve.dropFirst()) { #expect(b.tokensPerSecond >= a.tokensPerSecond * 0.999, "\(a) then \(b)") }
            #expect(plan.best.tokensPerSecond > plan.singleTierTokensPerSecond, "two tiers hold more sequences, so read each weight for more tokens")
            #expect(plan.singleTierBatch == 8)
        }
        #expect(slow.best.tokensPerSecond <= fast.best.tokensPerSecond)
        #expect(slow.littlesLawMicroBatches > fast.littlesLawMicroBatches)
        #expect(slow.curve.last!.microBatches > 1, "a 10 ms round trip is hidden by micro-batches in flight")
        // The wire: 8 heads x 128 of queries and outputs, 2 x 128 of keys and values, float32, and a slot id.
        #expect(fast.wireBytesPerTokenPerLayer == (2 * 1024 + 2 * 256) * 4 + 12)
        #expect(fast.glinthawkWireBytesPerTokenPerLayer == fast.wireBytesPerTokenPerLayer + 2 * 1024 * 4)
    }

    @Test func badInputsAreErrors() {
        var i = inputs(rtt: 0.001)
        i.workers = 0
        #expect(throws: OrchestrationError.self) { try TwoTierPlanner.plan(i) }
        i = inputs(rtt: .nan)
        #expect(throws: OrchestrationError.self) { try TwoTierPlanner.plan(i) }
        i = inputs(rtt: 0.001)
        i.workerKVBytes = 1024
        #expect(throws: OrchestrationError.self) { try TwoTierPlanner.plan(i) }
    }
}
