import Kernels
import Models
import Runtime
import SwitchyardJSON
import SwitchyardSupport
import WeightFiles

/// Where an expert's weights live between steps.
enum ExpertHome {
    case acceleratorPinned(FeedForwardWeights)
    case ramPinned(FeedForwardWeights)
    /// In the model files only: its three matrices' byte ranges.
    case disk([FileRange])
    /// On expert host `i`.
    case remote(Int)

    var tier: Tier {
        switch self {
        case .acceleratorPinned: return .accelerator
        case .ramPinned: return .ram
        case .disk: return .disk
        case .remote: return .remote
        }
    }
}

/// A transfer the executor started (a disk read of an expert, a copy of one matrix), kept until it
/// finishes so the cost model can learn the link's rate from it.
struct Movement {
    enum Link { case disk, copy }
    let done: Completion
    let bytes: Int
    let link: Link
}

/// Bytes of one weight file.
struct FileRange {
    let file: Int, offset: Int, bytes: Int
}

/// Runs the routed experts of a model across an accelerator, host RAM and the disk, under budgets:
/// places the weights (`ExpertPlacement`), measures costs, and at every MoE layer of every step
/// schedules (`LayerScheduler`), copies, reads, prefetches and computes. It holds `any Accelerator`
/// and never names a device.
public final class TieredExecutor: ExpertExecutor, @unchecked Sendable {
    public let options: TierOptions
    /// Measured at first use, then corrected by what every layer measures (`CostModel.learn`).
    public internal(set) var costs: CostModel
    public let accelerator: (any Accelerator)?
    /// Where everything lives: the same placement `plan` computes for these budgets.
    public let placement: ExpertPlacement
    public let footprint: ModelFootprint
    /// The weights as placed (what every token touches moved to the accelerator where it fit):
    /// the model computes with these.
    public let weights: DecoderWeights
    let config: DecoderConfig
    let cpu: CPUDevice
    let reader: DirectReader?
    /// The spill file of experts rearranged at load that the disk tier reads (unlinked once open).
    private(set) var spillFile: MappedFile?
    var homes: [[ExpertHome]]
    let acceleratorCache: ExpertCache?
    let ramCache: ExpertCache?
    /// The caches' slots: offsets in the accelerator's memory, host buffers for reads.
    let acceleratorSlots: [Int]
    let ramSlots: [UnsafeMutableRawPointer]
    /// The naive policy's single buffer for an expert read on demand.
    let staging: UnsafeMutableRawPointer?
    /// Several reads in flight (an expert's three matrices go to different queues): drives serve
    /// several requests at once faster than one.
    let diskQueues = (0..<4).map { _ in SerialQueue() }
    var nextDiskQueue = 0
    public internal(set) var statistics = TierStatistics()
    public var summary: PlacementSummary { PlacementSummary(placement, footprint: footprint) }

    var step = 0
    /// Bytes the copy engine had moved when placement was done (weights moved in at load).
    private var copiedAtLoad = 0
    var predictions: [Int: [Int: Int]] = [:]  // layer → expert → predicted tokens
    /// Transfers not yet learned from.
    var movements: [Movement] = []
    /// Observations in the cost table when it was loaded (more at the end: save what was learned).
    private var observationsAtLoad = 0
    let cpuScratch = FloatBuffer(), routerScratch = FloatBuffer()
    private var trace: UnsafeMutablePointer<FILE>?
    /// For a read that finds no cache slot at all (every slot busy): one buffer, made when first needed.
    var overflow: UnsafeMutableRawPointer?
    /// Host weights copied out of the files (`TierOptions.copyHostWeights`).
    private var hostCopies: HostBuffer?
    /// Expert hosts, the home each remote expert would have here (where it goes when its host is
    /// lost), and the hosts lost so far.
    public let hosts: [any ExpertHost]
    var localHomes: [ExpertKey: ExpertHome] = [:]
    var lostHosts = Set<Int>()
    /// Where notes go (a host lost): the command's stderr.
    public var notes: ((String) -> Void)?

