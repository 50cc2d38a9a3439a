import KernelsC
import SwitchyardSupport

/// How a bf16 product takes its tokens, from costs measured on this machine (the CPU form of
/// EPS-MoE's kernel selection). On AVX-512 it runs tiles of 4 rows by up to 5 tokens: one token is
/// a matrix-vector product, a few tokens one pass over the rows, and more tokens several passes,
/// of 4 tokens (the one-row kernel's width, which takes the rows left over) or, from
/// `fiveTokenPassesFrom` tokens on, of 5 (fewer passes, but 20 accumulators where 4 tokens keep 16).
/// Every way gives the same bits for every token, so the choice is only about speed.
public struct KernelChoice: Sendable {
    /// Token counts measured, and the seconds of one product of the sample matrix at each in
    /// passes of 4 or of 5 tokens.
    public var tokenCounts: [Int] = []
    public var fourTokenPassSeconds: [Double] = []
    public var fiveTokenPassSeconds: [Double] = []
    /// The fewest tokens from which passes of 5 were faster at every count measured; nil: never.
    public var fiveTokenPassesFrom: Int?

    /// Whether this machine has the tiles (AVX-512).
    public static var tileAvailable: Bool { sy_bf16_level() == 2 }

    /// Whether products at `precision` run the tiles this choice is about: with activations rounded
    /// to bf16 and AVX512-BF16 present, bf16 products go to the vdpbf16ps kernel instead, and a
    /// choice measured at load would be start-up time spent for nothing.
    public static func matters(at precision: ActivationPrecision) -> Bool {
        tileAvailable && !(precision.roundsActivationsToBF16 && sy_bf16dp_level() > 0)
    }

    /// Times a product of a bf16 expert-sized matrix (`rows` x `columns`, read from memory, as a
    /// routed expert is) at 5...12 tokens with each kernel, best of `repetitions`.
    public static func measure(rows: Int = 3584, columns: Int = 1024, repetitions: Int = 3, pool: ThreadPool) -> KernelChoice {
        var choice = KernelChoice()
        guard tileAvailable else { return choice }
        let maxTokens = 12
        // Enough copies to pass 64 MiB, more than a server's L3, so every product reads its weights
        // from memory as a routed expert does.
        let copies = (64 << 20) / max(1, rows * columns * 2) + 1
        let weights = UnsafeMutablePointer<UInt16>.allocate(capacity: copies * rows * columns)
        let input = UnsafeMutablePointer<Float>.allocate(capacity: maxTokens * columns)
        let output = UnsafeMutablePointer<Float>.allocate(capacity: maxTokens * rows)
        defer { weights.deallocate(); input.deallocate(); output.deallocate() }
        var state: UInt32 = 12345
        for i in 0..<(copies * rows * columns) {
            state = state &* 1_664_525 &+ 1_013_904_223
            weights[i] = 0x3C00 | UInt16(state >> 25)  // small positive bf16 values
        }
        for i in 0..<(maxTokens * columns) { input[i] = Float(i % 7) * 0.125 - 0.375 }
        var next = 0
        func seconds(_ tokens: Int, fiveTokenPassesFrom: Int) -> Double {
            let tuning = KernelTuning(bf16FiveTokenPassesFrom: fiveTokenPassesFrom)
            var best = Double.infinity
            for _ in 0..<repetitions {
                let matrix = WeightMatrix(element: .bf16, rows: rows, columns: columns, data: weights + next * rows * columns)
                next = (next + 1) % copies
                let start = ContinuousClock.now
                matmul(matrix, input: input, inputStride: columns, output: output, outputStride: rows, tokens: tokens, pool: pool,
                       tuning: tuning)
                best = min(best, (ContinuousClock.now - start).seconds)
            }
            return best
        }
        for _ in 0..<copies { _ = seconds(1, fiveTokenPassesFrom: Int(Int32.max)) }  // page the copies in
        for tokens in 5...maxTokens {
            choice.tokenCounts.append(tokens)
            choice.fourTokenPassSeconds.append(seconds(tokens, fiveTokenPassesFrom: Int(Int32.max)))
            choice.fiveTokenPassSeconds.append(seconds(tokens, fiveTokenPassesFrom: 1))
        }
        // The smallest count from which passes of 5 win at every larger count measured.
        var from: Int?
        for i in choice.tokenCounts.indices.reversed() {
            guard choice.fiveTokenPassSeconds[i] <= choice.fourTokenPassSeconds[i] else { break }
            from = choice.tokenCounts[i]
        }
        choice.fiveTokenPassesFrom = from
        return choice
    }

    /// The tuning that makes products use this choice (passes of 4 always when 5 never won; without
    /// AVX-512 no tile runs whatever the threshold).
    public var tuning: KernelTuning {
        KernelTuning(bf16FiveTokenPassesFrom: fiveTokenPassesFrom ?? Int.max)
    }

    /// One line for logs and the bench report.
    public var summary: String {
        guard !tokenCounts.isEmpty else { return "bf16 kernel choice: the one-row kernel, 4 tokens a pass (no AVX-512 tiles on this CPU)" }
        let pairs = tokenCounts.indices.map { i in
            "\(tokenCounts[i]): \(Int((fourTokenPassSeconds[i] * 1e6).rounded())) / \(Int((fiveTokenPassSeconds[i] * 1e6).rounded())) µs"
        }
        let verdict = fiveTokenPassesFrom.map { "5 a pass from \($0) tokens" } ?? "4 a pass at every count"
        return "bf16 kernel choice (tokens: 4 / 5 tokens a pass, an expert-sized product): \(pairs.joined(separator: ", ")); \(verdict)"
    }
}
