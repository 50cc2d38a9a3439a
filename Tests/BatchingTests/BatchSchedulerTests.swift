import Testing
@testable import Batching
import Generation
import Models
import Tokenizers
import SwitchyardSupport
import SwitchyardTestSupport
import Engine
import Orchestration
let demo = demoModelPath
let model = try! Model(directory: demo, threads: 2)
let tokenizer = try! Tokenizer(directory: demo)
let prompts = ["In the beginning", "And the LORD said", "Blessed are the", "The king of Israel", "Once upon a time"]

func collect(_ stream: AsyncStream<CompletionEvent>) async -> (tokens: [Int], text: String, finish: FinishReason?) {
    var tokens: [Int] = [], text = "", finish: FinishReason?
    for await event in stream {
        switch event {
        case .text(let t, let ids, _): text += t; tokens += ids
        case .finished(let reason, _, _): finish = reason
        case .failed(let message): Issue.record("failed: \(message)")
        }
    }
    return (tokens, text, finish)
}

func solo(_ prompt: String, _ sampling: SamplingParameters, maxTokens: Int) throws -> GenerationResult {
    var options = GenerationOptions()
    options.sampling = sampling
    options.maxTokens = maxTokens
    return try Generator(model: model, tokenizer: tokenizer).generate(promptTokens: tokenizer.encode(prompt), options: options)
}

