import AttentionWire
import ExpertWire
import ExpertWorker
import Kernels
import Models
import NIOCore

/// The expert wire as a host reads it: a byte stream of frames (hello, status, assign, runs,
/// probes, mutated), cut and answered as the server does, by a host of the mixtral fixture. Every
/// frame must get a reply that reads back; a stream that cannot be delimited ends.
struct ExpertWireTarget: Target {
    let seeds: [[UInt8]]
    let service: ExpertService

    init(root: String) {
        let pool = ThreadPool(threads: 1)
        let loaded = try! LoadedModel.load(try! ModelFormats.open(root + "/fixtures/models/mixtral"), pool: pool, regroup: false)
        service = try! ExpertService(model: loaded, memory: 1 << 26, experts: nil, pool: pool)
        let c = loaded.config
        let shape = ExpertModelShape(layers: c.layerCount, expertsPerLayer: 4, hidden: c.hiddenSize,
                                     intermediate: c.feedForward[0].moe!.expertIntermediateSize, precision: "f32")
        var b = ByteBufferAllocator().buffer(capacity: 4096)
        ExpertWire.hello(id: 1, shape: shape, into: &b)
        ExpertWire.assign(id: 2, experts: [WireExpert(layer: 0, expert: 1), WireExpert(layer: 1, expert: 3)], into: &b)
        let x = [Float](repeating: 0.25, count: 3 * c.hiddenSize)
        x.withUnsafeBufferPointer { p in
            ExpertWire.run(id: 3, layer: 0, parts: [RunPart(expert: 1, rows: 2)], firstRows: [0], input: p.baseAddress!, hidden: c.hiddenSize, into: &b)
            ExpertWire.run(id: 4, layer: 1, parts: [RunPart(expert: 3, rows: 1)], firstRows: [2], input: p.baseAddress!, hidden: c.hiddenSize, into: &b)
        }
        ExpertWire.probe(id: 5, bytes: 16, into: &b)
        ExpertWire.status(id: 6, into: &b)
        seeds = [b.readBytes(length: b.readableBytes)!]
    }

    func exercise(_ input: [UInt8]) -> Bool {
        var buffer = ByteBufferAllocator().buffer(capacity: input.count)
        buffer.writeBytes(input)
        var answered = 0
        do {
            while let frame = try FrameReader().next(&buffer) {
                var out = ByteBufferAllocator().buffer(capacity: 64)
                service.respond(to: frame, connection: 1, into: &out)
                // The reply must itself read back (a run's outputs are as many floats as it holds).
                let reply = try FrameReader().next(&out)!
                _ = try ExpertWire.reply(reply, expectedFloats: reply.kind == ExpertFrameKind.ran.rawValue ? reply.payload.readableBytes / 4 : 0)
                answered += 1
            }
        } catch {}
        return answered > 0
    }
}
