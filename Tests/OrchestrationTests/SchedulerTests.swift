import Testing
import Kernels
@testable import Orchestration
import Runtime
import SwitchyardSupport
import SwitchyardTestSupport

/// A machine where the CPU takes 1 ms per token, the accelerator 0.1 ms plus 0.2 ms per expert,
/// a copy 5 ms and a disk read 20 ms.
let syntheticCosts = CostModel(
    key: "synthetic", tokenCounts: [1, 2, 4, 8, 16, 32, 64, 128],
    cpuSeconds: [1, 2, 4, 8, 16, 32, 64, 128].map { Double($0) * 1e-3 },
    acceleratorSeconds: [1, 2, 4, 8, 16, 32, 64, 128].map { 0.2e-3 + Double($0) * 0.1e-3 },
    copyBytesPerSecond: 1e9 / 5e-3 / 1e9 * 1e6, diskBytesPerSecond: 1e6 / 20e-3, expertBytes: 1_000_000)

@Suite("Per-layer expert scheduler")
struct SchedulerTests {
    @Test func costsInterpolateAndExtrapolate() {
        #expect(abs(syntheticCosts.cpu(tokens: 3) - 3e-3) < 1e-12)
        #expect(abs(syntheticCosts.cpu(tokens: 256) - 256e-3) < 1e-12)
        #expect(abs(syntheticCosts.copySeconds - 5e-3) < 1e-9)
        #expect(abs(syntheticCosts.diskSeconds - 20e-3) < 1e-9)
    }

    @Test("one token runs where the weights are; many tokens pay for a copy")
    func loadDecidesCopy() {
        let one = LayerScheduler.decide(tokens: [1], locations: [.ram], costs: syntheticCosts, policy: .scheduled, hasAccelerator: true, copySlots: 4)
        #expect(one.actions == [.cpu])
        let many = LayerScheduler.decide(tokens: [64], locations: [.ram], costs: syntheticCosts, policy: .scheduled, hasAccelerator: true, copySlots: 4)
        #expect(many.actions == [.copyToAccelerator])
        #expect(abs(many.makespan - (5e-3 + 0.2e-3 + 6.4e-3)) < 1e-9)
    }

    @Test("the makespan, not the sum: work is spread so CPU and copies overlap")
    func overlapSpreadsWork() {
        // Four experts of 8 tokens in RAM: all on the CPU is 32 ms; all copied is 20 ms of copies
        // plus the last kernel; the best split runs some on each.
        let d = LayerScheduler.decide(tokens: [8, 8, 8, 8], locations: [.ram, .ram, .ram, .ram], costs: syntheticCosts,
                                      policy: .scheduled, hasAccelerator: true, copySlots: 4)
        #expect(d.actions.contains(.cpu))
        #expect(d.actions.contains(.copyToAccelerator))
        let allCPU = LayerScheduler.decide(tokens: [8, 8, 8, 8], locations: [.ram, .ram, .ram, .ram], costs: syntheticCosts,
                                           policy: .cpu, hasAccelerator: true, copySlots: 4)
        let allCopy = LayerScheduler.decide(tokens: [8, 8, 8, 8], locations: [.ram, .ram, .ram, .ram], costs: syntheticCosts,
                                            policy: .copy, hasAccelerator: true, copySlots: 4)
        #expect(d.makespan < allCPU.makespan)
        #expect(d.makespan < allCopy.makespan)
        #expect(abs(allCPU.makespan - 32e-3) < 1e-9)
        // Summing CPU and copy time, as Fiddler's code does, would price the split at more than its makespan.
        #expect(d.cpu + d.link > d.makespan)
    }

    @Test("no cache slot left: no copy")
    func slotsLimitCopies() {
        let d = LayerScheduler.decide(tokens: [64, 64], locations: [.ram, .ram], costs: syntheticCosts, policy: .copy, hasAccelerator: true, copySlots: 1)
        #expect(d.actions.filter { $0 == .copyToAccelerator }.count == 1)
        let none = LayerScheduler.decide(tokens: [64], locations: [.ram], costs: syntheticCosts, policy: .copy, hasAccelerator: false, copySlots: 4)
        #expect(none.actions == [.cpu])
    }

