/// Where weights and KV caches live, fastest first: the one vocabulary of the planner, the
/// executor, their reports and traces.
public enum Tier: String, Sendable, CaseIterable, Comparable {
    /// An accelerator's own memory (a GPU's, or the emulated one's).
    case accelerator
    /// Host memory under the RAM budget.
    case ram
    /// The model files, read when needed.
    case disk
    /// Another host's memory, reached over the network.
    case remote

    public static func < (a: Tier, b: Tier) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}
