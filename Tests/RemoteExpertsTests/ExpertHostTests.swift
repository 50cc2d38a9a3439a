import AttentionWire
import Engine
import ExpertWire
@testable import ExpertWorker
import Kernels
@testable import Models
import NIOCore
import Orchestration
import Runtime
import SwitchyardSupport
import SwitchyardTestSupport
import Testing

/// Expert hosts in this process, on loopback ports: the wire, the server and tier 1's client are the
/// real ones; only the process boundary is missing (scripts/expert_hosts_integration.py has it).
final class Hosts {
    var servers: [ExpertServer?] = []
    var addresses: [String] = []

    /// - Parameter fixed: per host, its own experts (`--experts`) or nil (what tier 1 assigns).
    init(model path: String, fixed: [String?]) throws {
        for spec in fixed {
            let pool = ThreadPool(threads: 1)
            let loaded = try LoadedModel.load(try ModelFormats.open(path), pool: pool, regroup: false)
            let experts = try spec.map { try ExpertService.parseExperts($0, config: loaded.config) }
            let server = ExpertServer(service: try ExpertService(model: loaded, memory: 1 << 30, experts: experts, pool: pool))
            let bound = try server.start(host: "127.0.0.1", port: 0)
            servers.append(server)
            addresses.append("127.0.0.1:\(bound.port)")
        }
    }

    func kill(_ i: Int) {
        servers[i]?.close()
        servers[i] = nil
    }

    deinit { for s in servers { s?.close() } }
}

func engine(_ path: String, hosts: [String] = [], pipeline: PipelineSetting = .auto, ramBudget: Int? = nil, holdWeights: Bool = false) throws -> Engine {
    var o = EngineOptions(model: path)
    o.threads = 2
    o.precision = .f32
    o.tuneKernels = false
    o.costDirectory = costDirectory
    o.kvPositions = 64
    o.expertWorkers = hosts
    o.expertPipeline = pipeline
    o.ramBudget = ramBudget
    o.holdWeightsInMemory = holdWeights
    return try Engine.load(o)
}

/// A prompt's logits at every position, then greedy tokens one at a time; `between` runs after
/// the prompt.
func run(_ model: Model, steps: Int = 8, between: () -> Void = {}) throws -> (logits: [Float], tokens: [Int]) {
    let prompt = (0..<40).map { ($0 * 37 + 5) % min(model.config.vocabularySize, 3000) + 3 }
    let session = try model.makeSession(contextLength: 64)
    let logits = try session.forward(prompt, allLogits: true)
    between()
    let v = model.config.vocabularySize
    var last = Array(logits[(prompt.count - 1) * v..<prompt.count * v])
    var tokens: [Int] = []
    for _ in 0..<steps {
        let next = last.indices.max { last[$0] < last[$1] }!
        tokens.append(next)
        last = try session.forward([next])
    }
    return (logits, tokens)
}