    /// Places `loaded`'s weights under `options`' budgets, on `accelerator` where given.
    /// - Parameter cpu: the host device experts run on (its pool, precision and kernel tuning).
    /// - Parameter hosts: expert hosts to place experts on (connected).
    public init(_ loaded: LoadedModel, cpu: CPUDevice, accelerator: (any Accelerator)?, options: TierOptions,
                hosts: [any ExpertHost] = []) throws(OrchestrationError) {
        self.options = options
        self.accelerator = accelerator
        self.hosts = hosts
        self.cpu = cpu
        config = loaded.config
        footprint = ModelFootprint(weights: loaded.weights, config: config)
        let placement = try ExpertPlacement.place(
            footprint, options.budgets(acceleratorMemory: accelerator?.capacity, acceleratorUsed: accelerator?.used ?? 0))
        self.placement = placement
        // Experts rearranged at load (GPT-OSS's) that the placement puts on disk: written to a spill
        // file the disk tier reads, their memory released.
        var spilled: [ExpertKey: FeedForwardWeights] = [:]
        if options.ramBudget != nil {
            guard loaded.quantization == nil else {
                throw OrchestrationError("--ram-budget reads experts from the model files as stored, so it cannot be combined with --quantize")
            }
            guard !loaded.tensors.files.isEmpty else {
                throw OrchestrationError("--ram-budget reads experts from the model files, so it cannot be combined with --random-weights")
            }
            var files = loaded.tensors.files
            let outside = placement.experts(on: .disk).filter { key in
                !TieredExecutor.storedExpert(loaded.weights, key).matrices.allSatisfy { TieredExecutor.isMapped($0, from: files) }
            }
            var spill: MappedFile?
            if !outside.isEmpty {
                let (file, moved) = try TieredExecutor.spill(outside.map { ($0, TieredExecutor.storedExpert(loaded.weights, $0)) })
                files.append(file)
                spilled = moved
                spill = file
            }
            do { reader = try DirectReader(files: files) } catch { throw OrchestrationError(error.description) }
            // Open by the reader and mapped: the name is no longer needed, and the file goes with the process.
            if let spill { unlink(spill.path) }
            spillFile = spill
        } else if !hosts.isEmpty && options.copyHostWeights && !loaded.tensors.files.isEmpty {
            // Weights held in memory, experts on hosts: a host lost is read back with errors that
            // fail a step, never through a mapping that a changed file could take away.
            do { reader = try DirectReader(files: loaded.tensors.files) } catch { throw OrchestrationError(error.description) }
        } else {
            reader = nil
        }
        var remote: [ExpertKey: Int] = [:]
        if !hosts.isEmpty && footprint.expertBytes > 0 {
            let onHost = footprint.expertMatrixBytes.reduce(0) { $0 + (($1 + 63) & ~63) }
            let capacities = hosts.map { HostCapacity(memory: $0.memory, fixed: $0.fixed ? $0.held : nil) }
            remote = placement.remoteHomes(hosts: capacities, expertBytes: onHost, ramBudget: options.ramBudget)
            for (h, host) in hosts.enumerated() where !host.fixed {
                do { try host.assign(remote.filter { $0.value == h }.map(\.key).sorted()) } catch { throw OrchestrationError(error.description) }
            }
        }

        // What every token touches, where the placement put it.
        var placed = loaded.weights
        var index = 0
        placed.visitAlways(tiedHead: config.tieWordEmbeddings) { _, m, _ in
            defer { index += 1 }
            guard placement.alwaysOnAccelerator[index], let accelerator else { return }
            guard let moved = accelerator.moveIn(m) else { preconditionFailure("the placement's tensors fit the accelerator") }
            dropPages(m.data, m.byteCount)
            m = moved
        }
        for (key, f) in spilled {
            guard case .mixtureOfExperts(var m) = placed.layers[key.layer].feedForward else { continue }
            for old in m.experts[key.expert].matrices { dropPages(old.data, old.byteCount) }
            m.experts[key.expert] = f
            placed.layers[key.layer].feedForward = .mixtureOfExperts(m)
        }
        var experts: [[FeedForwardWeights]] = placed.layers.map { layer in
            if case .mixtureOfExperts(let m) = layer.feedForward { return m.experts }
            return []
        }
        if let sample = placed.sampleExpertIfMoE {
            costs = try CostModel.calibrate(
                sample: sample, cpu: cpu, accelerator: accelerator, reader: reader, layers: experts.filter { !$0.isEmpty }, options: options)
        } else {
            costs = CostModel(key: "no experts", tokenCounts: [1], cpuSeconds: [0], acceleratorSeconds: [], copyBytesPerSecond: 0,
                              diskBytesPerSecond: 0, expertBytes: 0)
        }

        if options.copyHostWeights {
            hostCopies = TieredExecutor.copyOutOfFiles(&placed, experts: &experts, placement: placement, files: loaded.tensors.files, config: config,
                                                       remote: Set(remote.keys))
        }
        weights = placed
        homes = experts.map { $0.map { .ramPinned($0) } }
        var acceleratorSlots: [Int] = []
        if let accelerator, footprint.expertBytes > 0 {
            let slotBytes = ExpertPlacement.acceleratorSlotBytes(footprint.expertMatrixBytes)
            for key in placement.experts(on: .accelerator) {
                let f = experts[key.layer][key.expert]
                guard let offset = accelerator.allocate(slotBytes) else { preconditionFailure("the placement's experts fit the accelerator") }
                _ = TieredExecutor.copyCompact(f, toOffset: offset, accelerator: accelerator, after: []).last!.wait()
                for m in f.matrices { dropPages(m.data, m.byteCount) }
                let resident = TieredExecutor.compactLayout(f, atOffset: offset, accelerator: accelerator)
                homes[key.layer][key.expert] = .acceleratorPinned(resident)
                experts[key.layer][key.expert] = resident
            }
            for _ in 0..<placement.acceleratorCacheSlots {
                guard let offset = accelerator.allocate(slotBytes) else { preconditionFailure("the placement's cache fits the accelerator") }
                acceleratorSlots.append(offset)
            }
        }
        self.acceleratorSlots = acceleratorSlots
        acceleratorCache = acceleratorSlots.isEmpty ? nil : ExpertCache(slots: acceleratorSlots.count, transientSlots: TieredExecutor.topK(config))

        let ramSlotBytes = footprint.expertBytes > 0 ? ExpertPlacement.ramSlotBytes(footprint.expertMatrixBytes) : 0
        for key in placement.experts(on: .disk) {
            var ranges: [FileRange] = []
            for m in experts[key.layer][key.expert].matrices {
                guard let place = reader!.location(of: m.data, bytes: m.byteCount) else {
                    preconditionFailure("\(key): an expert on disk is in the model files or the spill file")
                }
                ranges.append(FileRange(file: place.file, offset: place.offset, bytes: m.byteCount))
            }
            homes[key.layer][key.expert] = .disk(ranges)
        }
        if !remote.isEmpty {
            for (key, h) in remote {
                var local = homes[key.layer][key.expert]
                // Experts rearranged at load (in no file) stay in memory for the host's loss.
                if case .ramPinned(let f) = local, f.matrices.allSatisfy({ TieredExecutor.isMapped($0, from: loaded.tensors.files) }) {
                    if options.copyHostWeights, let reader {
                        var ranges: [FileRange] = []
                        for m in f.matrices {
                            guard let place = reader.location(of: m.data, bytes: m.byteCount) else {
                                throw OrchestrationError("\(key): its weights are not in the model files")
                            }
                            ranges.append(FileRange(file: place.file, offset: place.offset, bytes: m.byteCount))
                        }
                        local = .disk(ranges)
                    }
                    // Tier 1 reads it again (from the files) only if its host is lost.
                    for m in f.matrices { dropPages(m.data, m.byteCount) }
                }
                localHomes[key] = local
                homes[key.layer][key.expert] = .remote(h)
            }
            costs.remoteRoundTrip = hosts.map(\.roundTrip).max() ?? 0
            costs.remoteBytesPerSecond = hosts.map(\.bandwidth).min() ?? 0
            costs.tokenRowBytes = config.hiddenSize * 4
        }
        ramSlots = (0..<placement.ramCacheSlots).map { _ in TieredExecutor.allocateAligned(ramSlotBytes) }
        ramCache = options.ramBudget != nil && options.policy != .naive
            ? ExpertCache(slots: placement.ramCacheSlots, transientSlots: TieredExecutor.topK(config)) : nil
        staging = placement.stagingBuffer ? TieredExecutor.allocateAligned(ramSlotBytes) : nil

        copiedAtLoad = accelerator?.bytesCopied ?? 0
        observationsAtLoad = costs.observations
        if let path = options.tracePath {
            guard let file = fopen(path, "w") else { throw OrchestrationError("\(path): cannot write the trace: \(errorText())") }
            trace = file
        }
    }

