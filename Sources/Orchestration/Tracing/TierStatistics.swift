import Runtime
import SwitchyardJSON
import SwitchyardSupport

/// What tiered execution did: for `--json` output and the benchmarks.
public struct TierStatistics: Sendable {
    public var steps = 0
    public var tokens = 0
    public var cpuRuns = 0, acceleratorRuns = 0
    /// Expert runs sent to expert hosts, and hosts lost (their experts came back to this host).
    public var remoteRuns = 0, hostsLost = 0
    /// CPU experts run as grouped passes (several experts in one), and those passes.
    public var groupedPasses = 0
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
    /// The same from step `warmUpSteps + 1` on, once the cost model has learned from a few steps.
    public var predictedSecondsAfterWarmUp = 0.0, measuredSecondsAfterWarmUp = 0.0
    public static let warmUpSteps = 2
    /// MoE layers whose moved experts were pipelined (group g+1 moving while group g computed),
    /// the groups they ran in all, and the largest count in one layer.
    public var pipelinedLayers = 0, pipelineGroups = 0, mostPipelineGroups = 0
    /// Kernel time that ran while a transfer of the same layer was under way.
    public var overlapSeconds = 0.0

    public var cacheHitRate: Double { ratio(cacheHits, cacheHits + cacheMisses) }
    public var predictionHitRate: Double { ratio(predictionHits, predictionHits + predictionMisses) }

    private func ratio(_ a: Int, _ b: Int) -> Double { b > 0 ? Double(a) / Double(b) : 0 }

    public var json: JSONValue {
        var o = JSONObject()
        o["steps"] = .int(steps)
        o["tokens"] = .int(tokens)
        o["cpu_expert_runs"] = .int(cpuRuns)
        o["accelerator_expert_runs"] = .int(acceleratorRuns)
        o["remote_expert_runs"] = .int(remoteRuns)
        o["grouped_cpu_passes"] = .int(groupedPasses)
        o["expert_hosts_lost"] = .int(hostsLost)
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
        o["pipelined_layers"] = .int(pipelinedLayers)
        o["pipeline_groups"] = .int(pipelineGroups)
        o["most_pipeline_groups"] = .int(mostPipelineGroups)
        o["overlap_seconds"] = .double(overlapSeconds)
        o["predicted_expert_seconds_after_warm_up"] = .double(predictedSecondsAfterWarmUp)
        o["measured_expert_seconds_after_warm_up"] = .double(measuredSecondsAfterWarmUp)
        return .object(o)
    }
}

/// Where the tiers put things, for `info`-style reports and `--json`.
public struct PlacementSummary: Sendable, Equatable {
    public var acceleratorTensorBytes = 0, acceleratorPinnedExperts = 0, acceleratorCacheSlots = 0
    public var ramAlwaysBytes = 0, ramPinnedExperts = 0, ramCacheSlots = 0
    public var diskExperts = 0
    public var expertBytes = 0

    public init(_ placement: ExpertPlacement, footprint: ModelFootprint) {
        acceleratorTensorBytes = placement.acceleratorTensorBytes
        acceleratorPinnedExperts = placement.experts(on: .accelerator).count
        acceleratorCacheSlots = placement.acceleratorCacheSlots
        ramAlwaysBytes = placement.alwaysHostBytes
        ramPinnedExperts = placement.experts(on: .ram).count
        ramCacheSlots = placement.ramCacheSlots
        diskExperts = placement.experts(on: .disk).count
        expertBytes = footprint.expertBytes
    }

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

/// How an expert that is not pinned was found in a cache this layer.
enum CacheOutcome: String { case pinned, hit, miss }

/// Whether the previous layer's prediction named an expert.
enum PredictionOutcome: String { case none, hit, miss }

/// One line of `--trace`: one MoE layer of one step.
struct LayerTrace {
    struct Expert {
        var expert: Int, tokens: Int
        var weights: Tier
        var action: ExpertAction
        var cache: CacheOutcome
        var prefetch: PredictionOutcome
        /// The expert host it ran on.
        var host: Int?
    }

    var step: Int, layer: Int, tokens: Int
    var experts: [Expert]
    var decision: LayerScheduler.Decision
    /// The pipeline's prediction (the scheduler's makespan, bounded by the pipeline's fill and drain).
    var predictedSeconds: Double
    var measuredSeconds: Double
    var pipeline: PipelineTiming

