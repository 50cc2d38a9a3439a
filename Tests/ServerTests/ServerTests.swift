import Testing
@testable import Server
import Batching
import ChatTemplates
import Models
import SwitchyardJSON
import Tokenizers
import SwitchyardSupport
import SwitchyardTestSupport
let demo = repositoryRoot + "/models/switchyard-kjv-moe"
let model = try! Model(directory: demo, threads: 1)
let tokenizer = try! Tokenizer(directory: demo)
let scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxSequences: 2, contextLength: 64)
let server = OpenAIServer(configuration: ServerConfiguration(modelName: "demo"), scheduler: scheduler, tokenizer: tokenizer,
                          chat: try! ChatTemplateConfiguration(directory: demo))

func parse(_ body: String, chat: Bool = true) throws(APIError) -> OpenAIServer.Parsed {
    try server.parse(body: Array(body.utf8), chat: chat)
}

func expectError(_ body: String, chat: Bool = true, status: Int, param: String? = nil, containing text: String) {
    do {
        _ = try parse(body, chat: chat)
        Issue.record("expected \(status) for \(body)")
    } catch {
        #expect(Int(error.status.code) == status)
        #expect(error.message.contains(text), "\(error.message)")
        if let param { #expect(error.param == param) }
    }
}

@Suite("OpenAI request parsing")
struct RequestParsingTests {
    @Test func chatRequestBecomesTemplatedTokensAndSettings() throws {
        let p = try parse(#"{"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 42, "stop": ["\n", "Amen"], "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 3, "presence_penalty": 0.5}"#)
        let rendered = try ChatTemplateConfiguration(directory: demo)
        let text = try rendered.template.render(messages: [["role": "user", "content": "Hi"]], variables: rendered.specialTokens)
        #expect(p.request.promptTokens == tokenizer.encode(text, addSpecialTokens: false))
        #expect(p.request.maxTokens == 7 && p.request.stopStrings == ["\n", "Amen"] && p.request.topLogprobs == 3)
        #expect(p.request.sampling.temperature == 0.5 && p.request.sampling.topP == 0.9 && p.request.sampling.seed == 42)
        #expect(!p.request.ignoreEOS)
        #expect(try parse(#"{"model": "m", "prompt": "x", "ignore_eos": true}"#, chat: false).request.ignoreEOS)
        expectError(#"{"model": "m", "prompt": "x", "ignore_eos": 1}"#, chat: false, status: 400, param: "ignore_eos", containing: "boolean")
        #expect(p.request.sampling.presencePenalty == 0.5 && p.request.sampling.topK == 0 && p.request.sampling.minP == 0)
        #expect(p.stream && p.includeUsage && p.logprobs)
    }

    @Test func completionPrompts() throws {
        #expect(try parse(#"{"model": "demo", "prompt": "In the beginning"}"#, chat: false).request.promptTokens == tokenizer.encode("In the beginning"))
        #expect(try parse(#"{"model": "demo", "prompt": [1, 450, 2030]}"#, chat: false).request.promptTokens == [1, 450, 2030])
        #expect(try parse(#"{"model": "demo", "prompt": "x", "logprobs": 2}"#, chat: false).request.topLogprobs == 2)
        // 256 by default, as long as the context allows.
        #expect(try parse(#"{"model": "demo", "prompt": "x"}"#, chat: false).request.maxTokens == min(256, scheduler.contextLength))
    }

    @Test func badRequestsNameTheProblem() {
        expectError(#"{"model": "demo", "messages": ["#, status: 400, containing: "malformed JSON")
        expectError(#"[1, 2]"#, status: 400, containing: "JSON object")
        expectError(#"{"model": "demo", "messages": "hello"}"#, status: 400, param: "messages", containing: "messages")
        expectError(#"{"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}"#, status: 400, param: "max_tokens", containing: "integer")
        expectError(#"{"model": "demo", "messages": [{"role": "user", "content": "x"}], "temperature": 3}"#, status: 400, param: "temperature", containing: "between 0 and 2")
        expectError(#"{"model": "demo", "messages": [{"role": "user", "content": "x"}], "n": 2}"#, status: 400, param: "n", containing: "n=1")
        expectError(#"{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stop": [1]}"#, status: 400, param: "stop", containing: "stop")
        expectError(#"{"model": "demo", "prompt": [1, 999999]}"#, chat: false, status: 400, param: "prompt", containing: "vocabulary")
        let long = String(repeating: "And ", count: 200)
        expectError(#"{"model": "demo", "prompt": "\#(long)"}"#, chat: false, status: 400, param: "prompt", containing: "context length")
    }

    /// Every number a client sends is checked against OpenAI's documented range before it is used;
    /// a prompt that cannot fit is refused before it is rendered out or tokenised in full.
    @Test func everyParameterIsBounded() throws {
        let m = #""model": "demo", "messages": [{"role": "user", "content": "x"}]"#
        expectError("{\(m), \"max_tokens\": 0}", status: 400, param: "max_tokens", containing: "between 1")
        expectError("{\(m), \"frequency_penalty\": 2.5}", status: 400, param: "frequency_penalty", containing: "between -2")
        expectError("{\(m), \"presence_penalty\": -3}", status: 400, param: "presence_penalty", containing: "between -2")
        expectError("{\(m), \"temperature\": -0.5}", status: 400, param: "temperature", containing: "between 0")
        expectError("{\(m), \"top_p\": 0}", status: 400, param: "top_p", containing: "(0, 1]")
        expectError("{\(m), \"logprobs\": true, \"top_logprobs\": 100000}", status: 400, param: "top_logprobs", containing: "between 0 and 20")
        expectError("{\(m), \"logprobs\": true, \"top_logprobs\": -1}", status: 400, param: "top_logprobs", containing: "between 0 and 20")
        expectError("{\(m), \"top_logprobs\": 2}", status: 400, param: "top_logprobs", containing: "logprobs: true")
        expectError(#"{"model": "demo", "prompt": "x", "logprobs": -5}"#, chat: false, status: 400, param: "logprobs", containing: "between 0 and 20")
        expectError("{\(m), \"logit_bias\": {\"5\": 101}}", status: 400, param: "logit_bias", containing: "-100 and 100")
        expectError("{\(m), \"logit_bias\": {\"99999999\": 1}}", status: 400, param: "logit_bias", containing: "vocabulary")
        expectError("{\(m), \"response_format\": {\"type\": \"json_object\"}}", status: 400, param: "response_format", containing: "not supported")
        expectError("{\(m), \"tools\": \"all\"}", status: 400, param: "tools", containing: "array")
        // A huge max_tokens is "as long as the context allows", as llama-server reads it.
        #expect(try parse("{\(m), \"max_tokens\": 9223372036854775807}").request.maxTokens == scheduler.contextLength)
        #expect(try parse("{\(m), \"max_completion_tokens\": 9223372036854775807}").request.maxTokens == scheduler.contextLength)
        // logit_bias reaches the sampler; a known text format is accepted.
        let biased = try parse("{\(m), \"logit_bias\": {\"42\": -100, \"7\": 5.5}, \"response_format\": {\"type\": \"text\"}}")
        #expect(biased.request.sampling.logitBias == [42: -100, 7: 5.5])
        // Any model name is served by default.
        #expect(try parse(#"{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}"#).request.promptTokens.count > 0)
    }

    @Test func oversizedPromptsAreRefusedBeforeTokenising() {
        // A conversation whose rendering passes what the context could hold (tools, a long
        // message): the rendering stops at the byte bound.
        let huge = String(repeating: "a", count: 1 << 20)
        expectError(#"{"model": "demo", "messages": [{"role": "user", "content": "\#(huge)"}]}"#, status: 400, param: "messages",
                    containing: "context length")
        expectError(#"{"model": "demo", "prompt": "\#(huge)"}"#, chat: false, status: 400, param: "prompt", containing: "bytes")
    }

    /// The finding: ten 10 KiB tools rendered by Llama 3.1's template (which prints each one
    /// indented) were 736 MiB of prompt before the context was checked.
    @Test func toolsThatRenderPastTheContextStopTheRendering() throws {
        let vectors = try JSONValue.parse(readFileBytes(repositoryRoot + "/fixtures/chat-templates/vectors.json"))
        let source = try #require(vectors["templates"]?["meta-llama-Llama-3.1-8B-Instruct"]?.stringValue)
        let llama = ChatTemplateConfiguration(template: try ChatTemplate(source: source), specialTokens: ["bos_token": "<s>"])
        let withTools = OpenAIServer(configuration: ServerConfiguration(modelName: "demo"), scheduler: scheduler, tokenizer: tokenizer, chat: llama)
        let description = String(repeating: "x", count: 10 << 10)
        let tool = #"{"type": "function", "function": {"name": "f", "description": "\#(description)", "parameters": {"type": "object"}}}"#
        let body = #"{"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "tools": [\#(Array(repeating: tool, count: 10).joined(separator: ","))]}"#
        do {
            _ = try withTools.parse(body: Array(body.utf8), chat: true)
            Issue.record("ten 10 KiB tools were accepted by a 64-token context")
        } catch {
            #expect(error.status.code == 400 && error.code == "context_length_exceeded" && error.message.contains("rendered by the chat template passes"),
                    "\(error.message)")
        }
    }

    @Test func aStrictServerRefusesOtherModelNames() {
        var configuration = ServerConfiguration(modelName: "demo")
        configuration.strictModelName = true
        let strict = OpenAIServer(configuration: configuration, scheduler: scheduler, tokenizer: tokenizer, chat: nil)
        do {
            _ = try strict.parse(body: Array(#"{"model": "gpt-4", "prompt": "x"}"#.utf8), chat: false)
            Issue.record("a strict server served another model's name")
        } catch {
            #expect(error.status.code == 400 && error.param == "model" && error.message.contains("unknown model 'gpt-4'"))
        }
    }
}

@Suite("server-sent events")
struct ServerSentEventTests {
    @Test func framing() throws {
        let event = serverSentEvent(["id": "x", "choices": [["delta": ["content": "a\nb"]]]])
        #expect(event == "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"a\\nb\"}}]}\n\n")
        #expect(!event.dropLast(2).contains("\n"), "one line per event: newlines in text are escaped")
        #expect(serverSentDone == "data: [DONE]\n\n")
    }

    @Test func errorsHaveOpenAIsShape() throws {
        let e = APIError(status: .tooManyRequests, message: "busy", type: "server_error", code: "queue_full", retryAfter: 1)
        #expect(e.response.status.code == 429)
        #expect(e.response.headers[.init("Retry-After")!] == "1")
    }
}
