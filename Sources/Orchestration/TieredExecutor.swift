import Kernels
import Models
import SafeTensors
import WeightFiles
import SwitchyardJSON
import SwitchyardSupport

/// How the experts that are not resident on the accelerator are handled.
public enum ExpertPolicy: String, Sendable, CaseIterable {
    /// Per layer and step, run each where its weights are or copy it to the accelerator, whichever
    /// gives the layer the smallest makespan with CPU work, accelerator work, copies and disk reads
    /// overlapped; cache and prefetch.
    case scheduled
    /// Always run them on the CPU (cache and prefetch for the disk tier still work).
    case cpu
    /// Always copy them to the accelerator and run them there.
    case copy
    /// The baseline: a fixed placement filling the budgets; an expert missing from RAM is read
    /// from disk when needed into one buffer and run on the CPU; no cache, no prefetch.
    case naive
}

/// Budgets and choices of tiered execution.
public struct TierOptions: Sendable {
    /// Host RAM for weights, KV cache and work memory (`--ram-budget`); experts that do not fit are
    /// read from the model files when needed. Nil: every weight stays memory-mapped.
    public var ramBudget: Int?
    /// Host memory the budget must also hold besides weights (the KV cache, work buffers).
    public var reservedHostBytes = 0
    public var policy: ExpertPolicy = .scheduled
    /// [layer][expert] share of routed tokens from a routing profile; popular experts are pinned in
    /// fast memory first. Uniform when nil.
    public var popularity: [[Double]]?
    /// Share of each tier's room for experts that is pinned (the rest is the expert cache). Without
    /// a routing profile the RAM tier pins nothing: every expert read from disk passes through its
    /// cache anyway, which learns the popular ones. The accelerator pins this share regardless,
    /// since decode rarely pays for a copy and an empty cache would leave it idle.
    public var pinnedFraction = 0.5
    public var prefetch = true
    /// Where measured cost tables are cached, and whether to measure again.
    public var costDirectory = CostModel.defaultDirectory
    public var recalibrate = false
    /// One JSON line per MoE layer per step.
    public var tracePath: String?

    public init() {}
}

/// What tiered execution did: for `--json` output and the benchmarks.
public struct TierStatistics: Sendable {
    public var steps = 0
    public var tokens = 0
    public var cpuRuns = 0, acceleratorRuns = 0
    public var diskBytesRead = 0
    public var bytesCopied = 0
    /// Lookups of experts that are not pinned: found in the fast tier's cache or not.
    public var cacheHits = 0, cacheMisses = 0
    /// Experts of a layer that the previous layer's prediction named, and those it missed.
    public var predictionHits = 0, predictionMisses = 0
    /// Experts pushed out of a cache to make room.
    public var cacheEvictions = 0
    /// Experts brought in by prefetch, and how many of them were used before being evicted.
    public var prefetchLoads = 0, prefetchUsed = 0
    /// The expert sections of all MoE layers: the scheduler's predicted makespans and the time taken.
    public var predictedSeconds = 0.0, measuredSeconds = 0.0

    public var cacheHitRate: Double { ratio(cacheHits, cacheHits + cacheMisses) }
    public var predictionHitRate: Double { ratio(predictionHits, predictionHits + predictionMisses) }

    private func ratio(_ a: Int, _ b: Int) -> Double { b > 0 ? Double(a) / Double(b) : 0 }

    public var json: JSONValue {
        var o = JSONObject()
        o["steps"] = .int(steps)
        o["tokens"] = .int(tokens)
        o["cpu_expert_runs"] = .int(cpuRuns)
        o["accelerator_expert_runs"] = .int(acceleratorRuns)
        o["disk_bytes_read"] = .int(diskBytesRead)
        o["bytes_copied_to_accelerator"] = .int(bytesCopied)
        o["cache_hits"] = .int(cacheHits)
        o["cache_misses"] = .int(cacheMisses)
        o["cache_hit_rate"] = .double(cacheHitRate)
        o["cache_evictions"] = .int(cacheEvictions)
        o["prediction_hits"] = .int(predictionHits)
        o["prediction_misses"] = .int(predictionMisses)
        o["prediction_hit_rate"] = .double(predictionHitRate)
        o["prefetch_loads"] = .int(prefetchLoads)
        o["prefetch_used"] = .int(prefetchUsed)
        o["predicted_expert_seconds"] = .double(predictedSeconds)
        o["measured_expert_seconds"] = .double(measuredSeconds)
        return .object(o)
    }
}

/// Where an expert's weights live between steps.
enum ExpertHome {
    case acceleratorPinned(FeedForwardWeights)
    case ramPinned(FeedForwardWeights)
    /// In the model files only; `ranges` are the three matrices' (file, offset, bytes).
    case disk([(file: Int, offset: Int, bytes: Int)])
}

/// What the scheduler decided for one expert of a layer.
public enum ExpertAction: String, Sendable {
    case accelerator          // resident there: run there
    case cpu                  // in RAM: run on the CPU
    case copyToAccelerator    // in RAM: copy, then run on the accelerator
    case readThenCPU          // on disk: read into RAM, run on the CPU
    case readThenCopy         // on disk: read into RAM, copy, run on the accelerator
}

/// Where an expert is when a layer needs it.
public enum ExpertLocation: String, Sendable { case accelerator, ram, disk }

/// The per-layer scheduler: a pure function of token counts, locations and measured costs, so it
/// can be tested and so `plan`-style predictions use the same rule as execution.
public enum LayerScheduler {
    public struct Decision: Sendable {
        public var actions: [ExpertAction]
        /// When each resource would finish: the layer's predicted makespan is the largest.
        public var cpu = 0.0, accelerator = 0.0, link = 0.0, disk = 0.0
        public var makespan: Double { max(cpu, accelerator, link, disk) }
    }

