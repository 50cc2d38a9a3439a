import Kernels
import Models
import Runtime
import SwitchyardSupport

extension TieredExecutor {
    /// Predicts the next MoE layer's experts by applying its router to this layer's input, and
    /// starts bringing the missing ones closer: disk → RAM, and RAM → accelerator where the
    /// scheduler's rule would copy them.
    /// A guess is fetched only when the whole transfer fits in time the drive or the link would
    /// otherwise sit idle in this layer (the scheduler's predicted makespan less their busy time):
    /// a wrong guess costs bandwidth, so where the drive is the bottleneck, guessing only slows what
    /// is certainly needed. For the same reason its reads wait for `behind` (this layer's own reads).
    func prefetchNextLayer(after layer: Int, layerInput: UnsafePointer<Float>, tokens: Int, protected: Set<ExpertKey>,
                           behind: [Completion], diskIdle: Double, linkIdle: Double) {
        var diskIdle = diskIdle, linkIdle = linkIdle
        let c = config
        guard let next = c.feedForward.indices.first(where: { $0 > layer && c.feedForward[$0].moe != nil }),
              let moe = c.feedForward[next].moe,
              case .mixtureOfExperts(let weights) = weights.layers[next].feedForward else { return }
        let hidden = c.hiddenSize
        routerScratch.reserve(tokens * moe.expertCount)
        let logits = routerScratch.pointer
        cpu.linear(weights.router, input: layerInput, inputStride: hidden, output: logits, outputStride: moe.expertCount, tokens: tokens)
        var counts: [Int: Int] = [:]
        weights.withRouterBias { bias in
            for t in 0..<tokens {
                let r = route(logits: logits + t * moe.expertCount, expertCount: moe.expertCount, k: moe.expertsPerToken, config: moe.router,
                              selectionBias: bias)
                for e in r.experts { counts[e, default: 0] += 1 }
            }
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
            case .acceleratorPinned, .remote: continue
            }
            guard let source, accelerator != nil, acceleratorCache != nil else { continue }
            if LayerScheduler.wouldCopy(tokens: n, costs: costs, policy: options.policy), linkIdle >= costs.copySeconds,
               startCopy(key, from: source, after: ready, protected: keep, prefetched: true) != nil {
                statistics.prefetchLoads += 1
                linkIdle -= costs.copySeconds
            }
        }
    }
}