    deinit {
        // What was learned is kept for the next run on this machine, with these devices.
        if costs.observations > observationsAtLoad && !costs.tokenCounts.isEmpty && costs.expertBytes > 0 {
            costs.save(directory: options.costDirectory)
        }
        for q in diskQueues { q.stop() }
        if let trace { fclose(trace) }
        for p in ramSlots { free(p) }
        if let staging { free(staging) }
        if let overflow { free(overflow) }
    }

    static func topK(_ config: DecoderConfig) -> Int { config.feedForward.compactMap { $0.moe?.expertsPerToken }.max() ?? 1 }

    /// Placement, measured costs and statistics, as one JSON object.
    public var report: JSONValue {
        var o = JSONObject()
        o["policy"] = .string(options.policy.rawValue)
        o["ram_budget"] = options.ramBudget.map { .int($0) } ?? .null
        o["accelerator_memory"] = accelerator.map { .int($0.capacity) } ?? .null
        o["placement"] = summary.json
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
        var location: Tier
        var cache = CacheOutcome.pinned
        var prefetch = PredictionOutcome.none
        var action = ExpertAction.cpu
        var ranges: [FileRange] = []
        /// The pipeline group of an expert that moves this layer (nil: it computes where it is).
        var group: Int?
        /// Its kernel's run, for the trace and the cost model.
        var computeStart: ContinuousClock.Instant?, computeEnd: ContinuousClock.Instant?
        var acceleratorRun: Completion?
        /// An expert on a host: which, and its run there.
        var host: Int?
        var remoteRun: Completion?

    }