    /// - Parameter copySlots: how many experts the accelerator's cache can take this layer.
    public static func decide(
        tokens: [Int], locations: [ExpertLocation], costs: CostModel, policy: ExpertPolicy,
        hasAccelerator: Bool, copySlots: Int
    ) -> Decision {
        var d = Decision(actions: Array(repeating: .cpu, count: tokens.count))
        var slots = copySlots
        // Largest first: the big decisions are made while every resource is still free.
        let order = tokens.indices.sorted { tokens[$0] > tokens[$1] || (tokens[$0] == tokens[$1] && $0 < $1) }
        for i in order {
            let n = tokens[i]
            let c = costs.cpu(tokens: n)
            switch locations[i] {
            case .accelerator:
                d.actions[i] = .accelerator
                d.accelerator += costs.accelerator(tokens: n)
                continue
            case .ram, .disk:
                break
            }
            let onDisk = locations[i] == .disk
            if policy == .naive {
                // Read, then compute, one after the other on the CPU's timeline.
                d.cpu += (onDisk ? costs.diskSeconds : 0) + c
                d.disk = max(d.disk, d.cpu)
                d.actions[i] = onDisk ? .readThenCPU : .cpu
                continue
            }
            let ready = onDisk ? d.disk + costs.diskSeconds : 0
            var viaCPU = d
            viaCPU.disk = onDisk ? ready : d.disk
            viaCPU.cpu = max(d.cpu, ready) + c
            viaCPU.actions[i] = onDisk ? .readThenCPU : .cpu
            var viaCopy = viaCPU
            let canCopy = hasAccelerator && slots > 0
            if canCopy {
                viaCopy = d
                viaCopy.disk = onDisk ? ready : d.disk
                viaCopy.link = max(d.link, ready) + costs.copySeconds
                viaCopy.accelerator = max(d.accelerator, viaCopy.link) + costs.accelerator(tokens: n)
                viaCopy.actions[i] = onDisk ? .readThenCopy : .copyToAccelerator
            }
            let copy: Bool
            switch policy {
            case .copy: copy = canCopy
            case .scheduled: copy = canCopy && viaCopy.makespan < viaCPU.makespan
            case .cpu, .naive: copy = false
            }
            d = copy ? viaCopy : viaCPU
            if copy { slots -= 1 }
        }
        return d
    }
}

/// Runs the routed experts of a model across the accelerator (emulated), host RAM and the disk,
/// under budgets: places them (pinned popular experts, caches for the rest), measures costs, and at
/// every MoE layer of every step schedules, copies, reads, prefetches and computes.
public final class TieredExecutor: ExpertExecutor, @unchecked Sendable {
    public let options: TierOptions
    public let costs: CostModel
    public let accelerator: EmulatedAccelerator?
    unowned let model: Model
    let reader: DirectReader?
    var homes: [[ExpertHome]]
    let acceleratorCache: ExpertCache?
    let ramCache: ExpertCache?
    /// The naive policy's single buffer for an expert read on demand.
    let staging: UnsafeMutableRawPointer?
    /// Several reads in flight (an expert's three matrices go to different queues): drives serve
    /// several requests at once faster than one (this machine's: 1.0 GB/s with one, 1.5 with four).
    let diskQueues = (0..<4).map { _ in SerialQueue() }
    private var nextDiskQueue = 0
    /// Placement, for `info`-style reports: tensors and experts on each tier.
    public private(set) var placement = PlacementSummary()
    public private(set) var statistics = TierStatistics()

    private var step = 0
    /// Bytes the copy engine had moved when placement was done (weights moved in at load).
    private var copiedAtLoad = 0
    private var predictions: [Int: [Int: Int]] = [:]  // layer → expert → predicted tokens
    private let cpuScratch = FloatBuffer(), acceleratorScratch = FloatBuffer(), routerScratch = FloatBuffer()
    private var trace: UnsafeMutablePointer<FILE>?
    private var owned: [UnsafeMutableRawPointer] = []
    /// For a read that finds no cache slot at all (every slot busy): one buffer, made when first needed.
    private var overflow: UnsafeMutableRawPointer?

    public struct PlacementSummary: Sendable {
        public var acceleratorTensorBytes = 0, acceleratorPinnedExperts = 0, acceleratorCacheSlots = 0
        public var ramAlwaysBytes = 0, ramPinnedExperts = 0, ramCacheSlots = 0
        public var diskExperts = 0
        public var expertBytes = 0

        public var json: JSONValue {
            var o = JSONObject()
            o["accelerator_tensor_bytes"] = .int(acceleratorTensorBytes)
            o["accelerator_pinned_experts"] = .int(acceleratorPinnedExperts)
            o["accelerator_cache_slots"] = .int(acceleratorCacheSlots)
            o["ram_always_bytes"] = .int(ramAlwaysBytes)
            o["ram_pinned_experts"] = .int(ramPinnedExperts)
            o["ram_cache_slots"] = .int(ramCacheSlots)
            o["disk_experts"] = .int(diskExperts)
            o["expert_bytes"] = .int(expertBytes)
            return .object(o)
        }
    }