@Suite("continuous batching", .serialized)
struct BatchSchedulerTests {
    @Test func concurrentRequestsGiveTheirSoloTokens() async throws {
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 4, contextLength: 128)
        defer { scheduler.shutdown() }
        var greedy = SamplingParameters()
        greedy.temperature = 0
        var seeded = SamplingParameters()
        seeded.seed = 1234
        for sampling in [greedy, seeded] {
            let streams = try prompts.map { try scheduler.submit(CompletionRequest(promptTokens: tokenizer.encode($0), maxTokens: 16, sampling: sampling)).events }
            var results: [(tokens: [Int], text: String, finish: FinishReason?)] = []
            for s in streams { results.append(await collect(s)) }
            for (prompt, result) in zip(prompts, results) {
                let alone = try solo(prompt, sampling, maxTokens: 16)
                let expected = alone.finishReason == .stop ? Array(alone.tokens.dropLast()) : alone.tokens
                #expect(result.tokens.prefix(expected.count) == expected[...], "\(prompt): batched differs from solo")
                #expect(result.text == alone.text)
                #expect(result.finish == alone.finishReason)
            }
        }
        #expect(scheduler.stats.kvBytes == 0 && scheduler.stats.running == 0, "every cache freed")
    }

    /// An interactive request waits for no batch work: with one sequence at a time, it runs as
    /// soon as the running one ends, ahead of batch requests queued before it; batch work does not
    /// count against the queue limit, interactive requests do.
    @Test func interactiveRequestsGoBeforeBatchWork() async throws {
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 1, contextLength: 128, queueLimit: 1)
        defer { scheduler.shutdown() }
        scheduler.recordFinishOrder()
        var greedy = SamplingParameters()
        greedy.temperature = 0
        var batchRequest = CompletionRequest(promptTokens: tokenizer.encode("In the beginning"), maxTokens: 12, sampling: greedy)
        batchRequest.priority = .batch
        let batch = try (0..<3).map { _ in try scheduler.submit(batchRequest) }
        let interactive = try scheduler.submit(CompletionRequest(promptTokens: tokenizer.encode("And God said"), maxTokens: 12, sampling: greedy))
        #expect(throws: SchedulerError.self) { try scheduler.submit(CompletionRequest(promptTokens: [1, 2], maxTokens: 2, sampling: greedy)) }
        for stream in batch.map(\.events) + [interactive.events] { _ = await collect(stream) }
        let names = Dictionary(uniqueKeysWithValues: zip(batch.map(\.id) + [interactive.id], ["b0", "b1", "b2", "i"]))
        let finished = scheduler.finishOrder.map { names[$0] ?? "?" }
        let i = try #require(finished.firstIndex(of: "i"), "\(finished)"), b2 = try #require(finished.firstIndex(of: "b2"), "\(finished)")
        #expect(finished.count == 4 && i < b2, "\(finished)")
        #expect(i <= 1, "the interactive request ran right after the first batch one: \(finished)")
    }

    @Test func stopStringsAndLengths() async throws {
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 2, contextLength: 128)
        defer { scheduler.shutdown() }
        var greedy = SamplingParameters()
        greedy.temperature = 0
        let full = await collect(try scheduler.submit(CompletionRequest(promptTokens: tokenizer.encode(prompts[0]), maxTokens: 24, sampling: greedy)).events)
        #expect(full.finish == .length)
        let stop = String(full.text.split(separator: " ")[3])
        let cut = await collect(try scheduler.submit(CompletionRequest(promptTokens: tokenizer.encode(prompts[0]), maxTokens: 24, sampling: greedy, stopStrings: [stop])).events)
        #expect(cut.finish == .stop && !cut.text.contains(stop) && full.text.hasPrefix(cut.text))
    }

    /// With ignore_eos a request generates exactly max_tokens even when the model keeps choosing
    /// end-of-sequence (forced here by a logit bias).
    @Test func ignoreEOSGeneratesToTheLimit() async throws {
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 2, contextLength: 128)
        defer { scheduler.shutdown() }
        var toEOS = SamplingParameters()
        toEOS.temperature = 0
        toEOS.logitBias = [model.config.eosTokenIDs[0]: 100]
        var request = CompletionRequest(promptTokens: tokenizer.encode(prompts[1]), maxTokens: 12, sampling: toEOS)
        let stopped = await collect(try scheduler.submit(request).events)
        #expect(stopped.finish == .stop && stopped.tokens.isEmpty)
        request.ignoreEOS = true
        var generated = 0
        for await event in try scheduler.submit(request).events {
            if case .finished(let reason, _, let completion) = event {
                #expect(reason == .length)
                generated = completion
            }
        }
        #expect(generated == 12)
    }

    @Test func queueLimitAndCancellation() async throws {
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 1, contextLength: 256, queueLimit: 2)
        defer { scheduler.shutdown() }
        let request = CompletionRequest(promptTokens: tokenizer.encode(prompts[1]), maxTokens: 200, sampling: SamplingParameters())
        let running = try scheduler.submit(request)
        var submitted = [running]
        var refused = false
        for _ in 0..<4 {
            do { submitted.append(try scheduler.submit(request)) } catch { refused = error.kind == .queueFull }
        }
        #expect(refused, "the queue holds at most 2 waiting requests")
        for s in submitted { scheduler.cancel(s.id) }
        for s in submitted {
            let r = await collect(s.events)
            #expect(r.finish == nil, "a cancelled request ends without finishing")
        }
        #expect(scheduler.stats.kvBytes == 0 && scheduler.stats.queued == 0)
        #expect(throws: SchedulerError.self) {
            try scheduler.submit(CompletionRequest(promptTokens: Array(repeating: 5, count: 300), maxTokens: 1, sampling: SamplingParameters()))
        }
    }

    @Test func kvBudgetAdmitsWhatFits() async throws {
        // Room for one sequence's cache at a time: the others wait, and all finish.
        let perToken = model.config.layerCount * 2 * model.config.keyValueWidth * 4
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 4, contextLength: 64, kvBudgetBytes: perToken * 30)
        defer { scheduler.shutdown() }
        var greedy = SamplingParameters()
        greedy.temperature = 0
        let streams = try prompts.prefix(3).map { try scheduler.submit(CompletionRequest(promptTokens: tokenizer.encode($0), maxTokens: 8, sampling: greedy)).events }
        for s in streams { #expect(await collect(s).finish == .length) }
    }
}

@Test("a cancelled running sequence leaves at once, and the counts say so")
func cancelRunning() async throws {
    let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 2, contextLength: 512)
    defer { scheduler.shutdown() }
    let submitted = try scheduler.submit(CompletionRequest(promptTokens: tokenizer.encode("And it came to pass"), maxTokens: 400, sampling: SamplingParameters()))
    var iterator = submitted.events.makeAsyncIterator()
    _ = await iterator.next()  // running now
    scheduler.cancel(submitted.id)
    while await iterator.next() != nil {}
    for _ in 0..<100 where scheduler.stats.running != 0 { try await Task.sleep(for: .milliseconds(10)) }
    #expect(scheduler.stats.running == 0 && scheduler.stats.kvBytes == 0)
}

