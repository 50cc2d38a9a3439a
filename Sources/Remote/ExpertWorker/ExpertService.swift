import AttentionWire
import AttentionWorker
import ExpertWire
import Kernels
import Models
import NIOCore
import Runtime
import SwitchyardSupport
import WeightFiles

/// An expert host: a subset of a model's routed experts in its own memory (read from its own copy
/// of the model files), run for batches of tokens that tier 1 sends. It runs the CPU's kernels on
/// the same bytes with tier 1's activation precision, so its outputs are what tier 1 would compute.
/// Every request is answered; a bad one gets an error naming the field, the expert or the size.
public final class ExpertService: FrameService {
    /// The model as read from its files (mapped: only the experts held are copied out).
    let model: LoadedModel
    /// Bytes its experts may take.
    public let memory: Int
    /// Experts fixed at start (`--experts`): tier 1 cannot assign others.
    public let fixed: Bool
    let pool: ThreadPool
    let epoch: [UInt8] = (0..<16).map { _ in UInt8.random(in: 0...255) }
    private var connections = Set<Int>()
    private var held: [WireExpert: FeedForwardWeights] = [:]
    private var storage: HostBuffer?
    private var inUse = 0
    private var device: CPUDevice
    private let inputs = FloatBuffer(), outputs = FloatBuffer(), scratch = FloatBuffer()

    /// - Parameters:
    ///   - experts: a fixed set to hold now; nil: hold what tier 1 assigns.
    public init(model: LoadedModel, memory: Int, experts: [WireExpert]?, pool: ThreadPool) throws(WireError) {
        self.model = model
        self.memory = memory
        self.pool = pool
        fixed = experts != nil
        device = CPUDevice(pool: pool)
        if let experts { try hold(experts) }
    }

    /// The model's shape as the wire describes it (tier 1's precision aside).
    public var shape: ExpertModelShape {
        let c = model.config
        let moe = c.feedForward.compactMap(\.moe)
        return ExpertModelShape(layers: c.layerCount, expertsPerLayer: moe.map(\.expertCount).max() ?? 0, hidden: c.hiddenSize,
                                intermediate: moe.map(\.expertIntermediateSize).max() ?? 0, precision: device.precision.rawValue)
    }

    public var status: ExpertHostStatus {
        ExpertHostStatus(epoch: epoch, memory: memory, inUse: inUse, experts: held.keys.sorted(), connections: connections.count, fixed: fixed)
    }

    /// The stored weights of one routed expert, or an error naming why there is none.
    func stored(_ e: WireExpert) throws(WireError) -> FeedForwardWeights {
        guard e.layer < model.weights.layers.count, case .mixtureOfExperts(let m) = model.weights.layers[e.layer].feedForward else {
            throw WireError("layer \(e.layer) has no routed experts in this model (\(model.config.layerCount) layers)")
        }
        guard e.expert < m.experts.count else { throw WireError("layer \(e.layer) has \(m.experts.count) experts, not \(e.expert + 1)") }
        return m.experts[e.expert]
    }

    /// Copies `experts` out of the files into memory of its own (replacing what it held).
    func hold(_ experts: [WireExpert]) throws(WireError) {
        let unique = Array(Set(experts)).sorted()
        var sources: [FeedForwardWeights] = []
        var bytes = 0
        for e in unique {
            let f = try stored(e)
            sources.append(f)
            bytes += f.matrices.reduce(0) { $0 + (($1.byteCount + 63) & ~63) }
        }
        guard bytes <= memory else {
            throw WireError("\(unique.count) experts take \(formatBytes(bytes, digits: 2)), more than this host's \(formatBytes(memory, digits: 2)) for experts")
        }
        held = [:]
        storage = nil
        let buffer = HostBuffer(max(bytes, 64))
        var offset = 0
        for (e, f) in zip(unique, sources) {
            held[e] = f.mapMatrices { m in
                let target = buffer.pointer + offset
                target.copyMemory(from: m.data, byteCount: m.byteCount)
                dropPages(m.data, m.byteCount)
                offset += (m.byteCount + 63) & ~63
                return m.moved(to: UnsafeRawPointer(target))
            }
        }
        storage = buffer
        inUse = bytes
    }

    public func connectionOpened(_ connection: Int) { connections.insert(connection) }
    public func connectionClosed(_ connection: Int) { connections.remove(connection) }

