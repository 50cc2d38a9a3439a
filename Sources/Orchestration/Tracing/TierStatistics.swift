import Runtime
import SwitchyardJSON

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
    }

    var step: Int, layer: Int, tokens: Int
    var experts: [Expert]
    var decision: LayerScheduler.Decision
    var measuredSeconds: Double

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
            e["ran"] = .string(x.action.runsOnAccelerator ? "accelerator" : "cpu")
            e["action"] = .string(x.action.rawValue)
            e["cache"] = .string(x.cache.rawValue)
            e["prefetch"] = .string(x.prefetch.rawValue)
            return .object(e)
        })
        o["predicted_ms"] = .double(decision.makespan * 1e3)
        o["predicted_cpu_ms"] = .double(decision.cpu * 1e3)
        o["predicted_accelerator_ms"] = .double(decision.accelerator * 1e3)
        o["predicted_copy_ms"] = .double(decision.link * 1e3)
        o["predicted_disk_ms"] = .double(decision.disk * 1e3)
        o["measured_ms"] = .double(measuredSeconds * 1e3)
        return .object(o)
    }
}
