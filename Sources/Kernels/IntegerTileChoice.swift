import KernelsC
import SwitchyardSupport

/// Whether grouped Q8_0/Q4_0 products take AVX512-VNNI's tiles (4 rows at once on 512 bits) or one
/// row at a time on 256 bits, by token count, from costs measured on this machine. Where a 512-bit
/// operation runs as two halves (AMD's Zen 4) the one-row form read an expert from memory 1.4-1.7x
/// faster at one or two tokens (kernel_ab, Q8_0, 2 threads); elsewhere the tiles were the faster
/// form. Same bits either way (the integer lanes are exact), so the choice is only about speed.
public struct IntegerTileChoice: Sendable {
    /// Token counts measured (1-4: a product's passes take up to 4), and the seconds of one product
    /// of the sample matrix at each, a row at a time and in tiles.
    public var tokenCounts: [Int] = []
    public var rowSeconds: [Double] = []
    public var tileSeconds: [Double] = []
    /// Tiles from this many tokens on (5: never).
    public var tilesFrom = 1

    public init() {}

    /// Whether products here would run the tiles at all (AVX512-VNNI in force).
    public static var matters: Bool { sy_integer_level_in_force() == 3 }

    /// Times a product of a grouped `element` (.q8_0x4 or .q4_0x4) matrix of `rows` x `columns`
    /// (read from memory, as a routed expert is) at 1...4 tokens each way, best of `repetitions`.
    public static func measure(element: WeightElement, rows: Int, columns: Int, repetitions: Int = 3, pool: ThreadPool) -> IntegerTileChoice {
        var choice = IntegerTileChoice()
        guard matters, element == .q8_0x4 || element == .q4_0x4, columns % GroupedBlocks.groupValues == 0 else { return choice }
        let rowBytes = element.rowBytes(columns), groupBytes = GroupedBlocks.groupBytes(q4: element == .q4_0x4)
        // Enough copies to pass 64 MiB, more than a server's L3, so every product reads its weights
        // from memory as a routed expert does.
        let copies = (64 << 20) / max(1, rows * rowBytes) + 1
        let bytes = copies * rows * rowBytes
        let weights = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let input = UnsafeMutablePointer<Float>.allocate(capacity: 4 * columns)
        let output = UnsafeMutablePointer<Float>.allocate(capacity: 4 * rows)
        defer { weights.deallocate(); input.deallocate(); output.deallocate() }
        var state: UInt32 = 12345
        for i in 0..<(bytes / 4) {
            state = state &* 1_664_525 &+ 1_013_904_223
            weights.storeBytes(of: state, toByteOffset: 4 * i, as: UInt32.self)
        }
        // Each group's four float16 scales set to 1/64, so no value is a NaN or an infinity.
        for g in 0..<(bytes / groupBytes) {
            for k in 0..<4 { weights.storeBytes(of: UInt16(0x2400), toByteOffset: g * groupBytes + 2 * k, as: UInt16.self) }
        }
        for i in 0..<(4 * columns) { input[i] = Float(i % 7) * 0.125 - 0.375 }
        var next = 0
        func seconds(_ tokens: Int, tilesFrom: Int) -> Double {
            let tuning = KernelTuning(integerTilesFrom: tilesFrom)
            var best = Double.infinity
            for _ in 0..<repetitions {
                let matrix = WeightMatrix(element: element, rows: rows, columns: columns, data: weights + next * rows * rowBytes)
                next = (next + 1) % copies
                let start = ContinuousClock.now
                matmul(matrix, input: input, inputStride: columns, output: output, outputStride: rows, tokens: tokens, pool: pool,
                       precision: .int8, tuning: tuning)
                best = min(best, (ContinuousClock.now - start).seconds)
            }
            return best
        }
        for _ in 0..<copies { _ = seconds(1, tilesFrom: 1) }  // page the copies in
        for tokens in 1...4 {
            choice.tokenCounts.append(tokens)
            choice.rowSeconds.append(seconds(tokens, tilesFrom: 5))
            choice.tileSeconds.append(seconds(tokens, tilesFrom: 1))
        }
        // The smallest count from which the tiles win at every larger count measured.
        choice.tilesFrom = 5
        for i in choice.tokenCounts.indices.reversed() {
            guard choice.tileSeconds[i] <= choice.rowSeconds[i] else { break }
            choice.tilesFrom = choice.tokenCounts[i]
        }
        return choice
    }

    /// One line for logs and the bench report.
    public var summary: String {
        guard !tokenCounts.isEmpty else { return "integer kernel choice: none to make (no AVX512-VNNI tiles in force)" }
        let pairs = tokenCounts.indices.map { i in
            "\(tokenCounts[i]): \(Int((rowSeconds[i] * 1e6).rounded())) / \(Int((tileSeconds[i] * 1e6).rounded())) µs"
        }
        let verdict = tilesFrom <= 4 ? "tiles from \(tilesFrom) tokens" : "a row at a time at every count"
        return "integer kernel choice (tokens: a row at a time / 4-row tiles, an expert-sized product): \(pairs.joined(separator: ", ")); \(verdict)"
    }
}
