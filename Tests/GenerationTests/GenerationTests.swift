import Testing
@testable import Generation
import Models
import Tokenizers
import SwitchyardSupport
import SwitchyardTestSupport
let mixtralPath = repositoryRoot + "/fixtures/models/mixtral"
let tokenizer = try! Tokenizer(directory: mixtralPath)

@Suite("sampling")
struct SamplerTests {
    func params(_ configure: (inout SamplingParameters) -> Void) -> SamplingParameters {
        var p = SamplingParameters()
        configure(&p)
        return p
    }

    @Test func temperatureZeroIsArgmax() {
        var s = Sampler(params { $0.temperature = 0 })
        #expect(s.sample(logits: [0.1, 3, 2.9, -1], history: []) == 1)
        #expect(argmax([1, 5, 5]) == 1, "the lowest index among equals")
    }

    @Test func repeatPenaltyAsTransformers() {
        // Token 1 (logit 3) was seen: 3 / 2 = 1.5 < 2.9, so token 2 wins; negative logits are multiplied.
        var s = Sampler(params { $0.temperature = 0; $0.repeatPenalty = 2 })
        #expect(s.sample(logits: [0.1, 3, 2.9, -1], history: [1]) == 2)
        var t = Sampler(params { $0.temperature = 0; $0.repeatPenalty = 2 })
        #expect(t.sample(logits: [-1, -0.6], history: [1]) == 0, "-0.6 x 2 = -1.2 < -1")
        var windowed = Sampler(params { $0.temperature = 0; $0.repeatPenalty = 2; $0.repeatLastN = 1 })
        #expect(windowed.sample(logits: [0.1, 3, 2.9, -1], history: [1, 0]) == 1, "token 1 is outside the last-1 window")
    }

    @Test func seedsAreReproducible() {
        let logits: [Float] = (0..<50).map { Float($0 % 7) * 0.3 }
        let p = params { $0.temperature = 1; $0.topK = 0; $0.topP = 1; $0.minP = 0; $0.seed = 42 }
        var a = Sampler(p), b = Sampler(p)
        let drawsA = (0..<20).map { _ in a.sample(logits: logits, history: []) }
        let drawsB = (0..<20).map { _ in b.sample(logits: logits, history: []) }
        #expect(drawsA == drawsB)
        #expect(Set(drawsA).count > 1, "temperature 1 over a flat distribution varies")
    }

    @Test func filtersKeepOnlyAllowedTokens() {
        let logits: [Float] = [5, 4.9, 0, -3, 4.8]
        var topK = Sampler(params { $0.temperature = 1; $0.topK = 2; $0.topP = 1; $0.minP = 0; $0.seed = 1 })
        #expect((0..<200).allSatisfy { _ in [0, 1].contains(topK.sample(logits: logits, history: [])) })
        // p(0..2 top) ≈ 0.35, 0.32, 0.29: top-p 0.5 keeps tokens 0 and 1.
        var topP = Sampler(params { $0.temperature = 1; $0.topK = 0; $0.topP = 0.5; $0.minP = 0; $0.seed = 2 })
        #expect((0..<200).allSatisfy { _ in [0, 1].contains(topP.sample(logits: logits, history: [])) })
        // min-p 0.5: tokens at least half as likely as the best (e^-0.2 ≈ 0.82 passes, e^-5 fails).
        var minP = Sampler(params { $0.temperature = 1; $0.topK = 0; $0.topP = 1; $0.minP = 0.5; $0.seed = 3 })
        let seen = Set((0..<300).map { _ in minP.sample(logits: logits, history: []) })
        #expect(seen == [0, 1, 4])
    }
}

@Suite("streaming text")
struct StreamingTests {
    @Test func stopStringsAreHeldBackAndCut() {
        var f = StopStringFilter(["###", "\n\n"])
        var shown = f.push("Hello #")
        shown += f.push("# world")
        #expect(shown == "Hello ## world")
        shown += f.push(" and #")
        #expect(shown == "Hello ## world and ", "a possible stop prefix is held back")
        shown += f.push("##!")
        #expect(shown == "Hello ## world and ")
        #expect(f.stopped)
        var g = StopStringFilter(["END"])
        let a = g.push("almost EN")
        #expect(a == "almost ")
        #expect(a + g.finish() == "almost EN", "held text is released when generation ends")
    }

    @Test func stopStringNeverSplitsCharacters() {
        var f = StopStringFilter(["é!"])
        let out = f.push("café") + f.push("?")
        #expect(out + f.finish() == "café?")
    }

    @Test func incrementalDecodeEqualsFullDecode() {
        let prompt = tokenizer.encode("Once upon")
        let text = " a time, in Zürich 🦙 — 日本語 <0xFF> café"
        let generated = tokenizer.encode(text, addSpecialTokens: false)
        var d = IncrementalDetokenizer(tokenizer: tokenizer, promptTokens: prompt)
        var streamed = ""
        for t in generated {
            let piece = d.append(t)
            #expect(!piece.contains("\u{FFFD}"), "never a broken character")
            streamed += piece
        }
        streamed += d.flush()
        let full = tokenizer.decode(prompt + generated)
        #expect(tokenizer.decode(prompt) + streamed == full)
        #expect(streamed.hasPrefix(" a time"), "the first word keeps its space")
    }
}

@Suite("generation loop")
struct GeneratorTests {
    let model = try! Model(directory: mixtralPath, threads: 2)

