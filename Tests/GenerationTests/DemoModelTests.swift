import Testing
import NPY
import SwitchyardJSON
@testable import Generation
import Models
import Tokenizers
import SwitchyardSupport
import SwitchyardTestSupport

/// The bundled demo model agrees with transformers as the fixtures do, and its greedy output is
/// readable text rather than a repeated token.
@Suite("bundled demo model")
struct DemoModelTests {
    let directory = repositoryRoot + "/models/switchyard-kjv-moe"
    let referenceDirectory = repositoryRoot + "/fixtures/demo-reference"

    @Test func matchesTransformers() throws {
        let reference = try readJSON(referenceDirectory + "/reference.json")
        let prompt = reference["prompt_tokens"]!.arrayValue!.map { $0.intValue! }
        let greedy = reference["greedy_tokens"]!.arrayValue!.map { $0.intValue! }
        let (expected, shape) = try NPY.decode(try readFileBytes(referenceDirectory + "/prompt_logits.npy"))
        let model = try Model(directory: directory, threads: 2)
        let tokenizer = try Tokenizer(directory: directory)
        #expect(tokenizer.encode(reference["prompt"]!.stringValue!) == prompt)
        let logits = try model.makeSession(contextLength: 128).forward(prompt, allLogits: true)
        let vocab = shape[1]
        for p in prompt.indices {
            var diff = 0.0, norm = 0.0
            for i in (p * vocab)..<((p + 1) * vocab) {
                diff += Double(logits[i] - expected[i]) * Double(logits[i] - expected[i])
                norm += Double(expected[i]) * Double(expected[i])
            }
            #expect((diff / norm).squareRoot() <= 1e-4, "position \(p)")
        }
        var options = GenerationOptions()
        options.maxTokens = greedy.count
        options.sampling.temperature = 0
        options.ignoreEOS = true
        let result = try Generator(model: model, tokenizer: tokenizer).generate(promptTokens: prompt, options: options)
        #expect(result.tokens == greedy)
        #expect(result.text == reference["greedy_text"]!.stringValue!.prefixedWithSpaceIfNeeded(result.text))
    }

    @Test func greedyTextIsStable() throws {
        let model = try Model(directory: directory, threads: 2)
        let tokenizer = try Tokenizer(directory: directory)
        var options = GenerationOptions()
        options.maxTokens = 64
        options.sampling.temperature = 0
        let result = try Generator(model: model, tokenizer: tokenizer).generate(promptTokens: tokenizer.encode("Once upon a time"), options: options)
        let words = result.text.split(separator: " ")
        #expect(words.count >= 20, "\(result.text)")
        #expect(Set(result.tokens).count * 3 >= result.tokens.count, "mostly distinct tokens: \(result.text)")
        var longestRun = 1, run = 1
        for i in result.tokens.indices.dropFirst() {
            run = result.tokens[i] == result.tokens[i - 1] ? run + 1 : 1
            longestRun = max(longestRun, run)
        }
        #expect(longestRun <= 3, "no token repeated more than 3 times in a row")
        let letters = result.text.unicodeScalars.filter { $0.properties.isAlphabetic || $0 == " " || ",.;:'!?\n".unicodeScalars.contains($0) }
        #expect(letters.count * 100 >= result.text.unicodeScalars.count * 95, "English prose: \(result.text)")
    }
}

extension String {
    /// transformers decodes the continuation alone (its first word loses its space); Switchyard
    /// streams it in context, keeping the space.
    fileprivate func prefixedWithSpaceIfNeeded(_ ours: String) -> String {
        ours.hasPrefix(" ") && !hasPrefix(" ") ? " " + self : self
    }
}
