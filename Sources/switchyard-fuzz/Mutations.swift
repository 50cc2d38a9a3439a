/// xorshift64*: a reproducible stream for a seed.
struct Random {
    var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
}

/// The mutations: bytes flipped, replaced, inserted, deleted, repeated, spliced from another seed,
/// and numbers replaced by the values that break arithmetic.
enum Mutations {
    static let numbers = ["-1", "0", "1", "2147483648", "4294967296", "9223372036854775807", "-9223372036854775808",
                          "18446744073709551616", "1e999", "-1e999", "NaN", "Infinity", "1e-45", "0.5", "1e30", "65536", "16777217"]
    static let tokens = [UInt8]("{}[]\":,-0123456789.eE\\u\u{0}\u{ff}{%}{{ }}()+*".utf8)

    static func apply(_ input: inout [UInt8], seeds: [[UInt8]], random: inout Random) {
        if input.isEmpty { input = [tokens[random.below(tokens.count)]]; return }
        let at = random.below(input.count)
        switch random.below(8) {
        case 0:
            input[at] ^= UInt8(1 << random.below(8))
        case 1:
            input[at] = tokens[random.below(tokens.count)]
        case 2:
            let n = 1 + random.below(8)
            input.insert(contentsOf: (0..<n).map { _ in UInt8(truncatingIfNeeded: random.next()) }, at: at)
        case 3:
            input.removeSubrange(at..<min(input.count, at + 1 + random.below(32)))
        case 4:
            let end = min(input.count, at + 1 + random.below(64))
            let chunk = Array(input[at..<end])
            for _ in 0..<(1 + random.below(16)) { input.insert(contentsOf: chunk, at: end) }
        case 5:
            let other = seeds[random.below(seeds.count)]
            guard !other.isEmpty else { return }
            let from = random.below(other.count)
            let piece = other[from..<min(other.count, from + 1 + random.below(128))]
            input.replaceSubrange(at..<min(input.count, at + piece.count), with: piece)
        default:
            // A run of digits becomes a number that breaks arithmetic.
            var start = at
            while start < input.count, !(48...57).contains(input[start]) { start += 1 }
            guard start < input.count else { return }
            var end = start
            while end < input.count, (48...57).contains(input[end]) || input[end] == 46 { end += 1 }
            if start > 0, input[start - 1] == 45 { start -= 1 }
            input.replaceSubrange(start..<end, with: Array(numbers[random.below(numbers.count)].utf8))
        }
    }
}
