import SwitchyardSupport
import Tokenizers

/// Turns a growing list of token ids into text pieces for streaming.
///
/// Decoders are context-dependent (SentencePiece strips the space of the first piece; byte-level
/// and byte-fallback tokens may end inside a UTF-8 sequence), so each step decodes a short window
/// of recent tokens twice, with and without the new ones, and emits the difference, holding back
/// text that ends in an incomplete character. The window starts a few tokens into the prompt, so the
/// first generated word keeps its leading space.
public struct IncrementalDetokenizer {
    let tokenizer: Tokenizer
    private(set) var tokens: [Int]
    private var prefixOffset: Int
    private var readOffset: Int

    public init(tokenizer: Tokenizer, promptTokens: [Int]) {
        self.tokenizer = tokenizer
        tokens = Array(promptTokens.suffix(6))
        readOffset = tokens.count
        prefixOffset = max(0, readOffset - 6)
    }

    /// Adds a token; returns the text that is now final (possibly empty).
    public mutating func append(_ token: Int) -> String {
        tokens.append(token)
        let before = Array(tokenizer.decode(Array(tokens[prefixOffset..<readOffset])).utf8)
        let after = Array(tokenizer.decode(Array(tokens[prefixOffset...])).utf8)
        // U+FFFD at the end: the last token ended inside a character; wait for the rest.
        if after.count <= before.count || after.suffix(3).elementsEqual([0xEF, 0xBF, 0xBD]) { return "" }
        let common = zip(before, after).prefix { $0 == $1 }.count
        prefixOffset = readOffset
        readOffset = tokens.count
        return String(decoding: after[common...], as: UTF8.self)
    }

    /// Whatever is still held back (at the end of generation).
    public mutating func flush() -> String {
        guard readOffset < tokens.count else { return "" }
        let before = Array(tokenizer.decode(Array(tokens[prefixOffset..<readOffset])).utf8)
        let after = Array(tokenizer.decode(Array(tokens[prefixOffset...])).utf8)
        let common = zip(before, after).prefix { $0 == $1 }.count
        readOffset = tokens.count
        prefixOffset = readOffset
        return String(decoding: after[common...], as: UTF8.self)
    }
}

/// Watches generated text for stop strings. Text that could still turn out to be the start of a
/// stop string is held back, so that a stop string is never printed, even in part.
public struct StopStringFilter {
    public let stops: [String]
    private var pending = ""
    public private(set) var stopped = false

    public init(_ stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Feeds newly generated text; returns what is safe to show.
    public mutating func push(_ text: String) -> String {
        guard !stopped else { return "" }
        pending += text
        let bytes = Array(pending.utf8)
        var earliest: Int?
        for stop in stops {
            let s = Array(stop.utf8)
            if let at = firstIndex(of: s, in: bytes), at < (earliest ?? Int.max) { earliest = at }
        }
        if let at = earliest {
            stopped = true
            let out = String(decoding: bytes[..<at], as: UTF8.self)
            pending = ""
            return out
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        var hold = 0
        for stop in stops {
            let s = Array(stop.utf8)
            for length in stride(from: min(s.count - 1, bytes.count), to: hold, by: -1)
            where bytes.suffix(length).elementsEqual(s.prefix(length)) {
                hold = length
                break
            }
        }
        // Never split a UTF-8 sequence: move the cut back to a character boundary.
        var cut = bytes.count - hold
        while cut > 0, cut < bytes.count, bytes[cut] & 0xC0 == 0x80 { cut -= 1 }
        let out = String(decoding: bytes[..<cut], as: UTF8.self)
        pending = String(decoding: bytes[cut...], as: UTF8.self)
        return out
    }

    /// At the end of generation, the held-back text was not a stop string after all.
    public mutating func finish() -> String {
        defer { pending = "" }
        return stopped ? "" : pending
    }
}

func firstIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
    guard !needle.isEmpty, needle.count <= haystack.count else { return nil }
    for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
        if haystack[i..<i + needle.count].elementsEqual(needle) { return i }
    }
    return nil
}