    public func runExperts(layer: Int, tasks: [ExpertTask], input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                           layerInput: UnsafePointer<Float>, tokens: Int) throws(WorkFailure) {
        let started = ContinuousClock.now
        let hidden = config.hiddenSize
        let keys = tasks.map { ExpertKey(layer: layer, expert: $0.expert) }
        let protected = Set(keys)
        let predicted = predictions.removeValue(forKey: layer)
        for h in hosts.indices where hosts[h].isLost { fallBack(from: h) }

        var states: [Slotted] = []
        for (task, key) in zip(tasks, keys) {
            var s: Slotted
            switch homes[layer][task.expert] {
            case .acceleratorPinned(let f): s = Slotted(weights: f, location: .accelerator)
            case .ramPinned(let f): s = Slotted(weights: f, location: .ram)
            case .disk(let ranges): s = Slotted(weights: nil, location: .disk, ranges: ranges)
            case .remote(let h): s = Slotted(weights: nil, location: .remote, host: h)
            }
            if s.location != .accelerator && s.location != .remote {
                acceleratorCache?.record(key, step: step)
                if s.location == .disk { ramCache?.record(key, step: step) }
                if let entry = acceleratorCache?.lookup(key) {
                    s.weights = entry.weights; s.location = .accelerator; s.ready = [entry.ready]; s.cache = .hit
                    if entry.prefetched { entry.prefetched = false; statistics.prefetchUsed += 1 }
                } else if s.location == .disk, let entry = ramCache?.lookup(key) {
                    s.weights = entry.weights; s.location = .ram; s.ready = [entry.ready]; s.cache = .hit
                    if entry.prefetched { entry.prefetched = false; statistics.prefetchUsed += 1 }
                } else if s.location == .disk || (acceleratorCache != nil && options.policy != .cpu) {
                    s.cache = .miss
                }
                if s.cache == .hit { statistics.cacheHits += 1 } else if s.cache == .miss { statistics.cacheMisses += 1 }
            }
            if let predicted {
                let hit = predicted[task.expert] != nil
                s.prefetch = hit ? .hit : .miss
                if hit { statistics.predictionHits += 1 } else { statistics.predictionMisses += 1 }
            }
            states.append(s)
        }

        let decision = LayerScheduler.decide(
            tokens: tasks.map(\.tokens), locations: states.map(\.location), costs: costs, policy: options.policy,
            hasAccelerator: accelerator != nil, copySlots: acceleratorCache?.capacity ?? 0, remoteHosts: hosts.count - lostHosts.count)
        for i in states.indices { states[i].action = decision.actions[i] }

        // The pipeline: the experts that move, in order, split into groups. A group must fit the RAM
        // cache's slots, two groups at once when pipelined (one computing, one arriving).
        let (pipeline, moved) = ExpertPipeline.forLayer(
            decision, tokens: tasks.map(\.tokens), costs: costs, hosts: hosts.count - lostHosts.count, slots: ramCache?.capacity ?? 0,
            setting: options.pipeline, naive: options.policy == .naive)
        for (j, i) in moved.enumerated() { states[i].group = pipeline.group(ofMoved: j, moved: moved.count) }
        let pipelined = pipeline.overlapped

        let maxTokens = tasks.map(\.tokens).max() ?? 0
        let inner = tasks.isEmpty ? 0 : config.feedForward[layer].moe!.expertIntermediateSize
        cpuScratch.reserve(2 * maxTokens * inner)

        // Disk reads in group order, as far as slots allow: every group when pipelined (the later
        // ones as earlier ones free their slots), the first only when not (each next group is read
        // once the one before has computed).
        var readQueue = moved.filter { states[$0].action == .readThenCPU || states[$0].action == .readThenCopy }
        var layerReads: [Completion] = []
        var stillNeeded = protected
        func readAhead(through group: Int) {
            while let i = readQueue.first, states[i].group! <= group,
                  let (entry, ready) = startRead(keys[i], ranges: states[i].ranges, protected: stillNeeded, prefetched: false) {
                states[i].weights = entry.weights
                states[i].ready = [ready]
                layerReads.append(ready)
                readQueue.removeFirst()
            }
        }
        readAhead(through: pipelined ? Int.max : 0)
        // An expert to be copied whose read found no slot runs on the CPU once read.
        for i in readQueue where states[i].action == .readThenCopy { states[i].action = .readThenCPU }
        for i in moved where states[i].action == .copyToAccelerator || states[i].action == .readThenCopy {
            guard let source = states[i].weights,
                  let entry = startCopy(keys[i], from: source, after: states[i].ready, protected: protected, prefetched: false) else {
                states[i].action = states[i].action == .readThenCopy ? .readThenCPU : .cpu
                if states[i].action == .cpu { states[i].group = nil }
                continue
            }
            states[i].weights = entry.weights
            states[i].ready = [entry.ready]
        }
        // A group's kernels wait for all of the group's movement started so far (a read still
        // waiting for a slot is waited for by its own expert).
        func barrier(_ s: Slotted) -> [Completion] {
            guard let g = s.group else { return s.ready }
            return states.filter { $0.group == g }.flatMap(\.ready) + s.ready
        }

        // Expert hosts: one request per group and host, all sent now, in group order; a host
        // computes each as it arrives while the next is still on the wire (EPS-MoE's dispatch).
        for g in 0..<pipeline.groups {
            for h in hosts.indices {
                let mine = moved.filter { states[$0].group == g && states[$0].host == h }
                guard !mine.isEmpty else { continue }
                let run = hosts[h].run(layer: layer, tasks: mine.map { tasks[$0] }, input: input, output: output, hidden: hidden)
                for i in mine { states[i].remoteRun = run }
                statistics.remoteRuns += mine.count
            }
        }

        // Accelerator kernels: those that need nothing moved first, then each group's in order
        // (the kernel stream runs them in submission order).
        let onAccelerator = states.indices.filter { states[$0].action.runsOnAccelerator }
        for i in onAccelerator.sorted(by: { (states[$0].group ?? -1, $0) < (states[$1].group ?? -1, $1) }) {
            let task = tasks[i]
            states[i].acceleratorRun = accelerator!.runExpert(
                states[i].weights!, input: input + task.firstRow * hidden, output: output + task.firstRow * hidden,
                tokens: task.tokens, after: barrier(states[i]))
            statistics.acceleratorRuns += 1
        }

        if options.prefetch && options.policy != .naive && readQueue.isEmpty {
            prefetchNextLayer(after: layer, layerInput: layerInput, tokens: tokens, protected: protected, behind: layerReads,
                              diskIdle: decision.makespan - decision.disk, linkIdle: decision.makespan - decision.link)
        }

        // The CPU's share: experts at hand first, then each group's as its movement completes.
        // Reads waiting for a slot start as experts of this layer finish with theirs (a layer may
        // need more experts than the cache has slots: they stream through it). A failed read
        // fails the layer, once no work of it is still running.
        var failure: WorkFailure?
        let order = states.indices.filter { !states[$0].action.runsOnAccelerator && states[$0].action != .remote }
            .sorted { (states[$0].group ?? -1, $0) < (states[$1].group ?? -1, $1) }
        var next = 0
        while next < order.count && failure == nil {
            let i = order[next]
            if let g = states[i].group { readAhead(through: pipelined ? Int.max : g) }
            // Experts of one group whose weights are at hand run as one grouped pass when they
            // have few tokens each (the kernel choice measured for this machine).
            var run = [i]
            while states[i].weights != nil, next + run.count < order.count {
                let j = order[next + run.count]
                guard states[j].group == states[i].group, states[j].weights != nil else { break }
                run.append(j)
            }
            let runTokens = run.reduce(0) { $0 + tasks[$1].tokens }
            if cpu.tuning.groupsExperts(run.count, tokens: runTokens) {
                if let f = run.flatMap({ barrier(states[$0]) }).waitAll() { failure = f; break }
                cpuScratch.reserve(2 * runTokens * inner)
                let started = ContinuousClock.now
                cpu.feedForward(group: run.map { GroupedExpert(states[$0].weights!, firstRow: tasks[$0].firstRow, tokens: tasks[$0].tokens) },
                                input: input, output: output, gate: cpuScratch.pointer, up: cpuScratch.pointer + runTokens * inner)
                let seconds = (ContinuousClock.now - started).seconds
                // Each expert's share of the pass, in proportion to its predicted time.
                let predicted = run.reduce(0.0) { $0 + costs.cpu(tokens: tasks[$1].tokens) }
                for j in run {
                    states[j].computeStart = started
                    states[j].computeEnd = started + .seconds(predicted > 0 ? seconds * costs.cpu(tokens: tasks[j].tokens) / predicted : 0)
                    stillNeeded.remove(keys[j])
                }
                statistics.cpuRuns += run.count
                statistics.groupedPasses += 1
                next += run.count
                continue
            }
            next += 1
            let task = tasks[i]
            do throws(WorkFailure) {
                // The naive policy, or no slot at all: read now into the staging buffer.
                let weights: FeedForwardWeights
                if let w = states[i].weights { weights = w } else {
                    readQueue.removeAll { $0 == i }
                    weights = try readNow(keys[i], states[i].ranges)
                }
                if let f = barrier(states[i]).waitAll() { throw f }
                let scratch = cpuScratch.pointer
                states[i].computeStart = .now
                cpu.feedForward(weights, input: input + task.firstRow * hidden, output: output + task.firstRow * hidden, tokens: task.tokens,
                                gate: scratch, up: scratch + task.tokens * inner)
                states[i].computeEnd = .now
                statistics.cpuRuns += 1
            } catch {
                failure = error
            }
            stillNeeded.remove(keys[i])
        }
        if let f = states.compactMap(\.acceleratorRun).waitAll(), failure == nil { failure = f }
        // Experts whose host was lost run here, on tier 1's own tiers: the same bits.
        for i in states.indices where failure == nil {
            guard let run = states[i].remoteRun, run.wait() != nil, let h = states[i].host else { continue }
            fallBack(from: h)
            do throws(WorkFailure) {
                let task = tasks[i]
                let weights: FeedForwardWeights
                switch homes[layer][task.expert] {
                case .ramPinned(let f): weights = f
                case .disk(let ranges): weights = try readNow(keys[i], ranges)
                default: preconditionFailure("an expert back from a host lives in RAM or on disk")
                }
                cpuScratch.reserve(2 * task.tokens * inner)
                cpu.feedForward(weights, input: input + task.firstRow * hidden, output: output + task.firstRow * hidden, tokens: task.tokens,
                                gate: cpuScratch.pointer, up: cpuScratch.pointer + task.tokens * inner)
                states[i].remoteRun = nil
                statistics.cpuRuns += 1
            } catch {
                failure = error
            }
        }
        if let failure {
            // Reads of this layer still in flight write only to cache slots, whose entries a failed
            // fill removes from the cache when next looked up.
            _ = layerReads.waitAll()
            throw failure
        }
        let finished = ContinuousClock.now
        for i in states.indices {
            if let run = states[i].acceleratorRun ?? states[i].remoteRun { states[i].computeStart = run.startedAt; states[i].computeEnd = run.finishedAt }
        }

        let measured = (finished - started).seconds
        statistics.predictedSeconds += pipeline.predicted
        statistics.measuredSeconds += measured
        if step > TierStatistics.warmUpSteps {
            statistics.predictedSecondsAfterWarmUp += pipeline.predicted
            statistics.measuredSecondsAfterWarmUp += measured
        }
        let timing = PipelineTiming(pipeline: pipeline, started: started,
                                    groups: states.map { s in (s.group, s.ready, s.computeStart, s.computeEnd) }, experts: tasks.map(\.expert))
        if pipeline.overlapped {
            statistics.pipelinedLayers += 1
            statistics.pipelineGroups += pipeline.groups
            statistics.mostPipelineGroups = max(statistics.mostPipelineGroups, pipeline.groups)
        }
        statistics.overlapSeconds += timing.overlapSeconds
        if options.learnCosts {
            learn(from: tasks, states.map { ($0.action == .remote ? nil : $0.action.runsOnAccelerator, $0.computeStart, $0.computeEnd) },
                  remote: Dictionary(grouping: states.indices.filter { states[$0].remoteRun != nil }) { ObjectIdentifier(states[$0].remoteRun!) }.values
                      .map { group in (group.map { tasks[$0].tokens }, states[group[0]].remoteRun!) })
        }
        if let trace {
            let record = LayerTrace(
                step: step, layer: layer, tokens: tokens,
                experts: zip(tasks, states).map { task, s in
                    LayerTrace.Expert(expert: task.expert, tokens: task.tokens, weights: s.location, action: s.action, cache: s.cache,
                                      prefetch: s.prefetch, host: s.host)
                },
                decision: decision, predictedSeconds: pipeline.predicted, measuredSeconds: measured, pipeline: timing)
            fputs(record.json.serialized() + "\n", trace)
        }
    }

