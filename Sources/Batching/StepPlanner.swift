/// The batching decision, apart from running the model and processing outputs (vLLM's
/// `schedule()`): which waiting requests start, and which tokens of which sequences run this step,
/// under the sequence, KV-memory and prompt-token budgets. A pure function of what it is given,
/// so it can be tested alone, and so the two-tier and pipelining work can change it in one place.
public enum StepPlanner {
    public struct Limits: Sendable, Equatable {
        /// Sequences running at once, at most.
        public var maxSequences: Int
        /// Prompt tokens a step may take, all prompts together.
        public var prefillChunk: Int
        /// KV cache memory all running sequences may reserve together.
        public var kvBudgetBytes: Int

        public init(maxSequences: Int, prefillChunk: Int, kvBudgetBytes: Int) {
            self.maxSequences = maxSequences
            self.prefillChunk = prefillChunk
            self.kvBudgetBytes = kvBudgetBytes
        }
    }

    /// A sequence that is running, as the planner sees it.
    public struct Running: Sendable, Equatable {
        public var id: Int
        public var promptLength: Int
        /// Prompt tokens already run.
        public var prefilled: Int
        /// A sampled token waits to be run (the sequence is generating).
        public var decoding: Bool

        public init(id: Int, promptLength: Int, prefilled: Int, decoding: Bool) {
            self.id = id
            self.promptLength = promptLength
            self.prefilled = prefilled
            self.decoding = decoding
        }
    }

    /// One step: prompt chunks (token ranges of each prompt), then one decode token of each
    /// generating sequence.
    public struct Step: Sendable, Equatable {
        public var prefill: [(id: Int, tokens: Range<Int>)] = []
        public var decode: [Int] = []

        public var isEmpty: Bool { prefill.isEmpty && decode.isEmpty }

        public static func == (a: Step, b: Step) -> Bool {
            a.decode == b.decode && a.prefill.map(\.id) == b.prefill.map(\.id) && a.prefill.map(\.tokens) == b.prefill.map(\.tokens)
        }
    }

    /// How many of the waiting requests (their KV bytes, in arrival order) start now: while a
    /// sequence slot is free and their memory fits beside what is reserved. One that does not fit
    /// waits, and so do those behind it (first come, first served); a request alone may always
    /// start, so one larger than the budget is not starved.
    public static func admit(waitingBytes: [Int], running: Int, kvInUse: Int, limits: Limits) -> Int {
        var kv = kvInUse, admitted = 0
        for need in waitingBytes {
            guard running + admitted < limits.maxSequences else { break }
            if kv + need > limits.kvBudgetBytes && running + admitted > 0 { break }
            kv += need
            admitted += 1
        }
        return admitted
    }

    /// The step for `running` (in admission order): prompts in that order up to `prefillChunk`
    /// tokens in all (several short prompts start together, a long one goes in chunks between
    /// decode steps), and the next token of every sequence that is generating.
    public static func plan(_ running: [Running], limits: Limits) -> Step {
        var step = Step()
        var budget = limits.prefillChunk
        for seq in running where budget > 0 && seq.prefilled < seq.promptLength {
            let end = min(seq.promptLength, seq.prefilled + budget)
            step.prefill.append((seq.id, seq.prefilled..<end))
            budget -= end - seq.prefilled
        }
        step.decode = running.filter(\.decoding).map(\.id)
        return step
    }

    /// KV cache positions a request reserves: its prompt, its completion and the token fed after
    /// the last, within the context; safe against absurd `maxTokens`.
    public static func positions(promptLength: Int, maxTokens: Int, contextLength: Int) -> Int {
        min(contextLength, promptLength + min(max(maxTokens, 0), contextLength) + 1)
    }
}
