import CUDABackend
import EmulatedBackend
import Kernels
import Models
import Orchestration
import ExpertWire
import RemoteAttention
import RemoteExperts
import Runtime
import SwitchyardJSON
import SwitchyardSupport

/// A model ready to run with its devices and tiers: the composition root. `Engine.load` is the one
/// place that knows how options become a CPU device, an accelerator, a placement across tiers and
/// a kernel choice; the CLI, the server and the tests all call it.
public final class Engine: @unchecked Sendable {
    public let options: EngineOptions
    public let model: Model
    /// The tiers, when the model runs across them.
    public let tiers: TieredExecutor?
    /// The bf16 kernel choice measured at load (nil when the model's products fit the caches, the
    /// CPU has no tiles, or bf16 products run vdpbf16ps).
    public let kernelChoice: KernelChoice?
    /// The grouped-or-dense expert kernel choice measured at load (nil when not measured).
    public let expertKernelChoice: ExpertKernelChoice?
    /// The tiles-or-rows choice measured at load (nil when not measured: experts neither grouped
    /// Q8_0/Q4_0 nor bf16, small ones, or no such tiles on this CPU).
    public let tileChoice: TileChoice?
    /// Things a user should know (a fallback taken).
    public let notes: [String]
    /// The activation precision the products run at (`auto` resolved for this CPU).
    public var precision: ActivationPrecision { model.device.precision }
    public let loadSeconds: Double

    private init(options: EngineOptions, model: Model, tiers: TieredExecutor?, kernelChoice: KernelChoice?, expertKernelChoice: ExpertKernelChoice?,
                 tileChoice: TileChoice?, notes: [String], loadSeconds: Double) {
        self.options = options
        self.model = model
        self.tiers = tiers
        self.kernelChoice = kernelChoice
        self.expertKernelChoice = expertKernelChoice
        self.tileChoice = tileChoice
        self.notes = notes
        self.loadSeconds = loadSeconds
    }

