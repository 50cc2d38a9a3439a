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
        .executable(name: "switchyard-worker", targets: ["switchyard-worker"]),
        .library(name: "Engine", targets: ["Engine"]),
        .library(name: "Models", targets: ["Models"]),
        .library(name: "Runtime", targets: ["Runtime"]),
        .library(name: "Orchestration", targets: ["Orchestration"]),
        .library(name: "Generation", targets: ["Generation"]),
        .library(name: "Batching", targets: ["Batching"]),
        .library(name: "Server", targets: ["Server"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/vapor/sqlite-nio", from: "1.13.0"),
    ],
    targets: [
        // --- Support and formats: leaves that know nothing of models.
        // The C library, whole-file reads, byte sizes, durations, completions and serial queues:
        // what every other module would otherwise copy.
        .target(name: "SwitchyardSupport"),
        // A JSON reader/writer that keeps numbers exact, reports paths in errors, and is fast on
        // multi-megabyte tokenizer.json files.
        .target(name: "SwitchyardJSON", swiftSettings: tuned),
        // Memory-mapped weight files of any format: huge-page mapping, O_DIRECT reads of byte
        // ranges for the disk tier, releasing pages.
        .target(name: "WeightFiles", dependencies: ["SwitchyardSupport"], swiftSettings: tuned),
        // Safetensors files and sharded checkpoints; validates every header.
        .target(name: "SafeTensors", dependencies: ["SwitchyardJSON", "WeightFiles", "SwitchyardSupport"], swiftSettings: tuned),
        // GGUF files (llama.cpp's format), one or split: metadata of every type, tensor infos, the
        // data mapped; every count and offset validated.
        .target(name: "GGUF", dependencies: ["WeightFiles", "SwitchyardSupport"], swiftSettings: tuned),
        // NumPy .npy arrays: the logits contract with transformers.
        .target(name: "NPY", dependencies: ["SwitchyardSupport"]),
        // Hugging Face tokenizer.json.
        .target(name: "Tokenizers", dependencies: ["GGUF", "SwitchyardJSON", "SwitchyardSupport"], swiftSettings: tuned),
        // Chat templates: a Jinja interpreter as transformers' apply_chat_template renders them.
        .target(name: "ChatTemplates", dependencies: ["GGUF", "SwitchyardJSON", "SwitchyardSupport"], swiftSettings: tuned),

        // --- Compute.
        // Integer and bf16 micro-kernels that need instructions Swift cannot spell (AVX2 maddubs,
        // AVX512-VNNI dpbusd, AVX512-BF16 dpbf16ps, prefetch), chosen at run time; each has a Swift twin in Kernels.
        .target(name: "KernelsC", cSettings: [.unsafeFlags(["-O3"])]),
        // CPU numeric kernels (matrix products over bf16/f16/f32/Q8_0/Q4_0/Q4_K weights, norms, RoPE,
        // softmax, attention) and the persistent thread pool they run on.
        .target(name: "Kernels", dependencies: ["KernelsC", "SwitchyardSupport"], swiftSettings: tuned),
        // The device vocabulary, apart from any model: compute devices and the CPU device, the
        // Accelerator protocol, the expert and attention seams, the KV cache protocol and its host
        // implementation, tiers.
        .target(name: "Runtime", dependencies: ["Kernels", "SwitchyardSupport"], swiftSettings: tuned),

        // --- Backends: modules that conform to Runtime's contracts.
        // An accelerator emulated on the host (its own memory, streams and copy engine).
        .target(name: "EmulatedBackend", dependencies: ["Runtime", "Kernels", "SwitchyardSupport"],
                path: "Sources/Backends/EmulatedBackend", swiftSettings: tuned),
        // CUDA, loaded at run time (dlopen): the driver, NVRTC, and the kernels as embedded source.
        .target(name: "CUDA", dependencies: ["SwitchyardSupport"], path: "Sources/Backends/CUDA", swiftSettings: tuned),
        // The CUDA device behind Runtime's contracts (to be filled on a GPU; it probes for now).
        .target(name: "CUDABackend", dependencies: ["CUDA", "Runtime"], path: "Sources/Backends/CUDABackend", swiftSettings: tuned),

        // --- Two-tier inference: attention and KV caches on other hosts.
        // The attention wire: frames, requests and replies, every field checked.
        .target(name: "AttentionWire", dependencies: [
            "Runtime", "SwitchyardSupport", .product(name: "NIOCore", package: "swift-nio"),
        ], path: "Sources/Remote/AttentionWire", swiftSettings: tuned),
        // An attention worker: KV caches and attention behind a TCP server.
        .target(name: "AttentionWorker", dependencies: [
            "AttentionWire", "Runtime", "Kernels", "SwitchyardSupport",
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
        ], path: "Sources/Remote/AttentionWorker", swiftSettings: tuned),
        // Tier 1's side: an attention executor and KV cache whose rows live on attention workers.
        .target(name: "RemoteAttention", dependencies: [
            "AttentionWire", "Runtime", "SwitchyardSupport",
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
        ], path: "Sources/Remote/RemoteAttention", swiftSettings: tuned),

        // --- Expert hosts: routed experts in other hosts' memory (EPS-MoE's expert parallelism).
        // The expert wire: AttentionWire's frames with requests of their own, every field checked.
        .target(name: "ExpertWire", dependencies: [
            "AttentionWire", .product(name: "NIOCore", package: "swift-nio"),
        ], path: "Sources/Remote/ExpertWire", swiftSettings: tuned),
        // An expert host: a subset of a model's routed experts behind the workers' frame server.
        .target(name: "ExpertWorker", dependencies: [
            "AttentionWire", "AttentionWorker", "ExpertWire", "Kernels", "Models", "Runtime", "SwitchyardSupport", "WeightFiles",
            .product(name: "NIOCore", package: "swift-nio"),
        ], path: "Sources/Remote/ExpertWorker", swiftSettings: tuned),
        // Tier 1's side: expert hosts as Orchestration's `ExpertHost`.
        .target(name: "RemoteExperts", dependencies: [
            "AttentionWire", "ExpertWire", "Orchestration", "RemoteAttention", "Runtime", "SwitchyardSupport",
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
        ], path: "Sources/Remote/RemoteExperts", swiftSettings: tuned),

        // --- The model, its placement, the engine.
        // Model definitions: configs, one file per architecture family, layers (attention variants,
        // routing, MoE), weights bound by logical name, loading from a format-neutral source, the
        // forward pass and sessions.
        .target(name: "Models", dependencies: ["Runtime", "Kernels", "SwitchyardJSON", "SafeTensors", "GGUF", "WeightFiles", "SwitchyardSupport"],
                swiftSettings: tuned),
        // Tiers: one placement for `plan` and execution, the per-layer makespan scheduler, expert
        // caches and prefetch, measured costs, traces, routing profiles.
        .target(name: "Orchestration", dependencies: ["Models", "Runtime", "Kernels", "WeightFiles", "SwitchyardJSON", "SwitchyardSupport"],
                swiftSettings: tuned),
        // The composition root: an engine (model, devices, tiers, kernel choice) from typed options,
        // for the CLI, the server and the tests alike.
        .target(name: "Engine", dependencies: [
            "Models", "Orchestration", "Runtime", "Kernels", "EmulatedBackend", "CUDABackend", "RemoteAttention", "RemoteExperts", "ExpertWire",
            "SwitchyardJSON",
            "SwitchyardSupport",
        ], swiftSettings: tuned),

        // --- Surfaces.
        // Perplexity and KL divergence over a text, as llama-perplexity computes them, and the base
        // log-probability files in its layout.
        .target(name: "Evaluation", dependencies: ["SwitchyardSupport"], swiftSettings: tuned),
        // Sampling, stop strings, streaming text, the one decode loop.
        .target(name: "Generation", dependencies: ["Models", "Tokenizers", "SwitchyardSupport"], swiftSettings: tuned),
        // Continuous batching: a pure step planner, the model runner and the output processor.
        .target(name: "Batching", dependencies: ["Models", "Runtime", "Generation", "Tokenizers", "SwitchyardSupport"], swiftSettings: tuned),
        // Batch API state that outlives the server: files and batches in SQLite, file contents on disk.
        .target(name: "BatchStore", dependencies: [
            "SwitchyardJSON", "SwitchyardSupport", .product(name: "SQLiteNIO", package: "sqlite-nio"),
        ]),
        // The OpenAI-compatible HTTP server over the batch scheduler.
        .target(name: "Server", dependencies: [
            "Batching", "BatchStore", "ChatTemplates", "Tokenizers", "Generation", "SwitchyardJSON", "SwitchyardSupport",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: tuned),
        // The commands every binary has: parse flags into the engine's options, call it, print.
        .target(name: "Commands", dependencies: [
            "Engine", "Evaluation", "GGUF", "Models", "Orchestration", "Runtime", "Generation", "Kernels", "Tokenizers", "ChatTemplates", "SwitchyardJSON",
            "SwitchyardSupport", "NPY", "AttentionWire", "AttentionWorker", "RemoteAttention", "ExpertWorker", "ExpertWire", "RemoteExperts",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: tuned),
        // The command-line tool: the commands and the HTTP server.
        .executableTarget(name: "switchyard", dependencies: [
            "Commands", "Batching", "ChatTemplates", "Models", "Server", "Tokenizers", "SwitchyardSupport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: tuned),
        // The same commands without the server (and the full Foundation it brings): the binary that
        // goes to a GPU machine or another host.
        .executableTarget(name: "switchyard-worker", dependencies: [
            "Commands", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: tuned),

        // A seeded mutation fuzzer over every parser of outside input; CI runs it for a bounded time.
        .executableTarget(name: "switchyard-fuzz", dependencies: [
            "Batching", "ChatTemplates", "Evaluation", "GGUF", "Kernels", "Models", "Orchestration", "SafeTensors", "Server", "SwitchyardJSON", "SwitchyardSupport",
            "Tokenizers", "AttentionWire", "AttentionWorker", "ExpertWire", "ExpertWorker", "Runtime", .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: tuned),

        // What the test targets share: the repository's paths, transformers' reference logits,
        // error measures.
        .target(name: "SwitchyardTestSupport", dependencies: ["NPY", "SafeTensors", "SwitchyardJSON", "SwitchyardSupport"], path: "Tests/SwitchyardTestSupport"),
        .testTarget(name: "SwitchyardSupportTests", dependencies: ["SwitchyardSupport"]),
        .testTarget(name: "EvaluationTests", dependencies: [
            "Evaluation", "Engine", "Kernels", "Models", "Tokenizers", "NPY", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport",
        ], exclude: ["Fixtures"]),
        .testTarget(name: "WeightFilesTests", dependencies: ["WeightFiles", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "SwitchyardJSONTests", dependencies: ["SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "KernelsC", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"],
                    swiftSettings: tuned),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "Kernels", "SwitchyardSupport"]),
        .testTarget(name: "TokenizersTests", dependencies: ["GGUF", "Tokenizers", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "CUDATests", dependencies: ["CUDA", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "ChatTemplatesTests", dependencies: ["ChatTemplates", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport"]),
        .testTarget(name: "ModelsTests", dependencies: [
            "Models", "Runtime", "SafeTensors", "GGUF", "Kernels", "SwitchyardJSON", "NPY", "SwitchyardSupport", "SwitchyardTestSupport",
        ]),
        .testTarget(name: "OrchestrationTests", dependencies: [
            "Orchestration", "Engine", "Models", "Runtime", "Kernels", "SwitchyardSupport", "SwitchyardTestSupport",
        ]),
        .testTarget(name: "BackendConformanceTests", dependencies: [
            "Runtime", "EmulatedBackend", "CUDABackend", "Engine", "Models", "Kernels", "SwitchyardSupport", "SwitchyardTestSupport",
        ], swiftSettings: tuned),
        .testTarget(name: "RemoteAttentionTests", dependencies: [
            "AttentionWire", "AttentionWorker", "RemoteAttention", "Engine", "Models", "Generation", "Tokenizers", "Runtime", "Kernels",
            "SwitchyardSupport", "SwitchyardTestSupport", .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "RemoteExpertsTests", dependencies: [
            "AttentionWire", "Engine", "ExpertWire", "ExpertWorker", "Kernels", "Models", "Orchestration", "Runtime", "SwitchyardSupport",
            "SwitchyardTestSupport", .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "GenerationTests", dependencies: [
            "Generation", "Models", "Tokenizers", "NPY", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport",
        ]),
        .testTarget(name: "BatchingTests", dependencies: [
            "Batching", "Engine", "Orchestration", "Generation", "Models", "Tokenizers", "SwitchyardSupport", "SwitchyardTestSupport",
        ]),
        .testTarget(name: "BatchStoreTests", dependencies: ["BatchStore", "SwitchyardJSON", "SwitchyardSupport"]),
        .testTarget(name: "ServerTests", dependencies: [
            "Server", "Batching", "ChatTemplates", "Models", "Tokenizers", "SwitchyardJSON", "SwitchyardSupport", "SwitchyardTestSupport",
        ]),
    ],
    swiftLanguageModes: [.v6]
)