    /// Feeds the cost model what this layer measured: each kernel's time, and each link's bytes
    /// over the time it was busy (the transfers that finished since the last layer, prefetches
    /// included).
    /// - Parameter runs: per task, whether it ran on the accelerator (nil: on a host), and its kernels' span.
    private func learn(from tasks: [ExpertTask], _ runs: [(accelerator: Bool?, start: ContinuousClock.Instant?, end: ContinuousClock.Instant?)],
                       remote: [(tokens: [Int], run: Completion)]) {
        var m = LayerMeasurement()
        for r in remote {
            guard let start = r.run.startedAt, let end = r.run.finishedAt else { continue }
            m.remote.append((r.tokens, (end - start).seconds))
        }
        for (task, run) in zip(tasks, runs) {
            guard let onAccelerator = run.accelerator, let start = run.start, let end = run.end else { continue }
            let seconds = (end - start).seconds
            if onAccelerator { m.accelerator.append((task.tokens, seconds)) } else { m.cpu.append((task.tokens, seconds)) }
        }
        var pending: [Movement] = []
        var intervals: [Movement.Link: [LayerMeasurement.Interval]] = [:]
        for movement in movements {
            guard let end = movement.done.finishedAt else { pending.append(movement); continue }
            guard let start = movement.done.startedAt, movement.done.wait() == nil else { continue }
            intervals[movement.link, default: []].append((start, end))
            if movement.link == .disk { m.diskBytes += movement.bytes } else { m.copyBytes += movement.bytes }
        }
        movements = pending
        m.diskBusySeconds = LayerMeasurement.busySeconds(intervals[.disk] ?? [])
        m.copyBusySeconds = LayerMeasurement.busySeconds(intervals[.copy] ?? [])
        costs.learn(m)
    }
}