    @Test("disk reads overlap the CPU's work except under the naive policy")
    func diskOverlap() {
        let locations: [Tier] = [.disk, .ram, .disk]
        let scheduled = LayerScheduler.decide(tokens: [1, 1, 1], locations: locations, costs: syntheticCosts, policy: .cpu, hasAccelerator: false, copySlots: 0)
        #expect(scheduled.actions == [.readThenCPU, .cpu, .readThenCPU])
        // Two reads back to back (40 ms), the last expert's kernel after the second.
        #expect(abs(scheduled.makespan - 41e-3) < 1e-9)
        let naive = LayerScheduler.decide(tokens: [1, 1, 1], locations: locations, costs: syntheticCosts, policy: .naive, hasAccelerator: false, copySlots: 0)
        #expect(abs(naive.makespan - 43e-3) < 1e-9)
    }

    @Test("resident experts run on the accelerator")
    func residentRunsThere() {
        let d = LayerScheduler.decide(tokens: [3], locations: [.accelerator], costs: syntheticCosts, policy: .cpu, hasAccelerator: true, copySlots: 0)
        #expect(d.actions == [.accelerator])
    }

    @Test("cost tables round-trip through the cache; another key is not trusted")
    func costCache() {
        let directory = "/tmp/switchyard-cost-cache-test-\(getpid())/nested"
        syntheticCosts.save(directory: directory)
        #expect(CostModel.load(key: "synthetic", directory: directory) == syntheticCosts)
        #expect(CostModel.load(key: "another machine", directory: directory) == nil)
    }
}

@Suite("Expert cache")
struct ExpertCacheTests {
    func cache(_ slots: Int) -> ExpertCache {
        ExpertCache(slots: slots, decay: 0.5)
    }

    func add(_ c: ExpertCache, _ expert: Int, step: Int, protected: Set<ExpertKey> = []) -> Bool {
        let key = ExpertKey(layer: 0, expert: expert)
        guard let slot = c.insert(key, step: step, protected: protected) else { return false }
        let m = WeightMatrixStub.matrix
        let entry = CacheEntry(key: key, slot: slot, weights: .init(gate: m, up: m, down: m), ready: Completion(done: true))
        c.store(entry)
        c.record(key, step: step)
        return true
    }

    @Test("the least recently-and-frequently used entry goes first")
    func evictsLowestScore() {
        let c = cache(2)
        #expect(add(c, 0, step: 1))
        #expect(add(c, 1, step: 1))
        // Expert 0 is used again at steps 2 and 3; expert 1 is not.
        for step in 2...3 { c.record(ExpertKey(layer: 0, expert: 0), step: step) }
        #expect(add(c, 2, step: 4))
        #expect(c.lookup(ExpertKey(layer: 0, expert: 1)) == nil)
        #expect(c.lookup(ExpertKey(layer: 0, expert: 0)) != nil)
        #expect(c.evictions == 1)
    }

    @Test("recency wins over an old burst of uses")
    func oldUsesAgeOut() {
        let c = cache(2)
        #expect(add(c, 0, step: 1))
        for step in 2...4 { c.record(ExpertKey(layer: 0, expert: 0), step: step) }  // 4 uses long ago
        #expect(add(c, 1, step: 20))
        #expect(add(c, 2, step: 21))
        #expect(c.lookup(ExpertKey(layer: 0, expert: 0)) == nil)
    }

