import Models
import Runtime

/// Budgets and choices of tiered execution.
public struct TierOptions: Sendable {
    /// Host RAM for weights, KV cache and work memory (`--ram-budget`); experts that do not fit are
    /// read from the model files when needed. Nil: every weight stays memory-mapped.
    public var ramBudget: Int?
    /// Host memory the budget must also hold besides weights (the KV cache, work buffers): see
    /// `hostReservation`.
    public var reservedHostBytes = 0
    public var policy: ExpertPolicy = .scheduled
    /// [layer][expert] share of routed tokens from a routing profile; popular experts are pinned in
    /// fast memory first. Uniform when nil.
    public var popularity: [[Double]]?
    /// Share of each tier's room for experts that is pinned (the rest is the expert cache).
    public var pinnedFraction = 0.5
    public var prefetch = true
    /// How a layer's moved experts are pipelined with their compute (`--expert-pipeline`).
    public var pipeline = PipelineSetting.auto
    /// Correct the cost table with the times measured as layers run (and keep what was learned).
    public var learnCosts = true
    /// Where measured cost tables are cached, and whether to measure again.
    public var costDirectory = CostModel.defaultDirectory
    public var recalibrate = false
    /// One JSON line per MoE layer per step.
    public var tracePath: String?
    /// Copy the weights host memory holds (what every token touches and the experts pinned in RAM)
    /// out of the model files, so that a file that changes under a running server cannot take
    /// them away (a read of a mapping past a file's end is a SIGBUS); experts on the disk tier are
    /// read with errors that fail their step.
    public var copyHostWeights = false

    public init() {}

    /// Work memory besides the KV cache: the runtime, tokenizer and activations take about 40 MiB.
    public static let workMemoryBytes = 48 << 20

    /// Prompt tokens per forward pass across tiers unless told: each pass reads or copies the
    /// experts it needs once, so longer passes move each expert for more tokens (llama.cpp's
    /// default micro-batch is 512 too).
    public static let promptChunk = 512

    /// What a RAM budget must hold besides weights: the KV cache of `positions` positions (all
    /// sequences together) and work memory.
    public static func hostReservation(_ config: DecoderConfig, positions: Int, promptChunk: Int = TierOptions.promptChunk) -> Int {
        config.kvLayout.bytes(positions: positions) + workMemoryBytes
            + max(0, activationBytes(config, tokens: promptChunk) - activationBytes(config, tokens: Model.defaultPromptChunk))
    }

    /// Activations of a forward pass over `tokens` tokens (residual, attention and projection rows,
    /// gathered expert rows and outputs, an expert's gate and up rows, router logits), about: work
    /// memory grows with the prompt chunk beyond what `workMemoryBytes` holds for the default one.
    public static func activationBytes(_ config: DecoderConfig, tokens: Int) -> Int {
        let inner = config.feedForward.map { f -> Int in
            switch f {
            case .dense(let n): return n
            case .mixtureOfExperts(let m): return m.expertIntermediateSize
            }
        }.max() ?? 0
        let experts = config.feedForward.compactMap { $0.moe?.expertCount }.max() ?? 0
        let topK = config.feedForward.compactMap { $0.moe?.expertsPerToken }.max() ?? 1
        return 4 * tokens * (8 * config.hiddenSize + 2 * topK * config.hiddenSize + 4 * inner + experts)
    }

    /// The placement budgets these options give, with an accelerator of `acceleratorMemory` bytes.
    public func budgets(acceleratorMemory: Int?, acceleratorUsed: Int = 0) -> ExpertPlacement.Budgets {
        var b = ExpertPlacement.Budgets()
        b.acceleratorMemory = acceleratorMemory
        b.acceleratorUsed = acceleratorUsed
        b.ramBudget = ramBudget
        b.reservedHostBytes = reservedHostBytes
        b.policy = policy
        b.pinnedFraction = pinnedFraction
        b.popularity = popularity
        return b
    }
}
