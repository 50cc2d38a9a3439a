extension StringProtocol {
    /// The text without leading and trailing characters of `set` (spaces and tabs by default).
    public func trimmed(_ set: String = " \t") -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
