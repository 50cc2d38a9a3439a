import SwitchyardSupport

/// A run's error that names the file or setting at fault.
public struct EvaluationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The file `--kl-divergence-base` writes and `--kl-divergence` reads, in llama-perplexity's
/// layout, so that either program reads the other's: "_logits_", the context (uint32), the
/// vocabulary and the chunk count (int32), every chunk's tokens (int32, chunks x context, as the
/// text gave them), then per chunk the scored rows (context - 1 - context / 2 of them) of
/// `LogProbabilityCodes`, little-endian.
public struct LogProbabilityFileHeader: Sendable, Equatable {
    public static let magic = Array("_logits_".utf8)
    static let fixedBytes = 20
    /// Bounds on numbers read from a file, checked before any arithmetic with them.
    public static let contextLimit = 1 << 20
    public static let vocabularyLimit = 1 << 24

    public var context: Int
    public var vocabulary: Int
    public var chunks: Int
    /// chunks x context token ids.
    public var tokens: [Int]

    public init(context: Int, vocabulary: Int, chunks: Int, tokens: [Int]) {
        self.context = context
        self.vocabulary = vocabulary
        self.chunks = chunks
        self.tokens = tokens
    }

    public var scoredPerChunk: Int { context - 1 - context / 2 }
    public var rowWords: Int { LogProbabilityCodes.rowWords(vocabulary: vocabulary) }
    public var chunkWords: Int { scoredPerChunk * rowWords }
    var dataOffset: Int { Self.fixedBytes + 4 * tokens.count }
    public var fileBytes: Int { dataOffset + chunks * chunkWords * 2 }

    /// The fixed fields and the tokens: `read(offset, count)` returns the file's bytes there.
    static func parse(path: String, fileBytes: Int, read: (Int, Int) throws(EvaluationError) -> [UInt8]) throws(EvaluationError) -> Self {
        guard fileBytes >= fixedBytes else { throw EvaluationError("\(path): \(fileBytes) bytes, too short for a log-probability file") }
        let fixed = try read(0, fixedBytes)
        guard Array(fixed[0..<8]) == magic else {
            throw EvaluationError("\(path) does not look like a file of log-probabilities (no \"_logits_\" at its start)")
        }
        func field(_ at: Int) -> UInt32 {
            UInt32(fixed[at]) | UInt32(fixed[at + 1]) << 8 | UInt32(fixed[at + 2]) << 16 | UInt32(fixed[at + 3]) << 24
        }
        let context = Int(field(8)), vocabulary = Int(Int32(bitPattern: field(12))), chunks = Int(Int32(bitPattern: field(16)))
        guard (3...contextLimit).contains(context) else { throw EvaluationError("\(path): context \(context) is outside 3...\(contextLimit)") }
        guard (1...vocabularyLimit).contains(vocabulary) else { throw EvaluationError("\(path): vocabulary \(vocabulary) is outside 1...\(vocabularyLimit)") }
        guard chunks >= 1 else { throw EvaluationError("\(path): \(chunks) chunks; at least 1 is needed") }
        // Every size in Int with overflow checked: chunks comes from the file.
        let scored = context - 1 - context / 2, rowBytes = 2 * LogProbabilityCodes.rowWords(vocabulary: vocabulary)
        let (tokenCount, o1) = chunks.multipliedReportingOverflow(by: context)
        let (tokenBytes, o2) = tokenCount.multipliedReportingOverflow(by: 4)
        let (chunkRows, o3) = chunks.multipliedReportingOverflow(by: scored)
        let (rowsBytes, o4) = chunkRows.multipliedReportingOverflow(by: rowBytes)
        let (headerBytes, o5) = tokenBytes.addingReportingOverflow(fixedBytes)
        let (expected, o6) = headerBytes.addingReportingOverflow(rowsBytes)
        guard !(o1 || o2 || o3 || o4 || o5 || o6), expected == fileBytes else {
            let what = o1 || o2 || o3 || o4 || o5 || o6 ? "more bytes than a file can hold" : "\(expected) bytes"
            throw EvaluationError("\(path): \(chunks) chunks of \(context) tokens over a vocabulary of \(vocabulary) take \(what), the file has \(fileBytes)")
        }
        let raw = try read(fixedBytes, tokenBytes)
        var tokens = [Int](repeating: 0, count: tokenCount)
        for i in 0..<tokenCount {
            let t = Int(Int32(bitPattern: UInt32(raw[4 * i]) | UInt32(raw[4 * i + 1]) << 8 | UInt32(raw[4 * i + 2]) << 16 | UInt32(raw[4 * i + 3]) << 24))
            guard (0..<vocabulary).contains(t) else {
                throw EvaluationError("\(path): token \(i) is \(t), outside the vocabulary of \(vocabulary)")
            }
            tokens[i] = t
        }
        return Self(context: context, vocabulary: vocabulary, chunks: chunks, tokens: tokens)
    }

