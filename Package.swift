// swift-tools-version:6.0
import PackageDescription
import Foundation

// Release builds are tuned for the build machine's CPU family: without a -march that enables FMA and
// F16C, SIMD multiply-add and half-float conversion become library calls per lane (see DESIGN.md).
// SWITCHYARD_PORTABLE=1 builds a binary that runs on any x86-64 (or the host's default on other CPUs).
let portable = ProcessInfo.processInfo.environment["SWITCHYARD_PORTABLE"] == "1"
#if arch(x86_64)
let cpuFlags: [String] = portable ? [] : ["-Xcc", "-march=x86-64-v3"]
#else
let cpuFlags: [String] = []
#endif
let tuned: [SwiftSetting] = cpuFlags.isEmpty ? [] : [.unsafeFlags(cpuFlags)]

let package = Package(
    name: "Switchyard",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "switchyard", targets: ["switchyard"]),
        .library(name: "Models", targets: ["Models"]),
        .library(name: "Generation", targets: ["Generation"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
    ],
    targets: [
        // The C library, whole-file reads, byte sizes, durations, completions and serial queues:
        // what every other module would otherwise copy.
        .target(name: "SwitchyardSupport"),
        // A JSON reader/writer that keeps numbers exact, reports paths in errors, and is fast on
        // multi-megabyte tokenizer.json files.
        .target(name: "SwitchyardJSON", dependencies: ["SwitchyardSupport"], swiftSettings: tuned),
        // Memory-mapped weight files of any format: huge-page mapping, O_DIRECT reads of byte
        // ranges for the disk tier, releasing pages.
        .target(name: "WeightFiles", dependencies: ["SwitchyardSupport"], swiftSettings: tuned),
        // Memory-mapped safetensors files and sharded checkpoints; validates every header.
        .target(name: "SafeTensors", dependencies: ["SwitchyardJSON", "WeightFiles", "SwitchyardSupport"], swiftSettings: tuned),
        // CPU numeric kernels (matrix products over bf16/f16/f32 weights, norms, RoPE, softmax) and
        // the persistent thread pool they run on.
        .target(name: "Kernels", dependencies: ["KernelsC", "SwitchyardSupport"], swiftSettings: tuned),
        // Integer dot-product micro-kernels that need instructions Swift cannot spell (AVX2
        // maddubs, AVX512-VNNI dpbusd), chosen at run time; each has a Swift twin in Kernels.
        .target(name: "KernelsC", cSettings: [.unsafeFlags(["-O3"])]),
        // NumPy .npy arrays: the logits contract with transformers.
        .target(name: "NPY", dependencies: ["SwitchyardSupport"]),
        // Hugging Face tokenizer.json.
        .target(name: "Tokenizers", dependencies: ["SwitchyardJSON", "SwitchyardSupport"], swiftSettings: tuned),
        // CUDA, loaded at run time (dlopen): the driver, NVRTC, and the kernels as embedded source.
        .target(name: "CUDA", dependencies: ["SwitchyardSupport"], swiftSettings: tuned),
        // Chat templates: a Jinja interpreter as transformers' apply_chat_template renders them.
        .target(name: "ChatTemplates", dependencies: ["SwitchyardJSON", "SwitchyardSupport"], swiftSettings: tuned),
        // Model configuration, architecture definitions, weight binding, device boundary, KV cache,
        // and the forward pass.
        .target(name: "Models", dependencies: ["SwitchyardJSON", "SafeTensors", "WeightFiles", "Kernels", "SwitchyardSupport"], swiftSettings: tuned),
        // Tiers and devices: the emulated accelerator, the disk tier under a RAM budget, measured
        // costs, the per-layer expert scheduler, expert caches and prefetch, traces.
        .target(name: "Orchestration", dependencies: ["Models", "Kernels", "SafeTensors", "WeightFiles", "SwitchyardJSON", "SwitchyardSupport"], swiftSettings: tuned),
        // Sampling, stop strings, streaming text, the generation loop.
        .target(name: "Generation", dependencies: ["Models", "Tokenizers", "SwitchyardSupport"], swiftSettings: tuned),
        // Continuous batching: a scheduler thread running every admitted sequence in shared steps.
        .target(name: "Batching", dependencies: ["Models", "Generation", "Tokenizers", "Kernels", "SwitchyardSupport"], swiftSettings: tuned),
        // The OpenAI-compatible HTTP server over the batch scheduler.
        .target(name: "Server", dependencies: [
            "Batching", "ChatTemplates", "Tokenizers", "Generation", "SwitchyardJSON", "SwitchyardSupport",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
        ], swiftSettings: tuned),
        .executableTarget(
            name: "switchyard",
            dependencies: [
                "Models", "Orchestration", "Generation", "Batching", "Kernels", "Tokenizers", "ChatTemplates", "SwitchyardJSON", "SwitchyardSupport", "NPY", "CUDA", "Server",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: tuned),

        // What the test targets share: the repository's paths, transformers' reference logits,
        // error measures.
        .target(name: "SwitchyardTestSupport", dependencies: ["NPY", "SwitchyardJSON", "SwitchyardSupport"], path: "Tests/SwitchyardTestSupport"),
        .testTarget(name: "SwitchyardJSONTests", dependencies: ["SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "SwitchyardSupportTests", dependencies: ["SwitchyardSupport"]),
        .testTarget(name: "WeightFilesTests", dependencies: ["WeightFiles", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"], swiftSettings: tuned),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "CUDATests", dependencies: ["CUDA", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "BatchingTests", dependencies: ["Batching", "Generation", "Models", "Tokenizers", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "ServerTests", dependencies: ["Server", "Batching", "ChatTemplates", "Models", "Tokenizers", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "ChatTemplatesTests", dependencies: ["ChatTemplates", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "SafeTensors", "Kernels", "SwitchyardJSON", "NPY", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "OrchestrationTests", dependencies: ["Orchestration", "Models", "Kernels", "NPY", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "GenerationTests", dependencies: ["Generation", "Models", "Tokenizers", "NPY", "SafeTensors", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
