import Testing
import GGUF
import Kernels
@testable import Models
import SwitchyardSupport
import SwitchyardTestSupport

@Suite("GGUF models match transformers on the same weights, in float32")
struct GGUFModelTests {
    @Test("prompt logits in one pass, in chunks of 3, and greedy tokens", arguments: ggufCases)
    func matchesTransformers(name: String) throws {
        let reference = try Reference(folder: ggufReferencePath(name))
        let model = try Model(directory: ggufFixturePath(name), threads: 2)
        let v = reference.vocab
        #expect(model.config.vocabularySize == v)
        let whole = try model.makeSession(contextLength: 64).forward(reference.promptTokens, allLogits: true)
        // Chunks of 3 through the cache for the MoE files (the dense ones share the attention path).
        let chunkedSession = try model.makeSession(contextLength: 64)
        chunkedSession.chunkSize = ggufMoECases.contains(name) ? 3 : 64
        let chunked = try chunkedSession.forward(reference.promptTokens, allLogits: true)
        for position in reference.promptTokens.indices {
            let expected = reference.logits[position * v..<(position + 1) * v]
            let error = relativeError(whole[position * v..<(position + 1) * v], expected)
            #expect(error <= 1e-4, "\(name) position \(position): relative error \(error)")
            #expect(relativeError(chunked[position * v..<(position + 1) * v], expected) <= 1e-4, "\(name) position \(position), chunks of 3")
        }
        let generated = try greedyContinuation(model.makeSession(contextLength: 64), prompt: reference.promptTokens, count: reference.greedyTokens.count)
        #expect(generated == reference.greedyTokens)
    }

    @Test("every type the fixtures promise is in them")
    func typesCovered() throws {
        var types = Set<String>()
        for name in ggufCases {
            let file = try GGUFFile(path: ggufFixturePath(name))
            for t in file.tensors { types.insert(t.type.name) }
        }
        #expect(types == ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                          "IQ4_NL", "IQ4_XS", "MXFP4"])
    }

    @Test("config from metadata: Mixtral stored as llama, tied embeddings, shared experts")
    func configFromMetadata() throws {
        let mixtral = try GGUFSource(path: ggufFixturePath("mixtral-q8_0")).readConfig()
        #expect(mixtral.modelType == "mixtral")
        #expect(mixtral.interleavedRotary)
        #expect(mixtral.feedForward.allSatisfy { $0.moe?.expertCount == 4 && $0.moe?.expertsPerToken == 2 })
        let qwen2 = try GGUFSource(path: ggufFixturePath("qwen2-q5")).readConfig()
        #expect(qwen2.tieWordEmbeddings && !qwen2.interleavedRotary && qwen2.queryKeyValueBias)
        let qwen2MoE = try GGUFSource(path: ggufFixturePath("qwen2_moe-k")).readConfig()
        #expect(qwen2MoE.feedForward[0].moe?.sharedExpertIntermediateSize == 256)
        #expect(qwen2MoE.eosTokenIDs == [2] && qwen2MoE.bosTokenID == 1)
    }

    @Test("config from metadata: DeepSeek V2 and V3, GPT-OSS")
    func deepSeekAndGptOssConfig() throws {
        let v2 = try GGUFSource(path: ggufFixturePath("deepseek_v2-q8")).readConfig()
        #expect(v2.modelType == "deepseek_v2" && v2.feedForward[0].moe == nil)
        guard case .latent(let latent) = v2.attention else { Issue.record("not latent attention"); return }
        #expect(latent.queryRank == nil && latent.latentRank == 64 && latent.noPositionDim == 32 && latent.rotaryDim == 32 && latent.valueDim == 32)
        #expect(latent.interleavedRotary)
        // YaRN's mscale(4, 0.707)² on 1/sqrt(64), from yarn_log_multiplier = 0.0707.
        let m = 0.1 * 0.707 * log(4.0) + 1
        #expect(abs(Double(latent.softmaxScale) - m * m / 8) < 1e-6)
        let router = try #require(v2.feedForward[1].moe?.router)
        #expect(router.gating == .softmax && !router.normalize && router.scale == 1.5 && !router.selectionBias)
        #expect(router.selection == .groupLimited(groups: 2, topGroups: 1, score: .max))
        #expect(v2.feedForward[1].moe?.sharedExpertIntermediateSize == 256)

        let v3 = try GGUFSource(path: ggufFixturePath("deepseek_v3-q8")).readConfig()
        guard case .latent(let latent3) = v3.attention else { Issue.record("not latent attention"); return }
        #expect(v3.modelType == "deepseek_v3" && latent3.queryRank == 64)
        let router3 = try #require(v3.feedForward[1].moe?.router)
        #expect(router3.gating == .sigmoid && router3.normalize && router3.scale == 2.5 && router3.selectionBias)
        #expect(router3.selection == .groupLimited(groups: 2, topGroups: 1, score: .topTwoSum))

        let oss = try GGUFSource(path: ggufFixturePath("gpt_oss-mxfp4")).readConfig()
        #expect(oss.modelType == "gpt_oss" && oss.slidingWindows == [4, nil] && oss.attentionSinks)
        #expect(oss.rope.kind == .yarn && !oss.rope.truncate && oss.rope.factor == 4)
        #expect(oss.feedForward.allSatisfy { $0.moe?.expertBiases == true && $0.moe?.routerLogitBias == true })
    }