extension TieredExecutor {
    /// Host `h` is lost: its experts go back to the homes they would have had here (RAM or disk).
    func fallBack(from h: Int) {
        guard !lostHosts.contains(h) else { return }
        lostHosts.insert(h)
        var moved = 0
        for (key, local) in localHomes {
            guard case .remote(h) = homes[key.layer][key.expert] else { continue }
            homes[key.layer][key.expert] = local
            moved += 1
        }
        statistics.hostsLost += 1
        let live = hosts.indices.filter { !lostHosts.contains($0) }
        costs.remoteRoundTrip = live.map { hosts[$0].roundTrip }.max() ?? 0
        notes?("\(hosts[h].name) lost: its \(moved) experts run on this host's own tiers from now on")
    }

    /// Copies every matrix host memory holds for the whole run (what every token touches, the
    /// experts pinned in RAM) that lives in a weight file into one host buffer, repoints the
    /// weights at the copies and releases the files' pages.
    /// - Parameter remote: experts on expert hosts, left in the files.
    static func copyOutOfFiles(
        _ weights: inout DecoderWeights, experts: inout [[FeedForwardWeights]], placement: ExpertPlacement, files: [MappedFile],
        config: DecoderConfig, remote: Set<ExpertKey>
    ) -> HostBuffer? {
        func inFiles(_ m: WeightMatrix) -> Bool {
            m.location == .host && files.contains { UnsafeRawPointer(m.data) >= $0.base && m.data + m.byteCount <= $0.base + $0.size }
        }
        func slot(_ m: WeightMatrix) -> Int { (m.byteCount + 63) & ~63 }
        var total = 0
        weights.visitAlways(tiedHead: config.tieWordEmbeddings) { _, m, _ in if inFiles(m) { total += slot(m) } }
        let local = placement.experts(on: .ram).filter { !remote.contains($0) }
        for key in local { for m in experts[key.layer][key.expert].matrices where inFiles(m) { total += slot(m) } }
        guard total > 0 else { return nil }
        let buffer = HostBuffer(total)
        var offset = 0
        func copy(_ m: WeightMatrix) -> WeightMatrix {
            guard inFiles(m) else { return m }
            let target = buffer.pointer + offset
            target.copyMemory(from: m.data, byteCount: m.byteCount)
            dropPages(m.data, m.byteCount)
            offset += slot(m)
            return m.moved(to: UnsafeRawPointer(target))
        }
        weights.visitAlways(tiedHead: config.tieWordEmbeddings) { _, m, _ in m = copy(m) }
        for key in local {
            experts[key.layer][key.expert] = experts[key.layer][key.expert].mapMatrices(copy)
        }
        return buffer
    }
}