@Suite("Expert hosts")
struct ExpertHostTests {
    @Test("every fixture through two hosts (one with its own experts, one assigned) at every group count: the same bits",
          arguments: moeArchitectures)
    func sameBits(arch: String) throws {
        let reference = try run(engine(fixturePath(arch)).model)
        let hosts = try Hosts(model: fixturePath(arch), fixed: ["*:0-0", nil])
        for setting in [PipelineSetting.off, .groups(2), .groups(3), .groups(4), .auto] {
            let e = try engine(fixturePath(arch), hosts: hosts.addresses, pipeline: setting)
            let result = try run(e.model)
            #expect(result.tokens == reference.tokens, "\(arch) \(setting)")
            #expect(firstDifference(result.logits, reference.logits) == nil, "\(arch) \(setting): logits differ")
            let tiers = try #require(e.tiers)
            #expect(tiers.statistics.remoteRuns > 0)
            #expect(tiers.statistics.cpuRuns > 0, "tier 1 keeps a share of the experts")
            if case .groups(let n) = setting { #expect(tiers.statistics.mostPipelineGroups >= min(n, 2), "\(arch) \(setting)") }
        }
    }

    @Test("under a RAM budget the hosts take what would be read from disk")
    func ramBudgetSendsDiskExpertsToHosts() throws {
        let path = fixturePath("mixtral")
        let reference = try run(engine(path).model)
        let hosts = try Hosts(model: path, fixed: [nil])
        let probe = try engine(path, ramBudget: 1 << 40)
        let tiers = try #require(probe.tiers)
        let slot = ExpertPlacement.ramSlotBytes(tiers.footprint.expertMatrixBytes)
        let budget = tiers.placement.alwaysHostBytes + tiers.options.reservedHostBytes + 2 * slot
        let e = try engine(path, hosts: hosts.addresses, ramBudget: budget)
        let result = try run(e.model)
        #expect(result.tokens == reference.tokens)
        #expect(firstDifference(result.logits, reference.logits) == nil)
        let s = try #require(e.tiers).statistics
        #expect(s.remoteRuns > 0)
        #expect(s.diskBytesRead == 0, "every expert that did not fit went to the host")
    }

    /// GPT-OSS's experts are rearranged at load: tier 1 keeps its copies of a host's experts in
    /// memory (or, under a RAM budget, in the spill file), never a released page.
    @Test("a host lost mid-run: its experts come back to tier 1 (from disk under a RAM budget, or with the weights held in memory as a server holds them), the outputs do not change",
          arguments: ["qwen2_moe", "gpt_oss"])
    func lostHostFallsBack(arch: String) throws {
        for (budgeted, hold) in [(false, false), (true, false), (false, true)] {
            let path = fixturePath(arch)
            let reference = try run(engine(path).model)
            let hosts = try Hosts(model: path, fixed: [nil, "*:1-2"])
            var budget: Int?
            if budgeted {
                let tiers = try #require(try engine(path, ramBudget: 1 << 40).tiers)
                budget = tiers.placement.alwaysHostBytes + tiers.options.reservedHostBytes
                    + 2 * ExpertPlacement.ramSlotBytes(tiers.footprint.expertMatrixBytes)
            }
            let e = try engine(path, hosts: hosts.addresses, ramBudget: budget, holdWeights: hold)
            var notes: [String] = []
            e.tiers!.notes = { notes.append($0) }
            let result = try run(e.model) { hosts.kill(1) }
            #expect(result.tokens == reference.tokens, "budget \(budgeted), held \(hold)")
            #expect(firstDifference(result.logits, reference.logits) == nil, "budget \(budgeted), held \(hold)")
            let s = try #require(e.tiers).statistics
            #expect(s.hostsLost == 1)
            #expect(notes.count == 1 && notes[0].contains(hosts.addresses[1]) && notes[0].contains("lost"), "\(notes)")
            if budgeted || (hold && arch != "gpt_oss") { #expect(s.diskBytesRead > 0, "read back from the files") }
        }
    }

    @Test("bad flags and models are errors naming the problem")
    func refusals() throws {
        let hosts = try Hosts(model: fixturePath("mixtral"), fixed: [nil])
        // A host of another model.
        #expect(throws: EngineError.self) { try engine(fixturePath("olmoe"), hosts: hosts.addresses) }
        do { _ = try engine(fixturePath("qwen2_moe"), hosts: hosts.addresses); Issue.record("qwen2_moe: loaded without an error") } catch {
            #expect("\(error)".contains("refused the model") && "\(error)".contains("layers"), "\(error)")
        }
        do { _ = try engine(fixturePath("llama"), hosts: hosts.addresses); Issue.record("llama: loaded without an error") } catch {
            #expect("\(error)".contains("no routed experts"), "\(error)")
        }
        do { _ = try engine(fixturePath("mixtral"), hosts: ["127.0.0.1:1"]); Issue.record("mixtral: loaded without an error") } catch {
            #expect("\(error)".contains("cannot connect") && "\(error)".contains("127.0.0.1:1"), "\(error)")
        }
    }
}

@Suite("The expert wire")
struct ExpertWireTests {
    func service() throws -> ExpertService {
        let pool = ThreadPool(threads: 1)
        let loaded = try LoadedModel.load(try ModelFormats.open(fixturePath("mixtral")), pool: pool, regroup: false)
        return try ExpertService(model: loaded, memory: 1 << 30, experts: ExpertService.parseExperts("0:1,1:0-3", config: loaded.config), pool: pool)
    }

    /// The service's answer to one request frame.
    func answer(_ s: ExpertService, _ write: (inout ByteBuffer) -> Void) throws -> ExpertReply {
        var b = ByteBufferAllocator().buffer(capacity: 64)
        write(&b)
        let frame = try #require(try FrameReader().next(&b))
        var out = ByteBufferAllocator().buffer(capacity: 64)
        s.respond(to: frame, connection: 1, into: &out)
        let reply = try #require(try FrameReader().next(&out))
        let floats: Int = { if case .run(_, let parts, _)? = try? ExpertWire.request(frame) { parts.reduce(0) { $0 + $1.rows } * 32 } else { 0 } }()
        return try ExpertWire.reply(reply, expectedFloats: floats)
    }

    func error(_ reply: ExpertReply) -> String? { if case .error(let m) = reply { return m } else { return nil } }

    @Test("a run gives what the CPU gives; bad requests get errors naming the field, and the host goes on")
    func runsAndRefusals() throws {
        let s = try service()
        let config = s.model.config
        let shape = ExpertModelShape(layers: config.layerCount, expertsPerLayer: 4, hidden: config.hiddenSize,
                                     intermediate: config.feedForward[0].moe!.expertIntermediateSize, precision: "f32")
        guard case .hello(_, let status) = try answer(s, { ExpertWire.hello(id: 1, shape: shape, into: &$0) }) else {
            Issue.record("no hello"); return
        }
        #expect(status.experts.count == 5 && status.fixed)
        var wrong = shape
        wrong.hidden += 1
        #expect(error(try answer(s, { ExpertWire.hello(id: 2, shape: wrong, into: &$0) }))?.contains("hidden") == true)

        let hidden = config.hiddenSize
        let input: [Float] = (0..<(3 * hidden)).map { i in Float((i * 7) % 13) * 0.05 - 0.3 }
        let parts = [RunPart(expert: 0, rows: 2), RunPart(expert: 3, rows: 1)]
        let reply = try input.withUnsafeBufferPointer { x in
            try answer(s) { ExpertWire.run(id: 3, layer: 1, parts: parts, firstRows: [0, 2], input: x.baseAddress!, hidden: hidden, into: &$0) }
        }
        guard case .ran(let outputs) = reply else { Issue.record("no outputs: \(reply)"); return }
        // The CPU over the stored weights, expert by expert.
        let device = CPUDevice(pool: ThreadPool(threads: 1))
        guard case .mixtureOfExperts(let m) = s.model.weights.layers[1].feedForward else { Issue.record("not MoE"); return }
        var expected = [Float](repeating: 0, count: 3 * hidden)
        let inner = m.experts[0].intermediateSize
        var gate = [Float](repeating: 0, count: 2 * inner), up = gate
        for (p, first) in zip(parts, [0, 2]) {
            input.withUnsafeBufferPointer { x in
                expected.withUnsafeMutableBufferPointer { y in
                    device.feedForward(m.experts[p.expert], input: x.baseAddress! + first * hidden, output: y.baseAddress! + first * hidden,
                                       tokens: p.rows, gate: &gate, up: &up)
                }
            }
        }
        let bytes = outputs.getBytes(at: outputs.readerIndex, length: outputs.readableBytes)!
        let got: [Float] = bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(got == expected)

        // An expert not held, a layer that does not exist, inputs of the wrong size, a host with its own set asked for others.
        let one = [Float](repeating: 0.5, count: hidden)
        let notHeld = try one.withUnsafeBufferPointer { x in
            try answer(s) { ExpertWire.run(id: 4, layer: 0, parts: [RunPart(expert: 2, rows: 1)], firstRows: [0], input: x.baseAddress!, hidden: hidden, into: &$0) }
        }
        #expect(error(notHeld)?.contains("layer 0 expert 2 is not held") == true, "\(notHeld)")
        let short = try one.withUnsafeBufferPointer { x in
            try answer(s) { ExpertWire.run(id: 5, layer: 1, parts: [RunPart(expert: 1, rows: 1)], firstRows: [0], input: x.baseAddress!, hidden: hidden - 1, into: &$0) }
        }
        #expect(error(short)?.contains("bytes of inputs") == true, "\(short)")
        let others = try answer(s) { ExpertWire.assign(id: 6, experts: [WireExpert(layer: 0, expert: 0)], into: &$0) }
        #expect(error(others)?.contains("fixed set") == true)
        #expect(throws: WireError.self) { try ExpertService.parseExperts("9:0", config: config) }
        #expect(throws: WireError.self) { try ExpertService.parseExperts("0:2-9", config: config) }
        #expect(throws: WireError.self) { try ExpertService.parseExperts("0", config: config) }
        #expect(try ExpertService.parseExperts("*:1-2", config: config).count == 4)
        guard case .status(let after) = try answer(s, { ExpertWire.status(id: 7, into: &$0) }) else { Issue.record("no status"); return }
        #expect(after.experts.count == 5)
    }
}