    @Test("an evicted expert keeps its standing; a guess that was never used leaves first")
    func historyOutlivesEviction() {
        let c = cache(2)
        #expect(add(c, 0, step: 1))
        for step in 2...5 { c.record(ExpertKey(layer: 0, expert: 0), step: step) }
        #expect(add(c, 1, step: 6))
        #expect(add(c, 2, step: 7, protected: [ExpertKey(layer: 0, expert: 1)]))  // pushes expert 0 out
        #expect(c.lookup(ExpertKey(layer: 0, expert: 0)) == nil)
        // Back again: a prefetched guess (expert 3, never used) and expert 1 (used once) are
        // cheaper to lose than expert 0's history.
        #expect(add(c, 0, step: 8))
        #expect(c.lookup(ExpertKey(layer: 0, expert: 2)) != nil || c.lookup(ExpertKey(layer: 0, expert: 1)) != nil)
        let slot = c.insert(ExpertKey(layer: 0, expert: 3), step: 9, protected: [])!
        let m = WeightMatrixStub.matrix
        c.store(CacheEntry(key: ExpertKey(layer: 0, expert: 3), slot: slot, weights: .init(gate: m, up: m, down: m), ready: Completion(done: true)))
        #expect(add(c, 4, step: 10))
        #expect(c.lookup(ExpertKey(layer: 0, expert: 3)) == nil)
        #expect(c.lookup(ExpertKey(layer: 0, expert: 0)) != nil)
    }

    /// Six experts used in turn every step, a cache of four: hits in the last 20 of 40 steps.
    func cyclicHits(transientSlots: Int) -> Int {
        let c = ExpertCache(slots: 4, transientSlots: transientSlots)
        var hits = 0
        for step in 1...40 {
            for layer in 0..<6 {
                let key = ExpertKey(layer: layer, expert: 0)
                c.record(key, step: step)
                if c.lookup(key) != nil {
                    if step > 20 { hits += 1 }
                    continue
                }
                let slot = c.insert(key, step: step, protected: [key])!
                let m = WeightMatrixStub.matrix
                c.store(CacheEntry(key: key, slot: slot, weights: .init(gate: m, up: m, down: m), ready: Completion(done: true)))
            }
        }
        return hits
    }

    @Test("a hot set larger than the cache keeps most of itself instead of evicting itself in turn")
    func admissionStopsThrashing() {
        // Three of the six stay (the fourth slot passes the others through): 60 hits at best.
        #expect(cyclicHits(transientSlots: 1) >= 55)
        #expect(cyclicHits(transientSlots: 0) >= 55)
    }

    @Test("protected, loading and busy entries are never evicted")
    func protectedStay() {
        let c = cache(1)
        #expect(add(c, 0, step: 1))
        #expect(!add(c, 1, step: 2, protected: [ExpertKey(layer: 0, expert: 0)]))
        let entry = c.lookup(ExpertKey(layer: 0, expert: 0))!
        entry.readers = Completion()
        #expect(!add(c, 1, step: 3))
        entry.readers!.signal()
        #expect(add(c, 1, step: 4))
    }
}

import Kernels
/// A placeholder matrix for cache entries: the cache never reads weights.
enum WeightMatrixStub {
    nonisolated(unsafe) static let storage = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    static var matrix: WeightMatrix { WeightMatrix(element: .f32, rows: 1, columns: 1, data: storage) }
}

@Suite("EPS-MoE's expert pipeline")
struct ExpertPipelineTests {
    @Test("experts on hosts: a round trip, then their transfers and kernels overlapped, spread over the hosts")
    func remoteTimeline() {
        var costs = syntheticCosts
        costs.remoteRoundTrip = 2e-3
        costs.remoteBytesPerSecond = 1e8
        costs.tokenRowBytes = 4096
        let d = LayerScheduler.decide(tokens: [8, 8, 4], locations: [.remote, .remote, .ram], costs: costs, policy: .scheduled,
                                      hasAccelerator: false, copySlots: 0, remoteHosts: 2)
        #expect(d.actions == [.remote, .remote, .cpu])
        // Kernels 16 ms against 2 x 8 x 4096 x 2 bytes at 100 MB/s = 1.3 ms of transfers, over 2 hosts.
        #expect(abs(d.remote - (2e-3 + 16e-3 / 2)) < 1e-9)
        #expect(abs(d.cpu - 4e-3) < 1e-9)
    }

