import Testing
@testable import Batching

@Suite("step planner")
struct StepPlannerTests {
    let limits = StepPlanner.Limits(maxSequences: 3, prefillChunk: 10, kvBudgetBytes: 1000)

    @Test func admissionIsFirstComeFirstServedUnderBothLimits() {
        #expect(StepPlanner.admit(waitingBytes: [300, 300, 300, 300], running: 0, kvInUse: 0, limits: limits) == 3, "three sequences at most")
        #expect(StepPlanner.admit(waitingBytes: [300, 800, 100], running: 1, kvInUse: 300, limits: limits) == 1,
                "the second does not fit, and the third waits behind it")
        #expect(StepPlanner.admit(waitingBytes: [5000], running: 0, kvInUse: 0, limits: limits) == 1, "alone, a request larger than the budget starts")
        #expect(StepPlanner.admit(waitingBytes: [5000], running: 1, kvInUse: 10, limits: limits) == 0)
        #expect(StepPlanner.admit(waitingBytes: [], running: 0, kvInUse: 0, limits: limits) == 0)
    }

    @Test func promptsShareTheChunkInOrderAndEveryGeneratorDecodes() {
        let running = [
            StepPlanner.Running(id: 1, promptLength: 4, prefilled: 4, decoding: true),
            StepPlanner.Running(id: 2, promptLength: 25, prefilled: 20, decoding: false),
            StepPlanner.Running(id: 3, promptLength: 30, prefilled: 0, decoding: false),
            StepPlanner.Running(id: 4, promptLength: 3, prefilled: 0, decoding: false),
        ]
        let step = StepPlanner.plan(running, limits: limits)
        #expect(step.prefill.map(\.id) == [2, 3])
        #expect(step.prefill.map(\.tokens) == [20..<25, 0..<5], "5 tokens finish prompt 2, the other 5 start prompt 3")
        #expect(step.decode == [1])
        #expect(StepPlanner.plan([], limits: limits).isEmpty)
    }

    @Test func reservedPositionsStayWithinTheContextWhateverMaxTokensSays() {
        #expect(StepPlanner.positions(promptLength: 10, maxTokens: 5, contextLength: 100) == 16)
        #expect(StepPlanner.positions(promptLength: 10, maxTokens: .max, contextLength: 100) == 100)
        #expect(StepPlanner.positions(promptLength: 10, maxTokens: -3, contextLength: 100) == 11)
    }
}