    @Test("DeepSeek's kv_b is joined from llama.cpp's attn_k_b (transposed) and attn_v_b")
    func joinedLatentUp() throws {
        for name in ["deepseek_v2-q8", "deepseek_v3-q8"] {
            let source = try GGUFSource(path: ggufFixturePath(name))
            let tensors = try source.openTensors()
            let joined = try tensors.tensor("blk.1.attn_kv_b.weight", shape: [4 * 64, 64])
            #expect(joined.shape == [4 * 64, 64])
            // bf16 halves stay bf16; an f16 half with a Q8_0 one is widened to f32.
            #expect(joined.element == (name == "deepseek_v2-q8" ? .bf16 : .f32))
            let k = try #require(source.model.tensor("blk.1.attn_k_b.weight")), v = try #require(source.model.tensor("blk.1.attn_v_b.weight"))
            let keys = WeightMatrix(element: try #require(GGUFTensors.element(k.type)), rows: 4 * 64, columns: 32, data: k.data)
            let values = WeightMatrix(element: try #require(GGUFTensors.element(v.type)), rows: 4 * 32, columns: 64, data: v.data)
            let up = WeightMatrix(element: try #require(joined.element), rows: 4 * 64, columns: 64, data: joined.data)
            for (h, i, r) in [(0, 0, 0), (1, 5, 17), (3, 31, 63), (2, 12, 40)] {
                #expect(up.value(h * 64 + i, r) == keys.value(h * 64 + r, i), "\(name) key head \(h)")
                #expect(up.value(h * 64 + 32 + i, r) == values.value(h * 32 + i, r), "\(name) value head \(h)")
            }
            #expect(tensors.contains("blk.1.attn_kv_b.weight"))
        }
    }

    @Test("a merged expert tensor is read one expert at a time, in place")
    func expertSlices() throws {
        let source = try GGUFSource(path: ggufFixturePath("qwen3_moe-mxfp4"))
        let tensors = try source.openTensors()
        let merged = try #require(source.model.tensor("blk.1.ffn_down_exps.weight"))
        let third = try tensors.tensor(GGUFNaming().stored(.expert(layer: 1, expert: 2, .down)), shape: [256, 256])
        #expect(third.shape == [256, 256] && third.element == .mxfp4)
        #expect(third.data == merged.data + 2 * merged.byteCount / 4)
        #expect(throws: ModelError.self) { try tensors.tensor("blk.1.ffn_down_exps.weight[4]", shape: [256, 256]) }
    }

    @Test("bad files: truncated, another architecture, not GGUF")
    func badFiles() throws {
        let bytes = try readFileBytes(ggufFixturePath("qwen3-iq4"))
        let folder = "/tmp/switchyard-gguf-tests-\(getpid())"
        try makeFolders(folder)
        let truncated = folder + "/truncated.gguf"
        try writeFileDurably(truncated, bytes.prefix(bytes.count - 1000))
        #expect { try Model(directory: truncated, threads: 1) } throws: { "\($0)".contains("truncated") && "\($0)".contains(truncated) }
        let headerOnly = folder + "/header.gguf"
        try writeFileDurably(headerOnly, bytes.prefix(300))
        #expect { try Model(directory: headerOnly, threads: 1) } throws: { "\($0)".contains("truncated") && "\($0)".contains(headerOnly) }
        // The architecture renamed in place (same length): refused by name.
        var renamed = bytes
        let key = Array("qwen3".utf8), replacement = Array("xwen9".utf8)
        let at = try #require((0..<4096).first { renamed[$0..<$0 + 5].elementsEqual(Array("general.architecture".utf8).prefix(5)) })
        let value = try #require((at..<at + 64).first { renamed[$0..<$0 + 5].elementsEqual(key) })
        renamed.replaceSubrange(value..<value + 5, with: replacement)
        let other = folder + "/other.gguf"
        try writeFileDurably(other, renamed[...])
        #expect { try Model(directory: other, threads: 1) } throws: { "\($0)".contains("GGUF architecture 'xwen9' is not supported") }
    }
}

@Suite("Models written as GGUF")
struct GGUFExportTests {
    /// Written with experts (or every matrix) quantised, read back: the logits of the same model
    /// quantised at load from its folder, bit for bit where no rows were permuted (Qwen),
    /// within float32 reordering where llama's q/k were (Mixtral, the bundled model).
    @Test(arguments: [("mixtral", WeightQuantization.Format.q8_0, false), ("qwen2", .q4_0, true), ("demo", .q6_k, true), ("demo", .q4_k, false)])
    func roundTrip(arch: String, format: WeightQuantization.Format, all: Bool) throws {
        let folder = arch == "demo" ? demoModelPath : fixturePath(arch)
        let out = "/tmp/switchyard-gguf-export-\(getpid())-\(arch)-\(format.rawValue).gguf"
        defer { unlink(out) }
        let pool = ThreadPool(threads: 2)
        let written = try GGUFExport.write(from: folder, to: out, format: format, all: all, tokenizer: [], pool: pool)
        #expect(written.converted > 0)
        let fromGGUF = try Model(directory: out, threads: 2)
        let quantized = try Model(directory: folder, threads: 2, quantization: WeightQuantization(format: format, all: all))
        let prompt = [1, 15, 302, 77, 9, 1000, 4, 250, 31, 8]
        let a = try fromGGUF.makeSession(contextLength: 32).forward(prompt, allLogits: true)
        let b = try quantized.makeSession(contextLength: 32).forward(prompt, allLogits: true)
        if fromGGUF.config.interleavedRotary {
            #expect(relativeError(a[...], b[...]) <= 1e-5, "\(arch) \(format)")
        } else {
            #expect(firstDifference(a, b) == nil, "\(arch) \(format): logits differ")
        }
        let file = try GGUFFile(path: out)
        #expect(file.tensors.contains { $0.type == GGMLType(name: format.rawValue) })
    }

    @Test("a GGUF file written again as GGUF keeps its rows in place")
    func reexport() throws {
        let out = "/tmp/switchyard-gguf-reexport-\(getpid()).gguf"
        defer { unlink(out) }
        _ = try GGUFExport.write(from: ggufFixturePath("mixtral-q8_0"), to: out, format: .q8_0, all: false, tokenizer: [], pool: ThreadPool(threads: 2))
        let prompt = [1, 450, 203, 17, 300]
        let a = try Model(directory: out, threads: 2).makeSession(contextLength: 16).forward(prompt, allLogits: true)
        let b = try Model(directory: ggufFixturePath("mixtral-q8_0"), threads: 2).makeSession(contextLength: 16).forward(prompt, allLogits: true)
        // The experts are quantised again (Q8_0 of Q8_0 values); permuting q/k twice would be far off.
        #expect(relativeError(a[...], b[...]) <= 1e-3)
    }

    @Test("what GGUF cannot say is refused by name")
    func refusals() throws {
        let pool = ThreadPool(threads: 1)
        let out = "/tmp/switchyard-gguf-export-\(getpid())-refused.gguf"
        #expect { try GGUFExport.write(from: fixturePath("qwen2_moe"), to: out, format: .q8_0, all: false, tokenizer: [], pool: pool) }
            throws: { "\($0)".contains("dense layers among the MoE layers") }
        #expect { try GGUFExport.write(from: fixturePath("llama"), to: out, format: .q8_0, all: false, tokenizer: [], pool: pool) }
            throws: { "\($0)".contains("rope type 'llama3'") }
        #expect { try GGUFExport.write(from: fixturePath("deepseek_v2"), to: out, format: .q8_0, all: false, tokenizer: [], pool: pool) }
            throws: { "\($0)".contains("cannot write deepseek_v2 as GGUF") }
        #expect(!fileExists(out))
    }
}