extension TieredExecutor {
    /// Whether a matrix lies in one of `files`' mappings (not in memory made at load).
    static func isMapped(_ m: WeightMatrix, from files: [MappedFile]) -> Bool {
        files.contains { UnsafeRawPointer(m.data) >= $0.base && m.data + m.byteCount <= $0.base + $0.size }
    }

    /// Expert `key` of `weights` as bound.
    static func storedExpert(_ weights: DecoderWeights, _ key: ExpertKey) -> FeedForwardWeights {
        guard case .mixtureOfExperts(let m) = weights.layers[key.layer].feedForward else { preconditionFailure("\(key) is not an expert") }
        return m.experts[key.expert]
    }

    /// Writes `experts`' matrices to a new file in the temporary folder (each at a 4 KiB boundary,
    /// for direct reads) and maps it: the experts with their matrices in that mapping.
    static func spill(_ experts: [(ExpertKey, FeedForwardWeights)]) throws(OrchestrationError) -> (MappedFile, [ExpertKey: FeedForwardWeights]) {
        let folder = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(folder)/switchyard-spill-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw OrchestrationError("\(folder): cannot create a spill file for the experts rearranged at load: \(errorText())") }
        let path = String(cString: template)
        defer { close(fd) }
        var offsets: [[Int]] = []
        var end = 0
        for (key, f) in experts {
            var mine: [Int] = []
            for m in f.matrices {
                var done = 0
                while done < m.byteCount {
                    let n = pwrite(fd, m.data + done, m.byteCount - done, off_t(end + done))
                    guard n > 0 else {
                        unlink(path)
                        throw OrchestrationError("\(path): cannot write \(key)'s weights to the spill file: \(errorText())")
                    }
                    done += n
                }
                mine.append(end)
                end = (end + m.byteCount + 4095) / 4096 * 4096
            }
            offsets.append(mine)
        }
        let file: MappedFile
        do { file = try MappedFile(path: path) } catch {
            unlink(path)
            throw OrchestrationError(error.description)
        }
        var moved: [ExpertKey: FeedForwardWeights] = [:]
        for ((key, f), mine) in zip(experts, offsets) {
            moved[key] = f.withMatrices(zip(f.matrices, mine).map { m, offset in m.moved(to: file.base + offset) })
        }
        return (file, moved)
    }
}