    @Test("N* = sqrt(min(M, C) / k), bounded by the experts moved")
    func optimumIsBounded() {
        // 100 ms of reads and 100 ms of kernels over 8 experts, 10 µs a group: N* = 100, so 8.
        let p = ExpertPipeline.choose(movement: 0.1, compute: 0.1, floor: 0.1, overhead: 10e-6, moved: 8, reads: 8, slots: 16, setting: .auto)
        #expect(abs(p.optimum - 100) < 1e-9)
        #expect(p.groups == 8 && p.overlapped)
        #expect(abs(p.predicted - (0.1 + 0.1 / 8 + 7 * 10e-6)) < 1e-12)
        #expect(abs(p.unpipelined - 0.2) < 1e-12)
        // A costly group (2.5 ms): N* = sqrt(0.1 / 0.0025) = 6.3, and 6 is the faster neighbour.
        let costly = ExpertPipeline.choose(movement: 0.1, compute: 0.1, floor: 0.1, overhead: 2.5e-3, moved: 8, reads: 8, slots: 16, setting: .auto)
        #expect(costly.groups == 6)
        let times = (2...8).map { ExpertPipeline.layerSeconds(groups: $0, movement: 0.1, compute: 0.1, overhead: 2.5e-3, floor: 0.1) }
        #expect(costly.predicted == times.min())
    }

    @Test("off where splitting costs more than it hides, and with nothing to move")
    func offBelowThreshold() {
        // 30 µs of reads against 10 µs a group: N* < 2, and two groups would gain 15 µs for 10.
        let small = ExpertPipeline.choose(movement: 30e-6, compute: 1e-3, floor: 1e-3, overhead: 20e-6, moved: 2, reads: 2, slots: 8, setting: .auto)
        #expect(!small.overlapped && small.groups == 1)
        #expect(small.predicted == small.unpipelined)
        let none = ExpertPipeline.choose(movement: 0, compute: 0, floor: 2e-3, overhead: 10e-6, moved: 0, reads: 0, slots: 8, setting: .auto)
        #expect(!none.overlapped && none.groups == 1 && none.predicted == 2e-3)
        // One expert moved: nothing to overlap it with.
        let one = ExpertPipeline.choose(movement: 0.1, compute: 0.1, floor: 0.1, overhead: 10e-6, moved: 1, reads: 1, slots: 8, setting: .auto)
        #expect(!one.overlapped)
    }

    @Test("groups fit the RAM cache: one at a time unpipelined, two at once pipelined")
    func groupsFitTheSlots() {
        let off = ExpertPipeline.choose(movement: 0.1, compute: 0.1, floor: 0.1, overhead: 10e-6, moved: 8, reads: 8, slots: 4, setting: .off)
        #expect(off.groups == 2 && !off.overlapped)
        #expect(abs(off.predicted - (0.2 + 10e-6)) < 1e-12)
        let two = ExpertPipeline.choose(movement: 0.1, compute: 0.1, floor: 0.1, overhead: 10e-6, moved: 8, reads: 8, slots: 4, setting: .groups(2))
        #expect(two.groups == 4 && two.overlapped)
        #expect((0..<8).map { two.group(ofMoved: $0, moved: 8) } == [0, 0, 1, 1, 2, 2, 3, 3])
        // Copies to the accelerator take no RAM slot: the forced count stands.
        let copies = ExpertPipeline.choose(movement: 0.1, compute: 0.1, floor: 0.1, overhead: 10e-6, moved: 8, reads: 0, slots: 0, setting: .groups(3))
        #expect(copies.groups == 3)
        #expect((0..<8).map { copies.group(ofMoved: $0, moved: 8) } == [0, 0, 0, 1, 1, 1, 2, 2])
        #expect(PipelineSetting("auto") == .auto && PipelineSetting("off") == .off && PipelineSetting("3") == .groups(3))
        #expect(PipelineSetting("0") == nil && PipelineSetting("4097") == nil && PipelineSetting("two") == nil)
    }
}

