import KernelsC
import SwitchyardSupport

/// Whether the AVX-512 products of a few tokens take tiles of 4 rows at once or one row at a time,
/// by token count, from costs measured on this machine: grouped Q8_0/Q4_0 weights with int8
/// activations (AVX512-VNNI's 512-bit tiles, or one row on 256 bits) and bf16 weights with bf16
/// activations (vdpbf16ps on 4 rows, or on one). Where a 512-bit operation runs as two halves (AMD's
/// Zen 4) one row at a time read an expert from memory up to twice as fast at one or two tokens;
/// elsewhere the tiles were the faster form. Same bits either way (each row's lanes and sums are
/// the same), so the choice is only about speed. Products of more than one pass always take the
/// tiles: after the first pass their rows come from the caches, where the tiles' shared loads pay.
public struct TileChoice: Sendable {
    /// What was measured: .q8_0x4, .q4_0x4 or .bf16.
    public var element: WeightElement = .bf16
    /// Token counts measured (one pass: up to 4 tokens for the integer kernels, 6 for vdpbf16ps),
    /// and the seconds of one product of the sample matrix at each, a row at a time and in tiles.
    public var tokenCounts: [Int] = []
    public var rowSeconds: [Double] = []
    public var tileSeconds: [Double] = []
    /// Tiles from this many tokens on (one more than the largest count: never).
    public var tilesFrom = 1

    public init() {}

    /// The activations products of `element` run at for the choice to be about them, or nil when
    /// it is about nothing here (no such tiles in force on this CPU).
    public static func precision(for element: WeightElement, at precision: ActivationPrecision) -> ActivationPrecision? {
        switch element {
        case .q8_0x4, .q4_0x4: return precision.quantizesActivations && sy_integer_level_in_force() == 3 ? .int8 : nil
        case .bf16: return precision.roundsActivationsToBF16 && sy_bf16dp_level() > 0 ? .int8bf16 : nil
        default: return nil
        }
    }

    /// The largest token count of one pass.
    static func passTokens(_ element: WeightElement) -> Int { element == .bf16 ? 6 : 4 }

    /// The tuning with this choice in it.
    public func applied(to tuning: KernelTuning) -> KernelTuning {
        var t = tuning
        guard !tokenCounts.isEmpty else { return t }
        if element == .bf16 { t.bf16TilesFrom = tilesFrom } else { t.integerTilesFrom = tilesFrom }
        return t
    }

    /// Times a product of a `rows` x `columns` matrix of `element` (read from memory, as a routed
    /// expert is) at each token count of one pass, each way, best of `repetitions`; nothing when
    /// `precision(for:at:)` says the choice is about nothing here.
    public static func measure(element: WeightElement, rows: Int, columns: Int, precision asked: ActivationPrecision, repetitions: Int = 3,
                               pool: ThreadPool) -> TileChoice {
        var choice = TileChoice()
        choice.element = element
        guard let precision = precision(for: element, at: asked), columns % element.blockValues == 0 else { return choice }
        let rowBytes = element.rowBytes(columns)
        // Enough copies to pass 64 MiB, more than a server's L3, so every product reads its weights
        // from memory as a routed expert does.
        let copies = (64 << 20) / max(1, rows * rowBytes) + 1
        let bytes = copies * rows * rowBytes
        let weights = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let maxTokens = passTokens(element)
        let input = UnsafeMutablePointer<Float>.allocate(capacity: maxTokens * columns)
        let output = UnsafeMutablePointer<Float>.allocate(capacity: maxTokens * rows)
        defer { weights.deallocate(); input.deallocate(); output.deallocate() }
        var state: UInt32 = 12345
        for i in 0..<(bytes / 2) {
            state = state &* 1_664_525 &+ 1_013_904_223
            // Small bf16 values (exponent of 1.0 less a little), or bytes for the integer formats.
            weights.storeBytes(of: element == .bf16 ? 0x3C00 | UInt16(state >> 25) : UInt16(truncatingIfNeeded: state >> 16), toByteOffset: 2 * i,
                               as: UInt16.self)
        }
        if element != .bf16 {
            // Each group's four float16 scales set to 1/64, so no value is a NaN or an infinity.
            let groupBytes = GroupedBlocks.groupBytes(q4: element == .q4_0x4)
            for g in 0..<(bytes / groupBytes) {
                for k in 0..<4 { weights.storeBytes(of: UInt16(0x2400), toByteOffset: g * groupBytes + 2 * k, as: UInt16.self) }
            }
        }
        for i in 0..<(maxTokens * columns) { input[i] = Float(i % 7) * 0.125 - 0.375 }
        var next = 0
        func seconds(_ tokens: Int, tilesFrom: Int) -> Double {
            let tuning = KernelTuning(integerTilesFrom: tilesFrom, bf16TilesFrom: tilesFrom)
            var best = Double.infinity
            for _ in 0..<repetitions {
                let matrix = WeightMatrix(element: element, rows: rows, columns: columns, data: weights + next * rows * rowBytes)
                next = (next + 1) % copies
                let start = ContinuousClock.now
                matmul(matrix, input: input, inputStride: columns, output: output, outputStride: rows, tokens: tokens, pool: pool,
                       precision: precision, tuning: tuning)
                best = min(best, (ContinuousClock.now - start).seconds)
            }
            return best
        }
        for _ in 0..<copies { _ = seconds(1, tilesFrom: 1) }  // page the copies in
        for tokens in 1...maxTokens {
            choice.tokenCounts.append(tokens)
            choice.rowSeconds.append(seconds(tokens, tilesFrom: maxTokens + 1))
            choice.tileSeconds.append(seconds(tokens, tilesFrom: 1))
        }
        // The smallest count from which the tiles win at every larger count measured.
        choice.tilesFrom = maxTokens + 1
        for i in choice.tokenCounts.indices.reversed() {
            guard choice.tileSeconds[i] <= choice.rowSeconds[i] else { break }
            choice.tilesFrom = choice.tokenCounts[i]
        }
        return choice
    }

    /// One line for logs and the bench report.
    public var summary: String {
        let kind = element == .bf16 ? "bf16 (vdpbf16ps)" : "integer"
        guard !tokenCounts.isEmpty else { return "\(kind) tile choice: none to make (no such tiles in force)" }
        let pairs = tokenCounts.indices.map { i in
            "\(tokenCounts[i]): \(Int((rowSeconds[i] * 1e6).rounded())) / \(Int((tileSeconds[i] * 1e6).rounded())) µs"
        }
        let verdict = tilesFrom <= tokenCounts.count ? "tiles from \(tilesFrom) tokens" : "a row at a time at every count"
        return "\(kind) tile choice (tokens: a row at a time / 4-row tiles, an expert-sized product): \(pairs.joined(separator: ", ")); \(verdict)"
    }
}
