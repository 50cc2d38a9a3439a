/// A problem placing or running a model across tiers: a budget too small, a file that cannot be
/// read, options that do not go together. The message says which.
public struct OrchestrationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One routed expert of one layer.
public struct ExpertKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let layer: Int
    public let expert: Int

    public init(layer: Int, expert: Int) {
        self.layer = layer
        self.expert = expert
    }

    public static func < (a: ExpertKey, b: ExpertKey) -> Bool { (a.layer, a.expert) < (b.layer, b.expert) }
    public var description: String { "layer \(layer) expert \(expert)" }
}
