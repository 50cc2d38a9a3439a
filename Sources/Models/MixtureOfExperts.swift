import Kernels
import SwitchyardSupport

/// The experts a token is routed to, with their mixing weights.
public struct Routing: Sendable, Equatable {
    public var experts: [Int]
    public var weights: [Float]
}

/// Softmax over the router logits, keep the k largest probabilities (ties go to the lower expert
/// index, as torch.topk does on CPU), and optionally divide them by their sum. The one routing
/// function behind Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE; they differ only in `normalize`.
public func routeTopK(logits: UnsafePointer<Float>, expertCount: Int, k: Int, normalize: Bool) -> Routing {
    var probabilities = Array(UnsafeBufferPointer(start: logits, count: expertCount))
    probabilities.withUnsafeMutableBufferPointer { softmax($0.baseAddress!, expertCount) }
    var chosen: [Int] = []
    chosen.reserveCapacity(k)
    var taken = [Bool](repeating: false, count: expertCount)
    for _ in 0..<k {
        var best = -1
        for e in 0..<expertCount where !taken[e] && (best < 0 || probabilities[e] > probabilities[best]) { best = e }
        taken[best] = true
        chosen.append(best)
    }
    var weights = chosen.map { probabilities[$0] }
    if normalize {
        let sum = weights.reduce(0, +)
        weights = weights.map { $0 / sum }
    }
    return Routing(experts: chosen, weights: weights)
}

/// One routed expert's part of an MoE layer in one step: its tokens are rows
/// firstRow..<firstRow+tokens of the gathered input, and its outputs go to the same rows.
public struct ExpertTask: Sendable, Equatable {
    public var expert: Int
    public var tokens: Int
    public var firstRow: Int

    public init(expert: Int, tokens: Int, firstRow: Int) {
        self.expert = expert
        self.tokens = tokens
        self.firstRow = firstRow
    }
}

/// Runs the routed experts of MoE layers somewhere other than in place on the model's device:
/// across devices and memory tiers (the Orchestration module). It must give each task exactly what
/// `feedForward` over the expert's stored weights gives; the model then mixes the outputs in
/// ascending expert order, so results never depend on where an expert ran.
public protocol ExpertExecutor: AnyObject {
    /// Called before a forward pass over `tokens` tokens.
    func beginStep(tokens: Int)
    /// output[firstRow..., hidden] = FFN_(layer, expert)(input[firstRow..., hidden]) for each task.
    /// `layerInput` [tokens, hidden] is the layer's normalised input, from which the next layer's
    /// experts can be predicted.
    func runExperts(layer: Int, tasks: [ExpertTask], input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                    layerInput: UnsafePointer<Float>, tokens: Int)
    /// Called after the last layer of a forward pass.
    func endStep()
}

/// out[T, hidden] = down(silu(gate · x) * (up · x)) with the products on `pool`; `gate` and `up`
/// are scratch of [T, intermediate]. Every device runs experts through this, with the same kernels,
/// so an expert's output is the same bits wherever it runs.
public func feedForward(
    _ w: FeedForwardWeights, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens: Int,
    gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>, pool: ThreadPool, precision: ActivationPrecision
) {
    let hidden = w.down.rows, inner = w.intermediateSize
    // Gate and up in one parallel region over the same prepared input.
    matmul(w.gate, w.up, input: input, inputStride: hidden, outputs: (gate, up), outputStride: inner, tokens: tokens, pool: pool, precision: precision)
    for t in 0..<tokens { siluMultiply(gate + t * inner, up + t * inner, inner) }
    matmul(w.down, input: gate, inputStride: inner, output: output, outputStride: hidden, tokens: tokens, pool: pool, precision: precision)
}

extension Model {
    /// out[T, hidden] = SwiGLU(input) for a dense layer.
    func denseFeedForward(_ w: FeedForwardWeights, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens: Int, workspace scratch: Workspace) {
        let hidden = config.hiddenSize
        let inner = w.intermediateSize
        let gate = scratch.gate.pointer, up = scratch.up.pointer
        device.linear(w.gate, w.up, input: input, inputStride: hidden, outputs: (gate, up), outputStride: inner, tokens: tokens)
        for t in 0..<tokens { siluMultiply(gate + t * inner, up + t * inner, inner) }
        device.linear(w.down, input: gate, inputStride: inner, output: output, outputStride: hidden, tokens: tokens)
    }

    /// out[T, hidden] = Σ routed experts' outputs x their weights (+ the gated shared expert).
    /// Tokens routed to the same expert are gathered so its weights are read once for all of them.
    func mixtureOfExperts(_ w: MoEWeights, _ moe: MoEConfig, layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens: Int, workspace scratch: Workspace) {
        let hidden = config.hiddenSize
        let experts = moe.expertCount
        let logits = scratch.routerLogits.pointer
        device.linear(w.router, input: input, inputStride: hidden, output: logits, outputStride: experts, tokens: tokens)
        var assigned = [[(token: Int, weight: Float)]](repeating: [], count: experts)
        var chosen: [[Int]] = []
        for t in 0..<tokens {
            let r = routeTopK(logits: logits + t * experts, expertCount: experts, k: moe.expertsPerToken, normalize: moe.normalizeTopK)
            for (e, weight) in zip(r.experts, r.weights) { assigned[e].append((t, weight)) }
            if scratch.routingObserver != nil { chosen.append(r.experts) }
        }
        scratch.routingObserver?(layer, chosen)
        // Every routed expert's tokens gathered into consecutive rows: [Σ tasks' tokens, hidden].
        let gathered = scratch.gathered.pointer
        let expertOut = scratch.expertOutput.pointer
        var tasks: [ExpertTask] = []
        var rows = 0
        for e in 0..<experts where !assigned[e].isEmpty {
            tasks.append(ExpertTask(expert: e, tokens: assigned[e].count, firstRow: rows))
            for entry in assigned[e] {
                (gathered + rows * hidden).update(from: input + entry.token * hidden, count: hidden)
                rows += 1
            }
        }
        if let executor = expertExecutor {
            executor.runExperts(layer: layer, tasks: tasks, input: gathered, output: expertOut, layerInput: input, tokens: tokens)
        } else {
            for task in tasks {
                denseFeedForward(w.experts[task.expert], input: gathered + task.firstRow * hidden,
                                 output: expertOut + task.firstRow * hidden, tokens: task.tokens, workspace: scratch)
            }
        }
        output.update(repeating: 0, count: tokens * hidden)
        // Ascending expert order, as transformers accumulates: it fixes the float summation order,
        // whichever device or tier each expert ran on.
        for task in tasks {
            for (i, entry) in assigned[task.expert].enumerated() {
                axpy(entry.weight, expertOut + (task.firstRow + i) * hidden, output + entry.token * hidden, hidden)
            }
        }
        if let shared = w.sharedExpert {
            denseFeedForward(shared, input: input, output: expertOut, tokens: tokens, workspace: scratch)
            var gates = [Float](repeating: 1, count: tokens)
            if let gate = w.sharedExpertGate {
                gates.withUnsafeMutableBufferPointer { g in
                    device.linear(gate, input: input, inputStride: hidden, output: g.baseAddress!, outputStride: 1, tokens: tokens)
                }
                gates = gates.map { 1 / (1 + expf(-$0)) }
            }
            for t in 0..<tokens {
                let s = expertOut + t * hidden, o = output + t * hidden
                for i in 0..<hidden { o[i] += gates[t] * s[i] }
            }
        }
    }
}

