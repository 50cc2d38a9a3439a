import Batching
import ChatTemplates
import Kernels
import Models
import Orchestration
import SafeTensors
import Server
import SwitchyardJSON
import SwitchyardSupport
import Tokenizers

/// The JSON reader on configs, tokenizer configs and request bodies.
struct JSONTarget: Target {
    let seeds: [[UInt8]]
    init(root: String) {
        seeds = ["llama", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"].compactMap { try? readFileBytes(root + "/fixtures/models/\($0)/config.json") }
            + RequestTarget.bodies.map { Array($0.utf8) }
    }
    func exercise(_ input: [UInt8]) -> Bool {
        guard let value = try? JSONValue.parse(input) else { return false }
        _ = value.serialized()
        return true
    }
}

/// Safetensors files: a small real checkpoint's bytes, mutated mostly in its header.
final class SafeTensorsTarget: Target {
    let seeds: [[UInt8]]
    let path = "/tmp/switchyard-fuzz-\(getpid()).safetensors"
    init(root: String) {
        // A small valid file: a fixture's norm weights and one projection, written afresh.
        var seed: [UInt8] = []
        if let source = try? SafeTensorsFile(path: root + "/fixtures/models/llama/model.safetensors") {
            let picked = source.names.filter { $0.contains("norm") }.prefix(4) + source.names.filter { $0.contains("k_proj") }.prefix(1)
            let entries = picked.map { name in
                let t = source.tensors[name]!
                return SafeTensorsWriter.Entry(name: name, dtype: t.dtype, shape: t.shape, byteCount: t.byteCount) { out in
                    out.copyMemory(from: t.data, byteCount: t.byteCount)
                }
            }
            let seedPath = path + ".seed"
            if (try? SafeTensorsWriter.write(Array(entries), metadata: ["format": "pt"], to: seedPath)) != nil {
                seed = (try? readFileBytes(seedPath)) ?? []
                unlink(seedPath)
            }
        }
        seeds = [seed]
    }
    func exercise(_ input: [UInt8]) -> Bool {
        guard writeInput(input, to: path) else { return false }
        guard let parsed = try? SafeTensorsFile(path: path) else { return false }
        // Read every tensor's bytes, as a binder would: a header that lies must have been caught.
        var sum: UInt8 = 0
        for t in parsed.tensors.values where t.byteCount > 0 {
            sum &+= t.data.load(as: UInt8.self) &+ t.data.load(fromByteOffset: t.byteCount - 1, as: UInt8.self)
        }
        withExtendedLifetime(sum) {}
        return true
    }
}

/// config.json, through to the placement and predictions `plan` makes from it.
struct ConfigTarget: Target {
    let seeds: [[UInt8]]
    init(root: String) {
        seeds = ["llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss", "gpt_oss_mxfp4"]
            .compactMap { try? readFileBytes(root + "/fixtures/models/\($0)/config.json") }
            + ["mixtral-8x7b", "deepseek-v2-lite", "deepseek-v3", "gpt-oss-120b"].compactMap {
                try? readFileBytes(root + "/benchmarks/configs/\($0)/config.json")
            }
    }
    func exercise(_ input: [UInt8]) -> Bool {
        guard let json = try? JSONValue.parse(input),
              let config = try? HuggingFaceFolder.decoderConfig(json: json, file: "config.json") else { return false }
        _ = RotaryEmbedding(config.rope, headDim: config.headDim, maxPositions: config.maxPositions)
        _ = config.kvLayout.bytes(positions: config.maxPositions)
        // A plan that succeeds predicts finite speeds (`plan` once printed -nan tok/s).
        for hardware in HardwareProfile.known {
            guard let plan = try? Planner.plan(config, element: .bf16, hardware: hardware, acceleratorMemory: 24 << 30, ramBudget: 64 << 30,
                                               contextLength: min(4096, config.maxPositions)) else { continue }
            let speeds = [plan.decodeOverlapped, plan.decodeSummed, plan.prefillOverlapped, plan.decodeFiddler]
            precondition(speeds.allSatisfy(\.isFinite), "plan predicted \(speeds) for \(hardware.name)")
        }
        return true
    }
}

/// tokenizer.json, then encoding and decoding a few texts with what was read.
struct TokenizerTarget: Target {
    let seeds: [[UInt8]]
    static let texts = ["Hello world", " leading space", "naïve café 工1天", "a\n\nb\t c", "<s>special</s>", "12345 67", ""]
    init(root: String) {
        seeds = ["trained-prefix", "trained-suffix"].compactMap { try? readFileBytes(root + "/fixtures/tokenizers/\($0)/tokenizer.json") }
    }
    func exercise(_ input: [UInt8]) -> Bool {
        guard let json = try? JSONValue.parse(input), let tokenizer = try? Tokenizer(json: json, path: "tokenizer.json") else { return false }
        for text in Self.texts {
            let ids = tokenizer.encode(text)
            _ = tokenizer.decode(ids, skipSpecialTokens: false)
        }
        return true
    }
}

/// Chat templates (the source mutated), rendered with the conversations of the test vectors.
struct TemplateTarget: Target {
    let seeds: [[UInt8]]
    let conversations: [JSONValue]
    init(root: String) {
        let vectors = (try? readFileBytes(root + "/fixtures/chat-templates/vectors.json")).flatMap { try? JSONValue.parse($0) }
        seeds = vectors?["templates"]?.objectValue?.entries.compactMap { $0.value.stringValue.map { Array($0.utf8) } } ?? []
        conversations = Array((vectors?["cases"]?.arrayValue ?? []).compactMap { $0["messages"] }.prefix(7))
    }
    func exercise(_ input: [UInt8]) -> Bool {
        guard let source = String(validating: input, as: UTF8.self), let template = try? ChatTemplate(source: source) else { return false }
        var accepted = false
        for messages in conversations {
            // A smaller step bound than a server's, so the fuzzer stays fast.
            if (try? template.render(messages: messages, limits: .init(steps: 20_000, outputBytes: 1 << 20))) != nil { accepted = true }
        }
        return accepted
    }
}

/// OpenAI request bodies, through the server's parser with the demo model's tokenizer and template.
struct RequestTarget: Target {
    static let bodies = [
        #"{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who was the first king?"}], "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 3, "stop": ["\n", "Amen"], "seed": 42}"#,
        #"{"model": "m", "prompt": "In the beginning", "max_tokens": 12, "logprobs": 2, "frequency_penalty": 0.5, "presence_penalty": -0.5, "logit_bias": {"42": -100, "7": 5}}"#,
        #"{"model": "m", "prompt": [1, 450, 2030], "max_completion_tokens": 3, "response_format": {"type": "text"}, "n": 1}"#,
        #"{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}"#,
    ]
    let seeds = RequestTarget.bodies.map { Array($0.utf8) }
    let server: OpenAIServer

    init(root: String) {
        let demo = root + "/models/switchyard-kjv-moe"
        let model = try! Model(directory: demo, threads: 1)
        let tokenizer = try! Tokenizer(directory: demo)
        let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 1, contextLength: 256)
        server = OpenAIServer(configuration: ServerConfiguration(modelName: "m"), scheduler: scheduler, tokenizer: tokenizer,
                              chat: try? ChatTemplateConfiguration(directory: demo))
    }

    func exercise(_ input: [UInt8]) -> Bool {
        let chat = server.check(requestBody: input, chat: true) == nil
        let completion = server.check(requestBody: input, chat: false) == nil
        return chat || completion
    }
}