    var json: JSONValue {
        var o = JSONObject()
        o["step"] = .int(step)
        o["layer"] = .int(layer)
        o["tokens"] = .int(tokens)
        o["experts"] = .array(experts.map { x in
            var e = JSONObject()
            e["expert"] = .int(x.expert)
            e["tokens"] = .int(x.tokens)
            e["weights"] = .string(x.weights.rawValue)
            e["ran"] = .string(x.action == .remote ? "remote" : x.action.runsOnAccelerator ? "accelerator" : "cpu")
            if let h = x.host { e["host"] = .int(h) }
            e["action"] = .string(x.action.rawValue)
            e["cache"] = .string(x.cache.rawValue)
            e["prefetch"] = .string(x.prefetch.rawValue)
            return .object(e)
        })
        o["predicted_ms"] = .double(predictedSeconds * 1e3)
        o["predicted_cpu_ms"] = .double(decision.cpu * 1e3)
        o["predicted_accelerator_ms"] = .double(decision.accelerator * 1e3)
        o["predicted_copy_ms"] = .double(decision.link * 1e3)
        o["predicted_disk_ms"] = .double(decision.disk * 1e3)
        o["predicted_remote_ms"] = .double(decision.remote * 1e3)
        o["measured_ms"] = .double(measuredSeconds * 1e3)
        o["pipeline"] = pipeline.json
        return .object(o)
    }
}

/// What the expert pipeline chose and achieved in one layer, for the trace.
struct PipelineTiming {
    struct Group {
        var experts: [Int] = []
        /// Since the layer began: when the group's movement was all done, and its kernels' span.
        var movedAt: Double?, computeStart: Double?, computeEnd: Double?
    }

    var pipeline: ExpertPipeline
    var groups: [Group]
    /// Since the layer began, when the last movement finished; how long kernels ran while a
    /// transfer of this layer was under way.
    var movementSeconds = 0.0, overlapSeconds = 0.0

    /// - Parameter runs: per expert, its group (nil: it did not move), its movement's completions and
    ///   its kernel's start and end.
    init(pipeline: ExpertPipeline, started: ContinuousClock.Instant,
         groups runs: [(group: Int?, movement: [Completion], start: ContinuousClock.Instant?, end: ContinuousClock.Instant?)],
         experts: [Int]) {
        self.pipeline = pipeline
        func since(_ t: ContinuousClock.Instant) -> Double { (t - started).seconds }
        groups = Array(repeating: Group(), count: pipeline.groups)
        var movementEnd = started
        var kernels: [LayerMeasurement.Interval] = [], transfers: [LayerMeasurement.Interval] = []
        for (run, expert) in zip(runs, experts) {
            if let s = run.start, let e = run.end { kernels.append((s, e)) }
            guard let g = run.group else { continue }
            groups[g].experts.append(expert)
            for c in run.movement {
                guard let t = c.finishedAt else { continue }
                if let s = c.startedAt { transfers.append((s, t)) }
                movementEnd = max(movementEnd, t)
                groups[g].movedAt = max(groups[g].movedAt ?? 0, since(t))
            }
            if let s = run.start { groups[g].computeStart = min(groups[g].computeStart ?? .infinity, since(s)) }
            if let e = run.end { groups[g].computeEnd = max(groups[g].computeEnd ?? 0, since(e)) }
        }
        movementSeconds = since(movementEnd)
        overlapSeconds = LayerMeasurement.overlapSeconds(kernels, transfers)
    }

    var json: JSONValue {
        var o = JSONObject()
        o["groups"] = .int(pipeline.groups)
        o["overlapped"] = .bool(pipeline.overlapped)
        o["optimum"] = .double(pipeline.optimum)
        o["predicted_movement_ms"] = .double(pipeline.movement * 1e3)
        o["predicted_compute_ms"] = .double(pipeline.compute * 1e3)
        o["group_overhead_us"] = .double(pipeline.overhead * 1e6)
        o["predicted_unpipelined_ms"] = .double(pipeline.unpipelined * 1e3)
        o["movement_ms"] = .double(movementSeconds * 1e3)
        o["overlap_ms"] = .double(overlapSeconds * 1e3)
        o["chunks"] = .array(groups.map { g in
            var c = JSONObject()
            c["experts"] = .array(g.experts.map { .int($0) })
            c["moved_ms"] = g.movedAt.map { .double($0 * 1e3) } ?? .null
            c["compute_start_ms"] = g.computeStart.map { .double($0 * 1e3) } ?? .null
            c["compute_end_ms"] = g.computeEnd.map { .double($0 * 1e3) } ?? .null
            return .object(c)
        })
        return .object(o)
    }
}