    /// The fixed fields and tokens as the file holds them.
    var bytes: [UInt8] {
        var out = Self.magic
        func append(_ value: UInt32) { out += [UInt8(value & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 24)] }
        append(UInt32(context))
        append(UInt32(vocabulary))
        append(UInt32(chunks))
        for t in tokens { append(UInt32(t)) }
        return out
    }
}

/// A base file opened for `--kl-divergence`: the header checked against the file's size at open,
/// each chunk's rows read when asked for and checked as they come.
public final class LogProbabilityReader {
    public let path: String
    public let header: LogProbabilityFileHeader
    private let fd: Int32

    public init(path: String) throws(EvaluationError) {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw EvaluationError("cannot open \(path): \(errorText())") }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw EvaluationError("\(path) is not a regular file")
        }
        let descriptor = fd
        do {
            header = try LogProbabilityFileHeader.parse(path: path, fileBytes: Int(info.st_size)) { (offset, count) throws(EvaluationError) in
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, count), alignment: 8)
                defer { buffer.deallocate() }
                try Self.read(descriptor, path: path, into: buffer.baseAddress!, count: count, at: offset)
                return Array(buffer.prefix(count))
            }
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    private static func read(_ fd: Int32, path: String, into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws(EvaluationError) {
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw EvaluationError("cannot read \(path) at byte \(offset + done): \(n == 0 ? "the file ends early (was it cut short?)" : errorText())")
            }
            done += n
        }
    }

    /// Chunk `chunk`'s rows into `rows` (chunkWords words); a row whose scale or minimum is not a
    /// finite number (or a negative scale) is an error naming it.
    public func readChunk(_ chunk: Int, into rows: UnsafeMutablePointer<UInt16>) throws(EvaluationError) {
        precondition((0..<header.chunks).contains(chunk))
        let h = header
        try Self.read(fd, path: path, into: UnsafeMutableRawPointer(rows), count: h.chunkWords * 2, at: h.dataOffset + chunk * h.chunkWords * 2)
        for r in 0..<h.scoredPerChunk {
            let (scale, minimum) = LogProbabilityCodes.header(rows + r * h.rowWords)
            guard scale.isFinite, scale >= 0, minimum.isFinite else {
                throw EvaluationError("\(path): chunk \(chunk + 1), row \(r + 1) has scale \(scale) and minimum \(minimum); both must be finite, the scale at least 0")
            }
        }
    }
}

/// Writes a base file as the rows come; the file appears under its name only when complete, so a
/// run that fails or is stopped leaves no half-written base behind (or an earlier one overwritten).
public final class LogProbabilityWriter {
    public let path: String
    public let header: LogProbabilityFileHeader
    private let partial: String
    private var fd: Int32
    private var finished = false

    public init(path: String, header: LogProbabilityFileHeader) throws(EvaluationError) {
        self.path = path
        self.header = header
        partial = path + ".partial"
        fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw EvaluationError("cannot create \(partial): \(errorText())") }
        try write(header.bytes)
    }

    deinit {
        if fd >= 0 { close(fd) }
        if !finished { unlink(partial) }
    }

    private func write(_ bytes: [UInt8]) throws(EvaluationError) {
        if let code = bytes.withUnsafeBytes({ writeAll(fd, $0) }) {
            throw EvaluationError("cannot write \(partial): \(errorText(code))")
        }
    }

    /// One chunk's rows (chunkWords words).
    public func append(_ rows: UnsafeBufferPointer<UInt16>) throws(EvaluationError) {
        precondition(rows.count == header.chunkWords)
        if let code = writeAll(fd, UnsafeRawBufferPointer(rows)) {
            throw EvaluationError("cannot write \(partial): \(errorText(code))")
        }
    }

    /// Flushes the file to disk and gives it its name.
    public func finish() throws(EvaluationError) {
        guard fsync(fd) == 0 else { throw EvaluationError("cannot write \(partial): \(errorText())") }
        close(fd)
        fd = -1
        guard rename(partial, path) == 0 else { throw EvaluationError("cannot rename \(partial) to \(path): \(errorText())") }
        finished = true
    }
}
