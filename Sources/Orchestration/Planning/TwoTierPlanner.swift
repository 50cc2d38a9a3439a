import Kernels
import Models
import Runtime
import SwitchyardSupport

/// Glinthawk's configuration optimiser, for Switchyard's two tiers: from the config and the
/// machines' rates, the decode throughput of every batch the workers' KV memory holds, with the
/// best number of micro-batches in flight for each, against single-tier decode at the batch the
/// tier-1 KV memory holds.
///
/// Per layer and micro-batch of b sequences: tier 1 reads the attention and shared weights and
/// the experts b tokens touch (E·(1 − (1 − k/E)^b) of E, uniform routing) and computes 2 FLOPs per
/// active weight per token, C(b) = max(bytes / bandwidth, FLOPs / rate); the workers read each
/// sequence's keys and values, A(b) = b·n·kv bytes / bandwidth, split over the workers; the wire
/// carries queries and new keys/values out and outputs back. With M micro-batches of B/M, a layer
/// takes max(M·C, C + round trip + wire + A/W, M·A/W) on separate hosts, and M·(C + A) +
/// max(0, round trip − (M − 1)·(C + A)) when every process shares one machine's cores.
public enum TwoTierPlanner {
    public struct Inputs: Sendable {
        public var config: DecoderConfig
        public var element: WeightElement
        public var hardware: HardwareProfile
        public var workers: Int
        /// Added round trip per attention request, seconds.
        public var roundTrip: Double
        /// Bytes per second each link carries.
        public var networkBandwidth: Double
        public var tier1KVBytes: Int
        public var workerKVBytes: Int
        /// Positions each sequence reserves (its context) and the mean positions attended.
        public var contextLength: Int
        public var meanPositions: Int
        /// All processes on one machine's cores (as on a test machine), not separate hosts.
        public var sharedCores: Bool

        public init(config: DecoderConfig, element: WeightElement, hardware: HardwareProfile, workers: Int, roundTrip: Double, networkBandwidth: Double,
                    tier1KVBytes: Int, workerKVBytes: Int, contextLength: Int, meanPositions: Int, sharedCores: Bool) {
            self.config = config
            self.element = element
            self.hardware = hardware
            self.workers = workers
            self.roundTrip = roundTrip
            self.networkBandwidth = networkBandwidth
            self.tier1KVBytes = tier1KVBytes
            self.workerKVBytes = workerKVBytes
            self.contextLength = contextLength
            self.meanPositions = meanPositions
            self.sharedCores = sharedCores
        }
    }

    public struct Point: Sendable {
        public var batch: Int
        public var microBatches: Int
        public var tokensPerSecond: Double
    }

    public struct Plan: Sendable {
        /// The best batch and micro-batch count, its throughput, and the curve over batch sizes.
        public var best: Point
        public var curve: [Point]
        /// Little's law at the best batch: 1 + round trip / tier-1 work per layer of a micro-batch.
        public var littlesLawMicroBatches: Int
        public var singleTierBatch: Int
        public var singleTierTokensPerSecond: Double
        /// Bytes on the wire per token per layer: ours (queries and new keys/values out, outputs
        /// back, slot ids) and Glinthawk's (which also ships the residual stream both ways).
        public var wireBytesPerTokenPerLayer: Int
        public var glinthawkWireBytesPerTokenPerLayer: Int
        public var maxBatch: Int
    }