@Suite("A cost model that corrects itself")
struct CostLearningTests {
    @Test("kernel times move toward what runs measure, near the token count measured")
    func kernelTimesConverge() {
        var costs = syntheticCosts
        // The CPU is twice as slow at 16 tokens as calibrated (another thread competes for it).
        for _ in 0..<20 {
            var m = LayerMeasurement()
            m.cpu = [(16, 32e-3)]
            costs.learn(m)
        }
        #expect(abs(costs.cpu(tokens: 16) - 32e-3) / 32e-3 < 0.01)
        #expect(costs.cpu(tokens: 1) == syntheticCosts.cpu(tokens: 1))
        #expect(costs.cpu(tokens: 64) == syntheticCosts.cpu(tokens: 64))
        #expect(costs.observations == 20)
        // Between measured counts, both neighbours share the correction by their weights.
        var between = syntheticCosts
        var m = LayerMeasurement()
        m.accelerator = [(12, 2 * syntheticCosts.accelerator(tokens: 12))]
        between.learn(m)
        #expect(between.accelerator(tokens: 8) > syntheticCosts.accelerator(tokens: 8))
        #expect(between.accelerator(tokens: 16) > syntheticCosts.accelerator(tokens: 16))
        #expect(between.accelerator(tokens: 4) == syntheticCosts.accelerator(tokens: 4))
    }

    @Test("link rates follow bytes over busy time; one outlier moves them at most 4x a step")
    func ratesConverge() {
        var costs = syntheticCosts
        for _ in 0..<30 {
            var m = LayerMeasurement()
            m.diskBytes = 2_000_000
            m.diskBusySeconds = 0.08  // 25 MB/s against the calibrated 50
            costs.learn(m)
        }
        #expect(abs(costs.diskBytesPerSecond - 25e6) / 25e6 < 0.01)
        var outlier = syntheticCosts
        var m = LayerMeasurement()
        m.copyBytes = 1
        m.copyBusySeconds = 10
        outlier.learn(m)
        #expect(outlier.copyBytesPerSecond >= syntheticCosts.copyBytesPerSecond * (1 - 0.25 * 0.75) - 1)
    }

    @Test("busy time counts overlapping work once; overlap is time both ran at once")
    func intervals() {
        let t0 = ContinuousClock.now
        func at(_ ms: Int) -> ContinuousClock.Instant { t0 + .milliseconds(ms) }
        let reads = [(at(0), at(10)), (at(5), at(15)), (at(20), at(30))].map { LayerMeasurement.Interval($0.0, $0.1) }
        #expect(abs(LayerMeasurement.busySeconds(reads) - 0.025) < 1e-9)
        let kernels = [(at(12), at(22)), (at(29), at(40))].map { LayerMeasurement.Interval($0.0, $0.1) }
        // 12-15 and 20-22 and 29-30.
        #expect(abs(LayerMeasurement.overlapSeconds(reads, kernels) - 0.006) < 1e-9)
        #expect(LayerMeasurement.overlapSeconds([], kernels) == 0)
    }

    @Test("a learned table is saved and read back whole")
    func savedAndLoaded() throws {
        var costs = syntheticCosts
        var m = LayerMeasurement()
        m.cpu = [(4, 9e-3)]
        costs.learn(m)
        let directory = "/tmp/switchyard-costs-\(getpid())"
        costs.save(directory: directory)
        defer {
            unlink(directory + "/" + CostModel.fileName(for: costs.key))
            rmdir(directory)
        }
        let loaded = try #require(CostModel.load(key: costs.key, directory: directory))
        #expect(loaded == costs)
    }
}
