import Kernels
import Runtime
import SwitchyardSupport

extension Model {
    /// out[T, hidden] = Σ routed experts' outputs x their weights (+ the gated shared expert).
    /// Tokens routed to the same expert are gathered so its weights are read once for all of them.
    func mixtureOfExperts(
        _ w: MoEWeights, _ moe: MoEConfig, layer: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, tokens: Int,
        workspace scratch: Workspace
    ) throws(WorkFailure) {
        let hidden = config.hiddenSize
        let experts = moe.expertCount
        let logits = scratch.routerLogits.pointer
        device.linear(w.router, input: input, inputStride: hidden, output: logits, outputStride: experts, tokens: tokens)
        if let b = w.routerLogitBias { for t in 0..<tokens { for e in 0..<experts { logits[t * experts + e] += b[e] } } }
        var assigned = [[(token: Int, weight: Float)]](repeating: [], count: experts)
        var chosen: [[Int]] = []
        w.withRouterBias { bias in
            for t in 0..<tokens {
                let r = route(logits: logits + t * experts, expertCount: experts, k: moe.expertsPerToken, config: moe.router,
                              selectionBias: bias)
                for (e, weight) in zip(r.experts, r.weights) { assigned[e].append((t, weight)) }
                if scratch.routingObserver != nil { chosen.append(r.experts) }
            }
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
            try executor.runExperts(layer: layer, tasks: tasks, input: gathered, output: expertOut, layerInput: input, tokens: tokens)
        } else if let cpu = device as? CPUDevice, cpu.tuning.groupsExperts(tasks.count, tokens: rows) {
            // Few tokens per expert: one grouped pass over all of them.
            scratch.gate.reserve(rows * moe.expertIntermediateSize)
            scratch.up.reserve(rows * moe.expertIntermediateSize)
            cpu.feedForward(group: tasks.map { GroupedExpert(w.experts[$0.expert], firstRow: $0.firstRow, tokens: $0.tokens) },
                            input: gathered, output: expertOut, gate: scratch.gate.pointer, up: scratch.up.pointer)
        } else {
            for task in tasks {
                device.feedForward(w.experts[task.expert], input: gathered + task.firstRow * hidden,
                                   output: expertOut + task.firstRow * hidden, tokens: task.tokens,
                                   gate: scratch.gate.pointer, up: scratch.up.pointer)
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
            device.feedForward(shared, input: input, output: expertOut, tokens: tokens, gate: scratch.gate.pointer, up: scratch.up.pointer)
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