    /// Places `model`'s weights under `options`' budgets and takes over its routed experts.
    /// - Parameter accelerator: the emulated device whose memory holds what fits (the model's device
    ///   must be a `TieredDevice` over it for dense work to run there).
    public init(model: Model, accelerator: EmulatedAccelerator?, options: TierOptions) throws(OrchestrationError) {
        self.model = model
        self.options = options
        self.accelerator = accelerator
        let config = model.config
        let moeLayers = config.feedForward.indices.filter { config.feedForward[$0].moe != nil }
        func experts(_ layer: Int) -> [FeedForwardWeights] {
            if case .mixtureOfExperts(let m) = model.weights.layers[layer].feedForward { return m.experts }
            return []
        }
        // Every routed expert of a model has the same shapes; a dense model has none to place.
        let sample = moeLayers.first.map { experts($0)[0] }
        let expertBytes = sample.map(TieredExecutor.bytes) ?? 0
        let topK = config.feedForward.compactMap { $0.moe?.expertsPerToken }.max() ?? 1
        placement.expertBytes = expertBytes

        if options.ramBudget != nil {
            guard model.quantization == nil else {
                throw OrchestrationError("--ram-budget reads experts from the model files as stored, so it cannot be combined with --quantize")
            }
            guard let checkpoint = model.checkpoint else {
                throw OrchestrationError("--ram-budget reads experts from the model files, so it cannot be combined with --random-weights")
            }
            do { reader = try DirectReader(files: checkpoint.files.map(\.mapping)) } catch { throw OrchestrationError(error.description) }
        } else {
            reader = nil
        }

        // Everything every token touches goes to the accelerator first, as far as it fits; the rest
        // (all of it without an accelerator) counts against host RAM.
        var alwaysHost = 0
        var acceleratorTensors = 0
        do {
            try model.place({ (w: inout DecoderWeights) throws(ModelError) in
                func moveIn(_ m: inout WeightMatrix) {
                    let bytes = m.rows * m.rowBytes
                    guard let accelerator, let target = accelerator.allocate(bytes) else { alwaysHost += bytes; return }
                    accelerator.copy(m.data, to: target, bytes: bytes).wait()
                    dropPages(m.data, bytes)
                    m = m.moved(to: target)
                    acceleratorTensors += bytes
                }
                func moveIn(_ f: inout FeedForwardWeights) { moveIn(&f.gate); moveIn(&f.up); moveIn(&f.down) }
                for l in w.layers.indices {
                    moveIn(&w.layers[l].attention.query); moveIn(&w.layers[l].attention.key)
                    moveIn(&w.layers[l].attention.value); moveIn(&w.layers[l].attention.output)
                    switch w.layers[l].feedForward {
                    case .dense(var f):
                        moveIn(&f)
                        w.layers[l].feedForward = .dense(f)
                    case .mixtureOfExperts(var m):
                        // Routers stay on the host: routing decisions are made there.
                        alwaysHost += m.router.rows * m.router.rowBytes
                        if var s = m.sharedExpert { moveIn(&s); m.sharedExpert = s }
                        if let g = m.sharedExpertGate { alwaysHost += g.rows * g.rowBytes }
                        w.layers[l].feedForward = .mixtureOfExperts(m)
                    }
                }
                // A tied output head is the embedding, whose lookups happen on the host.
                if !config.tieWordEmbeddings { moveIn(&w.lmHead) }
            }, executor: nil)
        } catch {
            throw OrchestrationError(error.description)
        }
        alwaysHost += model.weights.embedding.rows * model.weights.embedding.rowBytes
        // What the moved tensors take in the accelerator's memory, alignment included.
        placement.acceleratorTensorBytes = acceleratorTensors > 0 ? accelerator?.used ?? 0 : 0
        placement.ramAlwaysBytes = alwaysHost

        if let sample {
            costs = try TieredExecutor.calibrate(
                model: model, sample: sample, expertBytes: expertBytes, accelerator: accelerator, reader: reader,
                layers: moeLayers.map(experts), options: options)
        } else {
            costs = CostModel(key: "no experts", tokenCounts: [1], cpuSeconds: [0], acceleratorSeconds: [], copyBytesPerSecond: 0,
                              diskBytesPerSecond: 0, expertBytes: 0)
        }

        // Experts, most popular first; equal shares alternate layers so no layer is left all slow.
        var order: [ExpertKey] = []
        for l in moeLayers { for e in experts(l).indices { order.append(ExpertKey(layer: l, expert: e)) } }
        let share: (ExpertKey) -> Double = { k in options.popularity?[k.layer][k.expert] ?? 1 }
        order.sort { a, b in
            let sa = share(a), sb = share(b)
            if sa != sb { return sa > sb }
            return (a.expert, a.layer) < (b.expert, b.layer)
        }
        var remaining = order[...]
        homes = config.feedForward.indices.map { l in experts(l).map { _ in ExpertHome.disk([]) } }

        let pinnedFraction = options.policy == .naive || options.policy == .cpu ? 1.0 : options.pinnedFraction
        if let accelerator, let sample {
            let slotBytes = TieredExecutor.compactBytes(sample)
            let room = accelerator.available / slotBytes
            let pinned = min(remaining.count, Int((Double(room) * pinnedFraction).rounded(.down)))
            for key in remaining.prefix(pinned) {
                var f = experts(key.layer)[key.expert]
                let target = accelerator.allocate(slotBytes)!
                TieredExecutor.copyCompact(f, to: target, accelerator: accelerator, after: []).wait()
                for m in [f.gate, f.up, f.down] { dropPages(m.data, m.rows * m.rowBytes) }
                f = TieredExecutor.compactLayout(f, at: target)
                homes[key.layer][key.expert] = .acceleratorPinned(f)
            }
            remaining = remaining.dropFirst(pinned)
            var slots: [UnsafeMutableRawPointer] = []
            while slots.count < min(room - pinned, remaining.count), let slot = accelerator.allocate(slotBytes) { slots.append(slot) }
            acceleratorCache = slots.isEmpty ? nil : ExpertCache(slots: slots, transientSlots: topK)
            placement.acceleratorPinnedExperts = pinned
            placement.acceleratorCacheSlots = slots.count
        } else {
            acceleratorCache = nil
        }

        if let budget = options.ramBudget {
            let always = alwaysHost + options.reservedHostBytes
            let slotBytes = sample.map(TieredExecutor.spanBytes) ?? 0
            guard budget >= always + slotBytes else {
                throw OrchestrationError("--ram-budget \(formatBytes(budget)) is too small: what every token touches (\(formatBytes(alwaysHost)) of weights) and the KV cache and work memory (\(formatBytes(options.reservedHostBytes))) take \(formatBytes(always)), and at least one expert (\(formatBytes(slotBytes))) must fit beside them")
            }
            var room = slotBytes > 0 ? (budget - always) / slotBytes : 0
            var pinned = 0
            if options.policy == .naive {
                room -= 1
                pinned = min(remaining.count, room)
            } else {
                let fraction = options.popularity == nil && options.policy != .cpu ? 0 : pinnedFraction
                pinned = min(remaining.count, Int((Double(room) * fraction).rounded(.down)))
                if pinned == room && pinned > 0 && pinned < remaining.count { pinned -= 1 }  // keep a cache slot
            }
            for key in remaining.prefix(pinned) { homes[key.layer][key.expert] = .ramPinned(experts(key.layer)[key.expert]) }
            remaining = remaining.dropFirst(pinned)
            for key in remaining {
                let f = experts(key.layer)[key.expert]
                var ranges: [(file: Int, offset: Int, bytes: Int)] = []
                for m in [f.gate, f.up, f.down] {
                    let bytes = m.rows * m.rowBytes
                    guard let place = reader!.location(of: m.data, bytes: bytes) else {
                        throw OrchestrationError("layer \(key.layer) expert \(key.expert): its weights are not in the model files")
                    }
                    ranges.append((place.file, place.offset, bytes))
                }
                homes[key.layer][key.expert] = .disk(ranges)
            }
            placement.ramPinnedExperts = pinned
            placement.diskExperts = remaining.count
            if options.policy == .naive {
                staging = remaining.isEmpty ? nil : TieredExecutor.allocateAligned(slotBytes)
                ramCache = nil
            } else {
                staging = nil
                var slots: [UnsafeMutableRawPointer] = []
                for _ in 0..<min(room - pinned, remaining.count) { slots.append(TieredExecutor.allocateAligned(slotBytes)) }
                ramCache = ExpertCache(slots: slots, transientSlots: topK)
                placement.ramCacheSlots = slots.count
            }
        } else {
            for key in remaining { homes[key.layer][key.expert] = .ramPinned(experts(key.layer)[key.expert]) }
            placement.ramPinnedExperts = remaining.count
            staging = nil
            ramCache = nil
        }
        owned = (ramCache?.slots ?? []) + (staging.map { [$0] } ?? [])

        copiedAtLoad = accelerator?.bytesCopied ?? 0
        if let path = options.tracePath {
            guard let file = fopen(path, "w") else {
                throw OrchestrationError("\(path): cannot write the trace: \(errorText())")
            }
            trace = file
        }
        do {
            try model.place({ (_: inout DecoderWeights) throws(ModelError) in }, executor: self)
        } catch {
            throw OrchestrationError(error.description)
        }
    }

