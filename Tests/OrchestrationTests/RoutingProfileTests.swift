import Testing
@testable import Models
import Orchestration
import SwitchyardSupport
import SwitchyardTestSupport

@Test("routing profile: every token's choices counted once per MoE layer, transitions to the next MoE layer")
func routingProfileCounts() throws {
    let model = try Model(directory: fixturePath("qwen2_moe"), threads: 1)  // layer 1 is dense
    let workspace = Workspace()
    let recorder = RoutingRecorder(model: model, workspace: workspace)
    let session = try model.makeSession(contextLength: 16)
    _ = try session.forward([1, 450, 2030, 301, 18919], workspace: workspace)
    _ = try session.forward([777], workspace: workspace)
    let p = recorder.profile
    #expect(p.tokens == 6)
    #expect(p.counts.map { $0.reduce(0, +) } == [12, 0, 12])
    let transitionTotal: Int = p.transitions[0].map { $0.reduce(0, +) }.reduce(0, +)
    #expect(transitionTotal == 24, "6 tokens x 2 experts x 2 experts")
    #expect(p.transitions[1].isEmpty && p.transitions[2].isEmpty)
    #expect(try RoutingProfile(json: p.json, file: "p.json") == p)
}