    public static func plan(_ i: Inputs) throws(OrchestrationError) -> Plan {
        let c = i.config
        guard i.workers >= 1 else { throw OrchestrationError("two tiers need at least one attention worker") }
        guard i.roundTrip >= 0, i.roundTrip.isFinite, i.networkBandwidth > 0, i.networkBandwidth.isFinite else {
            throw OrchestrationError("the round trip and network bandwidth must be finite, the bandwidth above 0")
        }
        guard i.contextLength > 0, i.meanPositions > 0, i.meanPositions <= i.contextLength else {
            throw OrchestrationError("the mean positions attended must be between 1 and the context length")
        }
        let f = ModelFootprint(config: c, element: i.element)
        let layers = c.layerCount
        let head = f.always.filter { $0.name == "output head" || ($0.name == "embedding" && c.tieWordEmbeddings) }
        let perLayer = f.always.filter { $0.name.hasPrefix("layer ") }
        let layerBytes = Double(perLayer.reduce(0) { $0 + $1.bytes }) / Double(layers)
        let layerParams = Double(perLayer.reduce(0) { $0 + $1.parameters }) / Double(layers)
        let experts = Double(f.expertsPerLayer.max() ?? 0), topK = Double(f.expertsPerToken.max() ?? 0)
        let moeLayers = Double(f.expertsPerLayer.filter { $0 > 0 }.count) / Double(layers)
        let kvPerPositionLayer = Double(c.kvLayout.bytesPerPosition) / Double(layers)
        let bw = i.hardware.cpuBandwidth, flops = i.hardware.cpuFlops
        guard bw > 0, flops > 0 else { throw OrchestrationError("the hardware profile has no CPU rates") }

        func tier1(_ b: Int) -> Double {
            let touched = experts > 0 ? experts * (1 - exp(Double(b) * log(1 - topK / experts))) : 0
            let bytes = layerBytes + moeLayers * touched * Double(f.expertBytes)
            let ops = 2 * Double(b) * (layerParams + moeLayers * topK * Double(f.expertParameters))
            return max(bytes / bw, ops / flops)
        }
        func attention(_ b: Int) -> Double {
            let reads = Double(b) * Double(i.meanPositions) * kvPerPositionLayer
            // Per position seen: every head's score and its values, 2 operations a value.
            let ops = 2 * Double(b) * Double(i.meanPositions) * Double(c.queryWidth + c.attentionOutputWidth)
            return max(reads / bw, ops / flops)
        }
        // Queries and keys (and values, unless latent) out, outputs back.
        let wirePerToken = (c.queryWidth + c.kvLayout.keyWidth + c.kvLayout.valueWidth + c.attentionOutputWidth) * 4 + 12
        let headTime = Double(head.reduce(0) { $0 + $1.bytes }) / bw
        func step(_ B: Int, _ M: Int) -> Double {
            let b = (B + M - 1) / M
            let C = tier1(b), A = attention(b)
            let period: Double
            if i.sharedCores {
                let work = C + A
                period = Double(M) * work + max(0, i.roundTrip - Double(M - 1) * work)
            } else {
                let remote = i.roundTrip + Double(b * wirePerToken) / i.networkBandwidth + A / Double(i.workers)
                period = max(Double(M) * C, C + remote, Double(M) * A / Double(i.workers))
            }
            return Double(layers) * period + headTime + Double(B) * 2 * Double(c.vocabularySize * c.hiddenSize) / flops
        }
        let sequenceKV = c.kvLayout.bytes(positions: i.contextLength)
        let maxBatch = min(1 << 16, i.workers * (i.workerKVBytes / max(1, sequenceKV)))
        guard maxBatch >= 1 else { throw OrchestrationError("a worker's KV memory does not hold one sequence of \(i.contextLength) positions (\(formatBytes(sequenceKV)))") }
        var curve: [Point] = []
        var B = 1
        while true {
            let best = (1...min(Model.maxMicroBatches, B)).map { M in Point(batch: B, microBatches: M, tokensPerSecond: Double(B) / step(B, M)) }
                .max { $0.tokensPerSecond < $1.tokensPerSecond }!
            curve.append(best)
            if B >= maxBatch { break }
            B = min(B * 2, maxBatch)
        }
        let best = curve.max { $0.tokensPerSecond < $1.tokensPerSecond }!
        let b = max(1, best.batch / best.microBatches)
        let remote = i.roundTrip + Double(b * wirePerToken) / i.networkBandwidth + attention(b) / Double(i.workers)
        let littles = 1 + Int((remote / tier1(b)).rounded(.up))
        let single = max(1, min(1 << 16, i.tier1KVBytes / max(1, sequenceKV)))
        let singleStep = Double(layers) * (tier1(single) + attention(single)) + headTime + Double(single) * 2 * Double(c.vocabularySize * c.hiddenSize) / flops
        return Plan(best: best, curve: curve, littlesLawMicroBatches: littles, singleTierBatch: single,
                    singleTierTokensPerSecond: Double(single) / singleStep, wireBytesPerTokenPerLayer: wirePerToken,
                    glinthawkWireBytesPerTokenPerLayer: wirePerToken + 2 * c.hiddenSize * 4, maxBatch: maxBatch)
    }
}
