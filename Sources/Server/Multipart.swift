import SwitchyardSupport

/// One part of a `multipart/form-data` body (RFC 7578): a form field or an uploaded file.
public struct FormPart: Sendable, Equatable {
    public var name: String
    /// The uploaded file's name, for a file part.
    public var filename: String?
    public var contentType: String?
    public var body: ArraySlice<UInt8>
}

public struct MultipartError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// `multipart/form-data` bodies, as OpenAI's client sends a file upload.
public enum MultipartForm {
    /// The boundary of a `multipart/form-data; boundary=...` content type.
    public static func boundary(contentType: String) throws(MultipartError) -> String {
        let type = contentType.prefix { $0 != ";" }.trimmed().lowercased()
        guard type == "multipart/form-data" else {
            throw MultipartError("the content type must be multipart/form-data, found '\(contentType.prefix(100))'")
        }
        guard let value = parameters(contentType)["boundary"] else { throw MultipartError("the multipart content type has no boundary") }
        // RFC 2046: 1 to 70 characters.
        guard (1...70).contains(value.utf8.count) else { throw MultipartError("the multipart boundary must be 1 to 70 characters") }
        return value
    }

    /// The parts of `body`, each named by its Content-Disposition. Anything before the first
    /// delimiter and after the last is ignored, as RFC 2046 says.
    public static func parse(_ body: [UInt8], boundary: String) throws(MultipartError) -> [FormPart] {
        let delimiter = Array("--\(boundary)".utf8)
        let crlf: [UInt8] = [13, 10]
        guard var at = find(delimiter, in: body, from: 0) else { throw MultipartError("the body has no multipart delimiter") }
        var parts: [FormPart] = []
        while true {
            at += delimiter.count
            if body.count >= at + 2, body[at] == UInt8(ascii: "-"), body[at + 1] == UInt8(ascii: "-") { return parts }
            // Transport padding, then CRLF.
            while at < body.count, body[at] == 32 || body[at] == 9 { at += 1 }
            guard body.count >= at + 2, body[at] == 13, body[at + 1] == 10 else {
                throw MultipartError("part \(parts.count + 1): the delimiter is not followed by a line break")
            }
            at += 2
            guard let headersEnd = find(crlf + crlf, in: body, from: at - 2) else {
                throw MultipartError("part \(parts.count + 1): its headers do not end")
            }
            var part = FormPart(name: "", filename: nil, contentType: nil, body: [])
            var named = false
            if headersEnd > at - 2 {
                for line in body[at..<headersEnd].split(separator: 10) {
                    let text = String(decoding: line.last == 13 ? line.dropLast() : line, as: UTF8.self)
                    guard let colon = text.firstIndex(of: ":") else {
                        throw MultipartError("part \(parts.count + 1): a header line without a colon")
                    }
                    let name = text[..<colon].lowercased().trimmed()
                    let value = String(text[text.index(after: colon)...]).trimmed()
                    if name == "content-disposition" {
                        let parameters = parameters(value)
                        guard let fieldName = parameters["name"] else {
                            throw MultipartError("part \(parts.count + 1): its Content-Disposition has no name")
                        }
                        part.name = fieldName
                        part.filename = parameters["filename"]
                        named = true
                    } else if name == "content-type" {
                        part.contentType = value
                    }
                }
            }
            guard named else { throw MultipartError("part \(parts.count + 1): no Content-Disposition header") }
            let start = headersEnd + 4
            guard let end = find(crlf + delimiter, in: body, from: start) else {
                throw MultipartError("part \(parts.count + 1) ('\(part.name)'): no closing delimiter (the body is cut short?)")
            }
            part.body = body[start..<end]
            parts.append(part)
            at = end + 2
        }
    }

    /// `form-data; name="file"; filename="a b.jsonl"` to its parameters, names in lower case (quoted
    /// or bare values, backslash escapes in quoted ones).
    static func parameters(_ value: String) -> [String: String] {
        var result: [String: String] = [:]
        var chars = Substring(value)
        // The disposition type.
        guard let semicolon = chars.firstIndex(of: ";") else { return result }
        chars = chars[chars.index(after: semicolon)...]
        while !chars.isEmpty {
            chars = chars.drop { $0 == " " || $0 == "\t" || $0 == ";" }
            guard let equals = chars.firstIndex(of: "=") else { break }
            let key = chars[..<equals].trimmed().lowercased()
            chars = chars[chars.index(after: equals)...].drop { $0 == " " || $0 == "\t" }
            var item = ""
            if chars.first == "\"" {
                chars = chars.dropFirst()
                var escaped = false
                while let c = chars.first {
                    chars = chars.dropFirst()
                    if escaped { item.append(c); escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { break } else { item.append(c) }
                }
            } else {
                let end = chars.firstIndex(of: ";") ?? chars.endIndex
                item = chars[..<end].trimmed()
                chars = chars[end...]
            }
            if result[key] == nil { result[key] = item }
        }
        return result
    }

    /// Where `needle` first starts in `haystack` at or after `from`.
    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard from >= 0, !needle.isEmpty, haystack.count - from >= needle.count else { return nil }
        // memchr finds candidates for the first byte at memory speed; memcmp checks the rest.
        return haystack.withUnsafeBytes { h in
            needle.withUnsafeBytes { n in
                let base = h.baseAddress!, last = h.count - n.count
                var at = from
                while at <= last {
                    guard let hit = memchr(base + at, Int32(n[0]), last - at + 1) else { return nil }
                    at = base.distance(to: UnsafeRawPointer(hit))
                    if memcmp(base + at, n.baseAddress!, n.count) == 0 { return at }
                    at += 1
                }
                return nil
            }
        }
    }
}