@Test("a long prompt does not stall a stream that is already generating")
func prefillInterleavesWithDecode() async throws {
    let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 2, contextLength: 512, prefillChunk: 64)
    defer { scheduler.shutdown() }
    var greedy = SamplingParameters()
    greedy.temperature = 0
    let short = try scheduler.submit(CompletionRequest(promptTokens: tokenizer.encode("And the LORD said"), maxTokens: 40, sampling: greedy, topLogprobs: 0))
    var shortEvents = short.events.makeAsyncIterator()
    _ = await shortEvents.next()  // generating now
    // 5 prefill chunks of 64 tokens: the short stream must keep getting tokens meanwhile.
    let longPrompt = Array(tokenizer.encode(String(repeating: "And it came to pass in those days ", count: 40)).prefix(320))
    let long = try scheduler.submit(CompletionRequest(promptTokens: longPrompt, maxTokens: 4, sampling: greedy))
    let clock = ContinuousClock()
    async let longFirst: ContinuousClock.Instant? = {
        for await event in long.events { if case .text = event { return clock.now } }
        return nil
    }()
    var shortTimes: [ContinuousClock.Instant] = []
    while let event = await shortEvents.next() { if case .text = event { shortTimes.append(clock.now) } }
    let firstOfLong = try #require(await longFirst)
    let before = shortTimes.filter { $0 < firstOfLong }.count
    #expect(before >= 4, "\(before) tokens of the short stream arrived while the long prompt was prefilled")
}

@Suite("continuous batching when a step fails")
struct FailingStepTests {
    /// A disk read that fails under `serve` fails the requests of that step with the reason, and
    /// the scheduler goes on serving.
    @Test func aFailedStepFailsItsRequestsOnly() async throws {
        let copy = try ExpertsLastCheckpoint(copying: fixturePath("mixtral"), to: "/tmp/switchyard-failing-serve-\(getpid())")
        defer { copy.remove() }
        var options = EngineOptions(model: copy.directory)
        options.precision = .f32  // the references are f32's
        options.threads = 2
        options.costDirectory = costDirectory
        options.kvPositions = 64
        // Room for two experts beside what every token touches: every other expert is read from
        // the file, and none is read through the mapping the test cuts short.
        let config = try HuggingFaceFolder(directory: copy.directory).readConfig()
        let footprint = ModelFootprint(config: config, element: .bf16)
        options.ramBudget = footprint.always.reduce(0) { $0 + $1.bytes }
            + TierOptions.hostReservation(config, positions: 64) + 2 * ExpertPlacement.ramSlotBytes(footprint.expertMatrixBytes)
        let engine = try Engine.load(options)
        #expect(engine.tiers?.placement.experts(on: .ram).isEmpty == true)
        let tokenizer = try Tokenizer(directory: copy.directory)
        let scheduler = BatchScheduler(model: engine.model, tokenizer: tokenizer, maxSequences: 2, contextLength: 64)
        defer { scheduler.shutdown() }
        var greedy = SamplingParameters()
        greedy.temperature = 0
        let request = CompletionRequest(promptTokens: [1, 15, 302, 77], maxTokens: 6, sampling: greedy)
        copy.loseExperts()
        var failure: String?
        for await event in try scheduler.submit(request).events {
            if case .failed(let message) = event { failure = message }
        }
        #expect(failure?.contains(copy.weightsPath) == true, "\(failure ?? "no failure")")
        copy.restore()
        let served = await collect(try scheduler.submit(request).events)
        let alone = try Generator(model: try Model(directory: fixturePath("mixtral"), threads: 2), tokenizer: nil)
            .generate(promptTokens: request.promptTokens, options: { var o = GenerationOptions(); o.sampling = greedy; o.maxTokens = 6; return o }())
        #expect(served.tokens == alone.tokens && served.finish == alone.finishReason)
        #expect(scheduler.stats.kvBytes == 0 && scheduler.stats.running == 0)
    }
}
