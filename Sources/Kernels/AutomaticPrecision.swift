import KernelsC

/// `--precision auto`: per weight type, the fastest activation format this CPU has a kernel for
/// whose quality stays within the contract.
///
/// The contract, from llama.cpp's own figures: llama.cpp runs every Q8_0/Q4_0 product on int8
/// activations and every BF16 product on bf16 activations, and the KL divergences it publishes for
/// its files (tools/perplexity/README.md) include that rounding: Q8_0 against FP16, mean 0.001355 with
/// the top token the same 97.67% of the time on LLaMA 3 8B (0.000369 and 98.85% on LLaMA 2 7B); BF16
/// against FP16, 0.000025 and 99.74%. An activation format may be the default when, measured by
/// `switchyard perplexity --kl-divergence` against f32 activations on the same weights:
/// - on the bundled model's held-out text (a trained model), its mean KL divergence is at most
///   `maximumMeanDivergence` and the top token agrees at least `minimumSameTop` of the time: both
///   stricter than llama.cpp's Q8_0 default;
/// - on the benchmark model (random weights, so nearly uniform distributions over 32000 tokens, whose
///   top token is a near-tie that says nothing), its mean KL divergence is below what Q8_0 weights
///   cost there against bf16 weights: activations that lose less than the weight format llama.cpp's
///   users take as lossless.
/// The measured figures are in benchmarks/README.md ("The precision contract"); EvaluationTests hold
/// the bundled model to the contract at every precision `auto` can choose.
///
/// Speed decides among the formats within the contract: int8 products use integer dot products
/// (AVX512-VNNI, AVX-VNNI or AVX2) and read no more than f32's; bf16 products with `vdpbf16ps` do half of
/// f32's arithmetic per weight (AVX512-BF16); without that instruction bf16 activations would go
/// through the Swift twin, which defines the bits rather than competing with f32's C kernels, so
/// such CPUs keep f32 for bf16 weights.
public enum AutomaticPrecision {
    public static let maximumMeanDivergence = 0.001
    public static let minimumSameTop = 0.99

    /// The choice for this CPU.
    public static var choice: ActivationPrecision {
        choice(integerDot: sy_quantized_dot_level() >= 1, bf16Dot: sy_bf16dp_level() >= 1)
    }

    /// The choice for a CPU with (or without) integer dot products and AVX512-BF16.
    public static func choice(integerDot: Bool, bf16Dot: Bool) -> ActivationPrecision {
        switch (integerDot, bf16Dot) {
        case (true, true): .int8bf16
        case (true, false): .int8
        case (false, true): .bf16
        case (false, false): .f32
        }
    }
}