    deinit {
        for q in diskQueues { q.stop() }
        if let trace { fclose(trace) }
        for p in owned { free(p) }
    }

    /// Placement, measured costs and statistics, as one JSON object.
    public var report: JSONValue {
        var o = JSONObject()
        o["policy"] = .string(options.policy.rawValue)
        o["ram_budget"] = options.ramBudget.map { .int($0) } ?? .null
        o["accelerator_memory"] = accelerator.map { .int($0.capacity) } ?? .null
        o["placement"] = placement.json
        o["costs"] = costs.json
        o["statistics"] = statistics.json
        return .object(o)
    }

    // MARK: Step

    public func beginStep(tokens: Int) {
        step += 1
        statistics.steps += 1
        statistics.tokens += tokens
    }

    public func endStep() {
        if let trace { fflush(trace) }
        statistics.diskBytesRead = reader?.bytesRead ?? 0
        statistics.bytesCopied = (accelerator?.bytesCopied ?? copiedAtLoad) - copiedAtLoad
        statistics.cacheEvictions = (ramCache?.evictions ?? 0) + (acceleratorCache?.evictions ?? 0)
    }

    /// One expert's state in the layer being run.
    private struct Slotted {
        var weights: FeedForwardWeights?
        var ready: [Completion] = []
        var location: ExpertLocation
        var cache = "pinned"
        var prefetch = "none"
        var action = ExpertAction.cpu
        var ranges: [(file: Int, offset: Int, bytes: Int)] = []
    }

