/// A size given by a user ("512MiB", "20GB", "1.5 GiB", "4096") that is not one.
public struct ByteSizeError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// "512MiB", "20GB", "1.5 GiB", "4096" → bytes (KB, MB, GB, TB are decimal; KiB, MiB, GiB, TiB and
/// K, M, G, T binary). Negative, non-numeric and absurd (≥ 9e18 bytes) sizes are refused.
public func parseByteSize(_ text: String) throws(ByteSizeError) -> Int {
    let trimmed = text.filter { $0 != " " && $0 != "_" }
    let number = trimmed.prefix { $0.isNumber || $0 == "." }
    let unit = trimmed.dropFirst(number.count).lowercased()
    let scale: Double
    switch unit {
    case "", "b": scale = 1
    case "kb": scale = 1e3
    case "mb": scale = 1e6
    case "gb": scale = 1e9
    case "tb": scale = 1e12
    case "k", "kib": scale = 1024
    case "m", "mib": scale = 1024 * 1024
    case "g", "gib": scale = 1024 * 1024 * 1024
    case "t", "tib": scale = 1024 * 1024 * 1024 * 1024
    default: throw ByteSizeError(description: "'\(text)' is not a size (examples: 512MiB, 20GB, 1.5GiB)")
    }
    guard let value = Double(number), value >= 0, value * scale < 9e18 else {
        throw ByteSizeError(description: "'\(text)' is not a size (examples: 512MiB, 20GB, 1.5GiB)")
    }
    return Int(value * scale)
}

/// 1536 → "1.5 KiB", with `digits` decimals (binary units); for messages and tables.
public func formatBytes(_ bytes: Int, digits: Int = 1) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes), unit = 0
    while abs(value) >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    if unit == 0 { return "\(bytes) B" }
    return "\(fixed(value, digits)) \(units[unit])"
}

/// 1_234_567 → "1.23 M": parameter and token counts for tables.
public func formatCount(_ n: Int) -> String {
    let v = Double(n)
    if v >= 1e9 { return fixed(v / 1e9, 2) + " B" }
    if v >= 1e6 { return fixed(v / 1e6, 2) + " M" }
    if v >= 1e3 { return fixed(v / 1e3, 1) + " K" }
    return "\(n)"
}

/// A number with exactly `digits` decimals (Foundation's String(format:) is not linked in).
public func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (abs(value) * scale).rounded()
    let whole = Int(rounded / scale)
    var fraction = String(Int(rounded.truncatingRemainder(dividingBy: scale)))
    while fraction.count < digits { fraction = "0" + fraction }
    return (value < 0 && rounded > 0 ? "-" : "") + String(whole) + (digits > 0 ? "." + fraction : "")
}

/// `text` right-aligned in `width` columns.
public func padded(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}