    @Test func greedyJSONContractAndStops() throws {
        let generator = Generator(model: model, tokenizer: tokenizer)
        let prompt = tokenizer.encode("The old lighthouse keeper")
        var options = GenerationOptions()
        options.sampling.temperature = 0
        options.maxTokens = 10
        var streamed = ""
        let result = try generator.generate(promptTokens: prompt, options: options) { streamed += $0 }
        #expect(result.tokens.count == 10 && result.finishReason == .length)
        #expect(result.text == streamed)
        #expect(result.text == String(tokenizer.decode(prompt + result.tokens).dropFirst(tokenizer.decode(prompt).count)))

        // A stop string taken from the greedy text ends generation before it.
        let words = result.text.split(separator: " ")
        let stop = String(words[2])
        options.stopStrings = [stop]
        let stopped = try generator.generate(promptTokens: prompt, options: options)
        #expect(stopped.finishReason == .stop)
        #expect(!stopped.text.contains(stop))
        #expect(result.text.hasPrefix(stopped.text))
    }

    @Test func endOfSequenceFromGenerationConfig() throws {
        // A copy of the fixture whose generation_config.json names the first greedy token as EOS
        // (in a list, as many releases write it).
        let prompt = tokenizer.encode("The old lighthouse keeper")
        var options = GenerationOptions()
        options.sampling.temperature = 0
        options.maxTokens = 10
        let first = try Generator(model: model, tokenizer: tokenizer).generate(promptTokens: prompt, options: options).tokens[0]
        let dir = "/tmp/switchyard-eos-\(getpid())"
        _ = system("rm -rf \(dir) && mkdir -p \(dir) && cp -L \(mixtralPath)/*.json \(mixtralPath)/model.safetensors \(dir)/")
        let f = fopen(dir + "/generation_config.json", "w")!
        fputs("{\"bos_token_id\": 1, \"eos_token_id\": [2, \(first)]}", f)
        fclose(f)
        let copy = try Model(directory: dir, threads: 1)
        #expect(copy.config.eosTokenIDs == [2, first])
        let result = try Generator(model: copy, tokenizer: tokenizer).generate(promptTokens: prompt, options: options)
        #expect(result.tokens == [first] && result.finishReason == .stop && result.text.isEmpty)
        options.ignoreEOS = true
        #expect(try Generator(model: copy, tokenizer: tokenizer).generate(promptTokens: prompt, options: options).tokens.count == 10)
    }

    @Test func overLongPromptIsRefused() {
        let generator = Generator(model: model, tokenizer: tokenizer)
        #expect(throws: ModelError.self) {
            _ = try generator.generate(promptTokens: Array(repeating: 450, count: 20), options: GenerationOptions(), contextLength: 8)
        }
    }
}

@Test func mostLikelyMatchesAFullSort() {
    var state: UInt64 = 5
    let values: [Float] = (0..<5000).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(state >> 54)  // few distinct values: many ties
    }
    let full = values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }
    for k in [1, 2, 40, 700, 5000] { #expect(mostLikely(values, count: k) == Array(full.prefix(k))) }
}

@Test("byte-level streaming never shows half a character")
func byteLevelStreaming() throws {
    let gpt2 = try Tokenizer(directory: repositoryRoot + "/fixtures/tokenizers/gpt-2")
    let text = " emoji 🦙🚀👍🏽 and 日本語, e\u{301} café"
    let ids = gpt2.encode(text, addSpecialTokens: false)
    #expect(ids.count > text.unicodeScalars.count / 2, "multi-byte characters span several tokens")
    var d = IncrementalDetokenizer(tokenizer: gpt2, promptTokens: gpt2.encode("Hello", addSpecialTokens: false))
    var streamed = ""
    for id in ids {
        let piece = d.append(id)
        #expect(!piece.contains("\u{FFFD}"))
        streamed += piece
    }
    streamed += d.flush()
    #expect(streamed == text)
}

@Suite("decode loop")
struct DecodeLoopTests {
    /// Logits that make `token` the greedy choice.
    func favouring(_ token: Int, vocab: Int = 32) -> [Float] {
        var l = [Float](repeating: 0, count: vocab)
        l[token] = 5
        return l
    }

    @Test func endsAtEOSWithoutText() throws {
        var greedy = SamplingParameters()
        greedy.temperature = 0
        var loop = DecodeLoop(sampling: greedy, tokenizer: nil, promptTokens: [1], eos: [2], maxTokens: 10)
        #expect(try loop.next(logits: favouring(7), contextFull: false).finish == nil)
        let end = try loop.next(logits: favouring(2), contextFull: false)
        #expect(end.finish == .stop && end.token == 2 && end.text.isEmpty)
        #expect(loop.generated == [7, 2])
    }

    @Test func endsAtTheLimitOrAFullContext() throws {
        var greedy = SamplingParameters()
        greedy.temperature = 0
        var loop = DecodeLoop(sampling: greedy, tokenizer: nil, promptTokens: [1], eos: [], maxTokens: 2)
        #expect(try loop.next(logits: favouring(3), contextFull: false).finish == nil)
        #expect(try loop.next(logits: favouring(3), contextFull: false).finish == .length)
        var full = DecodeLoop(sampling: greedy, tokenizer: nil, promptTokens: [1], eos: [], maxTokens: 9)
        #expect(try full.next(logits: favouring(4), contextFull: true).finish == .length)
        #expect(DecodeLoop(sampling: greedy, tokenizer: nil, promptTokens: [1], eos: [], maxTokens: 0).isEmpty)
    }

    @Test func nonFiniteLogitsAreAnErrorNotTokenZero() {
        var greedy = SamplingParameters()
        greedy.temperature = 0
        var loop = DecodeLoop(sampling: greedy, tokenizer: nil, promptTokens: [1], eos: [], maxTokens: 4)
        var logits = favouring(5)
        logits[9] = .nan
        #expect(throws: NonFiniteLogits.self) { try loop.next(logits: logits, contextFull: false) }
        logits[9] = .infinity
        #expect(throws: NonFiniteLogits.self) { try loop.next(logits: logits, contextFull: false) }
    }
}