    public func respond(to frame: Frame, connection: Int, into out: inout ByteBuffer) {
        do throws(WireError) {
            switch try ExpertWire.request(frame) {
            case .hello(let version, let shape):
                guard version == ExpertWire.version else {
                    throw WireError("expert wire version \(version) (this host speaks \(ExpertWire.version))")
                }
                let mine = self.shape
                guard shape.layers == mine.layers, shape.expertsPerLayer == mine.expertsPerLayer, shape.hidden == mine.hidden,
                      shape.intermediate == mine.intermediate else {
                    throw WireError("tier 1 runs a model of \(shape); this host holds one of \(mine)")
                }
                guard let precision = ActivationPrecision(rawValue: shape.precision) else {
                    throw WireError("unknown activation precision \"\(shape.precision)\"")
                }
                device = CPUDevice(pool: pool, precision: precision)
                ExpertWire.reply(.hello(version: ExpertWire.version, status: status), id: frame.id, into: &out)
            case .assign(let experts):
                if fixed && Set(experts) != Set(held.keys) {
                    throw WireError("this host holds a fixed set of \(held.count) experts (--experts) and cannot take others")
                }
                if !fixed { try hold(experts) }
                ExpertWire.reply(.assigned(status), id: frame.id, into: &out)
            case .status:
                ExpertWire.reply(.status(status), id: frame.id, into: &out)
            case .probe(let bytes):
                ExpertWire.reply(.probed(bytes), id: frame.id, into: &out)
            case .run(let layer, let parts, let payload):
                try run(id: frame.id, layer: layer, parts: parts, payload: payload, into: &out)
            }
        } catch {
            ExpertWire.reply(.error(error.description), id: frame.id, into: &out)
        }
    }

    /// Each part's rows through its expert; outputs in the same row order.
    func run(id: UInt64, layer: Int, parts: [RunPart], payload: ByteBuffer, into out: inout ByteBuffer) throws(WireError) {
        let hidden = model.config.hiddenSize
        var weights: [FeedForwardWeights] = []
        for p in parts {
            guard let w = held[WireExpert(layer: layer, expert: p.expert)] else {
                throw WireError("layer \(layer) expert \(p.expert) is not held here (\(held.count) experts are)")
            }
            weights.append(w)
        }
        let rows = parts.reduce(0) { $0 + $1.rows }
        guard payload.readableBytes == rows * hidden * 4 else {
            throw WireError("run request: \(payload.readableBytes) bytes of inputs for \(rows) rows of \(hidden), \(rows * hidden * 4) expected")
        }
        inputs.reserve(rows * hidden)
        outputs.reserve(rows * hidden)
        let x = inputs.pointer, y = outputs.pointer
        payload.withUnsafeReadableBytes { UnsafeMutableRawPointer(x).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        var first = 0
        for (p, w) in zip(parts, weights) {
            let inner = w.intermediateSize
            scratch.reserve(2 * p.rows * inner)
            device.feedForward(w, input: x + first * hidden, output: y + first * hidden, tokens: p.rows, gate: scratch.pointer,
                               up: scratch.pointer + p.rows * inner)
            first += p.rows
        }
        ExpertWire.ran(id: id, outputs: y, count: rows * hidden, into: &out)
    }
}

/// The expert host's server.
public typealias ExpertServer = FrameServer<ExpertService>

extension ExpertService {
    /// Parses `--experts`: comma-separated `LAYER:EXPERT`, `LAYER:FIRST-LAST`, or `*` for every
    /// MoE layer (`*:0-3`); each checked against the model.
    public static func parseExperts(_ spec: String, config: DecoderConfig) throws(WireError) -> [WireExpert] {
        var out: [WireExpert] = []
        for item in spec.split(separator: ",") {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw WireError("--experts: '\(item)' is not LAYER:EXPERT or LAYER:FIRST-LAST") }
            let layers: [Int]
            if parts[0] == "*" {
                layers = config.feedForward.indices.filter { config.feedForward[$0].moe != nil }
            } else {
                guard let l = Int(parts[0]), config.feedForward.indices.contains(l), config.feedForward[l].moe != nil else {
                    throw WireError("--experts: '\(parts[0])' is not a layer with routed experts (the model has \(config.layerCount) layers)")
                }
                layers = [l]
            }
            let range = parts[1].split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(range.count), let low = Int(range[0]), let high = Int(range.last!), low <= high else {
                throw WireError("--experts: '\(parts[1])' is not EXPERT or FIRST-LAST")
            }
            for l in layers {
                let count = config.feedForward[l].moe!.expertCount
                guard low >= 0, high < count else { throw WireError("--experts: layer \(l) has experts 0-\(count - 1), not \(parts[1])") }
                for e in low...high { out.append(WireExpert(layer: l, expert: e)) }
            }
        }
        guard !out.isEmpty else { throw WireError("--experts: no experts given") }
        return out
    }
}
