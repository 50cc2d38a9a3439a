import Kernels
import Models
import Orchestration
import Runtime

/// Everything that decides how a model is run, typed: the CLI's flags parse into this, the server
/// and the tests fill it in directly.
public struct EngineOptions: Sendable {
    /// Activations of the products: f32, int8 for block-quantised weights, bf16 for bf16 weights,
    /// both, or what the precision contract lets this CPU run fastest.
    public enum Precision: String, Sendable, CaseIterable {
        case f32, int8, bf16
        case int8bf16 = "int8+bf16"
        /// Per weight type, the fastest activations on this CPU whose KL divergence from f32 stays
        /// within the contract (`AutomaticPrecision`).
        case auto

        public var activations: ActivationPrecision {
            switch self {
            case .int8: .int8
            case .bf16: .bf16
            case .int8bf16: .int8bf16
            case .f32: .f32
            case .auto: AutomaticPrecision.choice
            }
        }
    }

    /// Where the accelerator's work goes.
    public enum AcceleratorKind: String, Sendable, CaseIterable {
        /// No accelerator: everything on the CPU.
        case cpu
        /// The accelerator emulated on the host (needs `acceleratorMemory`).
        case emulated
        /// An NVIDIA GPU through the driver loaded at run time.
        case cuda
        /// cuda when usable, else cpu.
        case auto
    }

    /// How the weights used as stored are held.
    public enum Residency: String, Sendable, CaseIterable {
        /// Mapped; a model held wholly in memory is read in at load in 2 MiB pages where it can be.
        case hugePages
        /// Mapped as the page cache holds the files (`--no-huge-pages`).
        case mapped
        /// Copied out of the files into anonymous 2 MiB pages (`--no-mmap`).
        case copied
    }

    /// The model: a folder or file in a format `ModelFormats` reads.
    public var model: String
    /// Kernel threads (nil: the cores this process may use).
    public var threads: Int?
    public var precision: Precision = .auto
    public var accelerator: AcceleratorKind = .cpu
    /// The accelerator's memory budget (required for the emulated one).
    public var acceleratorMemory: Int?
    public var acceleratorThreads = 1
    /// The emulated accelerator's host link, bytes per second (nil: host memory speed).
    public var acceleratorLink: Double?
    /// Host RAM for weights, KV cache and work memory; experts beyond it are read from the files.
    public var ramBudget: Int?
    public var expertPolicy: ExpertPolicy = .scheduled
    /// [layer][expert] shares from a routing profile: popular experts are pinned first.
    public var popularity: [[Double]]?
    public var prefetch = true
    public var recalibrate = false
    public var costDirectory = CostModel.defaultDirectory
    /// One JSON line per MoE layer per step.
    public var tracePath: String?
    /// How a layer's moved experts are pipelined with compute.
    public var expertPipeline = PipelineSetting.auto
    /// Correct the cost table with the times measured as the model runs.
    public var learnCosts = true
    /// Prompt tokens per forward pass (nil: `defaultPromptChunk`).
    public var promptChunk: Int?
    public var quantization: WeightQuantization?
    public var randomWeights = false
    public var residency: Residency = .hugePages
    /// KV cache positions the command may fill (all sequences together), which a RAM budget must
    /// hold besides the weights (one sequence of up to 4096 positions by default).
    public var kvPositions: Int?
    /// Measure the bf16 kernel choice on an expert of this model's shape at load.
    public var tuneKernels = true
    /// How a layer's experts run on the CPU: measured at load (auto), or always one way.
    public var expertKernel = ExpertKernel.auto

    public enum ExpertKernel: String, Sendable, CaseIterable {
        case auto, grouped, dense
    }
    /// How latent attention (DeepSeek) computes each step.
    public var latentAttention = LatentAttentionForm.automatic
    /// Refuse weights that hold a NaN or an infinity (a pass over every byte at load).
    public var checkTensors = false
    /// Hold every weight the process computes with in its own memory rather than in the files'
    /// mappings, so that a model file changed or cut short under a running server cannot end the
    /// process (a read of a mapping past a file's end is a SIGBUS): weights are copied out as
    /// `--no-mmap` does, and under the tiers what host memory holds is; only experts on the disk
    /// tier are read from the files, with errors that fail their step.
    public var holdWeightsInMemory = false

    /// Attention workers ("host:port") that hold the KV caches and compute attention (two-tier
    /// inference); none: attention runs here over a host cache.
    public var attentionWorkers: [String] = []
    /// How long an attention worker may take to answer before it counts as gone.
    public var attentionTimeout: Duration = .seconds(30)
    /// Expert hosts ("host:port") to place routed experts on; how long one may take to answer.
    public var expertWorkers: [String] = []
    public var expertTimeout: Duration = .seconds(30)

    public init(model: String) { self.model = model }

    /// Whether the model runs across tiers (an accelerator's memory or a RAM budget).
    public var tiered: Bool { acceleratorMemory != nil || ramBudget != nil || !expertWorkers.isEmpty }

    /// Prompt tokens per forward pass unless told: the tiers' default across tiers, else the model's.
    public var defaultPromptChunk: Int { tiered ? TierOptions.promptChunk : Model.defaultPromptChunk }
    public var effectivePromptChunk: Int { promptChunk ?? defaultPromptChunk }

    /// Checks that the options go together, before anything is loaded.
    public func validate() throws(EngineError) {
        if let threads, threads < 1 { throw EngineError("--threads must be at least 1") }
        if acceleratorThreads < 1 { throw EngineError("--accelerator-threads must be at least 1") }
        if acceleratorLink != nil && accelerator != .emulated { throw EngineError("--accelerator-link paces the emulated accelerator's copies: use it with --accelerator emulated") }
        if accelerator == .emulated && acceleratorMemory == nil {
            throw EngineError("--accelerator emulated needs --accelerator-memory (its memory budget, e.g. 512MiB)")
        }
        if acceleratorMemory != nil && accelerator != .emulated {
            throw EngineError("--accelerator-memory sizes an accelerator: use it with --accelerator emulated")
        }
        if residency == .copied && tiered {
            throw EngineError("--no-mmap copies the weights into host memory; the tiers (--accelerator-memory, --ram-budget) place them themselves")
        }
        if let kvPositions, kvPositions < 1 { throw EngineError("the KV cache needs at least one position") }
        if let promptChunk, !(1...8192).contains(promptChunk) { throw EngineError("--ubatch must be between 1 and 8192 tokens") }
        if !expertWorkers.isEmpty && quantization != nil {
            throw EngineError("--expert-workers: expert hosts hold the experts as stored in their model files, so they cannot be combined with --quantize")
        }
        if !expertWorkers.isEmpty && randomWeights {
            throw EngineError("--expert-workers: expert hosts read their experts from their model files, so they cannot be combined with --random-weights")
        }
        if expertTimeout <= .zero || expertTimeout > .seconds(3600) {
            throw EngineError("--expert-timeout must be between 0 and 3600 seconds")
        }
        if attentionTimeout <= .zero || attentionTimeout > .seconds(3600) {
            throw EngineError("--attention-timeout must be between 0 and 3600 seconds")
        }
    }
}

/// Why an engine could not be made; the message names the problem.
public struct EngineError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