    public func runExperts(layer: Int, tasks: [ExpertTask], input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                           layerInput: UnsafePointer<Float>, tokens: Int) {
        let started = ContinuousClock.now
        let hidden = model.config.hiddenSize
        let keys = tasks.map { ExpertKey(layer: layer, expert: $0.expert) }
        let protected = Set(keys)
        let predicted = predictions.removeValue(forKey: layer)

        var states: [Slotted] = []
        for (task, key) in zip(tasks, keys) {
            var s: Slotted
            switch homes[layer][task.expert] {
            case .acceleratorPinned(let f): s = Slotted(weights: f, location: .accelerator)
            case .ramPinned(let f): s = Slotted(weights: f, location: .ram)
            case .disk(let ranges): s = Slotted(weights: nil, location: .disk, ranges: ranges)
            }
            if case .acceleratorPinned = homes[layer][task.expert] {} else {
                acceleratorCache?.record(key, step: step)
                if s.location == .disk { ramCache?.record(key, step: step) }
                if let entry = acceleratorCache?.lookup(key) {
                    s.weights = entry.weights; s.location = .accelerator; s.ready = [entry.ready]; s.cache = "hit"
                    if entry.prefetched { entry.prefetched = false; statistics.prefetchUsed += 1 }
                } else if s.location == .disk, let entry = ramCache?.lookup(key) {
                    s.weights = entry.weights; s.location = .ram; s.ready = [entry.ready]; s.cache = "hit"
                    if entry.prefetched { entry.prefetched = false; statistics.prefetchUsed += 1 }
                } else if s.location == .disk || (acceleratorCache != nil && options.policy != .cpu) {
                    s.cache = "miss"
                }
                if s.cache == "hit" { statistics.cacheHits += 1 } else if s.cache == "miss" { statistics.cacheMisses += 1 }
            }
            if let predicted {
                let hit = predicted[task.expert] != nil
                s.prefetch = hit ? "hit" : "miss"
                if hit { statistics.predictionHits += 1 } else { statistics.predictionMisses += 1 }
            }
            states.append(s)
        }

        let decision = LayerScheduler.decide(
            tokens: tasks.map(\.tokens), locations: states.map(\.location), costs: costs, policy: options.policy,
            hasAccelerator: accelerator != nil, copySlots: acceleratorCache?.capacity ?? 0)
        for i in states.indices { states[i].action = decision.actions[i] }

        let maxTokens = tasks.map(\.tokens).max() ?? 0
        let inner = tasks.isEmpty ? 0 : expertInner(layer)
        cpuScratch.reserve(2 * maxTokens * inner)
        acceleratorScratch.reserve(2 * maxTokens * inner)

        // Disk reads first (they are the slowest), then copies, then accelerator kernels; the CPU's
        // share runs here meanwhile.
        var layerReads: [Completion] = []
        for i in states.indices where states[i].action == .readThenCPU || states[i].action == .readThenCopy {
            guard options.policy != .naive else { continue }
            if let (entry, ready) = startRead(keys[i], ranges: states[i].ranges, protected: protected, prefetched: false) {
                states[i].weights = entry.weights
                states[i].ready = [ready]
                layerReads.append(ready)
            } else {
                states[i].action = .readThenCPU  // read synchronously below
            }
        }
        var acceleratorDone: [Completion] = []
        for i in states.indices {
            let task = tasks[i]
            switch states[i].action {
            case .copyToAccelerator, .readThenCopy:
                guard let source = states[i].weights,
                      let entry = startCopy(keys[i], from: source, after: states[i].ready, protected: protected, prefetched: false) else {
                    states[i].action = states[i].action == .readThenCopy ? .readThenCPU : .cpu
                    continue
                }
                states[i].weights = entry.weights
                states[i].ready = [entry.ready]
                fallthrough
            case .accelerator:
                let weights = states[i].weights!
                acceleratorDone.append(launchOnAccelerator(weights, task: task, input: input, output: output, hidden: hidden, after: states[i].ready))
                statistics.acceleratorRuns += 1
            case .cpu, .readThenCPU:
                break
            }
        }

        let layerFits = states.allSatisfy { $0.weights != nil || ($0.action != .readThenCPU && $0.action != .readThenCopy) }
        if options.prefetch && options.policy != .naive && layerFits {
            prefetchNextLayer(after: layer, layerInput: layerInput, tokens: tokens, protected: protected, behind: layerReads,
                              diskIdle: decision.makespan - decision.disk, linkIdle: decision.makespan - decision.link)
        }

        // The CPU's share: experts at hand first, then those still waiting for a cache slot, which
        // get the slots of experts this layer has finished with (a layer may need more experts
        // than the cache has slots: they stream through it).
        let cpuTasks = states.indices.filter { states[$0].action == .cpu || states[$0].action == .readThenCPU }
        let order = cpuTasks.filter { states[$0].weights != nil } + cpuTasks.filter { states[$0].weights == nil }
        var stillNeeded = protected
        for i in order {
            if options.policy != .naive {
                for j in order where states[j].weights == nil {
                    guard let (entry, ready) = startRead(keys[j], ranges: states[j].ranges, protected: stillNeeded, prefetched: false) else { break }
                    states[j].weights = entry.weights
                    states[j].ready = [ready]
                }
            }
            let task = tasks[i]
            // The naive policy, or no slot at all: read now into the staging buffer.
            let weights = states[i].weights ?? readNow(keys[i], states[i].ranges)
            for c in states[i].ready { c.wait() }
            let scratch = cpuScratch.pointer
            feedForward(weights, input: input + task.firstRow * hidden, output: output + task.firstRow * hidden, tokens: task.tokens,
                        gate: scratch, up: scratch + task.tokens * inner, pool: model.pool, precision: model.device.precision)
            statistics.cpuRuns += 1
            stillNeeded.remove(keys[i])
        }
        for c in acceleratorDone { c.wait() }

        let measured = (ContinuousClock.now - started).seconds
        statistics.predictedSeconds += decision.makespan
        statistics.measuredSeconds += measured
        if let trace {
            var o = JSONObject()
            o["step"] = .int(step)
            o["layer"] = .int(layer)
            o["tokens"] = .int(tokens)
            o["experts"] = .array(zip(tasks, states).map { task, s in
                var e = JSONObject()
                e["expert"] = .int(task.expert)
                e["tokens"] = .int(task.tokens)
                e["weights"] = .string(s.location.rawValue)
                e["ran"] = .string(s.action == .accelerator || s.action == .copyToAccelerator || s.action == .readThenCopy ? "accelerator" : "cpu")
                e["action"] = .string(s.action.rawValue)
                e["cache"] = .string(s.cache)
                e["prefetch"] = .string(s.prefetch)
                return .object(e)
            })
            o["predicted_ms"] = .double(decision.makespan * 1e3)
            o["predicted_cpu_ms"] = .double(decision.cpu * 1e3)
            o["predicted_accelerator_ms"] = .double(decision.accelerator * 1e3)
            o["predicted_copy_ms"] = .double(decision.link * 1e3)
            o["predicted_disk_ms"] = .double(decision.disk * 1e3)
            o["measured_ms"] = .double(measured * 1e3)
            fputs(JSONValue.object(o).serialized() + "\n", trace)
        }
    }

