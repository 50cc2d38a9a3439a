import Testing
@testable import Kernels

@Suite("--precision auto")
struct AutomaticPrecisionTests {
    @Test("takes, per weight type, the fast format the CPU has a kernel for")
    func choices() {
        #expect(AutomaticPrecision.choice(integerDot: true, bf16Dot: true) == .int8bf16)
        #expect(AutomaticPrecision.choice(integerDot: true, bf16Dot: false) == .int8)
        #expect(AutomaticPrecision.choice(integerDot: false, bf16Dot: true) == .bf16)
        #expect(AutomaticPrecision.choice(integerDot: false, bf16Dot: false) == .f32)
    }

    @Test("each precision rounds the activations of exactly its weight types")
    func flags() {
        let rounds = ActivationPrecision.allCases.map { ($0.rawValue, $0.quantizesActivations, $0.roundsActivationsToBF16) }
        #expect(rounds.map(\.0) == ["f32", "int8", "bf16", "int8+bf16"])
        #expect(rounds.map(\.1) == [false, true, false, true])
        #expect(rounds.map(\.2) == [false, false, true, true])
    }
}