    public static func load(_ options: EngineOptions) throws(EngineError) -> Engine {
        try options.validate()
        let started = ContinuousClock.now
        var notes: [String] = []
        if options.accelerator == .cuda || options.accelerator == .auto {
            let reason = CUDABackend.unavailableReason()
            if options.accelerator == .cuda { throw EngineError(reason) }
            notes.append("\(reason); running on the CPU")
        }
        let pool = options.threads.map { ThreadPool(threads: $0) } ?? .shared
        let precision = options.precision.activations
        var residency: WeightResidency
        switch options.residency {
        case .copied: residency = .copied
        case .mapped: residency = .mapped
        case .hugePages: residency = options.tiered ? .mapped : .mappedInHugePages
        }
        if options.holdWeightsInMemory && !options.tiered { residency = .copied }
        let loaded: LoadedModel
        do {
            // The disk tier reads experts from the files as stored, so they are not regrouped.
            loaded = try LoadedModel.load(
                try ModelFormats.open(options.model), pool: pool, precision: precision, randomWeights: options.randomWeights,
                quantization: options.quantization, regroup: options.ramBudget == nil, residency: residency,
                checkTensors: options.checkTensors)
        } catch {
            throw EngineError(error.description)
        }

        // The bf16 kernel for each token count, measured on an expert of this model's shape (small
        // models, whose products fit the caches, keep the default).
        var choice: KernelChoice?
        if options.tuneKernels, let expert = loaded.weights.sampleExpert, expert.gate.element == .bf16,
           expert.gate.byteCount >= 1 << 20, KernelChoice.matters(at: precision) {
            choice = KernelChoice.measure(rows: expert.gate.rows, columns: expert.gate.columns, pool: pool)
        }
        var tuning = choice?.tuning ?? .default
        // Experts in grouped Q8_0/Q4_0 (int8 activations) or bf16 (vdpbf16ps): 4-row tiles or a row
        // at a time, by token count, measured on a matrix of the expert's shape.
        var tileChoice: TileChoice?
        if options.tuneKernels, let expert = loaded.weights.sampleExpert, expert.gate.byteCount >= 1 << 20,
           TileChoice.precision(for: expert.gate.element, at: precision) != nil {
            let measured = TileChoice.measure(element: expert.gate.element, rows: expert.gate.rows, columns: expert.gate.columns,
                                              precision: precision, pool: pool)
            tuning = measured.applied(to: tuning)
            tileChoice = measured
        }
        // Grouped or dense experts: measured on the first MoE layer's experts as loaded (models
        // whose experts fit the caches keep dense; under a RAM budget, whose experts stay in the
        // files, reading them through the mapping would make them resident behind the budget's
        // back, so dense too), or as told.
        var expertChoice: ExpertKernelChoice?
        switch options.expertKernel {
        case .grouped: tuning.groupedExpertsBelow = Int.max
        case .dense: tuning.groupedExpertsBelow = 0
        case .auto:
            if options.tuneKernels, options.ramBudget == nil, let layer = loaded.weights.layers.first(where: { if case .mixtureOfExperts = $0.feedForward { true } else { false } }),
               case .mixtureOfExperts(let m) = layer.feedForward, m.experts.count > 1, m.experts[0].byteCount >= 1 << 20 {
                let measured = ExpertKernelChoice.measure(experts: Array(m.experts.prefix(8)), device: CPUDevice(pool: pool, precision: precision, tuning: tuning))
                tuning.groupedExpertsBelow = measured.groupedBelow
                expertChoice = measured
            }
        }
        let cpu = CPUDevice(pool: pool, precision: precision, tuning: tuning)
        var accelerator: (any Accelerator)?
        if options.accelerator == .emulated, let memory = options.acceleratorMemory {
            do {
                accelerator = try EmulatedAccelerator(memory: memory, threads: options.acceleratorThreads, precision: precision, tuning: tuning,
                                                    link: options.acceleratorLink)
            } catch {
                throw EngineError(error.description)
            }
        }
        let device: ComputeDevice = accelerator.map { AcceleratedDevice(cpu: cpu, accelerator: $0) } ?? cpu

        var tiers: TieredExecutor?
        if options.tiered {
            var t = TierOptions()
            t.ramBudget = options.ramBudget
            t.policy = options.expertPolicy
            t.prefetch = options.prefetch
            t.recalibrate = options.recalibrate
            t.costDirectory = options.costDirectory
            t.tracePath = options.tracePath
            t.pipeline = options.expertPipeline
            t.learnCosts = options.learnCosts
            t.popularity = options.popularity
            t.copyHostWeights = options.holdWeightsInMemory
            t.reservedHostBytes = TierOptions.hostReservation(
                loaded.config, positions: options.kvPositions ?? min(loaded.config.maxPositions, 4096), promptChunk: options.effectivePromptChunk)
            let hosts = try connectExpertHosts(options, config: loaded.config, precision: precision)
            do { tiers = try TieredExecutor(loaded, cpu: cpu, accelerator: accelerator, options: t, hosts: hosts) } catch {
                throw EngineError(error.description)
            }
        }
        var attention: RemoteAttention?
        if !options.attentionWorkers.isEmpty {
            do throws(LinkFailure) {
                let addresses = try options.attentionWorkers.map { (a) throws(LinkFailure) in try WorkerAddress(parsing: a) }
                attention = try RemoteAttention(layout: loaded.config.kvLayout, workers: addresses, deadline: options.attentionTimeout)
            } catch {
                throw EngineError("--attention-workers: \(error.description)")
            }
        }
        let model = Model(loaded, device: device, pool: pool, weights: tiers?.weights, attention: attention, expertExecutor: tiers)
        model.promptChunk = options.effectivePromptChunk
        model.latentAttentionForm = options.latentAttention
        return Engine(options: options, model: model, tiers: tiers, kernelChoice: choice, expertKernelChoice: expertChoice,
                      tileChoice: tileChoice, notes: notes,
                      loadSeconds: (ContinuousClock.now - started).seconds)
    }

    /// Connects to every expert host, each told the model's shape and the activation precision.
    static func connectExpertHosts(_ options: EngineOptions, config: DecoderConfig, precision: ActivationPrecision) throws(EngineError) -> [any ExpertHost] {
        guard !options.expertWorkers.isEmpty else { return [] }
        let moe = config.feedForward.compactMap(\.moe)
        guard !moe.isEmpty else { throw EngineError("--expert-workers: this \(config.modelType) has no routed experts to place on them") }
        let shape = ExpertModelShape(layers: config.layerCount, expertsPerLayer: moe.map(\.expertCount).max()!, hidden: config.hiddenSize,
                                     intermediate: moe.map(\.expertIntermediateSize).max()!, precision: precision.rawValue)
        var hosts: [any ExpertHost] = []
        for text in options.expertWorkers {
            do throws(LinkFailure) {
                hosts.append(try RemoteExpertHost(try WorkerAddress(parsing: text), shape: shape, deadline: options.expertTimeout))
            } catch {
                throw EngineError("--expert-workers: \(error.description)")
            }
        }
        return hosts
    }

    /// [layer][expert] share of routed tokens from a `switchyard profile` file, checked against the
    /// model at `modelPath`.
    public static func popularity(profile path: String, config: DecoderConfig) throws(EngineError) -> [[Double]] {
        let p: RoutingProfile
        do { p = try RoutingProfile(json: readJSON(path), file: path) } catch { throw EngineError(error.description) }
        guard p.modelType == config.modelType, p.counts.count == config.layerCount else {
            throw EngineError("\(path): a profile of a \(p.modelType) with \(p.counts.count) layers, not of this \(config.modelType)")
        }
        return p.counts.indices.map { p.shares(layer: $0) }
    }
}
