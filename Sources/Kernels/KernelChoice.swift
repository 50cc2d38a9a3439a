import KernelsC
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which bf16 kernel a product runs for how many tokens, from costs measured on this machine (the
/// CPU form of EPS-MoE's kernel selection): one token is a matrix-vector product (the one-row
/// kernel), a few tokens the one-row kernel four tokens at a time, and from `tileFrom` tokens on
/// the AVX-512 tile of 4 rows x 5 tokens. Both give the same bits for every token, so the choice
/// is only about speed.
public struct KernelChoice: Sendable {
    /// Token counts measured, and the seconds of one product of the sample matrix at each with
    /// either kernel.
    public var tokenCounts: [Int] = []
    public var rowKernelSeconds: [Double] = []
    public var tileSeconds: [Double] = []
    /// The fewest tokens from which the tile was faster at every count measured; nil: never.
    public var tileFrom: Int?

    /// Whether this machine has the tile (AVX-512).
    public static var tileAvailable: Bool { sy_bf16_level() == 2 }

    /// The threshold in force.
    public static var current: Int { Int(sy_bf16_tile_from()) }

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
        let saved = current
        defer { sy_set_bf16_tile_from(Int32(saved)) }
        func seconds(_ tokens: Int, tileFrom: Int) -> Double {
            sy_set_bf16_tile_from(Int32(tileFrom))
            var best = Double.infinity
            for _ in 0..<repetitions {
                let matrix = WeightMatrix(element: .bf16, rows: rows, columns: columns, data: weights + next * rows * columns)
                next = (next + 1) % copies
                let start = ContinuousClock.now
                matmul(matrix, input: input, inputStride: columns, output: output, outputStride: rows, tokens: tokens, pool: pool)
                let (s, attoseconds) = (ContinuousClock.now - start).components
                best = min(best, Double(s) + Double(attoseconds) * 1e-18)
            }
            return best
        }
        for _ in 0..<copies { _ = seconds(1, tileFrom: Int(Int32.max)) }  // page the copies in
        for tokens in 5...maxTokens {
            choice.tokenCounts.append(tokens)
            choice.rowKernelSeconds.append(seconds(tokens, tileFrom: Int(Int32.max)))
            choice.tileSeconds.append(seconds(tokens, tileFrom: 1))
        }
        // The smallest count from which the tile wins at every larger count measured.
        var from: Int?
        for i in choice.tokenCounts.indices.reversed() {
            guard choice.tileSeconds[i] <= choice.rowKernelSeconds[i] else { break }
            from = choice.tokenCounts[i]
        }
        choice.tileFrom = from
        return choice
    }

    /// Makes products use this choice from now on (the tile never, when it never won; without
    /// AVX-512 the threshold is kept but no tile runs).
    public func apply() {
        sy_set_bf16_tile_from(Int32(tileFrom ?? Int(Int32.max)))
    }

    /// One line for logs and the bench report.
    public var summary: String {
        guard !tokenCounts.isEmpty else { return "bf16 kernel choice: one-row kernel (no AVX-512 tile on this CPU)" }
        let pairs = tokenCounts.indices.map { i in
            "\(tokenCounts[i]): \(Int((rowKernelSeconds[i] * 1e6).rounded())) / \(Int((tileSeconds[i] * 1e6).rounded())) µs"
        }
        let verdict = tileFrom.map { "tile from \($0) tokens" } ?? "one-row kernel at every count"
        return "bf16 kernel choice (tokens: one-row / tile, an expert-sized product): \(pairs.joined(separator: ", ")); \(verdict)"
    }
}