    private func expertInner(_ layer: Int) -> Int {
        model.config.feedForward[layer].moe!.expertIntermediateSize
    }

    private func launchOnAccelerator(_ weights: FeedForwardWeights, task: ExpertTask, input: UnsafePointer<Float>,
                                     output: UnsafeMutablePointer<Float>, hidden: Int, after: [Completion]) -> Completion {
        let accelerator = accelerator!
        let scratch = acceleratorScratch.pointer
        let inner = weights.intermediateSize
        let precision = model.device.precision
        nonisolated(unsafe) let input = input + task.firstRow * hidden, output = output + task.firstRow * hidden
        return accelerator.launch(after: after) {
            feedForward(weights, input: input, output: output, tokens: task.tokens,
                        gate: scratch, up: scratch + task.tokens * inner, pool: accelerator.pool, precision: precision)
        }
    }

    /// Starts reading an expert from disk into a RAM cache slot. Nil when no slot can be had.
    private func startRead(_ key: ExpertKey, ranges: [(file: Int, offset: Int, bytes: Int)], protected: Set<ExpertKey>,
                           prefetched: Bool, after: [Completion] = []) -> (CacheEntry, Completion)? {
        // A guess must not push out an expert this step has already needed.
        guard let cache = ramCache,
              let (slot, pointer) = cache.insert(key, step: step, protected: protected, keepUsedSince: prefetched ? step : nil) else { return nil }
        let reader = reader!
        let layout = TieredExecutor.spanOffsets(ranges.map(\.bytes))
        // The matrices' positions inside the slot depend on their alignment in the file, known
        // before the read: the weights can be described now and filled by the disk queue.
        let a = DirectReader.alignment
        var shapes = sampleShapes(key)
        for (i, r) in ranges.enumerated() { shapes[i] = shapes[i].moved(to: pointer + layout[i] + (r.offset - r.offset / a * a)) }
        let ready = Completion(parts: ranges.count)
        for (i, r) in ranges.enumerated() {
            nextDiskQueue = (nextDiskQueue + 1) % diskQueues.count
            diskQueues[nextDiskQueue].submit(after: after) {
                do throws(WeightFileError) { _ = try reader.read(file: r.file, offset: r.offset, bytes: r.bytes, into: pointer + layout[i]) } catch { fail(OrchestrationError(error.description)) }
                ready.signal()
            }
        }
        let entry = CacheEntry(key: key, slot: slot, weights: FeedForwardWeights(gate: shapes[0], up: shapes[1], down: shapes[2]), ready: ready)
        entry.prefetched = prefetched
        cache.store(entry)
        return (entry, ready)
    }

    /// Starts copying an expert into an accelerator cache slot after `after`. Nil when no slot can be had.
    private func startCopy(_ key: ExpertKey, from source: FeedForwardWeights, after: [Completion], protected: Set<ExpertKey>,
                           prefetched: Bool) -> CacheEntry? {
        guard let accelerator, let cache = acceleratorCache,
              let (slot, pointer) = cache.insert(key, step: step, protected: protected, keepUsedSince: prefetched ? step : nil) else { return nil }
        let done = TieredExecutor.copyCompact(source, to: pointer, accelerator: accelerator, after: after)
        if let ramEntry = ramCache?.lookup(key) { ramEntry.readers = done }
        let entry = CacheEntry(key: key, slot: slot, weights: TieredExecutor.compactLayout(source, at: pointer), ready: done)
        entry.prefetched = prefetched
        cache.store(entry)
        return entry
    }

    /// Reads an expert into the staging buffer, now.
    private func readNow(_ key: ExpertKey, _ ranges: [(file: Int, offset: Int, bytes: Int)]) -> FeedForwardWeights {
        if staging == nil && overflow == nil {
            overflow = TieredExecutor.allocateAligned(TieredExecutor.spanBytes(ranges.map(\.bytes)))
            owned.append(overflow!)
        }
        let buffer = staging ?? overflow
        let layout = TieredExecutor.spanOffsets(ranges.map(\.bytes))
        var matrices: [WeightMatrix] = []
        for (i, r) in ranges.enumerated() {
            let start: Int
            do throws(WeightFileError) { start = try reader!.read(file: r.file, offset: r.offset, bytes: r.bytes, into: buffer! + layout[i]) } catch { fail(OrchestrationError(error.description)) }
            matrices.append(sampleShapes(key)[i].moved(to: buffer! + layout[i] + start))
        }
        return FeedForwardWeights(gate: matrices[0], up: matrices[1], down: matrices[2])
    }

