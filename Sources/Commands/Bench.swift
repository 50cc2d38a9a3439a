import ArgumentParser
import Generation
import Kernels
import Models
import RemoteAttention
import SwitchyardJSON
import SwitchyardSupport

/// `switchyard bench`: llama-bench's measurements for Switchyard.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt processing (pp) and text generation (tg) speed, as llama-bench does.")

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: [.customShort("p"), .customLong("prompt-tokens")], help: "Prompt length for the pp test (0 skips it).")
    var promptTokens: Int = 512

    @Option(name: [.customShort("n"), .customLong("gen-tokens")], help: "Tokens generated in the tg tests (0 skips them).")
    var generatedTokens: Int = 128

    @Option(name: [.short, .customLong("repetitions")], help: "Measured repetitions of each test, after one warm-up run.")
    var repetitions: Int = 3

    @Option(help: "Parallel sequences for the tg test, comma-separated (1 is plain decode).")
    var batch: String = "1"

    @Flag(help: "Print one JSON object per test.")
    var json = false

    @Option(name: .customLong("micro-batches"), help: "With --attention-workers: micro-batches in flight per step (default: Little's law on the measured round trip).")
    var microBatches: Int?

    func validate() throws {
        try checkRange(promptTokens, "-p", 0...positionLimit)
        try checkRange(generatedTokens, "-n", 0...positionLimit)
        try checkRange(repetitions, "-r", 1...1000)
        try checkRange(microBatches, "--micro-batches", 1...Model.maxMicroBatches)
    }

    func run() throws {
        try reportingErrors {
            let batches = try batch.split(separator: ",").map { part -> Int in
                guard let b = Int(part.trimmed(" ")), (1...4096).contains(b) else {
                    throw InputError("--batch: '\(part)' is not a number of sequences between 1 and 4096")
                }
                return b
            }
            let engine = try modelOptions.loadEngine(kvPositions: max(promptTokens, (batches.max() ?? 1) * (generatedTokens + 1)))
            let model = engine.model
            let vocab = model.config.vocabularySize
            var random = RandomGenerator(seed: 42)
            // Random ordinary tokens, as llama-bench uses (the first ids are special in most vocabularies).
            func randomTokens(_ count: Int) -> [Int] { (0..<count).map { _ in 3 + Int(random.next() % UInt64(vocab - 3)) } }
            var results: [(test: String, mean: Double, stddev: Double)] = []
            let remote = model.attention as? RemoteAttention
            var twoTier: [String: (microBatches: Int, roundTrip: Double, wireBytesPerTokenLayer: Double)] = [:]
            var greedy = SamplingParameters()
            greedy.temperature = 0

            if promptTokens > 0 {
                let tokens = randomTokens(promptTokens)
                let speeds = try measure { () throws -> Double in
                    let session = try model.makeSession(contextLength: promptTokens)
                    let start = ContinuousClock.now
                    _ = try session.forward(tokens)
                    return Double(promptTokens) / (ContinuousClock.now - start).seconds
                }
                results.append(("pp\(promptTokens)", mean(speeds), stddev(speeds)))
            }
            // The read bandwidth just before and just after the plain decode runs: on a shared machine it
            // moves between sittings (28-58 GB/s within an hour on one VM), and a roofline measured apart
            // from the runs it judges said 49% or 113% of the same speed.
            var bandwidths: [Double] = []
            if generatedTokens > 0 {
                for b in batches {
                    if b == 1 { bandwidths.append(measureReadBandwidth(pool: model.pool)) }
                    defer { if b == 1 { bandwidths.append(measureReadBandwidth(pool: model.pool)) } }
                    let starts = randomTokens(b)
                    let workspace = Workspace()
                    var wire = (sent: 0, received: 0, tokens: 0)
                    let speeds = try measure { () throws -> Double in
                        let sessions = try (0..<b).map { _ in try model.makeSession(contextLength: generatedTokens + 1) }
                        // Greedy decode loops that ignore end-of-sequence tokens, as llama-bench generates.
                        var loops = (0..<b).map { i in
                            DecodeLoop(sampling: greedy, tokenizer: nil, promptTokens: [starts[i]], eos: [], maxTokens: generatedTokens + 1)
                        }
                        var logits: [Float] = []
                        for (s, t) in zip(sessions, starts) { logits += try s.forward([t]) }
                        var next = try loops.indices.map { try loops[$0].next(logits: Array(logits[($0 * vocab)..<(($0 + 1) * vocab)]), contextFull: false).token }
                        let start = ContinuousClock.now
                        let sent = remote?.bytesSent ?? 0, received = remote?.bytesReceived ?? 0
                        for _ in 0..<generatedTokens {
                            if b == 1 {
                                logits = try sessions[0].forward(next)
                            } else {
                                logits = try model.forwardStep(Array(zip(sessions, next.map { [$0] })).map { ($0, $1) }, workspace: workspace,
                                                               microBatches: microBatches)
                            }
                            next = try loops.indices.map { try loops[$0].next(logits: Array(logits[($0 * vocab)..<(($0 + 1) * vocab)]), contextFull: false).token }
                        }
                        let seconds = (ContinuousClock.now - start).seconds
                        if let remote {
                            wire = (remote.bytesSent - sent, remote.bytesReceived - received, b * generatedTokens)
                        }
                        return Double(b * generatedTokens) / seconds
                    }
                    let test = b == 1 ? "tg\(generatedTokens)" : "tg\(generatedTokens)@b\(b)"
                    results.append((test, mean(speeds), stddev(speeds)))
                    if let remote {
                        twoTier[test] = (microBatches ?? workspace.microBatchTuner.lastChoice, remote.roundTrip?.seconds ?? 0,
                                         Double(wire.sent + wire.received) / Double(max(1, wire.tokens * model.config.layerCount)))
                    }
                }
            }

            let bytesPerToken = model.weightBytesPerToken
            if bandwidths.isEmpty { bandwidths.append(measureReadBandwidth(pool: model.pool)) }
            let bandwidth = bandwidths.max()!
            let threads = model.pool.threadCount
            let info = ModelInfo(model)
            if json {
                for r in results {
                    var o = JSONObject()
                    o["test"] = .string(r.test)
                    o["tokens_per_second"] = .double(r.mean)
                    o["stddev"] = .double(r.stddev)
                    o["threads"] = .int(threads)
                    o["precision"] = .string(engine.precision.rawValue)
                    o["precision_requested"] = .string(modelOptions.precision.rawValue)
                    if let t = twoTier[r.test] {
                        o["micro_batches"] = .int(t.microBatches)
                        o["attention_round_trip_seconds"] = .double(t.roundTrip)
                        o["wire_bytes_per_token_per_layer"] = .double(t.wireBytesPerTokenLayer)
                    }
                    if r.test.hasPrefix("tg") {
                        o["weight_bytes_per_token"] = .int(bytesPerToken)
                        o["bandwidth_bytes_per_second"] = .double(bandwidth)
                        if !r.test.contains("@") { o["bandwidth_fraction"] = .double(r.mean * Double(bytesPerToken) / bandwidth) }
                    }
                    writeOut(JSONValue.object(o).serialized() + "\n")
                }
                return
            }
            writeOut("| model | size | params | threads | precision | test | t/s |\n| --- | ---: | ---: | ---: | --- | --- | ---: |\n")
            for r in results {
                writeOut("| \(model.config.modelType) | \(formatBytes(info.weightBytes, digits: 2)) | \(formatCount(info.totalParameters)) | \(threads) | \(engine.precision.rawValue) | \(r.test) | \(fixed(r.mean, 2)) ± \(fixed(r.stddev, 2)) |\n")
            }
            for r in results {
                guard let t = twoTier[r.test] else { continue }
                writeOut("\(r.test): \(t.microBatches) micro-batches in flight, attention round trip \(fixed(t.roundTrip * 1e3, 2)) ms, \(fixed(t.wireBytesPerTokenLayer, 0)) bytes on the wire per token per layer\n")
            }
            let roofline = bandwidth / Double(bytesPerToken)
            let around = bandwidths.count > 1 ? " (the higher of \(bandwidths.map { fixed($0 / 1e9, 1) }.joined(separator: " and ")), before and after the tg runs)" : ""
            var summary = "\nweights read per decoded token: \(formatBytes(bytesPerToken, digits: 2)); measured read bandwidth: \(fixed(bandwidth / 1e9, 1)) GB/s\(around); decode roofline: \(fixed(roofline, 1)) tok/s"
            if let tg = results.first(where: { $0.test == "tg\(generatedTokens)" }) {
                summary += "; tg reaches \(fixed(100 * tg.mean / roofline, 0))% of it"
            }
            writeOut(summary + "\n")
            if let choice = engine.kernelChoice { writeOut(choice.summary + "\n") }
            if let choice = engine.expertKernelChoice { writeOut(choice.summary + "\n") }
            if let choice = engine.tileChoice { writeOut(choice.summary + "\n") }
            if !model.hugePageResidency.isEmpty {
                let huge = model.hugePageResidency.reduce(0) { $0 + $1.hugeBytes }, total = model.hugePageResidency.reduce(0) { $0 + $1.bytes }
                writeOut("weight files mapped in 2 MiB pages: \(formatBytes(huge, digits: 2)) of \(formatBytes(total, digits: 2))\n")
            }
        }
    }

    /// One warm-up run, then `repetitions` measured runs.
    func measure(_ body: () throws -> Double) throws -> [Double] {
        _ = try body()
        return try (0..<repetitions).map { _ in try body() }
    }
}

func mean(_ v: [Double]) -> Double { v.reduce(0, +) / Double(v.count) }

func stddev(_ v: [Double]) -> Double {
    guard v.count > 1 else { return 0 }
    let m = mean(v)
    return (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count - 1)).squareRoot()
}
