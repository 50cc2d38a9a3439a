import Evaluation
import SwitchyardSupport

/// `perplexity --kl-divergence`'s base files: a small valid one (2 chunks of 8 tokens over a
/// vocabulary of 6), mutated. Every file must be refused with an error or read in full, each
/// row's scale and minimum finite.
final class LogProbabilityTarget: Target {
    let seeds: [[UInt8]]
    let path = "/tmp/switchyard-fuzz-\(getpid()).kld"

    init() {
        let header = LogProbabilityFileHeader(context: 8, vocabulary: 6, chunks: 2, tokens: (0..<16).map { $0 % 6 })
        var rows = [UInt16](repeating: 0, count: header.chunkWords)
        let logits: [Float] = [0.5, -1, 2, 0.25, 1, -3]
        for r in 0..<header.scoredPerChunk {
            _ = rows.withUnsafeMutableBufferPointer { out in
                logits.withUnsafeBufferPointer { LogProbabilityCodes.encode($0, token: r % 6, into: out.baseAddress! + r * header.rowWords) }
            }
        }
        var seed: [UInt8] = []
        if let writer = try? LogProbabilityWriter(path: path + ".seed", header: header),
           (try? rows.withUnsafeBufferPointer { try writer.append($0) }) != nil,
           (try? rows.withUnsafeBufferPointer { try writer.append($0) }) != nil, (try? writer.finish()) != nil {
            seed = (try? readFileBytes(path + ".seed")) ?? []
        }
        unlink(path + ".seed")
        seeds = [seed]
    }

    func exercise(_ input: [UInt8]) -> Bool {
        guard writeInput(input, to: path) else { return false }
        guard let reader = try? LogProbabilityReader(path: path) else { return false }
        let h = reader.header
        var rows = [UInt16](repeating: 0, count: h.chunkWords)
        for chunk in 0..<h.chunks {
            let read: Bool = rows.withUnsafeMutableBufferPointer { (try? reader.readChunk(chunk, into: $0.baseAddress!)) != nil }
            guard read else { return false }
            for r in 0..<h.scoredPerChunk {
                let (scale, minimum) = rows.withUnsafeBufferPointer { LogProbabilityCodes.header($0.baseAddress! + r * h.rowWords) }
                precondition(scale.isFinite && minimum.isFinite, "a row with a non-finite scale was accepted")
            }
        }
        return true
    }
}