    /// Predicts the next MoE layer's experts by applying its router to this layer's input, and
    /// starts bringing the missing ones closer: disk → RAM, and RAM → accelerator where the
    /// scheduler would copy them.
    /// A guess is fetched only when the whole transfer fits in time the drive or the link would
    /// otherwise sit idle in this layer (the scheduler's predicted makespan less their busy time):
    /// a wrong guess costs bandwidth, so where the drive is the bottleneck, guessing only slows what
    /// is certainly needed. For the same
    /// reason its reads wait for `behind` (this layer's own reads).
    private func prefetchNextLayer(after layer: Int, layerInput: UnsafePointer<Float>, tokens: Int, protected: Set<ExpertKey>,
                                   behind: [Completion], diskIdle: Double, linkIdle: Double) {
        var diskIdle = diskIdle, linkIdle = linkIdle
        let c = model.config
        guard let next = c.feedForward.indices.first(where: { $0 > layer && c.feedForward[$0].moe != nil }),
              let moe = c.feedForward[next].moe,
              case .mixtureOfExperts(let weights) = model.weights.layers[next].feedForward else { return }
        let hidden = c.hiddenSize
        routerScratch.reserve(tokens * moe.expertCount)
        let logits = routerScratch.pointer
        matmul(weights.router, input: layerInput, inputStride: hidden, output: logits, outputStride: moe.expertCount, tokens: tokens, pool: model.pool)
        var counts: [Int: Int] = [:]
        for t in 0..<tokens {
            let r = routeTopK(logits: logits + t * moe.expertCount, expertCount: moe.expertCount, k: moe.expertsPerToken, normalize: moe.normalizeTopK)
            for e in r.experts { counts[e, default: 0] += 1 }
        }
        predictions[next] = counts
        var keep = protected
        for (expert, n) in counts.sorted(by: { ($0.value, -$0.key) > ($1.value, -$1.key) }) {
            let key = ExpertKey(layer: next, expert: expert)
            keep.insert(key)
            if case .acceleratorPinned = homes[next][expert] { continue }
            if acceleratorCache?.lookup(key) != nil { continue }
            var source: FeedForwardWeights?
            var ready: [Completion] = []
            switch homes[next][expert] {
            case .ramPinned(let f): source = f
            case .disk(let ranges):
                if let entry = ramCache?.lookup(key) {
                    source = entry.weights; ready = [entry.ready]
                } else if diskIdle >= costs.diskSeconds, let (entry, done) = startRead(key, ranges: ranges, protected: keep, prefetched: true, after: behind) {
                    source = entry.weights; ready = [done]
                    statistics.prefetchLoads += 1
                    diskIdle -= costs.diskSeconds
                }
            case .acceleratorPinned: continue
            }
            guard let source, accelerator != nil, acceleratorCache != nil else { continue }
            let copy: Bool
            switch options.policy {
            case .copy: copy = true
            case .scheduled: copy = costs.copySeconds + costs.accelerator(tokens: n) < costs.cpu(tokens: n)
            case .cpu, .naive: copy = false
            }
            if copy, linkIdle >= costs.copySeconds, startCopy(key, from: source, after: ready, protected: keep, prefetched: true) != nil {
                statistics.prefetchLoads += 1
                linkIdle -= costs.copySeconds
            }
        }
    }

    /// One routed expert's matrices where they are stored (for their shapes).
    private func sampleShapes(_ key: ExpertKey) -> [WeightMatrix] {
        guard case .mixtureOfExperts(let m) = model.weights.layers[key.layer].feedForward else { preconditionFailure() }
        let f = m.experts[key.expert]
        return [f.gate, f.up, f.down]
    }

    // MARK: Layouts

    static func bytes(_ f: FeedForwardWeights) -> Int {
        [f.gate, f.up, f.down].reduce(0) { $0 + $1.rows * $1.rowBytes }
    }

    /// Accelerator slots: the three matrices back to back, 64-byte aligned.
    static func compactOffsets(_ f: FeedForwardWeights) -> [Int] {
        var offsets: [Int] = [], at = 0
        for m in [f.gate, f.up, f.down] {
            offsets.append(at)
            at = (at + m.rows * m.rowBytes + 63) & ~63
        }
        return offsets + [at]
    }

    static func compactBytes(_ f: FeedForwardWeights) -> Int { compactOffsets(f)[3] }

    static func compactLayout(_ f: FeedForwardWeights, at base: UnsafeMutableRawPointer) -> FeedForwardWeights {
        let o = compactOffsets(f)
        return FeedForwardWeights(gate: f.gate.moved(to: base + o[0]), up: f.up.moved(to: base + o[1]), down: f.down.moved(to: base + o[2]))
    }

    static func copyCompact(_ f: FeedForwardWeights, to base: UnsafeMutableRawPointer, accelerator: EmulatedAccelerator, after: [Completion]) -> Completion {
        let o = compactOffsets(f)
        var last = Completion(done: true)
        for (i, m) in [f.gate, f.up, f.down].enumerated() {
            last = accelerator.copy(m.data, to: base + o[i], bytes: m.rows * m.rowBytes, after: i == 0 ? after : [])
        }
        return last  // the copy engine runs in order: the last copy's completion covers all three
    }

    /// RAM slots for disk reads: each matrix gets its aligned span.
    static func spanOffsets(_ bytes: [Int]) -> [Int] {
        var offsets: [Int] = [], at = 0
        for b in bytes {
            offsets.append(at)
            at += DirectReader.span(b)
        }
        return offsets + [at]
    }

    static func spanBytes(_ bytes: [Int]) -> Int { spanOffsets(bytes).last! }
    static func spanBytes(_ f: FeedForwardWeights) -> Int { spanBytes([f.gate, f.up, f.down].map { $0.rows * $0.rowBytes }) }

    static func allocateAligned(_ bytes: Int) -> UnsafeMutableRawPointer {
        var raw: UnsafeMutableRawPointer?
        precondition(posix_memalign(&raw, DirectReader.alignment, bytes) == 0, "cannot allocate \(bytes) bytes")
        return raw!
    }

    // MARK: Calibration

    /// The cost table for this machine and expert shape: from the cache, or measured now.
    static func calibrate(
        model: Model, sample: FeedForwardWeights, expertBytes: Int, accelerator: EmulatedAccelerator?,
        reader: DirectReader?, layers: [[FeedForwardWeights]], options: TierOptions
    ) throws(OrchestrationError) -> CostModel {
        let hidden = model.config.hiddenSize, inner = sample.intermediateSize
        let key = "\(CostModel.machineDescription); cpu threads \(model.pool.threadCount); accelerator \(accelerator.map { "emulated, \(String($0.pool.threadCount)) threads" } ?? "none"); disk \(reader != nil ? "yes" : "no"); expert \(hidden)x\(inner) \(sample.gate.element), activations \(model.device.precision.rawValue)"
        if !options.recalibrate, let cached = CostModel.load(key: key, directory: options.costDirectory), cached.expertBytes == expertBytes {
            return cached
        }
        // A host copy of a sample expert to time kernels on: read from disk when there is a disk
        // tier (timing it), copied from the mapping otherwise.
        let ranges = [sample.gate, sample.up, sample.down].map { $0.rows * $0.rowBytes }
        let buffer = allocateAligned(spanBytes(ranges))
        defer { free(buffer) }
        let layout = spanOffsets(ranges)
        var matrices: [WeightMatrix] = []
        var diskRate = 0.0
        if let reader {
            var readBytes = 0, seconds = 0.0
            // Three experts from different layers, so no read is helped by the drive's read-ahead.
            let picks = [layers[0][0], layers[layers.count / 2][layers[0].count / 2], layers[layers.count - 1][layers[0].count - 1]]
            for (p, f) in picks.enumerated() {
                let started = ContinuousClock.now
                for (i, m) in [f.gate, f.up, f.down].enumerated() {
                    let bytes = m.rows * m.rowBytes
                    guard let place = reader.location(of: m.data, bytes: bytes) else {
                        throw OrchestrationError("an expert's weights are not in the model files")
                    }
                    let start: Int
                    do { start = try reader.read(file: place.file, offset: place.offset, bytes: bytes, into: buffer + layout[i]) } catch {
                        throw OrchestrationError(error.description)
                    }
                    if p == picks.count - 1 { matrices.append(m.moved(to: buffer + layout[i] + start)) }
                }
                seconds += (ContinuousClock.now - started).seconds
                readBytes += bytes(f)
            }
            diskRate = Double(readBytes) / seconds
        } else {
            for (i, m) in [sample.gate, sample.up, sample.down].enumerated() {
                (buffer + layout[i]).copyMemory(from: m.data, byteCount: m.rows * m.rowBytes)
                matrices.append(m.moved(to: buffer + layout[i]))
            }
        }
        let expert = FeedForwardWeights(gate: matrices[0], up: matrices[1], down: matrices[2])
        let counts = CostModel.measuredTokenCounts
        let largest = counts.last!
        let x = UnsafeMutablePointer<Float>.allocate(capacity: largest * hidden)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: largest * hidden)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * largest * inner)
        defer { x.deallocate(); y.deallocate(); scratch.deallocate() }
        for i in 0..<(largest * hidden) { x[i] = Float((i * 7919) % 1000) / 1000 - 0.5 }

        func time(_ body: () -> Void) -> Double {
            body()  // warm-up
            var best = Double.infinity
            for _ in 0..<3 {
                let started = ContinuousClock.now
                body()
                best = min(best, (ContinuousClock.now - started).seconds)
            }
            return best
        }
        let cpu = counts.map { n in
            time { feedForward(expert, input: x, output: y, tokens: n, gate: scratch, up: scratch + n * inner, pool: model.pool, precision: model.device.precision) }
        }
        var acceleratorSeconds: [Double] = []
        var copyRate = 0.0
        if let accelerator, accelerator.available >= compactBytes(expert) {
            let mark = accelerator.used
            let target = accelerator.allocate(compactBytes(expert))!
            let copySeconds = time { copyCompact(expert, to: target, accelerator: accelerator, after: []).wait() }
            copyRate = Double(expertBytes) / copySeconds
            let onDevice = compactLayout(expert, at: target)
            nonisolated(unsafe) let (xs, ys, ss) = (x, y, scratch)
            acceleratorSeconds = counts.map { n in
                time {
                    accelerator.launch {
                        feedForward(onDevice, input: xs, output: ys, tokens: n, gate: ss, up: ss + n * inner, pool: accelerator.pool, precision: model.device.precision)
                    }.wait()
                }
            }
            accelerator.release(to: mark)
        }
        let table = CostModel(key: key, tokenCounts: counts, cpuSeconds: cpu, acceleratorSeconds: acceleratorSeconds,
                              copyBytesPerSecond: copyRate, diskBytesPerSecond: diskRate, expertBytes: expertBytes)
        table.save(directory: options.costDirectory)
        return table
    }
}

extension WeightMatrix {
    func moved(to data: UnsafeRawPointer) -> WeightMatrix {
        WeightMatrix(element: element, rows: rows, columns: columns, data: data)
    }
}

/// A disk read failing after the files were validated (the file changed or the drive failed): the
/// forward pass cannot go on, so say what happened and stop, without a crash trace.
func fail(_ error: OrchestrationError) -> Never {
    let message = Array("error: \(error)\n".utf8)
    _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(1)
}
